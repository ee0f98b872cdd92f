"""FID protocols: how images reach the Inception network (`eval.fid_protocol`).

Both feed the same network (the TF 2015-12-05 graph up to pool3, ganjax.metrics.inception) the same 8-bit
images (a generator's float output is quantized first, as when samples are saved and scored); they differ
in the resize to 299x299 and the value scaling, which moves FID at 32-64^2 (the resize then upsamples
~5-9x), so FIDs of different protocols are not comparable and every FID record names its protocol.

- `pytorch-fid`: pytorch-fid's input pipeline: [0, 1] values, torch `F.interpolate(bilinear,
  align_corners=False)` (half-pixel centres), then 2x - 1 into [-1, 1].
- `stylegan`: the TF graph's own pipeline, as NVIDIA's StyleGAN2(-ADA) metrics (their TorchScript port of the
  graph) and the GANsformer authors' metrics compute FID: 0..255 values, TF1's legacy bilinear resize
  (output pixel i samples the input at i * in / out, no half-pixel centres, edges clamped; affine_grid +
  grid_sample in the TorchScript), then (x - 128) / 128 into [-1, 0.9921875].
"""

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299


def torch_bilinear(levels):
    """[N, H, W, C] 0..255 -> [N, 299, 299, C] in [-1, 1]: bilinear as torch F.interpolate(align_corners=False):
    half-pixel centres, edge clamping, no antialiasing when downsampling (jax's default antialias=True would
    low-pass 512 -> 299 and change FID)."""
    x = levels / 127.5 - 1.0
    n, h, w, c = x.shape
    if (h, w) == (INPUT_SIZE, INPUT_SIZE):
        return x
    return jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), method="bilinear", antialias=False)


@functools.cache
def _legacy_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of TF1's resize_bilinear(align_corners=False, half_pixel_centers=False) on one axis."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m.astype(np.float32)


def tf_legacy_bilinear(levels):
    """[N, H, W, C] 0..255 -> [N, 299, 299, C] in [-1, 0.9921875]: TF1's legacy bilinear resize, then
    (x - 128) / 128, the TF 2015-12-05 graph's own preprocessing."""
    n, h, w, c = levels.shape
    x = levels
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        mh = jnp.asarray(_legacy_bilinear_matrix(h, INPUT_SIZE))
        mw = jnp.asarray(_legacy_bilinear_matrix(w, INPUT_SIZE))
        hp = jax.lax.Precision.HIGHEST  # the resize is part of the features: full float32 on every backend
        x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=hp)
        x = jnp.einsum("pw,nowc->nopc", mw, x, precision=hp)
    return (x - 128.0) / 128.0


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    network_input: Callable  # [N, H, W, 3] float32 levels 0..255 -> [N, 299, 299, 3] network input
    description: str


PROTOCOLS = {p.name: p for p in (
    Protocol("pytorch-fid", torch_bilinear, "pytorch-fid's: torch bilinear resize (half-pixel centres), [-1, 1]"),
    Protocol("stylegan", tf_legacy_bilinear, "NVIDIA StyleGAN2-ADA's and the GANsformer authors': the TF graph's "
                                              "legacy bilinear resize, (x - 128) / 128"),
)}
DEFAULT = "pytorch-fid"


def get(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown FID protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
