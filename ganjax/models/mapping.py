"""Mapping network: z [B, k, z_dim] -> w [B, k, w_dim] (global latent last), with w_avg tracking."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.models.config import ModelConfig
from ganjax.nn.attention import BipartiteAttention
from ganjax.nn.layers import Dense


def normalize_2nd_moment(x, axes, eps: float = 1e-8):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + eps)


class ResnetLayer(nn.Module):
    """lrelu(fc1(fc0(x)) + skip), fc0 with lrelu*sqrt(2); the final lrelu has no gain (as the reference)."""
    dim: int
    lrmul: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, skip):
        h = Dense(self.dim, act="lrelu", lrmul=self.lrmul, dtype=self.dtype, name="fc0")(x)
        h = Dense(self.dim, lrmul=self.lrmul, dtype=self.dtype, name="fc1")(h)
        h = h + skip.astype(h.dtype)
        return jnp.where(h >= 0, h, 0.2 * h)


class MLP(nn.Module):
    """2*layers fc (paired into residual layers if resnet) + an output fc, optionally with self-attention
    among the set elements before each layer (the reference's MLP with sa=True)."""
    dim: int
    layers: int
    resnet: bool
    lrmul: float
    attention: bool = False
    heads: int = 1
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, pos=None, *, train: bool = False):
        """x [B, L, in] -> [B, L, dim]; pos [L, dim] latent position embeddings (used by the attention)."""
        n = self.layers if self.resnet else 2 * self.layers
        for i in range(n):
            skip = x
            if self.attention:
                x = BipartiteAttention(self.dim, heads=self.heads, kind="simplex", integration="add", norm=False,
                                       dropout=self.dropout, dtype=self.dtype, name=f"sa{i}")(
                    x, x, pos, pos, train=train)[0]
            if self.resnet:
                x = ResnetLayer(self.dim, self.lrmul, dtype=self.dtype, name=f"l{i}")(x, skip)
            else:
                x = Dense(self.dim, act="lrelu", lrmul=self.lrmul, dtype=self.dtype, name=f"l{i}")(x)
        return Dense(self.dim, act="lrelu", lrmul=self.lrmul, dtype=self.dtype, name="out_layer")(x)


class MappingNetwork(nn.Module):
    cfg: ModelConfig
    w_avg_beta: float = 0.995

    @nn.compact
    def __call__(self, z, pos=None, *, train: bool = False, update_w_avg: bool = False):
        """z [B, k, z_dim] float32 -> w [B, k, w_dim] float32. Updates buffers/w_avg if asked."""
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        if z.ndim != 3 or z.shape[1:] != (c.num_latents, c.z_dim):
            raise ValueError(f"mapping: z must be [B, {c.num_latents}, {c.z_dim}] (k = num_local + 1, z_dim), "
                             f"got {z.shape}")
        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (c.w_dim,), jnp.float32)
        mlp = dict(dim=c.w_dim, layers=c.mapping_layers, resnet=c.mapping_resnet, lrmul=c.mapping_lrmul,
                   dtype=dtype)
        if c.num_local == 0:
            x = MLP(**mlp, name="global_mlp")(normalize_2nd_moment(z, (1, 2)))
        else:
            local, g = z[:, :-1], z[:, -1:]
            if c.mapping_norm == "joint":  # PyTorch reference: all local values jointly; global separately
                local, g = normalize_2nd_moment(local, (1, 2)), normalize_2nd_moment(g, (1, 2))
            else:  # TF reference: each local latent over its own z_dim; the global one is left as it is
                local = normalize_2nd_moment(local, (2,))
            g = MLP(**mlp, name="global_mlp")(g)
            local = MLP(**mlp, attention=c.mapping_attention, heads=c.heads, dropout=c.attention_dropout,
                        name="mlp")(local, pos, train=train)
            x = jnp.concatenate([local, g], axis=1)
        x = x.astype(jnp.float32)
        if update_w_avg:
            batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=(0, 1))
            w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
        return x
