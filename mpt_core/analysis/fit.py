"""Phase-transition fit: a power law that turns into an exponential at s0.

The study's model (mpt-study.md, "Model Phase Transition"): for compression
x <= s0 the metric degrades gradually, y = c + a*x**b; past s0 it collapses,
y = y(s0) * exp(k*(x - s0)), continuous at s0. PPL spans orders of magnitude,
so the fit minimises squared error of log y (relative error), with
scipy.optimize.least_squares.

s0 is a change point: the likelihood has kinks at the data and no useful
curvature, so a Wald interval from the Hessian is meaningless, and with the
6-12 points a study curve has, a bootstrap often resamples no point past the
knee. We therefore profile: for each s0 on a grid the other parameters are
refitted, and the 95% interval is every s0 whose residual sum of squares
stays within the F-test bound RSS(s0) <= RSS_min * (1 + F(1, n-p) / (n-p)),
the small-sample form of the likelihood-ratio interval (Feder 1975 shows the
continuous change point is regular enough for it).

"Is there a transition at all?" is model selection, not a threshold on k:
the piecewise model (5 parameters) against one power law (3) by BIC, and the
piecewise model must win by ``EVIDENCE`` (ΔBIC ≥ 6, "strong" on Kass & Raftery's
scale): with less, pure power laws with 0.5% noise over 17 points were called
transitions in 4-17% of simulated curves (``scripts/fitter_calibration.py``,
docs/ptp.md).

Collapsed points (PPL inf or nan) are right-censored: the model must predict
at least the largest finite value measured, and pays a one-sided penalty
when it predicts less. Accuracy falls instead of rising: ``direction="down"``
flips the signs of a and k (and censors from below).

Accuracy does not fall to zero but to chance (0.25 on four choices): an
exponential decaying to zero, fitted through points stuck at chance, bends
late and puts s0 past the true knee. ``floor=`` fits the accuracy above
chance instead, ``y - floor``; a point at or below the floor is collapsed
(censored: known only to be no better than chance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from mpt_core.errors import FitError

N_PARAMS = 5  # c, a, b, k and s0
N_POWER_PARAMS = 3  # c, a, b
B_RANGE = (0.2, 4.0)  # steeper than x**4 on [0, 1] is already the collapse: the exponential's job
LOG_NOISE_FLOOR = 1e-4  # 0.01%: PPL is reported to ~5 digits; below this, fits are "exact"
EVIDENCE = 6.0  # ΔBIC = BIC(power law) - BIC(piecewise) a transition needs (docs/ptp.md)
GRID_SIZE = 32
CONFIDENCE = 0.95
X_KINDS = ("ratio", "bits")
DIRECTIONS = ("up", "down")


@dataclass(frozen=True)
class Curve:
    """Sorted, validated points on the compression axis, y divided by a reference."""

    x: np.ndarray
    log_y: np.ndarray  # log(y / y_ref); for censored points the censoring bound
    censored: np.ndarray  # bool: collapsed, value known only to be past log_y
    y_ref: float
    sign: int  # +1: y rises with compression (PPL), -1: it falls (accuracy)

    @property
    def n(self) -> int:
        return int(self.x.size)


@dataclass(frozen=True)
class PhaseFit:
    """A fitted phase transition; x values are compression (0 = uncompressed)."""

    s0: float
    s0_low: float
    s0_high: float
    c: float
    a: float
    b: float
    k: float
    has_transition: bool
    sigma: float  # residual standard deviation of log y (relative error)
    bic_piecewise: float
    bic_power: float
    power_law: tuple[float, float, float]  # (c, a, b) of the single power law
    n_points: int
    n_censored: int
    x_kind: str = "ratio"
    direction: str = "up"
    floor: float = 0.0  # c and a are above it; predict adds it back
    interval_method: str = "profile likelihood, F-calibrated, 95%"
    profile: tuple[np.ndarray, np.ndarray] = field(default=(np.empty(0), np.empty(0)), repr=False)

    @property
    def evidence(self) -> float:
        """ΔBIC = BIC(one power law) − BIC(piecewise): how strongly the data ask for a knee."""
        return self.bic_power - self.bic_piecewise

    @property
    def s0_bits(self) -> float:
        """s0 as bits per weight (meaningful for x_kind="bits")."""
        return 16.0 * (1.0 - self.s0)

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """The selected model at x (given in the same kind as the fitted x)."""
        xs = to_compression(np.atleast_1d(np.asarray(x, dtype=float)), self.x_kind)
        if not self.has_transition:
            c, a, b = self.power_law
            return self.floor + c + a * np.power(xs, b)
        before = self.c + self.a * np.power(np.minimum(xs, self.s0), self.b)
        return self.floor + before * np.exp(self.k * np.maximum(xs - self.s0, 0.0))


def to_compression(x: np.ndarray, x_kind: str) -> np.ndarray:
    """Compression on [0, 1): the ratio itself, or 1 - bits/16 for quantization."""
    if x_kind not in X_KINDS:
        raise FitError(f"x_kind must be one of {X_KINDS}, got {x_kind!r}")
    return 1.0 - x / 16.0 if x_kind == "bits" else x


def fit_phase_transition(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    *,
    x_kind: str = "ratio",
    direction: str = "up",
    floor: float = 0.0,
) -> PhaseFit:
    """Fit the power-law + exponential model and locate s0 with a 95% interval;
    ``floor`` (chance accuracy) is what a collapsed model still scores."""
    curve = prepare_curve(x, above_floor(y, floor), x_kind=x_kind, direction=direction)
    grid, rss, params = profile_s0(curve)
    best = int(np.argmin(rss))
    s0, packed, rss_min = refine_minimum(curve, grid, rss, params, best)
    low, high = profile_interval(curve, grid, rss, params, s0, rss_min)
    power, power_rss = fit_power_law(curve)
    bic_pw = bic(rss_min, curve.n, N_PARAMS)
    bic_pl = bic(power_rss, curve.n, N_POWER_PARAMS)
    c, a, b, k = unpack(packed, curve.sign)[0]
    dof = max(curve.n - N_PARAMS, 1)
    return PhaseFit(
        s0=s0,
        s0_low=low,
        s0_high=high,
        c=c * curve.y_ref,
        a=a * curve.y_ref,
        b=b,
        k=k,
        has_transition=bic_pl - bic_pw >= EVIDENCE,
        sigma=math.sqrt(rss_min / dof),
        bic_piecewise=bic_pw,
        bic_power=bic_pl,
        power_law=(power[0] * curve.y_ref, power[1] * curve.y_ref, power[2]),
        n_points=curve.n,
        n_censored=int(curve.censored.sum()),
        x_kind=x_kind,
        direction=direction,
        floor=floor,
        profile=(grid, rss),
    )


def above_floor(y: np.ndarray | list[float], floor: float) -> np.ndarray:
    """``y - floor``, with points at or below the floor marked collapsed (nan)."""
    ys = np.asarray(y, dtype=float).ravel()
    if floor == 0.0:
        return ys
    if not math.isfinite(floor) or floor < 0:
        raise FitError(f"floor must be a finite value >= 0 (chance accuracy), got {floor}")
    shifted = ys - floor
    return np.where(np.isnan(shifted) | (shifted > 0), shifted, np.nan)


def prepare_curve(
    x: np.ndarray | list[float], y: np.ndarray | list[float], *, x_kind: str, direction: str
) -> Curve:
    """Validate, convert and sort the points; mark collapsed ones as censored."""
    if direction not in DIRECTIONS:
        raise FitError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y, dtype=float).ravel()
    if xs.size != ys.size:
        raise FitError(f"x has {xs.size} values but y has {ys.size}")
    if not np.all(np.isfinite(xs)):
        raise FitError(f"x must be finite; got {xs[~np.isfinite(xs)].tolist()}")
    xs = to_compression(xs, x_kind)
    if np.any(xs < 0) or np.any(xs >= 1):
        raise FitError(f"compression must lie in [0, 1); got x = {sorted(set(xs.tolist()))}")
    collapsed = ~np.isfinite(ys)
    if np.any(ys[~collapsed] <= 0):
        raise FitError("the metric must be positive (it is fitted on log y)")
    xs, ys, collapsed = merge_duplicates(xs, ys, collapsed)
    if xs.size < N_PARAMS:
        raise FitError(
            f"too few points ({xs.size} distinct < {N_PARAMS} parameters c, a, b, k, s0): "
            "measure more compression levels"
        )
    if np.count_nonzero(~collapsed) < N_POWER_PARAMS:
        raise FitError(f"only {np.count_nonzero(~collapsed)} finite points: everything collapsed")
    return censor(xs, ys, collapsed, sign=1 if direction == "up" else -1)


def merge_duplicates(
    xs: np.ndarray, ys: np.ndarray, collapsed: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort by x; repeated identical points count once, conflicting ones are an error."""
    order = np.argsort(xs, kind="stable")
    xs, ys, collapsed = xs[order], ys[order], collapsed[order]
    keep = np.ones(xs.size, dtype=bool)
    for i in range(1, xs.size):
        if xs[i] != xs[i - 1]:
            continue
        same = (collapsed[i] and collapsed[i - 1]) or math.isclose(ys[i], ys[i - 1], rel_tol=1e-9)
        if not same:
            raise FitError(f"x = {xs[i]:g} appears twice with different y ({ys[i - 1]}, {ys[i]})")
        keep[i] = False
    return xs[keep], ys[keep], collapsed[keep]


