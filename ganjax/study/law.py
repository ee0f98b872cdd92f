"""The compute-optimal frontier across runs, and the power law FID(C) = a * C^-b + c fitted to a group's points.

Compute C is the cost meter's cumulative training PFLOPs at the evaluation. The fit is least squares in FID
(scipy's curve_fit, trust-region reflective, a >= 0, 0 <= b <= MAX_EXPONENT, c >= 0), on C / C_min for
conditioning, reported back in PFLOPs; the uncertainties are the square roots of the covariance's diagonal
(curve_fit's, scaled by the residual variance). A fit is reported as bad, with its reason, when it cannot
mean anything: no more points than parameters (no residual, no uncertainty), the optimiser fails, a parameter
is undetermined (infinite variance, or a standard error larger than its value), the exponent sits at a bound
(FID does not fall with compute, or falls as a step), or the residual exceeds BAD_RESIDUAL of the mean FID.
"""

import dataclasses
import math
import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

PARAMETERS = ("a", "b", "c")
MAX_EXPONENT = 5.0
BAD_RESIDUAL = 0.1  # rms residual / mean FID above which the law does not describe the points


@dataclasses.dataclass(frozen=True)
class Fit:
    a: float
    b: float
    c: float
    a_err: float
    b_err: float
    c_err: float
    rms_residual: float
    points: int
    problem: str = ""  # "" = a good fit; else why it is not one

    @property
    def ok(self) -> bool:
        return not self.problem

    def __call__(self, compute):
        return self.a * np.asarray(compute, dtype=np.float64) ** -self.b + self.c

    def describe(self) -> str:
        law = (f"FID = {self.a:.4g}(+-{self.a_err:.2g}) * C^-{self.b:.3g}(+-{self.b_err:.2g}) "
               f"+ {self.c:.4g}(+-{self.c_err:.2g}), rms residual {self.rms_residual:.3g} over {self.points} points")
        return law if self.ok else f"bad fit ({self.problem}): {law}"


def _law(x, a, b, c):
    return a * x ** -b + c


def fit_power_law(compute, fid) -> Fit:
    """Fit FID(C) = a * C^-b + c to the points (compute in PFLOPs > 0)."""
    x, y = np.asarray(compute, dtype=np.float64), np.asarray(fid, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    n = len(x)
    nan = float("nan")
    if n < len(PARAMETERS):
        return Fit(nan, nan, nan, nan, nan, nan, nan, n, f"{n} points for {len(PARAMETERS)} parameters")
    x0 = float(x.min())
    u = x / x0
    span = float(y.max() - y.min())
    guess = (max(span, 1e-6), 0.5, max(float(y.min()) - 0.1 * span, 0.0))
    try:
        with warnings.catch_warnings():  # an undetermined covariance is reported as the fit's problem below
            warnings.simplefilter("ignore", OptimizeWarning)
            (a_u, b, c), cov = curve_fit(_law, u, y, p0=guess, bounds=([0, 0, 0], [np.inf, MAX_EXPONENT, np.inf]),
                                         method="trf", maxfev=20000)
    except (RuntimeError, ValueError) as e:
        return Fit(nan, nan, nan, nan, nan, nan, nan, n, f"the optimiser failed: {e}")
    residual = y - _law(u, a_u, b, c)
    rms = float(np.sqrt(np.mean(residual ** 2)))
    with np.errstate(invalid="ignore"):
        errs = np.sqrt(np.diag(cov)) if n > len(PARAMETERS) else np.full(3, np.inf)
    # back to PFLOPs: a_u (C / x0)^-b = a_u x0^b C^-b
    a = float(a_u * x0 ** b)
    a_err = float(errs[0] * x0 ** b) if np.isfinite(errs[0]) else float("inf")
    problem = ""
    if n == len(PARAMETERS):
        problem = f"{n} points for {n} parameters: no residual and no uncertainty"
    elif not np.all(np.isfinite(errs)):
        problem = "a parameter is not determined by the points (infinite variance)"
    elif b < 1e-3:
        problem = "the exponent is 0: FID does not fall with compute"
    elif b > MAX_EXPONENT * 0.999:
        problem = f"the exponent is at its bound {MAX_EXPONENT:g}: the points do not follow a power law"
    elif any(err > abs(v) for v, err in ((a, a_err), (b, errs[1]), (c, errs[2]))):
        name, v, err = next((n, v, e) for n, v, e in zip(PARAMETERS, (a, b, c), (a_err, errs[1], errs[2])) if e > abs(v))
        problem = f"{name} = {v:.3g} has a standard error of {err:.2g}, more than itself: the points do not determine it"
    elif rms > BAD_RESIDUAL * float(np.mean(y)):
        problem = f"the rms residual {rms:.3g} exceeds {BAD_RESIDUAL:g} of the mean FID {float(np.mean(y)):.3g}"
    return Fit(a, float(b), float(c), a_err, float(errs[1]), float(errs[2]), rms, n, problem)


def frontier(points):
    """points: [(compute, fid, run)] -> the compute-optimal frontier, [(compute, fid, run)] at each compute
    where the best FID reached so far (by any run, at that compute or less) improves."""
    best, out = math.inf, []
    for compute, fid, run in sorted(points, key=lambda p: (p[0], p[1])):
        if fid < best:
            best = fid
            out.append((compute, fid, run))
    return out
