"""Logical-axis rules: how the models' logical parameter axes map onto the mesh, per strategy.

The rules live in config.parallel.rules.<strategy> as ((logical_name, mesh_axis_or_None), ...) and are
applied in order, per parameter: a rule shards the parameter's first still-unsharded dimension with its
logical name if the mesh axis is not yet used by that parameter and divides the dimension. Dimensions no
rule takes are replicated. So earlier rules have priority, a logical axis may be listed twice (a fallback
axis), and tiny or odd-sized tensors (biases, 3-channel RGB layers) stay replicated instead of failing.
"""

import flax.linen as nn
import jax
from jax.sharding import NamedSharding, PartitionSpec

STRATEGIES = ("dp", "fsdp", "fsdp_tp", "shard_map")


def logical_rules(config) -> tuple[tuple[str, object], ...]:
    """The rule list of config.parallel.strategy, checked for shape and mesh-axis names."""
    strategy = config.parallel.strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy: must be one of {' | '.join(STRATEGIES)}, got {strategy!r}")
    rules = tuple(config.parallel.rules.get(strategy, ()))
    from ganjax.parallel.mesh import AXES

    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"parallel.rules.{strategy}: each rule is (logical_name, mesh_axis|None), got {rule!r}")
        axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        for axis in axes:
            if axis is not None and axis not in AXES:
                raise ValueError(f"parallel.rules.{strategy}: mesh axis {axis!r} in {rule!r} is not one of {AXES}")
    return rules


def default_rules(strategy: str) -> tuple:
    """The built-in rules of a strategy (those config.parallel.rules starts from)."""
    from ganjax.config import base_config

    return tuple(base_config().parallel.rules[strategy])


def spec_for(shape, names, mesh, rules) -> PartitionSpec:
    """PartitionSpec of one array with logical axis `names` under `rules` (see the module docstring)."""
    spec: list = [None] * len(shape)
    used: set[str] = set()
    for logical, mesh_axes in rules:
        if mesh_axes is None:
            continue
        axes = tuple(mesh_axes) if isinstance(mesh_axes, (tuple, list)) else (mesh_axes,)
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if used.intersection(axes):
            continue
        for i, (dim, name) in enumerate(zip(shape, names)):
            if name == logical and spec[i] is None and dim % size == 0 and dim >= size:
                spec[i] = axes if len(axes) > 1 else axes[0]
                used.update(axes)
                break
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def tree_shardings(boxed_tree, mesh, rules):
    """NamedShardings for the UNBOXED version of `boxed_tree` (arrays or ShapeDtypeStructs, with
    nn.LogicallyPartitioned boxes where the models annotated logical axes; unannotated leaves replicate)."""

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, spec_for(leaf.value.shape, leaf.names, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
