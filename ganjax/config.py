"""The one config schema. Config files in configs/ start from `base_config()` and override fields.

Sections: model (architecture), data (dataset and loader), train (optimisation and loop), augment (ADA),
parallel (mesh and sharding strategy), checkpoint, eval, bench.
`validate(config, num_devices=None)` checks every section before anything compiles and raises ConfigError
naming each wrong field (`config.train.loss: 'foo' is not one of ('logistic', 'hinge', 'relativistic')`).
"""

import math
import os

import dataclasses
import difflib
import importlib

import ml_collections

from ganjax.models.config import ModelConfig

RAMPABLE = ("lr_g", "lr_d", "beta2", "r1_gamma", "r2_gamma")  # train fields with a ramp (train.ramp_to)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "gansformer"
    c.seed = 0
    # JAX's persistent compilation cache for `ganjax train` and `ganjax bench`, and `ganjax plan`'s results
    # ("" = off; default $GANJAX_COMPILATION_CACHE or ~/.cache/ganjax/compilation), so a resumed run or a
    # repeated bench or plan loads its compiled programs instead of compiling them (ganjax/compilation_cache.py).
    c.compilation_cache = os.environ.get("GANJAX_COMPILATION_CACHE", "~/.cache/ganjax/compilation")

    # The model section is ModelConfig's fields with their defaults (ganjax/models/config.py documents them).
    c.model = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))

    d = c.data = ml_collections.ConfigDict()
    d.dataset = "shapes"  # shapes | folder | any TFDS catalog name (e.g. cifar10, clevr)
    d.data_dir = ""  # TFDS data dir; "" = ~/tensorflow_datasets or $TFDS_DATA_DIR
    d.folder = ""  # image folder for dataset=folder
    d.split = "train"
    d.num_images = 10000  # size of the procedural dataset
    d.max_images = 0  # train on the first N images of the split only (0 = all); FID still scores against all
    # the class label of conditional training ("" = none; needs model.num_classes): for shapes num_objects |
    # front_shape | front_color, for a folder subfolders | dataset.json, for a catalog dataset a ClassLabel
    # feature such as 'label' (ganjax/data/labels.py)
    d.label = ""
    d.aspect_ratio = 1.0  # crop to this aspect (h/w) then pad to square (GANsformer preprocessing)
    d.mirror = False
    d.shuffle_seed = 0
    d.prefetch = 2
    d.worker_count = 0  # grain worker processes; 0 = in-process

    t = c.train = ml_collections.ConfigDict()
    t.batch_size = 32  # global batch
    # The run's length: exactly one of these four > 0 (ganjax/train/length.py). total_kimg is a float (tiny
    # runs and tests use fractions of a kimg); a compute budget (the cost meter's cumulative training PFLOPs,
    # its device-hours, or money at price_per_device_hour) needs total_kimg = 0.
    t.total_kimg = 10000.0
    t.total_pflops = 0.0
    t.total_device_hours = 0.0
    t.total_cost = 0.0
    t.loss = "logistic"  # logistic (non-saturating) | hinge | relativistic (R3GAN's pairing: fake i vs real i)
    t.lr_g = 0.002
    t.lr_d = 0.002
    t.beta1 = 0.0
    t.beta2 = 0.99
    t.eps = 1e-8
    t.r1_gamma = 10.0
    t.r1_interval = 16  # lazy regularisation interval for D (0 = no R1)
    t.r2_gamma = 0.0  # R2: the zero-centred gradient penalty at the fakes, gamma/2 |grad D(G(z))|^2 (0 = off)
    t.r2_interval = 16  # its lazy interval (1 = every step); D's Adam is scaled for R1 and R2 together
    t.pl_weight = 0.0  # path-length regularisation (0 = off)
    t.pl_interval = 4  # lazy interval of path length; G's Adam is scaled by it even with PL off (reference)
    t.pl_decay = 0.01
    t.pl_batch_shrink = 2
    t.style_mixing_prob = 0.9
    t.ema_kimg = 10.0  # EMA half-life of G_ema in kimg
    t.ema_rampup = 0.0  # 0 = off; else half-life is min(ema_kimg, cur_kimg * ema_rampup)
    t.grad_accum = 1  # micro-batches per step
    t.max_consecutive_skips = 10  # non-finite updates in a row before the run stops
    t.log_every = 10  # steps
    t.sample_every_kimg = 5.0
    t.sample_grid = 16  # images in the fixed-latent sample grid
    t.price_per_device_hour = 0.0
    t.noise_mode = "random"  # G's per-pixel noise while training: random (reference) | const | none
    # Cosine ramps (R3GAN's schedules, ganjax/train/ramps.py): each field below goes from its value above to
    # the one given here over the first ramp_kimg thousand images, then holds; None = no ramp for it.
    t.ramp_kimg = 0.0  # 0 = no ramps
    t.ramp_to = ml_collections.ConfigDict(
        {name: ml_collections.config_dict.placeholder(float) for name in RAMPABLE})


    # Adaptive discriminator augmentation (StyleGAN2-ADA; ganjax/augment/): every image D sees, real or
    # fake, in every D evaluation (R1/R2 included), goes through the augmentations in `ops`, each with
    # probability p per sample.
    a = c.augment = ml_collections.ConfigDict()
    a.mode = "off"  # off | ada (p adapted toward `target`, kept in the train state) | fixed (p constant)
    a.ops = "bgc"  # comma list of augmentations and groups (ganjax/augment/ops.py: OPS, GROUPS; bgc = all)
    a.p = 0.0  # the initial p (ada) or the constant one (fixed)
    a.target = 0.6  # ada: the wanted mean sign(D(real)) over the augmented reals
    a.interval = 4  # ada: iterations between adjustments of p
    a.speed_kimg = 500.0  # ada: p can move from 0 to 1 in this many thousand images

    p = c.parallel = ml_collections.ConfigDict()
    p.strategy = "dp"  # dp | fsdp | fsdp_tp | shard_map
    p.mesh_data = -1  # -1 = all remaining devices
    p.mesh_fsdp = 1
    p.mesh_model = 1
    p.distributed = "auto"  # auto | on | off: jax.distributed.initialize()
    p.coordinator_address = ""
    p.num_processes = 0
    p.process_id = -1
    # Seconds without a heartbeat after which JAX's distributed runtime declares a process dead and stops every
    # other process (exit status 134, naming the lost process); bounds how long a run hangs after a host dies.
    p.heartbeat_timeout_s = 60
    # Logical-axis rules per strategy: ((logical axis of the models, mesh axis or None), ...). Per parameter
    # dimension the first rule whose mesh axis is unused and divides the dimension wins (else replicated).
    r = p.rules = ml_collections.ConfigDict()
    r.dp = ()
    r.shard_map = ()
    r.fsdp = (("conv_out", "fsdp"), ("mlp", "fsdp"), ("embed", "fsdp"), ("conv_in", "fsdp"),
              ("heads", "fsdp"), ("latents", "fsdp"))
    r.fsdp_tp = (("heads", "model"), ("conv_out", "model"), ("mlp", "model"), ("conv_in", "fsdp"),
                 ("embed", "fsdp"), ("conv_out", "fsdp"), ("mlp", "fsdp"), ("latents", "fsdp"))

    k = c.checkpoint = ml_collections.ConfigDict()
    k.every_kimg = 10.0
    k.keep = 3
    k.async_save = True

    e = c.eval = ml_collections.ConfigDict()
    # Evaluation is due every every_kimg, every every_pflops of training compute, at the fractions at_fractions
    # of the run's length (a comma list, e.g. "0.25,0.5,1": with a compute budget every run of a sweep is scored
    # at the same compute), and at the last step; all 0 / "" = no periodic evaluation
    e.every_kimg = 0.0
    e.every_pflops = 0.0
    e.at_fractions = ""
    e.num_images = 10000
    e.metrics = "fid"  # comma list of ganjax/metrics/scores.py's METRICS (fid, kid, pr)
    e.inception_path = ""  # .npz from `ganjax convert inception`; "" = default cache location
    e.batch_size = 64
    # how images reach the Inception network (ganjax/metrics/protocols.py): "pytorch-fid" (pytorch-fid's resize)
    # or "stylegan" (the TF graph's own resize and scaling, as NVIDIA's StyleGAN2-ADA and the GANsformer
    # authors' metrics); FIDs of different protocols are not comparable, and each record names its protocol
    e.fid_protocol = "pytorch-fid"
    # a conditional model also gets FID per class (fid/class<c>, and their mean): class c's fakes against the
    # reals of class c among the reference's images, as many of each (ganjax/evaluate.py)
    e.per_class = False

    b = c.bench = ml_collections.ConfigDict()  # `ganjax bench` (ganjax/bench/)
    b.steps = 10  # timed executions of each compiled program
    b.warmup = 2  # untimed executions after compiling
    b.sweep_meshes = "dp=1;dp=2;dp=4;dp=8;fsdp=8;dp=2,fsdp=4"  # ';'-separated meshes of --sweep
    b.sweep_sizes = "s,m"  # model sizes of --sweep (configs' size ladder, relative to the preset)
    b.sweep_batches = "2"  # per-device batch sizes of --sweep (weak scaling)
    b.scaling_devices = "8,16,32,64,128,256,512,1024,2048,4096"  # device counts of --scaling
    b.scaling_strategies = "dp,fsdp"
    b.batch_per_device = 4  # --scaling: per-device batch (the reference: 32 on 8 GPUs)
    b.assume_mfu = 0.4  # --scaling: per-device compute = FLOPs / (peak x this) unless measured_step_s is set
    b.measured_step_s = 0.0  # --scaling: a measured amortised iteration time on the target device (0 = none)
    b.comm = "hlo"  # --scaling: hlo (compile on 8 virtual devices, read the collectives) | analytic
    return c


