"""Band-limited resampling of NHWC images under per-sample affine maps, with reflect padding.

An image is resampled as StyleGAN2-ADA's geometric augmentations do it: upsample 2x with a low-pass filter,
sample the upsampled image bilinearly at the mapped positions of a 2x output grid, low-pass and decimate
back. Bilinear sampling of the 2x image keeps the interpolation error small, and the filters keep the
aliasing of rotations and scalings out of the output. The image continues outside its border by whole-sample
reflection (numpy's 'reflect' padding: ... c b | a b c ... about the edge pixel centres), done here by
reflecting the sampling positions, so no padded copy of the image is made.

Coordinates: pixel units with the origin at the image centre, x to the right (columns), y down (rows);
pixel (row i, column j) has its centre at (x, y) = (j + 0.5 - W/2, i + 0.5 - H/2).

The low-pass filter is a 12-tap Kaiser-windowed sinc (beta 4) with its cutoff at the input's Nyquist
frequency (StyleGAN2-ADA uses the 12-tap sym6 wavelet filter in the same place).
"""

import jax.numpy as jnp
import numpy as np

TAPS = 12
_OFFSETS = np.arange(TAPS) - (TAPS - 1) / 2  # -5.5 .. 5.5, in samples of the 2x grid
LOWPASS = (lambda h: h / h.sum())(np.sinc(_OFFSETS / 2) * np.kaiser(TAPS, 4.0))  # sums to 1, symmetric
_REACH = TAPS // 4  # input samples each side that a 2x output sample reads (3)
MARGIN = TAPS // 2  # 2x samples each side of the output grid that decimation reads (6)


def _reflect_pad(x, axis: int, n: int):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (n, n)
    return jnp.pad(x, pad, mode="reflect")


def upsample2x(x, axis: int):
    """x upsampled 2x along `axis` (zero insertion, then the low-pass at gain 2), reflect-padded first.
    Sample i of x sits between outputs 2i and 2i + 1."""
    n = x.shape[axis]
    xp = _reflect_pad(x, axis, _REACH)

    def tap(d):  # x[m + d] for m = 0..n-1
        return jnp.take(xp, jnp.arange(n) + d + _REACH, axis=axis)

    # Output 2m reads x[m-3..m+2] with taps 11, 9, .., 1; output 2m+1 reads x[m-2..m+3] with taps 10, .., 0.
    even = sum(2 * float(LOWPASS[5 - 2 * d]) * tap(d) for d in range(-3, 3))
    odd = sum(2 * float(LOWPASS[6 - 2 * d]) * tap(d) for d in range(-2, 4))
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def downsample2x(s, axis: int):
    """The low-pass then every second sample along `axis`, for s sampled on the 2x grid extended by MARGIN
    on each side: output j is centred between 2x samples 2j and 2j + 1 of the unextended grid."""
    n = (s.shape[axis] - 2 * MARGIN) // 2
    return sum(float(LOWPASS[k]) * jnp.take(s, 2 * jnp.arange(n) + k + 1, axis=axis) for k in range(TAPS))


def _reflect(u, lo: float, hi: float):
    """Positions reflected into [lo, hi] about its ends, repeatedly (period 2 (hi - lo))."""
    span = hi - lo
    t = jnp.mod(u - lo, 2 * span)
    return lo + span - jnp.abs(t - span)


def _bilinear(img, u, v):
    """img [B, H, W, C] at fractional (column u, row v) index positions [B, h, w], all within the image."""
    b, h, w, c = img.shape
    u0 = jnp.clip(jnp.floor(u), 0, w - 2)
    v0 = jnp.clip(jnp.floor(v), 0, h - 2)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    u0, v0 = u0.astype(jnp.int32), v0.astype(jnp.int32)
    flat = img.reshape(b, h * w, c)

    def at(vi, ui):
        idx = (vi * w + ui).reshape(b, -1, 1)
        return jnp.take_along_axis(flat, idx, axis=1).reshape(*u.shape, c)

    top = at(v0, u0) * (1 - fu) + at(v0, u0 + 1) * fu
    bottom = at(v0 + 1, u0) * (1 - fu) + at(v0 + 1, u0 + 1) * fu
    return top * (1 - fv) + bottom * fv


def warp(images, matrices):
    """images [B, H, W, C] resampled so that output position p shows the input at matrices[b] @ (p, 1)
    ([B, 3, 3], output -> input, in the centred pixel coordinates of the module docstring)."""
    b, h, w, c = images.shape
    up = upsample2x(upsample2x(images.astype(jnp.float32), 1), 2)  # [B, 2H, 2W, C]
    # Centres of the 2x output grid extended by MARGIN, in centred input pixel units.
    xs = (jnp.arange(-MARGIN, 2 * w + MARGIN) + 0.5) / 2 - w / 2
    ys = (jnp.arange(-MARGIN, 2 * h + MARGIN) + 0.5) / 2 - h / 2
    gx, gy = jnp.meshgrid(xs, ys)  # [2H + 2M, 2W + 2M]
    m = matrices.astype(jnp.float32)
    src_x = m[:, 0, 0, None, None] * gx + m[:, 0, 1, None, None] * gy + m[:, 0, 2, None, None]
    src_y = m[:, 1, 0, None, None] * gx + m[:, 1, 1, None, None] * gy + m[:, 1, 2, None, None]
    # -> index positions in the 2x image (input pixel j's centre is at 2j + 0.5), reflected about the edge
    # pixels' centres, which is whole-sample reflection of the input.
    u = _reflect(2 * (src_x + w / 2) - 0.5, 0.5, 2 * w - 1.5)
    v = _reflect(2 * (src_y + h / 2) - 0.5, 0.5, 2 * h - 1.5)
    sampled = _bilinear(up, u, v)
    return downsample2x(downsample2x(sampled, 1), 2).astype(images.dtype)
