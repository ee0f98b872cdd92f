"""Multi-process start-up: jax.distributed.initialize() when the config or the environment asks."""

import os

import jax
from absl import logging
from jax._src import distributed  # the runtime's client: no public barrier without a collective in jax 0.10

def _cluster_env_present() -> bool:
    """Whether a launcher announced a multi-process job (JAX's coordinator variable, SLURM, Open MPI or
    a multi-host TPU slice); jax.distributed.initialize() then reads the details from the environment."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(name, "1") or 1) > 1:
            return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def should_initialize(parallel) -> bool:
    mode = parallel.distributed
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"parallel.distributed: must be auto | on | off, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on":
        return True
    return bool(parallel.coordinator_address) or _cluster_env_present()


def maybe_initialize_distributed(config) -> bool:
    """Starts JAX's multi-process runtime if config.parallel.distributed says so; returns whether it did.

    Must run before anything touches a JAX backend. Explicit coordinator_address / num_processes /
    process_id override auto-detection; CPU processes talk through gloo collectives.
    """
    p = config.parallel
    if not should_initialize(p):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if p.coordinator_address:
        kwargs["coordinator_address"] = p.coordinator_address
    if int(p.num_processes) > 0:
        kwargs["num_processes"] = int(p.num_processes)
    if int(p.process_id) >= 0:
        kwargs["process_id"] = int(p.process_id)
    # Only the CPU backend reads this; without it CPU devices of different processes cannot talk.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=int(p.heartbeat_timeout_s))
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def barrier(name: str, timeout_s: float = 3600.0):
    """Every process waits here until all arrive (a no-op with one process). It goes through the
    distributed runtime's coordination service, not a collective, so a process that arrives late (still
    compiling) does not trip a collective's own short timeout (gloo's is 30 s)."""
    if jax.process_count() == 1:
        return
    distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