# ----------------------------------------------------------------------------------------------
# Validation: run before anything compiles, so a wrong value fails in a second with a message that
# names the field and what is allowed, not minutes later deep inside a traced function.


class ConfigError(ValueError):
    """A config value is wrong; the message names every offending field as `config.<section>.<field>`."""


def _one_of(*allowed):
    def check(v):
        return None if v in allowed else f"{v!r} is not one of {allowed}"

    return check


def _one_of_module(module: str, name: str):
    """The allowed values the implementing module defines (module.name), read when a config is checked:
    this module stays importable without JAX."""
    def check(v):
        return _one_of(*getattr(importlib.import_module(module), name))(v)

    return check


def _parsed_by(module: str, name: str):
    """Valid when module.name(value) (imported when a config is checked) raises no ValueError; the problem
    is its message."""
    def check(v):
        try:
            getattr(importlib.import_module(module), name)(v)
        except ValueError as e:
            return str(e)
        return None

    return check


def _number(lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"{v!r} is not {'an integer' if integer else 'a number'}"
        if v != v:  # NaN
            return "nan is not allowed"
        low_bad = lo is not None and (v <= lo if lo_open else v < lo)
        high_bad = hi is not None and (v >= hi if hi_open else v > hi)
        if low_bad or high_bad:
            left = "-inf" if lo is None else f"{lo}"
            right = "inf" if hi is None else f"{hi}"
            interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
            return f"{v!r} is not in {interval}"
        return None

    return check


def _int(lo=None, hi=None):
    return _number(lo, hi, integer=True)


def _nonempty(v):
    return None if isinstance(v, str) and v.strip() else f"{v!r} must be a non-empty string"


def _comma_subset_module(module: str, name: str):
    """A comma list of the names the implementing module defines (module.name, read as _one_of_module)."""
    def check(v):
        allowed = tuple(getattr(importlib.import_module(module), name))
        items = [s.strip() for s in str(v).split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            return f"{v!r} must be a comma list of {allowed}" + (f" (unknown: {bad})" if bad else "")
        return None

    return check


def _host_port(v):
    if v == "":
        return None
    host, sep, port = str(v).rpartition(":")
    return None if sep and host and port.isdigit() else f"{v!r} is not 'host:port'"


def _mesh_dim(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and (v == -1 or v >= 1) else (
        f"{v!r} must be -1 (all remaining devices) or a positive integer")


# Per-field rules for the non-model sections; the model section is checked by ganjax.models.ModelConfig.
_RULES = {
    "name": _nonempty,
    "seed": _int(0),
    "data.dataset": _nonempty,
    "data.split": _nonempty,
    "data.num_images": _int(1),
    "data.max_images": _int(0),
    "data.aspect_ratio": _number(0, lo_open=True),
    "data.shuffle_seed": _int(0),
    "data.prefetch": _int(0),
    "data.worker_count": _int(0),
    "train.batch_size": _int(1),
    "train.total_kimg": _number(0),
    "train.total_pflops": _number(0),
    "train.total_device_hours": _number(0),
    "train.total_cost": _number(0),
    "train.loss": _one_of_module("ganjax.train.losses", "LOSSES"),
    "train.lr_g": _number(0, lo_open=True),
    "train.lr_d": _number(0, lo_open=True),
    "train.beta1": _number(0, 1, hi_open=True),
    "train.beta2": _number(0, 1, hi_open=True),
    "train.eps": _number(0, lo_open=True),
    "train.r1_gamma": _number(0),
    "train.r1_interval": _int(0),
    "train.r2_gamma": _number(0),
    "train.r2_interval": _int(0),
    "train.pl_weight": _number(0),
    "train.pl_interval": _int(1),
    "train.pl_decay": _number(0, 1, lo_open=True),
    "train.pl_batch_shrink": _int(1),
    "train.style_mixing_prob": _number(0, 1),
    "train.ema_kimg": _number(0),
    "train.ema_rampup": _number(0),
    "train.grad_accum": _int(1),
    "train.max_consecutive_skips": _int(1),
    "train.log_every": _int(1),
    "train.sample_every_kimg": _number(0),
    "train.sample_grid": _int(1),
    "train.price_per_device_hour": _number(0),
    "train.noise_mode": _one_of_module("ganjax.models.synthesis", "NOISE_MODES"),
    "train.ramp_kimg": _number(0),
    "augment.mode": _one_of_module("ganjax.augment.adaptive", "MODES"),
    "augment.ops": _parsed_by("ganjax.augment.ops", "parse_ops"),
    "augment.p": _number(0, 1),
    "augment.target": _number(0, 1, lo_open=True, hi_open=True),
    "augment.interval": _int(1),
    "augment.speed_kimg": _number(0, lo_open=True),
    "parallel.strategy": _one_of_module("ganjax.parallel.rules", "STRATEGIES"),
    "parallel.mesh_data": _mesh_dim,
    "parallel.mesh_fsdp": _mesh_dim,
    "parallel.mesh_model": _mesh_dim,
    "parallel.distributed": _one_of("auto", "on", "off"),
    "parallel.coordinator_address": _host_port,
    "parallel.num_processes": _int(0),
    "parallel.process_id": _int(-1),
    "parallel.heartbeat_timeout_s": _int(1),
    "checkpoint.every_kimg": _number(0),
    "checkpoint.keep": _int(1),
    "eval.every_kimg": _number(0),
    "eval.every_pflops": _number(0),
    "eval.at_fractions": _parsed_by("ganjax.train.length", "parse_fractions"),
    "eval.num_images": _int(2),
    "eval.metrics": _comma_subset_module("ganjax.metrics.scores", "METRICS"),
    "eval.batch_size": _int(1),
    "eval.fid_protocol": _one_of_module("ganjax.metrics.protocols", "PROTOCOLS"),
    "bench.steps": _int(1),
    "bench.warmup": _int(0),
    "bench.batch_per_device": _int(1),
    "bench.assume_mfu": _number(0, 1, lo_open=True),
    "bench.measured_step_s": _number(0),
    "bench.comm": _one_of("hlo", "analytic"),
}


def _get(config, path):
    node = config
    for key in path.split("."):
        node = node[key]
    return node


def _schema_problems(config, schema, prefix="config"):
    """Unknown or missing fields and wrong types, against base_config() (catches typos in config files)."""
    problems = []
    for key in config.keys():
        if key not in schema:
            near = difflib.get_close_matches(key, list(schema.keys()), n=1)
            problems.append(f"{prefix}.{key}: unknown field" + (f" (did you mean {near[0]!r}?)" if near else ""))
    for key in schema.keys():
        path, want = f"{prefix}.{key}", schema[key]
        if key not in config:
            problems.append(f"{path}: missing field")
            continue
        got = config[key]
        if isinstance(want, ml_collections.ConfigDict):
            if isinstance(got, ml_collections.ConfigDict):
                problems += _schema_problems(got, want, path)
            else:
                problems.append(f"{path}: must be a section, got {got!r}")
        elif want is not None and not _same_type(got, want):
            problems.append(f"{path}: {got!r} is a {type(got).__name__}, expected {type(want).__name__}")
    return problems


def _same_type(got, want):
    if isinstance(want, bool) or isinstance(got, bool):
        return isinstance(got, bool) and isinstance(want, bool)
    if isinstance(want, float):
        return isinstance(got, (int, float))
    return isinstance(got, type(want))


def _mesh_problems(p, micro, num_devices):
    """Mesh shape against the device count (when known) and the micro-batch against the batch shards;
    returns (problems, resolved (data, fsdp, model) sizes or None where a -1 needs the device count)."""
    dims = [p.mesh_data, p.mesh_fsdp, p.mesh_model]
    if dims.count(-1) > 1:
        return [f"config.parallel.mesh_*: at most one of mesh_data/mesh_fsdp/mesh_model may be -1, got {dims}"], None
    fixed = math.prod(d for d in dims if d != -1)
    if num_devices is None:
        mesh = None if -1 in dims else dims
    elif num_devices % fixed if -1 in dims else fixed != num_devices:
        return [f"config.parallel.mesh_*: mesh {dims} does not fit {num_devices} devices "
                f"(the product must equal the device count; -1 takes the rest)"], None
    else:
        mesh = [num_devices // fixed if d == -1 else d for d in dims]
    problems = []
    if mesh is not None and micro % (mesh[0] * mesh[1]):  # the batch is split over the data and fsdp axes
        problems.append(f"config.train.batch_size: the micro-batch {micro} is not divisible by the "
                        f"{mesh[0] * mesh[1]} batch shards (mesh_data*mesh_fsdp = {mesh[0]}*{mesh[1]})")
    return problems, mesh


def shard_map_problems(c, mesh) -> list[str]:
    """The shard_map strategy's rules: a data-parallel program (mesh_model 1), whose per-device batch splits
    into grad_accum micro-batches of whole minibatch-std groups. `mesh`: the (data, fsdp, model) sizes, None
    (or -1) where not known yet; the step builder checks again with the real mesh."""
    data, fsdp, model = mesh
    if model not in (1, -1, None):
        return [f"config.parallel.mesh_model: {model} with strategy 'shard_map', which is data parallel only "
                f"(mesh_model must be 1)"]
    t = c.train
    if data in (None, -1) or fsdp in (None, -1) or t.batch_size % (data * fsdp):
        return []  # the global batch against the shards is _mesh_problems' rule
    local = t.batch_size // (data * fsdp)
    if local % t.grad_accum:
        return [f"config.train.grad_accum: the per-device batch {local} of the shard_map strategy is not "
                f"divisible by it ({t.grad_accum})"]
    micro = local // t.grad_accum
    group = min(int(c.model.mbstd_group), micro)
    if group > 0 and micro % group:
        return [f"config.model.mbstd_group: the per-device micro-batch {micro} of the shard_map strategy is not "
                f"divisible by the minibatch-std group {group}"]
    return []


def _cross_field_problems(c, num_devices):
    problems = []
    t = c.train
    batch, accum = t.batch_size, t.grad_accum
    if batch % accum:
        problems.append(f"config.train.batch_size: {batch} is not divisible by config.train.grad_accum={accum}")
        return problems
    micro = batch // accum
    group = min(micro, c.model.mbstd_group) if c.model.mbstd_group > 0 else 1
    if micro % group:
        problems.append(f"config.train.batch_size: the micro-batch {micro} (batch_size/grad_accum) is not "
                        f"divisible by the minibatch-std group config.model.mbstd_group={c.model.mbstd_group}")
    if t.pl_weight > 0 and (micro % t.pl_batch_shrink or micro < t.pl_batch_shrink):
        problems.append(f"config.train.pl_batch_shrink: {t.pl_batch_shrink} does not divide the micro-batch {micro}")

    problems += _ramp_problems(t)
    problems += importlib.import_module("ganjax.train.length").problems(c)

    p = c.parallel
    mesh_problems, mesh = _mesh_problems(p, micro, num_devices)
    problems += mesh_problems
    if p.num_processes > 0 and not 0 <= p.process_id < p.num_processes:
        problems.append(f"config.parallel.process_id: {p.process_id} is not in [0, {p.num_processes}) "
                        f"(config.parallel.num_processes={p.num_processes})")
    if p.strategy == "shard_map":
        problems += shard_map_problems(c, mesh if mesh is not None else (None, None, p.mesh_model))
    problems += importlib.import_module("ganjax.data.sources").problems(c)
    return problems


def _ramp_problems(t):
    """A ramp's final value obeys its field's rule; a ramp needs a length, and a gamma ramp a regulariser
    that is on (its base gamma decides whether the phase runs)."""
    problems = []
    for name in RAMPABLE:
        final = t.ramp_to[name]
        if final is None:
            continue
        msg = _RULES[f"train.{name}"](final)
        if msg:
            problems.append(f"config.train.ramp_to.{name}: {msg}")
        elif t.ramp_kimg <= 0:
            problems.append(f"config.train.ramp_to.{name}: set to {final!r} but config.train.ramp_kimg is "
                            f"{t.ramp_kimg!r} (the ramp needs a length in kimg > 0)")
        elif name.endswith("_gamma") and t[name] <= 0:
            problems.append(f"config.train.ramp_to.{name}: set to {final!r} but config.train.{name} is "
                            f"{t[name]!r}, which turns that penalty off; give it the ramp's start value")
    return problems


def _model_problems(config):
    try:
        ModelConfig.from_config(config.model).validate()
    except ValueError as e:
        msg = str(e)
        return [msg if msg.startswith("config.") else f"config.{msg}"]
    return []


def validate(config, *, num_devices=None):
    """Raise ConfigError listing every wrong field; returns the config unchanged when it is valid.

    num_devices: the global device count, when known (after jax.distributed is initialised); with it the
    mesh shape and the batch's divisibility by the batch shards are checked too.
    """
    problems = _schema_problems(config, base_config())
    if not problems:
        for path, rule in _RULES.items():
            msg = rule(_get(config, path))
            if msg:
                problems.append(f"config.{path}: {msg}")
    if not problems:
        problems += _cross_field_problems(config, num_devices)
        problems += _model_problems(config)
    if problems:
        raise ConfigError("\n".join(problems))
    return config
