"""Named presets shared by configs/gansformer.py and configs/stylegan2.py.

A preset is chosen by the config file's `:arg` string, e.g. `configs/gansformer.py:ffhq256,size=m`:
a preset name, then optional `key=value` options. This module holds what both model families share:
the per-dataset data and training defaults of the reference (SPEC-gansformer.md section 6), the
CPU-sized runs on the embedded procedural dataset, and the model-size ladder for scaling studies.
The architecture of each family stays in its own config file.
"""

from ganjax.data import labels

# Reference datasets: (TFDS name or 'folder', resolution, R1 gamma, mirror, aspect ratio h/w).
# FFHQ is not in the TFDS catalog: it is read from an image folder (override config.data.folder).
REFERENCE = {
    "clevr256": dict(dataset="clevr", resolution=256, r1_gamma=40.0, mirror=False, aspect_ratio=0.75),
    "ffhq256": dict(dataset="folder", folder="data/ffhq", resolution=256, r1_gamma=10.0, mirror=True,
                    aspect_ratio=1.0),
    "bedroom256": dict(dataset="lsun/bedroom", resolution=256, r1_gamma=100.0, mirror=False,
                       aspect_ratio=188 / 256),
    "cityscapes256": dict(dataset="cityscapes", resolution=256, r1_gamma=20.0, mirror=True, aspect_ratio=0.5),
    "ffhq1024": dict(dataset="folder", folder="data/ffhq", resolution=1024, r1_gamma=10.0, mirror=True,
                     aspect_ratio=1.0),
}

# The embedded procedural scenes, sized for 2 CPU cores. shapes32 is tuned for quality per CPU-minute on the
# measured FID curves of README's "Quality on the embedded scenes": the widths and local latents of the former
# preset's size s (FID-1k 204 vs 238 at 10 kimg, at a quarter of the FLOPs and ~2.7x the img/s), its
# default length fits `bash launch/local.sh` in about 20 minutes, and `length=long` runs to where GANsformer's
# curve stops falling (FID-1k 86.3 at 160 kimg, 87.0 at 180, 86.2 at 200, at the former R1 gamma 0.1). Its R1
# gamma is 1: at 0.1 the StyleGAN2 twin's D wins and its grids collapse to one layout, and GANsformer at 1 scored
# 109.5-116.7 at 60 kimg and 87.3-99.1 at 100 (two seeds) against 138.5 and 107.7-114.7 at 0.1. The reference's
# gamma 10 is far too strong at 32^2; shapes64 keeps 0.1 (not measured at 1). num_local is GANsformer's
# local-latent count (StyleGAN2 has none).
CPU = {
    "shapes32": dict(resolution=32, channel_base=1024, channel_max=32, num_local=4, batch_size=16, r1_gamma=1.0,
                     total_kimg=60.0, long_kimg=160.0, sample_every_kimg=5.0, checkpoint_every_kimg=10.0),
    "shapes64": dict(resolution=64, channel_base=4096, channel_max=64, num_local=8, batch_size=16, r1_gamma=0.1,
                     total_kimg=8.0, sample_every_kimg=1.0, checkpoint_every_kimg=2.0),
}
LENGTHS = ("default", "long")  # `length=long`: a preset's measured long_kimg, for a user who can leave it running

NAMES = tuple(CPU) + tuple(REFERENCE)

# Model-size ladder: multipliers of the preset's channel_base/channel_max (params grow ~ channels^2,
# so each step is ~4x the parameters) and of its local-latent count. m is the preset as published.
SIZES = {
    "s": dict(channels=0.5, latents=0.5),
    "m": dict(channels=1.0, latents=1.0),
    "l": dict(channels=2.0, latents=1.5),
    "xl": dict(channels=4.0, latents=2.0),
}

# Training recipes: "reference" is the authors' (the 2021 StyleGAN2 recipe the GANsformer code keeps: the
# non-saturating logistic loss, lazy R1, the preset's Adam); "r3gan" is R3GAN's (brownvc/R3GAN, NeurIPS 2024,
# its FFHQ-256 config): the relativistic pairing loss with R1 and R2 every iteration, Adam lr 2e-4 -> 5e-5 and
# beta2 0.9 -> 0.99, gamma 150 -> 15, all on cosine ramps over 20M images. The networks stay the family's.
# R3GAN's gamma 150 is FFHQ's; other datasets start at the same multiple (15x) of the preset's R1 gamma,
# an extrapolation R3GAN did not publish, and every preset ends at a tenth of its start.
R3GAN = dict(loss="relativistic", lr=2e-4, lr_final=5e-5, beta1=0.0, beta2=0.9, beta2_final=0.99,
             gamma_per_r1=15.0, gamma_final_ratio=0.1, ramp_kimg=20000.0)
RECIPES = ("reference", "r3gan")

# Class-conditional training on the embedded scenes (`shapes32,label=front_color`): one of the scene labels
# (ganjax/data/labels.py), which sets data.label and model.num_classes. Other datasets set those two fields.
OPTIONS = {"size": tuple(SIZES), "recipe": RECIPES, "label": tuple(labels.SHAPES_LABELS), "length": LENGTHS}


