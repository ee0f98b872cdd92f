"""Minibatch standard deviation (StyleGAN2's D epilogue)."""

import jax.numpy as jnp


def minibatch_std(x, group_size: int = 4, num_channels: int = 1):
    """Append `num_channels` feature maps holding the std over groups of samples.

    x [N, H, W, C] (or [N, T, C] for sets). As the reference: G = min(group_size, N) and sample i belongs
    to group i mod (N / G); channels split into num_channels groups of C / num_channels.
    """
    n, c = x.shape[0], x.shape[-1]
    g = min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch-std: batch {n} is not divisible by the group size {g} "
                         f"(model.mbstd_group={group_size})")
    if c % num_channels:
        raise ValueError(f"minibatch-std: {c} channels are not divisible by model.mbstd_channels={num_channels}")
    spatial = x.shape[1:-1]
    y = x.astype(jnp.float32).reshape((g, n // g) + spatial + (num_channels, c // num_channels))
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n, *spatial, F, c]
    y = jnp.mean(y, axis=tuple(range(1, len(spatial) + 1)) + (len(spatial) + 2,))  # [n, F]
    y = jnp.tile(y, (g, 1)).reshape((n,) + (1,) * len(spatial) + (num_channels,))
    y = jnp.broadcast_to(y, (n,) + spatial + (num_channels,)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)
