"""The ('data', 'fsdp', 'model') device mesh built from config.parallel."""

import math

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "model")


def mesh_shape(parallel, num_devices: int) -> tuple[int, int, int]:
    """Resolves mesh_data/mesh_fsdp/mesh_model (one of them may be -1 = the remaining devices)."""
    sizes = [int(parallel.mesh_data), int(parallel.mesh_fsdp), int(parallel.mesh_model)]
    names = ["parallel.mesh_data", "parallel.mesh_fsdp", "parallel.mesh_model"]
    for name, size in zip(names, sizes):
        if size == 0 or size < -1:
            raise ValueError(f"{name}: must be a positive device count or -1 (the rest), got {size}")
    if sizes.count(-1) > 1:
        raise ValueError(f"parallel.mesh_*: at most one axis may be -1, got {dict(zip(names, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"parallel.mesh_*: {num_devices} devices are not divisible by {known} = "
                             f"the product of the fixed axes {dict(zip(names, sizes))}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(f"parallel.mesh_*: mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(config, devices=None) -> jax.sharding.Mesh:
    """All devices (of every process) as a ('data', 'fsdp', 'model') mesh with Auto axes.

    Auto axes let XLA's sharding propagation place intermediates; the step fixes only the shardings of
    its inputs and outputs (state and batch).
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config.parallel, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_axes(mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (the model axis sees the whole batch)."""
    return ("data", "fsdp")


def batch_sharding(mesh, ndim: int = 4) -> NamedSharding:
    """Sharding of a global [B, ...] batch: dim 0 over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh), *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_divisor(mesh) -> int:
    """Number of shards of the batch dimension; the global batch must be a multiple."""
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