def censor(xs: np.ndarray, ys: np.ndarray, collapsed: np.ndarray, *, sign: int) -> Curve:
    """Collapsed points are known only to be worse than every finite measurement."""
    finite = ys[~collapsed]
    y_ref = float(finite[0])
    bound = finite.max() if sign > 0 else finite.min()
    log_y = np.log(np.where(collapsed, bound, ys) / y_ref)
    return Curve(x=xs, log_y=log_y, censored=collapsed, y_ref=y_ref, sign=sign)


def model_log(theta: np.ndarray, x: np.ndarray, s0: float) -> tuple[np.ndarray, np.ndarray]:
    """log y of the piecewise model and its Jacobian in (c, a, b, k)."""
    c, a, b, k = theta
    xc = np.minimum(x, s0)
    xb = np.power(xc, b)
    level = np.maximum(c + a * xb, 1e-12 * abs(c))  # "down" curves may undershoot zero
    past = np.maximum(x - s0, 0.0)
    log_xc = np.log(np.where(xc > 0, xc, 1.0))
    jac = np.column_stack([1.0 / level, xb / level, a * xb * log_xc / level, past])
    return np.log(level) + k * past, jac


def residuals(theta: np.ndarray, curve: Curve, s0: float) -> tuple[np.ndarray, np.ndarray]:
    """Log-space residuals; a censored point is penalised only on the wrong side."""
    pred, jac = model_log(theta, curve.x, s0)
    res = pred - curve.log_y
    ok = curve.censored & (curve.sign * res >= 0)
    res = np.where(ok, 0.0, res)
    jac = np.where(ok[:, None], 0.0, jac)
    return res, jac


