"""Mapping network: z [B, k, z_dim] (and class labels [B]) -> w [B, k, w_dim] (global latent last), with w_avg
tracking.

Class labels (model.num_classes > 0): the one-hot label goes through an fc embedding to z_dim and is
normalised like a latent (y). The global latent takes it as the authors' PyTorch mapping does: with the plain
fc stack (StyleGAN2) concatenated (their code, and StyleGAN2-ADA's); the residual stack (GANsformer) needs its
input as wide as its output (the authors' code fails there: its ResnetLayer asserts in == out), so the two
are averaged instead, (g + y) / sqrt(2), which keeps the input's second moment at 1. Each local latent is
averaged with y too, which the authors' code does not do: without global modulation (the CLEVR-style
configs) the global latent reaches no layer of the synthesis, and a label on it alone changed nothing (a
16-kimg shapes32 run's G left its embedding exactly at its initial value); the local latents are what
place and colour the objects.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def check_labels(cfg: ModelConfig, labels, batch: int, where: str):
    """The labels a network of this config needs: int [batch] when it is conditional, None when not."""
    if cfg.num_classes == 0:
        if labels is not None:
            raise ValueError(f"{where}: labels given to an unconditional model (model.num_classes=0)")
        return
    if labels is None:
        raise ValueError(f"{where}: a conditional model (model.num_classes={cfg.num_classes}) needs labels [B]")
    if labels.shape != (batch,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{where}: labels must be integers [{batch}], got {labels.dtype}{list(labels.shape)}")


def example_labels(cfg: ModelConfig, batch: int = 1):
    """Labels to initialise or trace a network of this config with: int32 zeros [batch], or None when it is
    unconditional."""
    return jnp.zeros((batch,), jnp.int32) if cfg.num_classes else None


class LabelEmbedding(nn.Module):
    """Integer labels [B] -> normalised embeddings [B, dim] (an fc on the one-hot label, then the 2nd-moment
    normalisation of a latent)."""
    num_classes: int
    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, labels):
        onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
        return normalize_2nd_moment(Dense(self.dim, axes=(None, "embed"), dtype=self.dtype, name="fc")(onehot), (-1,))


class MappingNetwork(nn.Module):
    cfg: ModelConfig
    w_avg_beta: float = 0.995

    @nn.compact
    def __call__(self, z, pos=None, labels=None, *, train: bool = False, update_w_avg: bool = False):
        """z [B, k, z_dim] float32 (labels int [B] if conditional) -> w [B, k, w_dim] float32. Updates
        buffers/w_avg if asked."""
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        if z.ndim != 3 or z.shape[1:] != (c.num_latents, c.z_dim):
            raise ValueError(f"mapping: z must be [B, {c.num_latents}, {c.z_dim}] (k = num_local + 1, z_dim), "
                             f"got {z.shape}")
        check_labels(c, labels, z.shape[0], "mapping")

        y = (LabelEmbedding(c.num_classes, c.z_dim, dtype=dtype, name="embed")(labels)[:, None, :]
             if c.num_classes else None)

        def condition(v, concatenate: bool):  # latents [B, n, z_dim] with the label's embedding
            if y is None:
                return v
            if concatenate:
                return jnp.concatenate([v.astype(jnp.float32), jnp.broadcast_to(y, v.shape[:2] + y.shape[2:])], -1)
            return (v.astype(jnp.float32) + y) * np.float32(np.sqrt(0.5))

        w_avg = self.variable("buffers", "w_avg", jnp.zeros, (c.w_dim,), jnp.float32)
        mlp = dict(dim=c.w_dim, layers=c.mapping_layers, resnet=c.mapping_resnet, lrmul=c.mapping_lrmul,
                   dtype=dtype)
        if c.num_local == 0:
            x = MLP(**mlp, name="global_mlp")(condition(normalize_2nd_moment(z, (1, 2)), not c.mapping_resnet))
        else:
            local, g = z[:, :-1], z[:, -1:]
            if c.mapping_norm == "joint":  # PyTorch reference: all local values jointly; global separately
                local, g = normalize_2nd_moment(local, (1, 2)), normalize_2nd_moment(g, (1, 2))
            else:  # TF reference: each local latent over its own z_dim; the global one is left as it is
                local = normalize_2nd_moment(local, (2,))
            g = MLP(**mlp, name="global_mlp")(condition(g, not c.mapping_resnet))
            local = MLP(**mlp, attention=c.mapping_attention, heads=c.heads, dropout=c.attention_dropout,
                        name="mlp")(condition(local, False), pos, train=train)
            x = jnp.concatenate([local, g], axis=1)
        x = x.astype(jnp.float32)
        if update_w_avg:
            batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=(0, 1))
            w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)
        return x
