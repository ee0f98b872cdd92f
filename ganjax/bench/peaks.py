"""Peak FLOP/s for MFU: the accelerator table (ganjax/hardware.py, with its sources) and, for CPUs, a
measured matmul probe checked against the machine's theoretical peak.

A CPU has no datasheet peak here, so MFU is reported against both: the probe (what XLA's matmul reaches
on this machine) and the theoretical peak from /proc/cpuinfo (cores x clock x FLOP/cycle). A probe above
the theoretical peak means the clock or the FLOP/cycle assumption is wrong for this CPU: it is reported as
an error (the bench record's `peak_error`) and not divided by.
"""

import functools
import time

import jax
import jax.numpy as jnp

from ganjax import hardware
from ganjax.nn import precision

lookup = hardware.lookup
key_for_device = hardware.key_for_device


@functools.lru_cache(maxsize=None)
def cpu_peak_flops(dtype: str = "float32", n: int = 1024, repeats: int = 30) -> float:
    """Best FLOP/s of an n x n matmul on the local CPU (all its cores, as XLA uses them).

    Best of many short runs (~10 ms each): on a shared machine a few of 5 were all slowed, which
    halved the peak and doubled the MFU (a cpu_medium bench reported 103%). 16-bit dtypes are probed as the
    models multiply them: float32 accumulation (ganjax.nn.precision), the CPU's bf16 dot-product path."""
    cpu = jax.devices("cpu")[0]
    a = jax.device_put(jnp.ones((n, n), dtype), cpu)
    f = jax.jit(lambda x: precision.einsum("ij,jk->ik", x, x))
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device_key: str | None, compute_dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, description) for MFU; device_key None means the local CPU, measured by the probe (or its
    theoretical peak where the probe is above it, see cpu_peaks)."""
    if device_key is None:
        return cpu_peaks(compute_dtype)["mfu_peak"]
    p = lookup(device_key)
    if compute_dtype == "bfloat16":
        return p.bf16, f"{p.name} bf16 dense"
    return p.fp32, f"{p.name} float32 at default precision ({'TF32' if p.fp32_strict else 'one bf16 pass'})"


MAX_BOOST_GHZ = 6.2  # the highest x86 boost clock sold (Intel Core i9-14900KS, 6.2 GHz)


def cpu_peaks(compute_dtype: str) -> dict:
    """The local CPU's peaks: {'probe': (FLOP/s, description), 'theoretical': (FLOP/s, description)} (no
    'theoretical' where /proc/cpuinfo is missing), 'mfu_peak': the one MFU divides by (the probe), and
    'error' when the probe measured more than the theory allows: then the probe is not used and MFU is
    against the theoretical peak (the clock or FLOP/cycle assumption is wrong for this CPU).

    Where the clock is only the nominal one (no cpufreq, as in most VMs), the theoretical peak is the
    nominal clock's and the cores may boost above it: a probe above it is a 'note' with the clock it implies,
    and an error only if that clock is beyond any x86 part's boost (MAX_BOOST_GHZ), which a wrong
    FLOP/cycle assumption would give (a 2x error on a 2.6 GHz part implies 5.2-7.3 GHz)."""
    probe = cpu_peak_flops(compute_dtype)
    out = {"probe": (probe, f"CPU {compute_dtype} matmul probe (1024^3, best of 30)")}
    out["mfu_peak"] = out["probe"]
    theory = hardware.cpu_peak()
    if theory is not None:
        peak = theory.flops(compute_dtype)
        out["theoretical"] = (peak, theory.describe(compute_dtype))
        implied = theory.implied_ghz(probe, compute_dtype)
        if not theory.max_clock and probe > peak * 1.02 and implied <= MAX_BOOST_GHZ:
            out["note"] = (f"the {compute_dtype} matmul probe measured {probe / 1e9:.4g} GFLOP/s, above the peak at "
                           f"the nominal clock /proc/cpuinfo reports ({theory.describe(compute_dtype)}): the cores "
                           f"run at >= {implied:.3g} GHz")
        elif probe > peak * 1.02:  # 2%: the timer's resolution on a 10 ms matmul
            out["error"] = (f"the {compute_dtype} matmul probe measured {probe / 1e9:.4g} GFLOP/s, above this CPU's "
                            f"theoretical peak {theory.describe(compute_dtype)}: the clock or FLOP/cycle "
                            f"assumption (ganjax/hardware.py parse_cpu_peak) is wrong for this CPU, so the probe "
                            f"is not used")
            out["mfu_peak"] = out["theoretical"]
    return out
