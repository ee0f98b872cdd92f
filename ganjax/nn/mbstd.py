"""Minibatch standard deviation (StyleGAN2's D epilogue), and which samples of a training batch share a group.

The grouping rule (`groups`): D sees a batch of n samples, G = min(model.mbstd_group, n), and sample i of
what it sees is in group i mod (n / G), as the reference. What D sees depends on the strategy:
- dp, fsdp, fsdp_tp (one global program): the whole global batch, however it is sharded, so these strategies
  and one device group the same samples;
- train.grad_accum = a: micro-batch j holds global rows j, j + a, j + 2a, ... (ganjax/train/step.py), each
  grouped on its own; while a micro-batch holds at least model.mbstd_group samples, row i is in group
  (i mod a, (i // a) mod (B / (a G))), which is i mod (B / G): the same groups as the whole batch, whatever
  a is (a smaller micro-batch is one smaller group of its own);
- shard_map over S devices: device d holds the contiguous rows d * B/S .. (d + 1) * B/S - 1 (and splits those
  into micro-batches the same way), each device grouped on its own: other groups than one device's, so its
  D statistics differ from one device's by exactly that regrouping (tests/test_nn.py).
"""

import jax.numpy as jnp
import numpy as np


def groups(batch: int, group_size: int, shards: int = 1, accum: int = 1) -> np.ndarray:
    """Group id [batch] of each global sample under the rule above (shards: shard_map devices, 1 for the
    global strategies; accum: train.grad_accum). Samples with equal ids share a minibatch-std group."""
    if batch % (shards * accum):
        raise ValueError(f"batch {batch} is not divisible by {shards} shards x {accum} micro-batches")
    local, ids = batch // shards, np.empty(batch, np.int64)
    micro = local // accum
    g = min(group_size, micro)
    if micro % g:
        raise ValueError(f"a micro-batch of {micro} is not divisible by the minibatch-std group {g}")
    for i in range(batch):
        d, r = divmod(i, local)  # shard, row within the shard
        j, k = r % accum, r // accum  # micro-batch, row within it
        ids[i] = (d * accum + j) * (micro // g) + k % (micro // g)
    return ids


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
