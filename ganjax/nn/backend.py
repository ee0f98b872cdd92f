"""The backend the models are traced for, which picks the faster form of some ops (ganjax/nn/conv.py,
ganjax/nn/precision.py).

Normally that is the backend JAX runs on. Compiling ahead of time for another one (a TPU program built on a
CPU host, `ganjax plan`) traces the models for the target instead, inside `tracing_for("tpu")`.
"""

import contextlib
import contextvars

import jax

_TARGET = contextvars.ContextVar("ganjax_target_platform", default=None)


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': what the program being traced will run on."""
    return _TARGET.get() or jax.default_backend()


@contextlib.contextmanager
def tracing_for(target: str):
    """Trace (jit(...).lower) for `target` instead of the default backend."""
    token = _TARGET.set(target)
    try:
        yield
    finally:
        _TARGET.reset(token)
