"""TrainStep.compile_ahead: the first step's program compiled in a background thread from abstract arguments
(ganjax/train/step.py), which the loop starts before restoring the checkpoint. A stand-in step function keeps
the compile to milliseconds; the mechanism is the same one the trainer's programs go through."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganjax.train.step import TrainStep


@dataclasses.dataclass
class _EveryOther:
    """Iteration i runs the R1 variant (d_r1) on even steps, the plain one on odd steps (StepConfig's interface)."""
    conditional: bool = False

    def fires(self, step: int) -> tuple[str, ...]:
        return ("d_r1",) if step % 2 == 0 else ()


def _step(built: list, fail: bool = False):
    def build(key):
        built.append(key)
        if fail:
            def broken(state, reals):
                raise ValueError("the model failed to trace")
            return jax.jit(broken)
        return jax.jit(lambda state, reals: (state + reals.sum() * (2.0 if key else 1.0), {"n": state}))
    return TrainStep(_EveryOther(), build)


def test_the_first_call_uses_the_program_compiled_ahead():
    built, told, compiles = [], [], []
    step = _step(built)
    step.on_compiled = lambda name, seconds, waited: told.append((name, seconds, waited))
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event)
        if event == "/jax/core/compile/backend_compile_duration" else None)
    state, reals = jnp.float32(1.0), jnp.ones((2, 3), jnp.float32)
    step.compile_ahead(3, (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((2, 3), jnp.float32)))
    step._ahead[()]._thread.join()  # the background compile has finished before the step is called
    n = len(compiles)
    out, _ = step(state, reals, 3)
    assert len(compiles) == n, "the call compiled again instead of using the program compiled ahead"
    assert float(out) == 7.0 and built == [()]
    (name, seconds, waited), = told
    assert name == "plain" and 0 < seconds and 0 <= waited < seconds
    out, _ = step(out, reals, 4)  # another variant: compiled at its first call, as before
    assert float(out) == 19.0 and built == [(), ("d_r1",)] and told[1][0] == "r1" and told[1][2] >= told[1][1]


def test_each_programs_first_run_is_timed_once():
    """on_first_run is told each variant's first execution once (the step waits for its outputs), after the
    steps still in flight; later calls of that variant are not timed."""
    timed = []
    step = _step([])
    step.on_first_run = lambda name, seconds: timed.append((name, seconds))
    state, reals = jnp.float32(1.0), jnp.ones((2, 3), jnp.float32)
    for i in range(5):
        state, _ = step(state, reals, i)
    assert [name for name, _ in timed] == ["r1", "plain"] and all(seconds > 0 for _, seconds in timed)
    assert float(state) == 1.0 + 6 * (2 + 1 + 2 + 1 + 2)


def test_a_step_that_is_not_the_one_compiled_ahead_compiles_its_own():
    built = []
    step = _step(built)
    args = (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((2, 3), jnp.float32))
    step.compile_ahead(5, args)  # a resume that then fell back to an earlier (even) step
    out, _ = step(jnp.float32(0.0), jnp.ones((2, 3), jnp.float32), 4)
    np.testing.assert_allclose(float(out), 12.0)
    out, _ = step(out, jnp.ones((2, 3), jnp.float32), 5)  # and the plain one still comes from the background
    np.testing.assert_allclose(float(out), 18.0)
    assert sorted(built) == [(), ("d_r1",)]


def test_an_error_in_the_background_compile_is_raised_by_the_step():
    step = _step([], fail=True)
    step.compile_ahead(0, (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((2, 3), jnp.float32)))
    with pytest.raises(ValueError, match="the model failed to trace"):
        step(jnp.float32(0.0), jnp.ones((2, 3), jnp.float32), 0)


def test_a_run_that_stops_before_its_first_step_waits_for_the_compile_and_keeps_it():
    """finish_ahead (the loop's close, and a failed start-up) joins the background compile, so no thread is
    inside XLA when the interpreter shuts down (that aborted the process: exit status 134 instead of 1)."""
    built = []
    step = _step(built)
    step.compile_ahead(1, (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((2, 3), jnp.float32)))
    step.finish_ahead()
    assert not step._ahead and () in step._compiled
    failing = _step([], fail=True)
    failing.compile_ahead(0, (jax.ShapeDtypeStruct((), jnp.float32), jax.ShapeDtypeStruct((2, 3), jnp.float32)))
    failing.finish_ahead()  # its error is not the one to report: the run is stopping for another reason
    assert not failing._ahead and not failing._compiled
