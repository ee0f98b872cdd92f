"""GANsformer's interpretability outputs, computed with a generator: which latent owns which region
(attention maps), what one latent component controls (per-latent variation), truncation sweeps and latent
interpolations. ganjax/viz.py turns the arrays into PNG grids and GIFs; `ganjax sample` exposes both.

Seeds follow the one seed scheme (ganjax/sampling.py), and images are rendered by its sampler: with the
same psi and noise mode, the base images here are `ganjax sample`'s.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ganjax import viz
from ganjax.sampling import generate, render, seed_latents


def _latent_shape(G):
    return G.cfg.num_latents, G.cfg.z_dim


def attention(G, variables, seeds, *, psi=1.0, label=None, noise_mode="const", batch_size=16):
    """(images [N, R, R, C], attention maps [N, T, layers, heads, R, R]) of the seeds (of class `label`, for a
    conditional G: every function here takes one)."""
    if not has_attention(G.cfg):
        raise ValueError("the model has no attention layers (model.num_local = 0 or model.attention = 'none')")
    return generate(G, variables, seeds, psi=psi, labels=label, noise_mode=noise_mode, return_attention=True,
                    batch_size=batch_size)


def variation_latents(z, seed: int, num_variations: int):
    """z [k, z_dim] -> [k, 1 + num_variations, k, z_dim]: in row i, column 0 is z and column j > 0 is z with
    component i replaced by a fresh normal draw (seeded by `seed`)."""
    if num_variations < 1:
        raise ValueError(f"num_variations must be >= 1, got {num_variations}")
    k, z_dim = z.shape
    fresh = jax.random.normal(jax.random.fold_in(jax.random.key(int(seed)), 2), (k, num_variations, z_dim))
    base = jnp.broadcast_to(z, (k, num_variations + 1, k, z_dim))
    return jnp.stack([base[i].at[1:, i].set(fresh[i]) for i in range(k)])


def latent_variation(G, variables, seed: int, num_variations: int, *, psi=1.0, label=None, noise_mode="const",
                     batch_size=16):
    """[k, 1 + num_variations, R, R, C]: row i resamples latent component i of the seed's z (the last row is
    the global latent), keeping the other components and the noise; column 0 is the unmodified image."""
    z, keys = seed_latents([seed], *_latent_shape(G))
    table = variation_latents(z[0], seed, num_variations)
    rows, cols = table.shape[:2]
    images = render(G, variables, table.reshape(rows * cols, *z.shape[1:]), jnp.repeat(keys, rows * cols, axis=0),
                    psi, labels=label, noise_mode=noise_mode, batch_size=batch_size)
    return images.reshape(rows, cols, *images.shape[1:])


def truncation_sweep(G, variables, seeds, psis, *, label=None, noise_mode="const", batch_size=16):
    """[N, P, R, R, C]: row = seed, column = truncation psi (w_avg + psi (w - w_avg); psi 0 = the w_avg image)."""
    psis = [float(p) for p in psis]
    if not psis:
        raise ValueError("truncation_sweep needs at least one psi")
    z, keys = seed_latents(seeds, *_latent_shape(G))
    n, p = len(z), len(psis)
    images = render(G, variables, jnp.repeat(z, p, axis=0), jnp.repeat(keys, p, axis=0),
                    jnp.tile(jnp.asarray(psis, jnp.float32), n), labels=label, noise_mode=noise_mode,
                    batch_size=batch_size)
    return images.reshape(n, p, *images.shape[1:])


def slerp(a, b, t):
    """Spherical interpolation along the last axis (per latent component); lerp where a and b are parallel."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    t = jnp.asarray(t, jnp.float32)[..., None]
    na, nb = jnp.linalg.norm(a, axis=-1, keepdims=True), jnp.linalg.norm(b, axis=-1, keepdims=True)
    cos = jnp.clip(jnp.sum(a * b, axis=-1, keepdims=True) / jnp.maximum(na * nb, 1e-12), -1.0, 1.0)
    omega = jnp.arccos(cos)
    so = jnp.sin(omega)
    safe = so > 1e-6
    wa = jnp.where(safe, jnp.sin((1 - t) * omega) / jnp.where(safe, so, 1.0), 1 - t)
    wb = jnp.where(safe, jnp.sin(t * omega) / jnp.where(safe, so, 1.0), t)
    return wa * a + wb * b


def interpolation(G, variables, seeds, num_frames: int, *, method="slerp", psi=1.0, label=None,
                  noise_mode="const", batch_size=16):
    """[num_frames, R, R, C]: a path through the seeds' z in order, frames evenly spaced from the first seed's
    image to the last one's. The noise stays the first seed's, so only the latents move."""
    seeds = list(seeds)
    if len(seeds) < 2:
        raise ValueError(f"an interpolation needs at least 2 seeds, got {seeds}")
    if num_frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {num_frames}")
    if method not in ("slerp", "lerp"):
        raise ValueError(f"interpolation method {method!r} is not one of ('slerp', 'lerp')")
    z, keys = seed_latents(seeds, *_latent_shape(G))
    pos = np.linspace(0.0, len(seeds) - 1, num_frames)
    seg = np.minimum(pos.astype(int), len(seeds) - 2)
    t = jnp.asarray(pos - seg, jnp.float32)[:, None]  # [F, 1]: the same t for every latent component
    a, b = z[seg], z[seg + 1]
    frames_z = slerp(a, b, t) if method == "slerp" else a + t[..., None] * (b - a)
    return render(G, variables, frames_z, jnp.repeat(keys[:1], num_frames, axis=0), psi, labels=label,
                  noise_mode=noise_mode, batch_size=batch_size)


def has_attention(model_cfg) -> bool:
    """Whether the generator has attention layers (and so attention maps to show)."""
    return bool(model_cfg.attention_layers)


class AttentionSnapshot:
    """G_ema's attention overlays for fixed latents as one uint8 grid (viz.attention_overlay_grid): the
    training loop's TensorBoard image. Every process calls it; the result is replicated."""

    def __init__(self, G, mesh, z, alpha: float = 0.6, labels=None):
        self._grid = lambda images, attn: viz.attention_overlay_grid(images, attn, alpha)
        replicated = NamedSharding(mesh, PartitionSpec())
        self.z = jax.device_put(z, replicated)
        self.labels = None if labels is None else jax.device_put(labels, replicated)
        self._fn = jax.jit(lambda p, b, z, y: G.apply({"params": p, "buffers": b}, z, noise_mode="const",
                                                      return_attention=True, labels=y), out_shardings=replicated)

    def __call__(self, params, buffers) -> np.ndarray:
        images, attn = self._fn(params, buffers, self.z, self.labels)
        return self._grid(np.asarray(images.addressable_data(0)), np.asarray(attn.addressable_data(0)))
