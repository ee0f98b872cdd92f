"""The programs a training run executes, as jitted functions with abstract arguments, ready to compile ahead
of time: the iteration variants the loop runs (plain, +R1, +PL, weighted by how often it runs each), every
phase on its own (for per-phase costs), and G_ema's batch image generation as evaluation runs it.

All of them come from a `setup.Training`, so what is compiled is what the trainer runs, on whatever devices
its mesh holds: the real ones, virtual CPU devices, or the abstract devices of a TPU slice this host does
not have (`ganjax plan`, which compiles with `platform="tpu"` so the models trace for the TPU).
"""

import contextlib
import dataclasses
import time
from typing import Callable

import jax
import jax.numpy as jnp

from ganjax import parallel
from ganjax.nn import backend
from ganjax.train.recipe import variant_name
from ganjax.train.step import LIVE, OPT_STATES, Iteration, gathered_param_shardings, live_values, opt_states_of


@dataclasses.dataclass
class Program:
    name: str
    kind: str  # "iteration" | "phase" | "sample"
    weight: float  # runs per amortised iteration (0 for a program outside the iteration)
    fn: Callable  # jitted
    args: tuple  # abstract arguments: ShapeDtypeStructs with shardings
    firing: tuple[str, ...] = ()  # an iteration variant's lazy phases (recipe names)

    def lower(self, platform: str | None = None):
        """(lowered, seconds to trace and lower), traced for `platform` (None: the backend JAX runs on)."""
        context = backend.tracing_for(platform) if platform else contextlib.nullcontext()
        t0 = time.perf_counter()
        with context:
            lowered = self.fn.lower(*self.args)
        return lowered, time.perf_counter() - t0

    def compile(self, platform: str | None = None):
        """(compiled, seconds to trace and lower, seconds to compile)."""
        lowered, lower_s = self.lower(platform)
        t0 = time.perf_counter()
        compiled = lowered.compile()
        return compiled, lower_s, time.perf_counter() - t0


def abstract_reals(tr) -> jax.ShapeDtypeStruct:
    """The global batch of real images as the loader delivers it."""
    m = tr.model_cfg
    shape = (int(tr.config.train.batch_size), m.resolution, m.resolution, m.num_channels)
    return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=tr.batch_sharding)


def leading_batch_sharding(tr) -> jax.sharding.NamedSharding:
    """An array whose first axis is the batch (labels, latents), split over the batch axes like the reals."""
    return jax.sharding.NamedSharding(tr.mesh, jax.sharding.PartitionSpec(*tr.batch_sharding.spec[:1]))


def abstract_labels(tr) -> tuple:
    """(the global batch's labels,) as the loader delivers them for a conditional model, else ()."""
    if not tr.model_cfg.num_classes:
        return ()
    return (jax.ShapeDtypeStruct((int(tr.config.train.batch_size),), jnp.int32, sharding=leading_batch_sharding(tr)),)


def batch_args(tr) -> tuple:
    """The train step's arguments after the state: the reals (and their labels, for a conditional model)."""
    return (abstract_reals(tr),) + abstract_labels(tr)


def iteration_programs(tr) -> list[Program]:
    """The loop's iteration variants, each with the fraction of iterations that run it."""
    args = (tr.abstract_state(),) + batch_args(tr)
    step = tr.train_step
    return [Program(variant_name(v), "iteration", w, step.variant(v), args, firing=v)
            for v, w in step.cfg.variant_weights().items()]


def phase_programs(tr) -> list[Program]:
    """Each running phase of the recipe with its optimizer update as its own (state, reals) -> state program
    (the same phase code as the train step, with its fsdp/fsdp_tp compute layout), weighted by how often it
    runs. The phases' sum differs from a whole iteration by what XLA fuses across phases."""
    cfg = tr.train_step.cfg
    it = Iteration(tr.G, tr.D, tr.g_opt, tr.d_opt, cfg,
                   param_shardings=gathered_param_shardings(tr.config, tr.state_shardings))
    z_shape = (cfg.batch_size, tr.model_cfg.num_latents, tr.model_cfg.z_dim)
    args = (tr.abstract_state(),) + batch_args(tr)
    z_sharding = leading_batch_sharding(tr)
    out = []
    for phase in cfg.running:
        def program(st, reals, *labels, phase=phase):
            key = jax.random.wrap_key_data(st.rng)
            k_next, k_z, k_phase = jax.random.split(key, 3)
            # Split over the batch axes like the reals, as the train step does (else XLA may run G replicated).
            z = jax.lax.with_sharding_constraint(jax.random.normal(k_z, z_shape, jnp.float32), z_sharding)
            inputs = {"z": {phase.name: z}, "reals": reals}
            if labels:
                inputs["labels"] = labels[0]
            live, opt_states = live_values(st, cfg), opt_states_of(st)
            it.optimizer_step((phase,), {phase.name: k_phase}, inputs, live, opt_states)
            return st.replace(**{k: live[k] for k in LIVE}, **{OPT_STATES[n]: s for n, s in opt_states.items()},
                              rng=jax.random.key_data(k_next))

        jitted = jax.jit(program, in_shardings=(tr.state_shardings,) + tuple(a.sharding for a in args[1:]),
                         out_shardings=tr.state_shardings, donate_argnums=0)
        out.append(Program(phase.name, "phase", phase.rate, jitted, args))
    return out


def sample_program(tr, batch_size: int) -> Program:
    """G_ema generating one batch of images as evaluation does (batch-sharded over every device, random
    noise, no truncation); the batch is rounded up to fill every device."""
    from ganjax.evaluate import image_generator  # evaluate imports the metrics; only this program needs them

    devices = tr.mesh.size
    batch = -(-int(batch_size) // devices) * devices
    sharding = jax.sharding.NamedSharding(tr.mesh, jax.sharding.PartitionSpec(tuple(tr.mesh.axis_names)))
    state = tr.abstract_state()
    replicated = parallel.replicated(tr.mesh)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
    fn = image_generator(tr.G, batch, sharding, psi=1.0)
    # a conditional G also takes the class frequencies its fakes' classes are drawn from
    logits = (jax.ShapeDtypeStruct((tr.model_cfg.num_classes,), jnp.float32, sharding=replicated),
              ) if tr.model_cfg.num_classes else ()
    return Program(f"sample[{batch}]", "sample", 0.0, fn,
                   (state.g_ema_params, state.g_ema_buffers, scalar(jnp.int32), scalar(jnp.int32)) + logits)
