"""Device meshes, logical-axis sharding rules and multi-host start-up."""

from ganjax.parallel.distributed import maybe_initialize_distributed
from ganjax.parallel.mesh import AXES, batch_axes, batch_sharding, make_mesh, replicated
from ganjax.parallel.rules import (STRATEGIES, compute_sharding, default_rules, for_compute, logical_rules,
                                   tree_shardings)

__all__ = [
    "AXES",
    "STRATEGIES",
    "batch_axes",
    "batch_sharding",
    "compute_sharding",
    "default_rules",
    "for_compute",
    "logical_rules",
    "make_mesh",
    "maybe_initialize_distributed",
    "replicated",
    "tree_shardings",
]