def unpack(p: np.ndarray, sign: int) -> tuple[np.ndarray, np.ndarray]:
    """(c, a, b, k) from unconstrained p, and d(c, a, b, k)/dp (diagonal).

    The constraints (c > 0; a and k carry the direction's sign; b in B_RANGE)
    are built into the parametrisation so MINPACK's unbounded Levenberg-Marquardt
    can run: it is about six times faster than a bounded solver on these
    5-12 point problems, and the profile runs it a hundred times per fit.
    """
    u, v, w, z = np.clip(p, -50.0, 50.0)  # keeps a wild trial step finite
    lo, hi = B_RANGE
    sig = 0.5 * (1.0 + math.tanh(0.5 * w))  # the logistic function, without overflow
    c, a, k = math.exp(u), sign * math.exp(v), sign * math.exp(z)
    return np.array([c, a, lo + (hi - lo) * sig, k]), np.array(
        [c, a, (hi - lo) * sig * (1 - sig), k]
    )


def pack(theta: np.ndarray, sign: int) -> np.ndarray:
    """Inverse of unpack, clipping values that sit on a constraint just inside it."""
    c, a, b, k = theta
    lo, hi = B_RANGE
    frac = min(max((b - lo) / (hi - lo), 1e-6), 1 - 1e-6)
    return np.array(
        [
            math.log(max(c, 1e-9)),
            math.log(max(sign * a, 1e-9)),
            math.log(frac / (1 - frac)),
            math.log(max(sign * k, 1e-6)),
        ]
    )


def initial_params(curve: Curve, s0: float) -> np.ndarray:
    """A start that already has the right level at 0 and at s0."""
    y = np.exp(curve.log_y)
    y_s0 = float(np.interp(s0, curve.x, y))
    c = float(y[0])
    b = 2.0
    a = (y_s0 - c) / max(s0, 1e-6) ** b
    past = curve.x > s0
    slope = 0.0
    if np.any(past):
        slope = (curve.log_y[past][-1] - math.log(max(y_s0, 1e-12))) / (curve.x[past][-1] - s0)
    return pack(np.array([c, a, b, slope]), curve.sign)


def fit_at(curve: Curve, s0: float, start: np.ndarray) -> tuple[float, np.ndarray]:
    """Best parameters for a fixed s0: residual sum of squares and packed parameters."""

    def res(p: np.ndarray) -> np.ndarray:
        return residuals(unpack(p, curve.sign)[0], curve, s0)[0]

    def jac(p: np.ndarray) -> np.ndarray:
        theta, dtheta = unpack(p, curve.sign)
        return residuals(theta, curve, s0)[1] * dtheta

    # full_output: an unconverged start is normal here (the other start or the
    # neighbouring s0 covers it), so it must not warn; its RSS simply loses
    p, *_ = optimize.leastsq(res, start, Dfun=jac, maxfev=400, full_output=True)
    p = np.clip(p, -50.0, 50.0)
    return float(np.sum(res(p) ** 2)), p


