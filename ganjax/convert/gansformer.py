"""`ganjax convert gansformer`: a released GANsformer checkpoint (TF or PyTorch format) -> a ganjax workdir.

Sources (read by ganjax.convert.unpickle, which never runs code from the file):
- TF version pickle: a tuple (G, D, Gs) of dnnlib Network states (the released snapshots);
- PyTorch version pickle: dict(G=, D=, Gs=, ...) of the reference's persistent modules;
- PyTorch state dicts (torch.save): {'G': sd, 'D': sd, 'Gs'|'G_ema': sd}, or a generator's sd alone.
Every source variable is renamed to the reference PyTorch naming (tf_names.py), mapped to a ganjax path
with its layout transform (torch_names.py) and checked against the shapes of ganjax's `official` model
built from the inferred config (infer.py). A variable that maps nowhere, or a ganjax parameter left
without a source, is an error that names it.

Output: `out_dir` is a workdir holding a step-0 training checkpoint (G, G_ema, D, w_avg, const noise, fresh
Adam states) written with ganjax.checkpoint.Checkpointer, plus config.json. `load_generator(out_dir)` (used
by `ganjax sample` / `ganjax eval`) reads its G_ema. It is built in a temporary directory beside `out_dir`
and renamed into place at the end, so a failure leaves nothing behind.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ganjax.checkpoint import Checkpointer, flatten_with_names
from ganjax.checkpoint.trees import config_to_dict
from ganjax.config import base_config, validate
from ganjax.convert import derived, infer, tf_names, torch_names
from ganjax.convert.unpickle import ConvertError, TFNetwork, TorchModule, load
from ganjax.models import ModelConfig, build_models
from ganjax.models.mapping import example_labels
from ganjax.train.state import TrainState, make_optimizers


@dataclasses.dataclass
class Source:
    """A checkpoint's networks in the reference PyTorch naming ({state_dict name: array})."""
    g: dict | None  # the trained generator (None if the file has only G_ema)
    g_ema: dict
    d: dict | None
    hints: dict


def _tf_source(nets, path):
    G, D, Gs = nets[:3]
    resolution = int(Gs.static_kwargs.get("resolution", 0)) or None
    if resolution is None:
        raise ConvertError(f"{path}: TF generator without 'resolution' in its static kwargs")
    return Source(
        g=tf_names.generator_to_torch(G.tensors(), resolution),
        g_ema=tf_names.generator_to_torch(Gs.tensors(), resolution),
        d=tf_names.discriminator_to_torch(D.tensors()),
        hints=infer.tf_hints(Gs, D),
    )


def _state_dict(obj, what, path):
    if isinstance(obj, TorchModule):
        return obj.tensors()
    if isinstance(obj, dict) and all(isinstance(v, np.ndarray) for v in obj.values()):
        return dict(obj)
    raise ConvertError(f"{path}: {what} is neither a reference PyTorch module nor a state dict")


def _torch_source(obj, path, global_modulation):
    if all(isinstance(v, np.ndarray) for v in obj.values()):  # a generator's state dict alone
        obj = {"Gs": obj}
    ema_key = next((k for k in ("Gs", "G_ema") if k in obj), None)
    if ema_key is None and "G" not in obj:
        raise ConvertError(f"{path}: a dict without 'G', 'Gs' or 'G_ema' is not a GANsformer checkpoint "
                           f"(keys: {sorted(map(str, obj))[:8]})")
    g_ema = _state_dict(obj[ema_key or "G"], ema_key or "G", path)
    g = _state_dict(obj["G"], "G", path) if "G" in obj and ema_key else None  # else G_ema is G
    d = _state_dict(obj["D"], "D", path) if "D" in obj else None
    hints = {"mapping_norm": "joint"}
    module = obj[ema_key or "G"]
    if isinstance(module, TorchModule):
        hints = infer.torch_hints(module, obj.get("D") if isinstance(obj.get("D"), TorchModule) else None)
    if global_modulation is not None:
        hints["global_modulation"] = global_modulation
    return Source(g=g, g_ema=g_ema, d=d, hints=hints)


def read_source(path, *, global_modulation=None) -> Source:
    """Read a TF or PyTorch GANsformer checkpoint into reference-PyTorch-named arrays."""
    if not os.path.isfile(path):
        raise ConvertError(f"{path}: no such file")
    obj = load(path)
    if isinstance(obj, (tuple, list)) and len(obj) >= 3 and all(isinstance(n, TFNetwork) for n in obj[:3]):
        return _tf_source(obj, path)
    if isinstance(obj, dict) and obj:
        return _torch_source(obj, path, global_modulation)
    raise ConvertError(f"{path}: unknown checkpoint format ({type(obj).__name__}); expected a TF GANsformer "
                       "pickle (G, D, Gs) or a PyTorch GANsformer pickle / state dict")


