"""Seed -> latents -> image: the one seed scheme of ganjax, and the sampler that renders it.

An image's key is `jax.random.key(s)` for a seed s (`ganjax sample --seeds`, the insight outputs, the
training loop's sample grids, which show seeds 0 .. train.sample_grid - 1) or `fold_in(key(S), i)` for
image i of an evaluation with seed S (`image_keys`: the images then do not depend on the batch size or the
devices that share it). From an image's key k:
    z     = normal(k, [1, k_latents, z_dim])[0]      (`latents`)
    noise = fold_in(k, 1)                            (`noise_key`: the per-pixel noise with noise_mode 'random')
So seed s is the same image everywhere, for the same truncation psi and noise mode.

A conditional generator (model.num_classes > 0) also takes a class per image: given explicitly (`ganjax
sample --class`, the loop's per-class grids: seed s of class c), or in an evaluation drawn from the data's
class frequencies with `class_key(k)` = fold_in(k, 2) (`class_of`), so the fakes' classes follow the reals'.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def latents(key, num_latents: int, z_dim: int):
    """z [num_latents, z_dim] float32 of an image key."""
    return jax.random.normal(key, (1, num_latents, z_dim), jnp.float32)[0]


def noise_key(key):
    """The key of an image's per-pixel noise."""
    return jax.random.fold_in(key, 1)


def class_key(key):
    """The key of an evaluation image's class draw (a conditional generator)."""
    return jax.random.fold_in(key, 2)


def class_of(key, class_logits):
    """An evaluation image's class: a draw from the data's class frequencies (class_logits = their logs)."""
    return jax.random.categorical(class_key(key), class_logits)


def check_class(G, label):
    """None for an unconditional G; for a conditional one the class (an int in [0, num_classes)); errors say
    what is wrong (the command-line layer turns them into one line)."""
    n = G.cfg.num_classes
    if n == 0:
        if label is not None:
            raise ValueError(f"the generator is unconditional (model.num_classes=0); it takes no class (got {label})")
        return None
    if label is None:
        raise ValueError(f"the generator is conditional ({n} classes): give a class in [0, {n})")
    if not 0 <= int(label) < n:
        raise ValueError(f"class {label} is outside [0, {n}) (the generator has {n} classes)")
    return int(label)


def image_keys(seed, ids):
    """Keys of images `ids` (an int array) of a run of images seeded by `seed` (an evaluation's)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), ids)


def seed_latents(seeds, num_latents: int, z_dim: int):
    """(z [N, k, z_dim] float32, noise keys [N]) of seeds."""
    keys = [jax.random.key(int(s)) for s in seeds]
    return (jnp.stack([latents(k, num_latents, z_dim) for k in keys]), jnp.stack([noise_key(k) for k in keys]))


def truncate(ws, w_avg, psi):
    """w_avg + psi (ws - w_avg); psi == 1 leaves ws bit-exact (psi may be traced)."""
    return jnp.where(psi == 1.0, ws, w_avg + psi * (ws - w_avg))


@functools.cache  # one compile per (model, noise mode, attention); G is hashable by its config
def _renderer(G, noise_mode: str, return_attention: bool):
    conditional = G.cfg.num_classes > 0

    def one(z, key, psi, label, variables):
        ws = G.apply(variables, z[None], labels=label[None] if conditional else None, method="mapping")
        # A traced psi: one compile serves a whole truncation sweep.
        ws = truncate(ws, variables["buffers"]["mapping_network"]["w_avg"], psi)
        out = G.apply(variables, ws, noise_mode=noise_mode, return_attention=return_attention,
                      rngs={"noise": key}, method="synthesis")
        return jax.tree.map(lambda x: x[0], out)

    # vmap over single images: each image depends on its own latents and noise key only.
    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


def render(G, variables, z, noise_keys, psi=1.0, *, labels=None, noise_mode="const", return_attention=False,
           batch_size=16):
    """Images [N, R, R, C] (and attention maps [N, T, layers, heads, R, R] if asked) as numpy, for latents
    z [N, k, z_dim], noise keys [N], truncation psi (a number or one per image) and, for a conditional G, classes
    (a number or one per image)."""
    n = len(z)
    psi = jnp.broadcast_to(jnp.asarray(psi, jnp.float32), (n,))
    for label in [None] if labels is None else np.unique(np.asarray(labels)):
        check_class(G, None if label is None else int(label))
    labels = jnp.broadcast_to(jnp.asarray(0 if labels is None else labels, jnp.int32), (n,))
    fn = _renderer(G, noise_mode, bool(return_attention))
    batch_size = max(1, min(batch_size, n))
    pad = -n % batch_size  # one compiled batch shape: repeat the last image
    z, noise_keys, psi, labels = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
                                  for a in (z, noise_keys, psi, labels))
    parts = [jax.device_get(fn(*(a[i:i + batch_size] for a in (z, noise_keys, psi, labels)), variables))
             for i in range(0, n + pad, batch_size)]
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *parts)


def generate(G, variables, seeds, *, psi=1.0, labels=None, noise_mode="const", return_attention=False,
             batch_size=16):
    """float32 images [len(seeds), R, R, C] in ~[-1, 1] (and attention maps if asked), each a function of its
    seed (and, for a conditional G, its class: `labels`, one for all or one per seed) alone."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given")
    z, keys = seed_latents(seeds, G.cfg.num_latents, G.cfg.z_dim)
    return render(G, variables, z, keys, psi, labels=labels, noise_mode=noise_mode,
                  return_attention=return_attention, batch_size=batch_size)
