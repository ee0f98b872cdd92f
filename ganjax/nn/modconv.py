"""Modulated convolution with demodulation (StyleGAN2), in two equal forms.

- fused=True (batch-shared weights): scale the input channels by the style, convolve with the one shared
  kernel, scale the output channels by the demodulation coefficients. One big conv/matmul for the batch.
- fused=False (per sample): build w' = w * s (and demodulate it) for every sample and convolve each sample
  with its own kernel (grouped conv with feature_group_count=B, or a batched matmul).
Both give the same result up to float rounding (~1e-6 relative).
"""

import jax.numpy as jnp
from jax import lax

from ganjax.nn.conv_resample import conv2d_resample


def demod_coefficients(weight, styles, eps: float = 1e-8):
    """rsqrt(sum_{kh,kw,in} (w * s)^2 + eps): [B, Cout] for weight [kh, kw, Cin, Cout], styles [B, Cin]."""
    w2 = jnp.sum(jnp.square(weight.astype(jnp.float32)), axis=(0, 1))  # [Cin, Cout]
    return lax.rsqrt(jnp.dot(jnp.square(styles.astype(jnp.float32)), w2) + eps)


def modulated_conv2d(x, weight, styles, *, demodulate: bool = True, up: int = 1, padding: int = 0,
                     fused: bool = True, impl=None):
    """x [B, H, W, Cin]; weight [kh, kw, Cin, Cout] (gain already applied); styles [B, Cin]."""
    dtype = x.dtype
    if fused:
        d = demod_coefficients(weight, styles) if demodulate else None
        x = x * styles.astype(dtype)[:, None, None, :]
        x = conv2d_resample(x, weight.astype(dtype), up=up, padding=padding, impl=impl)
        if demodulate:
            x = x * d.astype(dtype)[:, None, None, :]
        return x
    w = weight.astype(jnp.float32)[None] * styles.astype(jnp.float32)[:, None, None, :, None]
    if demodulate:
        d = lax.rsqrt(jnp.sum(jnp.square(w), axis=(1, 2, 3)) + 1e-8)  # [B, Cout]
        w = w * d[:, None, None, None, :]
    return conv2d_resample(x, w.astype(dtype), up=up, padding=padding, impl=impl)
