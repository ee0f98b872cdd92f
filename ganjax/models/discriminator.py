"""StyleGAN2 resnet discriminator with minibatch-std, and optional attention aggregators (TF --d-transformer).

Class-conditional (model.num_classes > 0), by projection as StyleGAN2-ADA's: the last fc gives a cmap_dim
vector (cmap_dim = the 4x4 channels), the label is embedded and mapped to a vector of the same size
(D_CMAP_LAYERS fc, at the mapping network's lr multiplier), and the logit is their dot product / sqrt(cmap_dim).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganjax.models.config import D_CMAP_LAYERS, ModelConfig
from ganjax.models.mapping import LabelEmbedding, check_labels
from ganjax.nn.attention import BipartiteAttention
from ganjax.nn.layers import Conv2d, Dense, boxed_param
from ganjax.nn.mbstd import minibatch_std
from ganjax.nn.position import sinusoidal_grid

SQRT_HALF = float(np.sqrt(0.5))


def _impl(cfg):
    return None if cfg.conv_impl == "auto" else cfg.conv_impl


class DiscriminatorBlock(nn.Module):
    """[fromrgb] -> [aggregators attend to the features] -> conv0 3x3 -> conv1 3x3 down, + skip 1x1 down."""
    cfg: ModelConfig
    res: int
    train: bool = False

    @nn.compact
    def __call__(self, x, img, agg, agg_pos):
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        conv = dict(conv_impl=_impl(c), dtype=dtype)
        cin, cout = c.channels(self.res), c.channels(self.res // 2)
        if x is None:
            x = Conv2d(cin, 1, act="lrelu", name="fromrgb", **conv)(img)
        if self.res in c.d_attention_resolutions:
            b, h, w, ch = x.shape
            grid = jnp.asarray(sinusoidal_grid(self.res, c.w_dim))
            agg = BipartiteAttention(c.w_dim, heads=c.heads, kind="simplex", integration="add", norm=False,
                                     dropout=c.attention_dropout, from_axis="embed", to_axis="conv_in",
                                     dtype=dtype, name="transformer")(
                agg, x.reshape(b, h * w, ch), agg_pos, grid, train=self.train)[0]
        skip = Conv2d(cout, 1, use_bias=False, down=2, gain=SQRT_HALF, name="skip", **conv)(x)
        x = Conv2d(cin, 3, act="lrelu", name="conv0", **conv)(x)
        x = Conv2d(cout, 3, act="lrelu", down=2, gain=SQRT_HALF, name="conv1", **conv)(x)
        return skip + x, agg


class DiscriminatorEpilogue(nn.Module):
    """4x4: minibatch-std -> conv 3x3 -> fc -> out (plus per-aggregator scores with d_attention)."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, agg, labels=None):
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        ch = c.channels(4)
        if c.mbstd_channels > 0:
            x = minibatch_std(x, c.mbstd_group, c.mbstd_channels)
        x = Conv2d(ch, 3, act="lrelu", conv_impl=_impl(c), dtype=dtype, name="conv")(x)
        # Flattened in NHWC (h, w, c) order; the PyTorch reference flattens NCHW (c, h, w).
        x = Dense(ch, act="lrelu", axes=("conv_in", "conv_out"), dtype=dtype, name="fc")(x.reshape(x.shape[0], -1))
        if agg is not None:
            if c.mbstd_channels > 0:
                agg = minibatch_std(agg, c.mbstd_group, c.mbstd_channels)
            agg = Dense(c.w_dim, act="lrelu", axes=("embed", "mlp"), dtype=dtype, name="agg_fc")(agg)
            scores = Dense(1, axes=("mlp", None), dtype=dtype, name="agg_out")(agg)[..., 0]  # [B, T]
            x = jnp.concatenate([x, scores.astype(x.dtype)], axis=-1)
        if c.num_classes == 0:
            return Dense(1, axes=("conv_in", None), dtype=dtype, name="out")(x)[:, 0].astype(jnp.float32)
        x = Dense(ch, axes=("conv_in", None), dtype=dtype, name="out")(x).astype(jnp.float32)
        cmap = LabelEmbedding(c.num_classes, ch, dtype=dtype, name="embed")(labels)
        for i in range(D_CMAP_LAYERS):
            cmap = Dense(ch, act="lrelu", lrmul=c.mapping_lrmul, axes=(None, None), dtype=dtype, name=f"cmap{i}")(cmap)
        return jnp.sum(x * cmap.astype(jnp.float32), axis=-1) * np.float32(1 / np.sqrt(ch))


class Discriminator(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, img, train: bool = False, labels=None):
        """img [B, R, R, C] (labels int [B] for a conditional model) -> logits float32 [B]."""
        c = self.cfg
        r = c.resolution
        if img.ndim != 4 or img.shape[1:] != (r, r, c.num_channels):
            raise ValueError(f"discriminator: images must be [B, {r}, {r}, {c.num_channels}], got {img.shape}")
        check_labels(c, labels, img.shape[0], "discriminator")
        dtype = jnp.dtype(c.compute_dtype)
        img = img.astype(dtype)
        agg = agg_pos = None
        if c.d_attention:
            t = c.num_local
            init = jax.nn.initializers.uniform(1.0)
            agg0 = boxed_param(self, "aggregators", init, (t, c.w_dim), ("latents", "embed"))
            agg_pos = boxed_param(self, "aggregator_pos", init, (t, c.w_dim), ("latents", "embed"))
            agg = jnp.broadcast_to(agg0, (img.shape[0], t, c.w_dim))
        block_cls = nn.remat(DiscriminatorBlock) if c.remat else DiscriminatorBlock
        x = None
        for res in c.block_resolutions[::-1][:-1]:
            x, agg = block_cls(c, res, train=train, name=f"b{res}")(x, img, agg, agg_pos)
        return DiscriminatorEpilogue(c, name="b4")(x, agg, labels)
