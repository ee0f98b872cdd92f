"""The one 2-D convolution primitive (NHWC, HWIO kernels), with two interchangeable implementations.

- 'xla':    lax.conv_general_dilated. On GPU/TPU this is the vendor's convolution.
- 'matmul': the kh*kw shifted (strided) slices of the padded input concatenated on channels, then one
            matmul.
'auto' picks per op: 'xla' on GPU/TPU; on CPU 'xla' for stride-1 convolutions with one kernel for the batch
(run by Eigen: `import ganjax` moves XLA:CPU's convolutions off YNNPACK, see ganjax/__init__.py) and
'matmul' for strided convs, per-sample kernels and transposed convs: XLA's lhs-dilated convolution is
several times slower than the polyphase form, and the second backward of a stride-2 conv (R1 through D's
downsampling convs) is a dilated convolution on a slow generic path (numbers: docs/measurements.md).

bfloat16 inputs (mixed precision) are multiplied as bfloat16 with float32 accumulation and rounded back to
bfloat16 once per convolution, forward and backward (ganjax.nn.precision). On CPU every bfloat16 convolution
uses the 'matmul' form, because that is where the hardware's bf16 dot-product instructions are (XLA's bf16
convolution is slower than f32 there), and a stride-1 convolution's input gradient is computed as the
correlation of the padded output gradient with the flipped kernel (patches x kernel again) instead of the
slower transposed patches matmul [M, Cout] x [Cout, kh*kw*Cin] (numbers: docs/measurements.md).

Both take either one kernel shared by the batch, [kh, kw, Cin, Cout], or one kernel per sample,
[B, kh, kw, Cin, Cout] (the 'grouped' modulated conv). Convolutions are correlations, as torch's conv2d.
`conv2d_transpose` is torch's conv_transpose2d (stride s, no padding, kernel not flipped): in the
'matmul' form each of the s*s output phases is a small shifted-slices-and-matmul correlation of the input.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from ganjax.nn import backend, precision
from ganjax.nn.precision import is_mixed

IMPLS = ("matmul", "xla")
OPS = ("conv", "strided", "grouped", "transpose")  # shared-kernel conv (stride 1, stride > 1), per-sample-kernel conv, transposed conv


def default_impl(op: str = "conv", dtype="float32") -> str:
    """The faster implementation of `op` (one of OPS) for inputs of `dtype` on the backend being traced for
    (ganjax.nn.backend; see the module docstring)."""
    return _default_impl(op, jnp.dtype(dtype).name, backend.platform())


@functools.cache
def _default_impl(op: str, dtype: str, platform: str) -> str:
    if op not in OPS:
        raise ValueError(f"conv op {op!r} is not one of {OPS}")
    if platform != "cpu":
        return "xla"
    return "xla" if op == "conv" and not is_mixed(dtype) else "matmul"


def resolve_impl(impl: str | None, op: str = "conv", dtype="float32") -> str:
    if impl in (None, "auto"):
        return default_impl(op, dtype)
    if impl not in IMPLS:
        raise ValueError(f"conv impl {impl!r} is not one of {('auto',) + IMPLS}")
    return impl


def _pairs(padding):
    """int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    ph, pw = padding
    ph = (ph, ph) if isinstance(ph, int) else tuple(ph)
    pw = (pw, pw) if isinstance(pw, int) else tuple(pw)
    return (ph, pw)


def _apply_kernel(patches, w):
    """patches [B, H, W, K] times kernel [K, O] (shared) or [B, K, O] (per sample)."""
    return precision.einsum("bhwk,ko->bhwo" if w.ndim == 2 else "bhwk,bko->bhwo", patches, w)


def _patches(x, kh, kw, stride, pads):
    """The kh*kw shifted (strided) slices of x padded by pads ((top, bottom), (left, right)), concatenated on
    channels: [B, Ho, Wo, kh*kw*C]. Negative pads crop."""
    (pt, pb), (pl, pr) = pads
    if pt or pb or pl or pr:
        x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    return concat_windows(x, tuple((i, j) for i in range(kh) for j in range(kw)), (ho, wo), stride)


def _concat_windows(x, starts, size, stride):
    ho, wo = size
    cols = [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :] for i, j in starts]
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def concat_windows(x, starts, size, stride=1):
    """The windows x[:, i::stride, j::stride] of `size` (Ho, Wo) at each (i, j) of `starts`, concatenated on
    channels. For 16-bit x its gradient (the sum of the overlapping windows' cotangents) is summed in float32
    and rounded once, instead of once per window."""
    if not is_mixed(x.dtype) or len(starts) == 1:
        return _concat_windows(x, starts, size, stride)
    return _concat_windows_mixed(x, starts, size, stride, x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _concat_windows_mixed(x, starts, size, stride, shape):
    return _concat_windows(x, starts, size, stride)


def _concat_windows_mixed_fwd(x, starts, size, stride, shape):
    return _concat_windows(x, starts, size, stride), None


def _concat_windows_mixed_bwd(starts, size, stride, shape, _, g):
    adjoint = jax.linear_transpose(lambda z: _concat_windows(z, starts, size, stride),
                                   jax.ShapeDtypeStruct(shape, jnp.float32))
    return (adjoint(g.astype(jnp.float32))[0].astype(g.dtype),)


_concat_windows_mixed.defvjp(_concat_windows_mixed_fwd, _concat_windows_mixed_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_conv(x, w, pads):
    """Stride-1 correlation of x with a shared kernel w [kh, kw, Cin, Cout] in mixed precision."""
    kh, kw, cin, cout = w.shape
    return precision.einsum("bhwk,ko->bhwo", _patches(x, kh, kw, 1, pads), w.reshape(kh * kw * cin, cout))


def _mixed_conv_fwd(x, w, pads):
    return _mixed_conv(x, w, pads), (x, w)


def _mixed_conv_bwd(pads, res, g):
    x, w = res
    kh, kw, cin, cout = w.shape
    g = g.astype(x.dtype)
    (pt, pb), (pl, pr) = pads
    # dx[i] = sum_p g[i + pt - p] w[p]: the correlation of g, padded by (k - 1 - pad), with the flipped kernel.
    w_flip = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    dx = _mixed_conv(g, w_flip, ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr)))
    dw = precision.einsum("bhwk,bhwo->ko", _patches(x, kh, kw, 1, pads), g)
    return dx, dw.reshape(w.shape)


