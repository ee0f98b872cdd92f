"""FIR resampling with upfirdn2d semantics (StyleGAN2): upsample by zero insertion, pad (negative = crop),
convolve with a normalised low-pass filter times `gain`, downsample by keeping every `down`-th sample.

The filter is 1-D and separable (the 2-D filter is its outer product). On CPU and GPU it is applied as two
1-D passes written as weighted sums of shifted slices (or, for short axes on CPU, banded matmuls). On TPU it is
one depthwise convolution: the two passes write and re-read an intermediate of x's size, forward and backward,
which made a 256^2 up-convolution layer HBM-bound there (measured in docs/measurements.md).
"""

import functools
import math

import jax.numpy as jnp
import numpy as np
from jax import lax

from ganjax.nn import backend

DEFAULT_FILTER = (1.0, 3.0, 3.0, 1.0)


def setup_filter(f=DEFAULT_FILTER) -> np.ndarray:
    """1-D taps normalised so the 2-D outer product sums to 1."""
    f = np.asarray(f, np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"resampling filter must be a non-empty 1-D sequence, got shape {f.shape}")
    return f / f.sum()


# On CPU, axes up to this length are resampled by one matmul with a banded [n_out, n_in] matrix (more FLOPs,
# but one fused dot instead of pad/slice/multiply-add chains, which XLA:CPU runs slowly); longer axes, and
# every axis on GPU/TPU (where XLA fuses the taps into one memory-bound pass), use the taps.
MATRIX_MAX_LEN = 64


@functools.cache
def _resample_matrix(n, taps, up, down, p0, p1, gain):
    """The 1-D upfirdn as a [n_out, n_in] matrix: the tap form applied to the identity."""
    eye = np.eye(n, dtype=np.float64)
    return np.asarray(_upfirdn_taps(eye, np.asarray(taps), up, down, p0, p1, 0, gain, xp=np), np.float32)


def _upfirdn_axis(x, f, up, down, p0, p1, axis, gain):
    n = x.shape[axis]
    if n <= MATRIX_MAX_LEN and backend.platform() == "cpu":
        m = jnp.asarray(_resample_matrix(n, tuple(float(t) for t in f), up, down, p0, p1, float(gain)))
        # One batched matmul over the axes before `axis`, with the axes after it as columns: no transpose of x
        # (XLA:CPU's transposes with this small minor dimension were slower than the matmul itself). In
        # float32 for 16-bit x too, rounded once: the FIR is a small share of the FLOPs.
        pre, post = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
        x3 = x.reshape(pre, n, post).astype(jnp.float32)
        y = jnp.einsum("pzn,pnq->pzq", jnp.broadcast_to(m, (pre,) + m.shape), x3)
        return y.reshape(x.shape[:axis] + (m.shape[0],) + x.shape[axis + 1:]).astype(x.dtype)
    return _upfirdn_taps(x, f, up, down, p0, p1, axis, gain)


def _upfirdn_taps(x, f, up, down, p0, p1, axis, gain, xp=jnp):
    """Zero insertion, pad/crop, len(f) shifted multiply-adds, subsampling along one axis."""
    n = x.shape[axis]
    if up > 1:
        x = xp.expand_dims(x, axis + 1)
        pad = [(0, 0)] * x.ndim
        pad[axis + 1] = (0, up - 1)
        x = xp.pad(x, pad)
        shape = list(x.shape)
        shape[axis:axis + 2] = [n * up]
        x = x.reshape(shape)
    # Pad (positive) then crop (negative padding).
    pad = [(0, 0)] * x.ndim
    pad[axis] = (max(p0, 0), max(p1, 0))
    x = xp.pad(x, pad)
    start, stop = max(-p0, 0), x.shape[axis] - max(-p1, 0)
    if start or stop != x.shape[axis]:
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(start, stop)
        x = x[tuple(sl)]
    # True convolution (filter flipped), 'valid' extent.
    taps = f[::-1] * gain
    length = x.shape[axis] - len(taps) + 1
    out = None
    for t, c in enumerate(taps):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(t, t + length)
        term = x[tuple(sl)] * xp.asarray(c, x.dtype)
        out = term if out is None else out + term
    if down > 1:
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(None, None, down)
        out = out[tuple(sl)]
    return out


def upfirdn2d(x, f=DEFAULT_FILTER, *, up: int = 1, down: int = 1, padding=(0, 0, 0, 0), gain: float = 1.0):
    """x [B, H, W, C]; padding (x0, x1, y0, y1) as upfirdn2d; f 1-D taps (normalised here)."""
    f = setup_filter(f)
    px0, px1, py0, py1 = padding
    if backend.platform() == "tpu":
        return _upfirdn2d_depthwise(x, f, up, down, padding, gain)
    x = _upfirdn_axis(x, f, up, down, py0, py1, 1, gain)
    return _upfirdn_axis(x, f, up, down, px0, px1, 2, 1.0)


def _upfirdn2d_depthwise(x, f, up, down, padding, gain):
    """The same resampling as ONE depthwise convolution (the 2-D filter, flipped, on each channel): zero
    insertion is the convolution's input dilation, subsampling its stride, pad / crop its window padding."""
    px0, px1, py0, py1 = padding
    c = x.shape[-1]
    # Zero insertion is the convolution's input dilation ((n-1)*up+1 samples; upfirdn's n*up has up-1 more
    # zeros at the end), pad / crop (negative) its window padding: XLA reads x once, without a padded copy.
    k2 = np.outer(f, f)[::-1, ::-1] * gain  # true convolution: the filter flipped
    kernel = jnp.asarray(np.broadcast_to(k2[:, :, None, None], k2.shape + (1, c)), x.dtype)
    return lax.conv_general_dilated(x, kernel, (down, down), ((py0, py1 + up - 1), (px0, px1 + up - 1)),
                                    lhs_dilation=(up, up), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=c)


def upsample2d(x, f=DEFAULT_FILTER, factor: int = 2):
    """FIR upsampling x2 with gain factor**2 (size H -> 2H)."""
    fw = len(f)
    p0, p1 = (fw + factor - 1) // 2, (fw - factor) // 2
    return upfirdn2d(x, f, up=factor, padding=(p0, p1, p0, p1), gain=factor ** 2)


def downsample2d(x, f=DEFAULT_FILTER, factor: int = 2):
    """FIR filter then keep every second sample (size H -> H/2)."""
    fw = len(f)
    p0, p1 = (fw - factor + 1) // 2, (fw - factor) // 2
    return upfirdn2d(x, f, down=factor, padding=(p0, p1, p0, p1))