def _fill(target, mapped, unmatched, what, path):
    """Flat {(collection, 'a/b/c'): ShapeDtypeStruct} target <- mapped source arrays; errors name the variable."""
    if unmatched:
        raise ConvertError(f"{path}: {what} variable {unmatched[0]!r} maps to no ganjax parameter "
                           f"({len(unmatched)} such)")
    out = {}
    for key, (name, value) in mapped.items():
        if key not in target:
            raise ConvertError(f"{path}: {what} variable {name!r} maps to {key[0]}/{key[1]}, which the inferred "
                               "ganjax model does not have")
        if tuple(value.shape) != tuple(target[key].shape):
            raise ConvertError(f"{path}: {what} variable {name!r} has shape {list(value.shape)} after layout "
                               f"conversion but ganjax's {key[0]}/{key[1]} is {list(target[key].shape)}")
        out[key] = value
    missing = [k for k in target if k not in out]
    if missing:
        raise ConvertError(f"{path}: ganjax {what} parameter {missing[0][0]}/{missing[0][1]} has no source "
                           f"variable ({len(missing)} such)")
    return out


def _flat(tree, collection):
    return {(collection, name): leaf for name, leaf in flatten_with_names(tree).items()}


def _unflatten(flat, collection):
    tree = {}
    for (coll, name), value in flat.items():
        if coll != collection:
            continue
        node = tree
        parts = name.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def build_variables(source: Source, path: str = "<source>"):
    """(config, {'g': vars, 'g_ema': vars, 'd': params or None}) with ganjax variable trees of numpy arrays."""
    for what, tensors in (("generator", source.g_ema), ("generator", source.g), ("discriminator", source.d)):
        if tensors is not None:
            derived.check(tensors, what, path)
    fields = infer.infer_model(source.g_ema, source.d, source.hints, path)
    config = base_config()
    for k, v in fields.items():
        config.model[k] = v
    try:
        validate(config)
    except ValueError as e:
        raise ConvertError(f"{path}: the inferred config is not a valid ganjax config: {e}") from e
    model_cfg = ModelConfig.from_config(config.model)
    G, D = build_models(model_cfg)
    keys = {n: jax.random.key(0) for n in ("params", "noise", "dropout", "mixing")}
    z = jnp.zeros((1, model_cfg.num_latents, model_cfg.z_dim), jnp.float32)
    labels = example_labels(model_cfg)
    g_shapes = jax.eval_shape(lambda: nn.meta.unbox(G.init(keys, z, labels=labels)))
    g_target = {**_flat(g_shapes["params"], "params"), **_flat(g_shapes.get("buffers", {}), "buffers")}
    out = {}
    for which, tensors in (("g_ema", source.g_ema), ("g", source.g)):
        if tensors is None:
            continue
        mapped, unmatched = torch_names.generator_paths(tensors)
        flat = _fill(g_target, mapped, unmatched, "generator", path)
        out[which] = {"params": _unflatten(flat, "params"), "buffers": _unflatten(flat, "buffers")}
    out.setdefault("g", out["g_ema"])
    out["d"] = None
    if source.d is not None:
        img = jnp.zeros((1, model_cfg.resolution, model_cfg.resolution, model_cfg.num_channels), jnp.float32)
        d_shapes = jax.eval_shape(lambda: nn.meta.unbox(D.init({"params": keys["params"]}, img, labels=labels)))
        mapped, unmatched = torch_names.discriminator_paths(source.d)
        flat = _fill(_flat(d_shapes["params"], "params"), mapped, unmatched, "discriminator", path)
        out["d"] = _unflatten(flat, "params")
    return config, out


def _write_workdir(workdir, config, variables):
    if variables["d"] is None:
        raise ConvertError("the source has no discriminator; a ganjax training checkpoint needs one")
    model_cfg = ModelConfig.from_config(config.model)
    G, D = build_models(model_cfg)
    g_opt, d_opt = make_optimizers(config.train)
    as_jnp = lambda t: jax.tree.map(jnp.asarray, t)  # noqa: E731
    g, g_ema, d = as_jnp(variables["g"]), as_jnp(variables["g_ema"]), as_jnp(variables["d"])
    state = TrainState(
        g_params=g["params"], g_buffers=g["buffers"], g_ema_params=g_ema["params"], g_ema_buffers=g_ema["buffers"],
        d_params=d, g_opt_state=g_opt.init(g["params"]), d_opt_state=d_opt.init(d),
        step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(jax.random.key(int(config.seed))),
        pl_mean=jnp.zeros((), jnp.float32), skips=jnp.zeros((), jnp.int32))
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    ckpt = Checkpointer(workdir, config, mesh)
    try:
        ckpt.maybe_save(0, state, force=True)
    finally:
        ckpt.close()
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(config_to_dict(config), f, indent=2)


def convert(src_path: str, out_dir: str, *, global_modulation: bool | None = None) -> str:
    """Convert a GANsformer checkpoint to a ganjax workdir at `out_dir` (which must not exist).

    global_modulation: only needed for a bare PyTorch state dict, which does not record the reference's
    'style' option (pickles do). Returns the absolute output path."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise ConvertError(f"output directory {out_dir} already exists; choose a new path")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ConvertError(f"cannot write {out_dir}: {parent} is not a directory")
    source = read_source(src_path, global_modulation=global_modulation)
    config, variables = build_variables(source, src_path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.converting-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        _write_workdir(tmp, config, variables)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    m = config.model
    logging.info("converted %s -> %s: %d^2, %d+1 latents of %d, channels min(%d // res, %d), global modulation %s, "
                 "attention %s..%s, mapping_norm %s", src_path, out_dir, m.resolution, m.num_local, m.w_dim,
                 m.channel_base, m.channel_max, m.global_modulation, m.attention_start_res, m.attention_end_res,
                 m.mapping_norm)
    return out_dir