def best_fit_at(curve: Curve, s0: float, warm: np.ndarray | None) -> tuple[float, np.ndarray]:
    """Fit from a fresh start and from the neighbour's solution; keep the better."""
    found = fit_at(curve, s0, initial_params(curve, s0))
    if warm is not None:
        other = fit_at(curve, s0, warm)
        if other[0] < found[0]:
            found = other
    return found


def s0_range(curve: Curve) -> tuple[float, float]:
    """s0 needs two points on the power-law side; at the last x it is a pure power law."""
    return float(curve.x[1]), float(curve.x[-1])


def profile_s0(curve: Curve) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """RSS(s0) on a grid that includes every data x (where the profile has kinks)."""
    lo, hi = s0_range(curve)
    grid = np.union1d(np.linspace(lo, hi, GRID_SIZE), curve.x[(curve.x >= lo) & (curve.x <= hi)])
    rss = np.empty(grid.size)
    params: list[np.ndarray] = []
    warm = None
    for i, s0 in enumerate(grid):
        rss[i], warm = best_fit_at(curve, float(s0), warm)
        params.append(warm)
    return grid, np.maximum(rss, 0.0), params


def refine_minimum(
    curve: Curve, grid: np.ndarray, rss: np.ndarray, params: list[np.ndarray], best: int
) -> tuple[float, np.ndarray, float]:
    """Polish the grid minimum by a bounded scalar search between its neighbours."""
    lo = grid[max(best - 1, 0)]
    hi = grid[min(best + 1, grid.size - 1)]
    s0, packed, value = float(grid[best]), params[best], float(rss[best])
    if hi > lo:
        warm = params[best]
        res = optimize.minimize_scalar(
            lambda s: best_fit_at(curve, s, warm)[0],
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": (hi - lo) * 1e-3},
        )
        if res.fun < value:
            s0, value = float(res.x), float(res.fun)
            packed = best_fit_at(curve, s0, warm)[1]
    return s0, packed, value


def rss_threshold(rss_min: float, n: int) -> float:
    """Largest RSS inside the 95% profile-likelihood interval (F calibration)."""
    dof = n - N_PARAMS
    if dof <= 0:
        return math.inf  # an exact fit: the data cannot locate s0 at all
    floor = n * LOG_NOISE_FLOOR**2
    f = stats.f.ppf(CONFIDENCE, 1, dof)
    return max(rss_min, floor) * (1.0 + f / dof)


def profile_interval(
    curve: Curve,
    grid: np.ndarray,
    rss: np.ndarray,
    params: list[np.ndarray],
    s0: float,
    rss_min: float,
) -> tuple[float, float]:
    """The connected set of s0 around the estimate with RSS under the threshold."""
    limit = rss_threshold(rss_min, curve.n)
    inside = rss <= limit
    left = int(np.searchsorted(grid, s0, side="right")) - 1
    right = left + 1
    while left >= 0 and inside[left]:
        left -= 1
    while right < grid.size and inside[right]:
        right += 1
    # the refined s0 lies between grid points and is inside by definition
    low = (
        grid[0]
        if left < 0
        else crossing(curve, grid[left], min(grid[left + 1], s0), params[left], limit)
    )
    high = (
        grid[-1]
        if right >= grid.size
        else crossing(curve, max(grid[right - 1], s0), grid[right], params[right], limit)
    )
    return min(float(low), s0), max(float(high), s0)


def crossing(curve: Curve, a: float, b: float, warm: np.ndarray, limit: float) -> float:
    """Where RSS(s) crosses the limit between neighbouring grid points a and b."""

    def excess(s: float) -> float:
        return best_fit_at(curve, s, warm)[0] - limit

    fa, fb = excess(a), excess(b)
    if fa * fb > 0:
        return a if fa <= 0 else b
    return float(optimize.brentq(excess, a, b, xtol=(b - a) * 1e-2))


def fit_power_law(curve: Curve) -> tuple[tuple[float, float, float], float]:
    """The no-transition alternative: one power law through every point."""
    rss, packed = best_fit_at(curve, float(curve.x[-1]), None)
    c, a, b, _ = unpack(packed, curve.sign)[0]
    return (float(c), float(a), float(b)), rss


def bic(rss: float, n: int, p: int) -> float:
    """Gaussian BIC on log y; RSS below the measurement floor counts as the floor."""
    return n * math.log(max(rss, n * LOG_NOISE_FLOOR**2) / n) + p * math.log(n)
