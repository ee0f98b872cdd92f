"""Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
its points with radius the distance to the k-th nearest neighbour; precision is the fraction of generated
points inside the real manifold, recall the fraction of real points inside the generated one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_ROW_BLOCK = 1024  # rows of the distance matrix per jitted call: bounds memory at block x N floats


@jax.jit
def _distances(rows, cols):
    sq = (
        jnp.sum(rows * rows, axis=1)[:, None]
        - 2.0 * jnp.matmul(rows, cols.T, precision=jax.lax.Precision.HIGHEST)
        + jnp.sum(cols * cols, axis=1)[None, :]
    )
    return jnp.sqrt(jnp.maximum(sq, 0.0))


@functools.partial(jax.jit, static_argnums=2)
def _kth_neighbour(rows, cols, k):
    # k + 1: each point is its own nearest neighbour at distance 0.
    return -jax.lax.top_k(-_distances(rows, cols), k + 1)[0][:, k]


@jax.jit
def _inside(probes, manifold, radii):
    return jnp.any(_distances(probes, manifold) <= radii[None, :], axis=1)


def _blocks(x):
    return (x[i : i + _ROW_BLOCK] for i in range(0, len(x), _ROW_BLOCK))


def _coverage(manifold, probes, k):
    radii = jnp.concatenate([_kth_neighbour(b, manifold, k) for b in _blocks(manifold)])
    inside = np.concatenate([np.asarray(_inside(b, manifold, radii)) for b in _blocks(probes)])
    return float(inside.mean())


def precision_recall(real, fake, k=3):
    """real [N, D], fake [M, D] features -> (precision, recall) with k-NN manifolds (k=3 in the paper)."""
    real, fake = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need [N, D] and [M, D] features, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set")
    return _coverage(real, fake, k), _coverage(fake, real, k)
