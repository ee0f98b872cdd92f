"""libtpu on a host without a TPU: the environment it needs to start quietly, and the abstract devices of
a slice (jax.experimental.topologies), which jax.jit compiles real TPU executables for.

libtpu reads its environment when it loads, so `prepare_environment()` runs before anything asks for TPU
devices. Outside a TPU VM there is no metadata server: TPU_SKIP_MDS_QUERY skips the query, and the
worker variables say "one local host" so libtpu does not warn about the missing ones. The host's own
computations stay on the CPU (JAX_PLATFORMS=cpu): no TPU backend is started, only the compiler is used.
No chip is opened either, so the one-process-per-host lock libtpu takes (/tmp/libtpu_lockfile, which
failed a second plan running beside the first) is skipped: ALLOW_MULTIPLE_LIBTPU_LOAD.
"""

import functools
import importlib.util
import os

from ganjax import hardware

ENVIRONMENT = {"JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
               "TPU_WORKER_ID": "0", "TPU_ACCELERATOR_TYPE": "v5litepod-4", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


class LibtpuMissing(RuntimeError):
    """libtpu is not installed; the message says what to install."""


def prepare_environment():
    """Set libtpu's host-side environment (a value the user set is kept). Call before JAX starts."""
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def libtpu_missing_reason() -> str | None:
    """Why TPU programs cannot be compiled here (None when libtpu is installed)."""
    if importlib.util.find_spec("libtpu") is not None:
        return None
    import jax  # deferred: this module is imported before prepare_environment(), JAX after it

    return (f"libtpu is not installed, and compiling for a TPU needs it. Install it with\n"
            f"    pip install 'jax[tpu]=={jax.__version__}'\n"
            f"(or `pip install -e '.[tpu]'` in a ganjax checkout); it runs on this CPU host, no TPU needed")


def check_libtpu():
    reason = libtpu_missing_reason()
    if reason:
        raise LibtpuMissing(reason)


@functools.cache
def devices(slice_name: str) -> tuple:
    """The abstract devices (one per chip) of a slice such as 'v5p-64'."""
    s = hardware.tpu_slice(slice_name)
    check_libtpu()
    from jax.experimental import topologies  # deferred: after prepare_environment() (module docstring)

    desc = topologies.get_topology_desc(platform="tpu", topology_name=s.topology_name,
                                        chip_config_name=s.accelerator.chip_config)
    out = tuple(desc.devices)
    if len(out) != s.chips:
        raise RuntimeError(f"libtpu gave {len(out)} devices for {s.topology_name}, expected {s.chips} chips")
    return out
