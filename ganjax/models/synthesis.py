"""Synthesis network: ws [B, k, num_ws, w_dim] -> image [B, R, R, C] (+ attention maps)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganjax.models.config import ModelConfig
from ganjax.nn.attention import BipartiteAttention
from ganjax.nn.conv import conv2d
from ganjax.nn.conv_resample import conv2d_resample
from ganjax.nn.layers import Conv2d, Dense, bias_act, boxed_param, constant, scaled_normal
from ganjax.nn.modconv import modulated_conv2d
from ganjax.nn.position import sinusoidal_grid
from ganjax.nn.resample import upsample2d

SQRT_HALF = float(np.sqrt(0.5))
NOISE_MODES = ("random", "const", "none")  # per-pixel noise: drawn, the stored constant maps, or none


def _impl(cfg):
    return None if cfg.conv_impl == "auto" else cfg.conv_impl


class SynthesisLayer(nn.Module):
    """3x3 modulated conv (optionally up x2) -> bipartite attention -> noise -> bias + lrelu."""
    cfg: ModelConfig
    features: int
    res: int
    up: int = 1
    gain: float = 1.0
    attention: bool = False
    use_bias: bool = True
    use_noise: bool = True
    noise_mode: str = "random"
    train: bool = False

    @nn.compact
    def __call__(self, x, y, pos, carry, noise=None):
        """x [B, H, W, Cin]; y [B, k, w_dim] (this layer's latents); carry: duplex latent update or None;
        noise: this layer's random noise [B, res, res, 1] (noise_mode 'random')."""
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        cin, cout, k = x.shape[-1], self.features, 3
        # The affine exists (and runs) even without global modulation, as in the reference.
        styles = Dense(cin, bias_init=1.0, axes=("embed", "conv_in"), dtype=dtype, name="affine")(y[:, -1])
        weight = boxed_param(self, "weight", scaled_normal(), (k, k, cin, cout), (None, None, "conv_in", "conv_out"))
        weight = weight * (1.0 / np.sqrt(cin * k * k))
        x = x.astype(dtype)
        if c.global_modulation:
            x = modulated_conv2d(x, weight.astype(dtype), styles, up=self.up, padding=1, fused=c.fused_modconv,
                                 impl=_impl(c))
        else:
            x = conv2d_resample(x, weight.astype(dtype), up=self.up, padding=1, impl=_impl(c))

        probs = None
        if self.attention:
            b, h, w, _ = x.shape
            latents = y[:, :-1].astype(jnp.float32)
            if carry is not None:
                latents = latents + carry
            grid = jnp.asarray(sinusoidal_grid(self.res, c.w_dim))
            att = BipartiteAttention(cout, heads=c.heads, kind=c.attention, integration=c.integration, norm=True,
                                     dropout=c.attention_dropout, kmeans_iters=c.kmeans_iters,
                                     from_axis="conv_out", to_axis="embed", dtype=dtype, name="transformer")
            out, probs, update = att(x.reshape(b, h * w, cout), latents, grid, pos, train=self.train)
            x = out.reshape(b, h, w, cout).astype(dtype)
            if update is not None:
                carry = (0.0 if carry is None else carry) + update

        if self.use_noise:
            noise_const = self.variable("buffers", "noise_const",
                                        lambda: jax.random.normal(self.make_rng("noise"), (self.res, self.res)))
            strength = boxed_param(self, "noise_strength", constant(0.0), (), ())
            if self.noise_mode == "none":
                noise = None
            elif self.noise_mode == "const":
                noise = noise_const.value[None, :, :, None]
            if noise is not None:
                x = x + (noise * strength).astype(dtype)
        if self.use_bias:
            b = boxed_param(self, "bias", constant(0.0), (cout,), ("conv_out",))
            x = bias_act(x, b, "lrelu", self.gain)
        return x, probs, carry


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation, + bias."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, y):
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        cin = x.shape[-1]
        styles = Dense(cin, bias_init=1.0, axes=("embed", "conv_in"), dtype=dtype, name="affine")(y[:, -1])
        weight = boxed_param(self, "weight", scaled_normal(), (1, 1, cin, c.num_channels),
                             (None, None, "conv_in", None))
        weight = (weight * (1.0 / np.sqrt(cin))).astype(dtype)
        x = x.astype(dtype)
        if c.global_modulation:
            x = modulated_conv2d(x, weight, styles, demodulate=False, fused=c.fused_modconv, impl=_impl(c))
        else:
            x = conv2d(x, weight, impl=_impl(c))
        b = boxed_param(self, "bias", constant(0.0), (c.num_channels,), (None,))
        return bias_act(x, b)


class SynthesisBlock(nn.Module):
    """One resolution: (stem const | skip + conv0 up) -> conv1 [-> conv_last] [-> ToRGB]."""
    cfg: ModelConfig
    res: int
    noise_mode: str = "random"
    train: bool = False

    @nn.compact
    def __call__(self, x, img, ws, pos, carry, noises=(None, None)):
        c = self.cfg
        dtype = jnp.dtype(c.compute_dtype)
        stem, last = self.res == 4, self.res == c.resolution
        resnet = c.architecture_g == "resnet"
        cout = c.channels(self.res)
        att = c.has_attention(self.res)
        layer = dict(cfg=c, features=cout, res=self.res, noise_mode=self.noise_mode, train=self.train)
        maps = []
        i = 0
        if stem:
            const = boxed_param(self, "const", jax.nn.initializers.normal(1.0), (4, 4, cout), (None, None, "conv_out"))
            x = jnp.broadcast_to(const.astype(dtype), (ws.shape[0], 4, 4, cout))
            x, m, carry = SynthesisLayer(**layer, attention=att, name="conv1")(x, ws[:, :, i], pos, carry,
                                                                               noises[0])
            maps.append(m)
            i += 1
        else:
            skip = None
            if resnet:
                skip = Conv2d(cout, 1, use_bias=False, up=2, gain=SQRT_HALF, conv_impl=_impl(c), dtype=dtype,
                              name="skip")(x)
            x, m0, carry = SynthesisLayer(**layer, up=2, attention=att, name="conv0")(x, ws[:, :, i], pos, carry,
                                                                                      noises[0])
            x, m1, carry = SynthesisLayer(**layer, attention=att, gain=SQRT_HALF if resnet else 1.0,
                                          name="conv1")(x, ws[:, :, i + 1], pos, carry, noises[1])
            if resnet:
                x = skip + x
            maps += [m0, m1]
            i += 2
        if img is not None:
            img = upsample2d(img)
        if last and c.conv_last:
            x = SynthesisLayer(**layer, use_bias=False, use_noise=False, name="conv_last")(
                x, ws[:, :, i], pos, None)[0]
            i += 1
        if last or not resnet:
            y = ToRGB(c, name="torgb")(x, ws[:, :, i])
            img = y if img is None else img + y
        return x, img, [m for m in maps if m is not None], carry


def block_ws_counts(cfg: ModelConfig, res: int):
    """(latents consumed, latents read) by a block: convs advance the index; ToRGB reads one more."""
    num_conv = (1 if res == 4 else 2) + int(res == cfg.resolution and cfg.conv_last)
    num_torgb = int(res == cfg.resolution or cfg.architecture_g == "skip")
    return num_conv, num_conv + num_torgb


class SynthesisNetwork(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, ws, pos=None, *, noise_mode: str = "random", train: bool = False,
                 return_attention: bool = False):
        c = self.cfg
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode {noise_mode!r} is not one of {NOISE_MODES}")
        want = (c.num_latents, c.num_ws, c.w_dim)
        if ws.ndim != 4 or ws.shape[1:] != want:
            raise ValueError(f"synthesis: ws must be [B, {want[0]}, {want[1]}, {want[2]}] (k, num_ws, w_dim), "
                             f"got {ws.shape}")
        block_cls = nn.remat(SynthesisBlock) if c.remat else SynthesisBlock
        x = img = None
        carry = None
        maps = []
        idx = 0
        noises = self._random_noise(ws.shape[0]) if noise_mode == "random" else {}
        for res in c.block_resolutions:
            step, width = block_ws_counts(c, res)
            block = block_cls(c, res, noise_mode=noise_mode, train=train, name=f"b{res}")
            x, img, m, carry = block(x, img, ws[:, :, idx:idx + width], pos, carry,
                                     noises.get(res, (None, None)))
            maps += m
            idx += step
        img = img.astype(jnp.float32)
        if not return_attention:
            return img
        return img, self._stack_maps(maps, img.shape[0])

    def _random_noise(self, batch):
        """Per-layer noise maps {res: (first layer, second layer)} from ONE normal draw: a single RNG call
        compiles much faster than one per layer."""
        sizes = [(r, n) for r in self.cfg.block_resolutions for n in range(1 if r == 4 else 2)]
        flat = jax.random.normal(self.make_rng("noise"), (batch, sum(r * r for r, _ in sizes), 1))
        out, start = {}, 0
        for r, n in sizes:
            out.setdefault(r, [None, None])[n] = flat[:, start:start + r * r].reshape(batch, r, r, 1)
            start += r * r
        return {r: tuple(v) for r, v in out.items()}

    def _stack_maps(self, maps, batch):
        """[B, N, F, T] per layer -> [B, T, layers, N, R, R], nearest-upsampled to the output resolution."""
        c = self.cfg
        r = c.resolution
        if not maps:
            return jnp.zeros((batch, c.num_local, 0, c.heads, r, r), jnp.float32)
        out = []
        for p in maps:
            b, n, f, t = p.shape
            s = int(round(np.sqrt(f)))
            p = p.reshape(b, n, s, s, t)
            p = jnp.repeat(jnp.repeat(p, r // s, axis=2), r // s, axis=3)
            out.append(p)
        maps = jnp.stack(out, axis=1)  # [B, L, N, R, R, T]
        return jnp.transpose(maps, (0, 5, 1, 2, 3, 4)).astype(jnp.float32)
