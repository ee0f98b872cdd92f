"""Tolerances for comparing float32 results that should be equal up to rounding.

XLA:CPU vectorises loops and reductions differently on AVX2 and AVX-512 machines, and for different batch
sizes and batch positions (a vector tail, a split reduction), so the same image computed at another batch
position or on another CPU can differ in the last bits. Measured: a 16^2 tiny generator's image at two
batch positions differed by 9.5e-7 on a Zen 3 (AVX2) and not at all on a Zen 4 (AVX-512); float32's unit
roundoff is 6e-8, and a forward pass of ~20 layers accumulates a few dozen roundings per output. So a whole
forward pass is compared with a tolerance of FORWARD_RTOL relative to the values' scale: ~10x the rounding
seen, far below any real change (a resampled latent moves pixels by > 1e-3).
"""

import numpy as np

FORWARD_RTOL = 1e-5


def assert_equal_to_rounding(actual, desired, rtol: float = FORWARD_RTOL, err_msg: str = ""):
    """|actual - desired| <= rtol * (largest |value| of either), elementwise."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    scale = max(float(np.abs(actual).max(initial=0.0)), float(np.abs(desired).max(initial=0.0)), np.finfo(np.float32).tiny)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)