def parse_arg(arg, default="shapes32"):
    """'ffhq256,size=m' -> ('ffhq256', {'size': 'm'}); None or '' -> (default, {})."""
    parts = [p.strip() for p in (arg or default).split(",") if p.strip()]
    name, options = parts[0], {}
    if name not in NAMES:
        raise ValueError(f"config preset {name!r} is not one of {NAMES}")
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key not in OPTIONS:
            raise ValueError(f"config preset option {part!r}: expected key=value with key in {tuple(OPTIONS)}")
        if value not in OPTIONS[key]:
            raise ValueError(f"config preset option {key}: {value!r} is not one of {OPTIONS[key]}")
        options[key] = value
    return name, options


def format_arg(name, options) -> str:
    """parse_arg's inverse: ('ffhq256', {'size': 'm'}) -> 'ffhq256,size=m'."""
    return ",".join([name, *(f"{k}={v}" for k, v in options.items())])


def apply_dataset(c, name):
    """Data and training defaults of preset `name` (shared by every model family)."""
    if name in CPU:
        p = CPU[name]
        c.data.dataset = "shapes"
        c.model.resolution = p["resolution"]
        c.model.channel_base = p["channel_base"]
        c.model.channel_max = p["channel_max"]
        c.train.batch_size = p["batch_size"]
        c.train.total_kimg = p["total_kimg"]
        c.train.sample_every_kimg = p["sample_every_kimg"]
        c.checkpoint.every_kimg = p["checkpoint_every_kimg"]
        # A few-kimg run: the reference's 10-kimg EMA half-life would leave G_ema near its init.
        c.train.ema_kimg = 0.5
        c.train.ema_rampup = 0.05
        c.train.r1_gamma = p["r1_gamma"]
        c.train.log_every = 10
        c.eval.num_images = 1000  # FID-1k: minutes on a CPU; not comparable with the literature's FID-50k
        return c
    p = REFERENCE[name]
    c.data.dataset = p["dataset"]
    c.data.folder = p.get("folder", "")
    c.data.mirror = p["mirror"]
    c.data.aspect_ratio = p["aspect_ratio"]
    c.model.resolution = p["resolution"]
    t = c.train
    t.batch_size, t.lr_g, t.lr_d = 32, 0.002, 0.002
    t.beta1, t.beta2, t.eps = 0.0, 0.99, 1e-8
    t.loss, t.r1_gamma, t.r1_interval, t.pl_weight = "logistic", p["r1_gamma"], 16, 0.0
    t.style_mixing_prob, t.ema_kimg, t.ema_rampup = 0.9, 10.0, 0.0
    t.total_kimg = 10000.0  # the reference ran 5k-15k kimg
    t.sample_every_kimg = 40.0
    c.checkpoint.every_kimg = 40.0
    return c


def apply_options(c, name, options):
    """The options of preset `name`'s `:arg` string (OPTIONS), after the family's architecture is set."""
    if options.get("length", "default") == "long":
        if "long_kimg" not in CPU.get(name, {}):
            have = [n for n, p in CPU.items() if "long_kimg" in p]
            raise ValueError(f"config preset option length: {name!r} has no measured long length (only "
                             f"{', '.join(have)}); set config.train.total_kimg for its run length")
        c.train.total_kimg = CPU[name]["long_kimg"]
    if "size" in options:
        apply_size(c, options["size"])
    apply_recipe(c, options.get("recipe", "reference"), cpu=name in CPU)
    if "label" in options:
        if name not in CPU:
            raise ValueError(f"config preset option label: {name!r} is not a shapes preset; set "
                             f"config.data.label and config.model.num_classes for its dataset's labels")
        c.data.label = options["label"]
        c.model.num_classes = labels.SHAPES_LABELS[options["label"]][0]
    return c


def apply_recipe(c, recipe, cpu: bool):
    """The training recipe (RECIPES) over the preset's dataset defaults; "reference" leaves them."""
    if recipe == "reference":
        return c
    r, t = R3GAN, c.train
    gamma = r["gamma_per_r1"] * t.r1_gamma
    t.loss, t.beta1, t.beta2, t.lr_g, t.lr_d = r["loss"], r["beta1"], r["beta2"], r["lr"], r["lr"]
    t.r1_gamma = t.r2_gamma = gamma
    t.r1_interval = t.r2_interval = 1
    # The ramps run over R3GAN's 20M images, and the run at least as long; a CPU preset's over its whole run.
    t.ramp_kimg = t.total_kimg if cpu else r["ramp_kimg"]
    t.total_kimg = max(t.total_kimg, t.ramp_kimg)
    t.ramp_to.lr_g = t.ramp_to.lr_d = r["lr_final"]
    t.ramp_to.beta2 = r["beta2_final"]
    t.ramp_to.r1_gamma = t.ramp_to.r2_gamma = gamma * r["gamma_final_ratio"]
    return c


def apply_size(c, size):
    """Scale the preset's widths (and local-latent count) by the `size` ladder; m leaves it unchanged."""
    f = SIZES[size]
    c.model.channel_base = max(1, round(c.model.channel_base * f["channels"]))
    c.model.channel_max = max(1, round(c.model.channel_max * f["channels"]))
    if c.model.num_local > 0:
        c.model.num_local = max(1, round(c.model.num_local * f["latents"]))
    return c