_mixed_conv.defvjp(_mixed_conv_fwd, _mixed_conv_bwd)


def conv2d(x, w, *, stride: int = 1, padding=0, impl: str | None = None):
    """Correlate x [B, H, W, Cin] with w [kh, kw, Cin, Cout] or [B, kh, kw, Cin, Cout]."""
    per_sample = w.ndim == 5
    impl = resolve_impl(impl, "grouped" if per_sample else "strided" if stride > 1 else "conv", x.dtype)
    (pt, pb), (pl, pr) = _pairs(padding)
    kh, kw, cin, cout = w.shape[-4:]
    w = w.astype(x.dtype)
    if impl == "xla":
        dn = ("NHWC", "HWIO", "NHWC")
        if not per_sample:
            return lax.conv_general_dilated(x, w, (stride, stride), ((pt, pb), (pl, pr)), dimension_numbers=dn)
        b, h, wd, _ = x.shape
        xg = x.transpose(1, 2, 0, 3).reshape(1, h, wd, b * cin)
        wg = w.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cin, b * cout)
        y = lax.conv_general_dilated(xg, wg, (stride, stride), ((pt, pb), (pl, pr)), dimension_numbers=dn,
                                     feature_group_count=b)
        return y.reshape(y.shape[1], y.shape[2], b, cout).transpose(2, 0, 1, 3)
    pads = ((pt, pb), (pl, pr))
    if is_mixed(x.dtype) and stride == 1 and not per_sample and kh * kw > 1:
        return _mixed_conv(x, w, pads)
    wk = w.reshape(w.shape[:-4] + (kh * kw * cin, cout))
    return _apply_kernel(_patches(x, kh, kw, stride, pads), wk)


def conv2d_transpose(x, w, *, stride: int = 2, impl: str | None = None):
    """torch conv_transpose2d: out[s*i + p, s*j + q] += x[i, j] @ w[p, q]; size s*(H-1) + k.

    w: [kh, kw, Cin, Cout] or per sample [B, kh, kw, Cin, Cout].
    """
    impl = resolve_impl(impl, "transpose", x.dtype)
    per_sample = w.ndim == 5
    kh, kw, cin, cout = w.shape[-4:]
    w = w.astype(x.dtype)
    s = stride
    if impl == "xla":
        wf = jnp.flip(w, axis=(-4, -3))
        dn = ("NHWC", "HWIO", "NHWC")
        pad = ((kh - 1, kh - 1), (kw - 1, kw - 1))
        if not per_sample:
            return lax.conv_general_dilated(x, wf, (1, 1), pad, lhs_dilation=(s, s), dimension_numbers=dn)
        b, h, wd, _ = x.shape
        xg = x.transpose(1, 2, 0, 3).reshape(1, h, wd, b * cin)
        wg = wf.transpose(1, 2, 3, 0, 4).reshape(kh, kw, cin, b * cout)
        y = lax.conv_general_dilated(xg, wg, (1, 1), pad, lhs_dilation=(s, s), dimension_numbers=dn,
                                     feature_group_count=b)
        return y.reshape(y.shape[1], y.shape[2], b, cout).transpose(2, 0, 1, 3)
    b, h, wd, _ = x.shape
    # Polyphase: output row s*m + a collects taps p = a + s*t from input row m - t, so each of the s*s
    # output phases is a small correlation of the (padded) input: shifted input slices concatenated on
    # channels times the phase's taps, as in conv2d. No zero-filled input, no scatter.
    th, tw = -(-kh // s), -(-kw // s)  # taps per phase (ceil)
    mh, mw = h - 1 + th, wd - 1 + tw  # rows/cols per phase
    xp = jnp.pad(x, ((0, 0), (th - 1, th - 1), (tw - 1, tw - 1), (0, 0)))
    phases = []
    for a in range(s):
        row = []
        for c in range(s):
            taps = [(t, u) for t in range(-(-(kh - a) // s)) for u in range(-(-(kw - c) // s))]
            if not taps:  # kernel smaller than the stride: this phase gets nothing
                row.append(jnp.zeros((b, mh, mw, cout), x.dtype))
                continue
            cols = concat_windows(xp, tuple((th - 1 - t, tw - 1 - u) for t, u in taps), (mh, mw))
            wk = jnp.concatenate([w[..., a + s * t, c + s * u, :, :] for t, u in taps], axis=-2)
            row.append(_apply_kernel(cols, wk))
        phases.append(jnp.stack(row, axis=3))  # [B, mh, mw, s(c), C]
    y = jnp.stack(phases, axis=2)  # [B, mh, s(a), mw, s(c), C]
    y = y.reshape(b, mh * s, mw * s, cout)
    return y[:, :s * (h - 1) + kh, :s * (wd - 1) + kw, :]
