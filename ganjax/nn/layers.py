"""Equalized-learning-rate layers (StyleGAN2 conventions).

A weight is stored as randn / lrmul and used as weight * gain / sqrt(fan_in) * lrmul; a bias is used as
bias * lrmul. Dense kernels are stored [in, out]; conv kernels HWIO [kh, kw, in, out]. Params are float32
and boxed with logical axis names; they are cast to the layer's compute dtype at use.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganjax.nn import precision
from ganjax.nn.conv_resample import conv2d_resample

ACT_GAIN = {"linear": 1.0, "lrelu": float(np.sqrt(2.0))}


def bias_act(x, b=None, act: str = "linear", gain: float = 1.0):
    """act(x + b) * default_gain(act) * gain; lrelu slope 0.2 with default gain sqrt(2)."""
    if b is not None:
        x = x + b.astype(x.dtype)
    if act == "lrelu":
        x = jnp.where(x >= 0, x, x * jnp.asarray(0.2, x.dtype))
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    g = ACT_GAIN[act] * gain
    return x * jnp.asarray(g, x.dtype) if g != 1 else x


def scaled_normal(lrmul: float = 1.0):
    """randn / lrmul, the stored form of an equalized-lr weight."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.normal(key, shape, dtype) / lrmul
    return init


def constant(value: float):
    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)
    return init


def boxed_param(module: nn.Module, name: str, init, shape, axes):
    """A float32 param carrying logical axis names (one name or None per dim).

    When the param exists (apply), its value is returned after checking its shape against `shape`: Flax's
    own check abstractly evaluates `init` (a jax.random.normal trace) at every use, ~1,400 of them in
    tracing a shapes32 step program (the README's compilation-cache section has the times)."""
    shape = tuple(shape)
    if len(axes) != len(shape):
        raise ValueError(f"{name}: {len(axes)} axis names for shape {shape}")
    if module.has_variable("params", name):
        value = nn.meta.unbox(module.get_variable("params", name))
        if np.shape(value) != shape:
            raise ValueError(f"{module.scope.path_text}/{name}: the params hold shape {np.shape(value)}, "
                             f"the layer needs {shape}")
        return value
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape)


def dense_weights(module: nn.Module, fan_in: int, features: int, axes: tuple, lrmul: float = 1.0,
                  bias_init: float = 0.0, use_bias: bool = True):
    """The params of an equalized-lr fully connected layer in `module`'s scope, as used: (weight [in, out] *
    lrmul / sqrt(fan_in), bias * lrmul or None), float32."""
    w = boxed_param(module, "weight", scaled_normal(lrmul), (fan_in, features), axes) * (lrmul / np.sqrt(fan_in))
    b = boxed_param(module, "bias", constant(bias_init), (features,), axes[1:]) * lrmul if use_bias else None
    return w, b


class Dense(nn.Module):
    """Equalized-lr fully connected layer act(x @ w + b) (the reference's FullyConnectedLayer)."""
    features: int
    act: str = "linear"
    lrmul: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True
    axes: tuple = ("embed", "mlp")  # logical names of the [in, out] kernel; the bias takes axes[1]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w, b = dense_weights(self, x.shape[-1], self.features, self.axes, self.lrmul, self.bias_init, self.use_bias)
        y = precision.einsum("...i,io->...o", x.astype(self.dtype), w.astype(self.dtype))
        return bias_act(y, b, self.act)


class DenseWeights(nn.Module):
    """A Dense layer's params without the layer: `DenseWeights(features, name=...)(fan_in)` -> (w, b) as used,
    for a caller that folds the weight into a neighbouring contraction. Same param tree as Dense."""
    features: int
    axes: tuple = ("embed", "mlp")
    lrmul: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, fan_in: int):
        return dense_weights(self, fan_in, self.features, self.axes, self.lrmul, self.bias_init, self.use_bias)


class Conv2d(nn.Module):
    """Equalized-lr conv with optional FIR up/down x2 (the reference's Conv2dLayer)."""
    features: int
    kernel: int
    act: str = "linear"
    use_bias: bool = True
    up: int = 1
    down: int = 1
    gain: float = 1.0
    conv_impl: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin, k = x.shape[-1], self.kernel
        w = boxed_param(self, "weight", scaled_normal(), (k, k, cin, self.features),
                        (None, None, "conv_in", "conv_out"))
        w = (w * (1.0 / np.sqrt(cin * k * k))).astype(self.dtype)
        x = conv2d_resample(x.astype(self.dtype), w, up=self.up, down=self.down, padding=k // 2,
                            impl=self.conv_impl)
        b = boxed_param(self, "bias", constant(0.0), (self.features,), ("conv_out",)) if self.use_bias else None
        return bias_act(x, b, self.act, self.gain)
