"""The exponent ν of the transition: a data collapse of χ and the widths of P_0 against depth."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from rhm_jax.validation import check_int, describe, integral_value


# ---- the exponent ν from a finite-size data collapse ----------------------------------------
class CollapseFit(NamedTuple):
    """Result of :func:`collapse_exponent`.

    Attributes:
      nu: fitted ``ν = ln s / ln b``; ``nu_se`` its parametric-bootstrap standard error.
      growth: fitted ``b`` (the transition narrows by ``b`` per level); ``growth_se``.
      cost: collapse cost ``S`` at the optimum (≈ 1 for a collapse within the errors).
      log_growth: the coarse grid of ``ln b``; ``costs``: ``S`` on it.
      n_points: points compared.
      reason: ``None`` when every value is determined; otherwise why ``nu`` and ``growth``
        (or only their errors) are NaN.
    """

    nu: float
    nu_se: float
    growth: float
    growth_se: float
    cost: float
    log_growth: np.ndarray
    costs: np.ndarray
    n_points: int
    reason: str | None = None


def _collapse_cost(curves, log_b: float) -> tuple[float, int]:
    """Houdayer–Hartmann-style cost: every point against the linear interpolation of every
    other curve at the same scaled abscissa, in units of the combined standard error."""
    scaled = [((t - c) * math.exp(L * log_b), y, e) for L, t, y, e, c in curves]
    total, count = 0.0, 0
    for i, (x, y, e) in enumerate(scaled):
        for j, (xo, yo, eo) in enumerate(scaled):
            if i == j:
                continue
            inside = (x >= xo[0]) & (x <= xo[-1])
            if not inside.any():
                continue
            yi = np.interp(x[inside], xo, yo)
            ei = np.interp(x[inside], xo, eo)
            total += float(np.sum((y[inside] - yi) ** 2 / (e[inside] ** 2 + ei**2)))
            count += int(inside.sum())
    return (total / count if count else math.inf), count


def _peak_height(t: np.ndarray, y: np.ndarray) -> float:
    """Height of a sampled peak: the vertex of the parabola through the largest point and
    its two neighbours (less tied to where the grid falls than the largest point alone).
    Not positive when the curve never rises above zero (no peak)."""
    i = int(np.argmax(y))
    top = float(y[i])
    if 0 < i < len(y) - 1:
        a, b, c = np.polyfit(t[i - 1:i + 2] - t[i], y[i - 1:i + 2], 2)
        if a < 0:
            top = max(top, float(c - b * b / (4 * a)))
    return top


def _finite_real(name: str, value) -> float:
    """A finite real number (a bool is not one), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value} must be finite")
    return float(value)


def _check_depths(depths) -> list[int]:
    """Depths as Python ints ``>= 1`` (a fractional depth is refused, not truncated)."""
    if isinstance(depths, (str, bytes)) or not hasattr(depths, "__len__"):
        raise TypeError(f"depths must be a sequence of integers, got {describe(depths)}")
    depths = [check_int(f"depths[{i}]", integral_value(L), minimum=1)
              for i, L in enumerate(depths)]
    if len(set(depths)) < 2:
        raise ValueError(f"depths = {depths} must hold at least 2 distinct depths")
    return depths


#: Default coarse grid of ``ln b`` scanned by :func:`collapse_exponent`.
COLLAPSE_GRID = np.linspace(0.02, 2.5, 125)
COLLAPSE_GRID.setflags(write=False)


def collapse_exponent(depths, times, values, errors, centres, s: int, *, baseline: float = 0.0,
                      log_growth=None, n_boot: int = 200, seed: int = 0) -> CollapseFit:
    """The exponent ``ν`` from a finite-size data collapse of a peaked observable.

    Pure NumPy on measured curves (``docs/theory/mean_field.md``,
    ``docs/theory/correlations.md``). Near the transition of a depth-``L`` tree
    (``d = s**L`` tokens), the ansatz is
    ``(y_L(t) - baseline) ≈ A_L · f((t - t_L) · b**L)``: the curve is a fixed shape whose
    width shrinks by ``b = F'(p*)`` per level around the depth's centre ``t_L`` (the
    ``P_0`` midpoint, say), with an amplitude ``A_L`` free per depth. Each curve is
    divided by its peak height above the baseline (the vertex of a parabola through the
    largest point and its neighbours), so ``A_L`` drops out; ``b``
    minimises the collapse cost ``S`` (mean squared distance of every point from the linear
    interpolation of every other depth's curve at the same scaled abscissa, in units of the
    combined error) over a grid of ``ln b``. Since ``ξ = s**(levels)`` and the width is
    ``∝ b**(-L) = d**(-1/ν)``, ``ν = ln s / ln b``. Its error is the standard deviation of
    ``ν`` over ``n_boot`` parametric bootstrap replicas (each point redrawn from
    ``N(y, error)``, the whole fit repeated), inflated by ``sqrt(S)`` when the optimum's
    cost ``S`` exceeds 1 (as a reduced chi-square would be).

    Rules. Bad input raises (``ValueError``, or ``TypeError`` for a wrong type): depths
    that are not integers ``>= 1`` or fewer than 2 distinct ones; entries that do not
    match the depths; non-finite centres or baseline; per depth, ``times``, ``values`` and
    ``errors`` of different shapes, a negative finite error, or fewer than 3 finite
    points; a ``log_growth`` grid that is not 1-D, finite, positive (``b > 1``: the
    transition narrows with depth) and strictly increasing with at least 3 points;
    ``n_boot`` other than 0 or an integer ``>= 2``; ``seed`` not an integer ``>= 0``.
    A fit without meaning is *undetermined*: ``nu``, ``nu_se``, ``growth`` and
    ``growth_se`` are NaN and ``reason`` says why — when a depth's curve has no peak above
    the baseline (nothing to scale), when no two depths overlap at any ``b`` of the grid,
    or when the coarse optimum lies at either end of the grid (the minimum is outside the
    range scanned, or the cost is flat: curves that collapse at every ``b``, e.g. flat
    ones, fix no ``b``). When only some bootstrap replicas have their optimum at an end of
    the grid, ``nu`` stands but ``nu_se`` and ``growth_se`` are NaN (the grid would cut
    off their spread), with the count in ``reason``.

    Args:
      depths: ``(K,)`` depths ``L`` (at least 2 distinct).
      times: ``K`` arrays of noise levels (increasing), one per depth.
      values, errors: ``K`` arrays of the observable and its standard error (non-finite
        points are dropped).
      centres: ``(K,)`` the centre ``t_L`` of each depth's transition.
      s: branching factor.
      baseline: value of the observable away from the transition (``1`` for ``χ``).
      log_growth: coarse grid of ``ln b`` to scan (default :data:`COLLAPSE_GRID`, 125
        points in ``[0.02, 2.5]``); the optimum is refined on 41 points between its
        neighbours.
      n_boot: bootstrap replicas (0: no error bar, ``nu_se`` NaN).
      seed: NumPy seed of the bootstrap.

    Returns:
      :class:`CollapseFit`.
    """
    depths = _check_depths(depths)
    if not (len(times) == len(values) == len(errors) == len(centres) == len(depths)):
        raise ValueError("depths, times, values, errors and centres must have one entry per "
                         f"depth; got lengths {len(depths)}, {len(times)}, {len(values)}, "
                         f"{len(errors)}, {len(centres)}")
    if not np.all(np.isfinite(np.asarray(centres, np.float64))):
        raise ValueError(f"centres = {list(centres)} must be finite")
    s = check_int("s", s, minimum=2)
    baseline = _finite_real("baseline", baseline)
    n_boot = check_int("n_boot", n_boot, minimum=0)
    if n_boot == 1:
        raise ValueError("n_boot = 1 must be 0 (no error bar) or >= 2 (a standard deviation "
                         "needs two replicas)")
    seed = check_int("seed", seed, minimum=0)
    grid = COLLAPSE_GRID if log_growth is None else np.asarray(log_growth, np.float64)
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid)) or grid[0] <= 0 \
            or np.any(np.diff(grid) <= 0):
        raise ValueError(f"log_growth = {np.asarray(log_growth).tolist()} must be a strictly "
                         "increasing 1-d grid of at least 3 finite values > 0 (ln b > 0: the "
                         "transition narrows with depth)")
    raw = []
    for k, (L, t, y, e, c) in enumerate(zip(depths, times, values, errors, centres)):
        t, y, e = (np.asarray(a, np.float64) for a in (t, y, e))
        if not t.ndim == 1 or t.shape != y.shape or t.shape != e.shape:
            raise ValueError(f"depth L = {L}: times, values and errors must be 1-d of the same "
                             f"length, got shapes {t.shape}, {y.shape}, {e.shape}")
        if np.any(e < 0):
            i = int(np.flatnonzero(e < 0)[0])
            raise ValueError(f"errors[{k}][{i}] = {e[i]} (depth L = {L}) must be >= 0: a "
                             "standard error")
        keep = np.isfinite(t) & np.isfinite(y) & np.isfinite(e)
        if keep.sum() < 3:
            raise ValueError(f"depth L = {L} has {int(keep.sum())} finite points; need >= 3")
        order = np.argsort(t[keep])
        raw.append((L, t[keep][order], y[keep][order] - baseline, e[keep][order], float(c)))

    def fit(curves):
        normed = []
        for L, t, y, e, c in curves:
            top = _peak_height(t, y)
            top = top if top > 0 else 1.0  # a replica's noise may sink a peak: kept unscaled
            # An error floor: 1% of the peak keeps S finite where a point has zero error.
            normed.append((L, t, y / top, np.maximum(e / top, 1e-2), c))
        costs = np.array([_collapse_cost(normed, lb)[0] for lb in grid])
        best = int(np.argmin(costs))
        # Refine between the neighbours of the coarse optimum.
        fine = np.linspace(grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)], 41)
        fine_costs = np.array([_collapse_cost(normed, lb)[0] for lb in fine])
        return fine[int(np.argmin(fine_costs))], costs, best

    def undetermined(why, costs=None, cost=math.nan, count=0):
        costs = np.full(grid.shape, math.nan) if costs is None else costs
        return CollapseFit(math.nan, math.nan, math.nan, math.nan, cost, grid, costs, count, why)

    flat = [L for L, t, y, e, c in raw if not _peak_height(t, y) > 0]
    if flat:
        return undetermined(f"no peak above the baseline {baseline} at depth L = {flat[0]}: "
                            "there is no width to scale")
    best, costs, index = fit(raw)
    normed_cost = float(np.min(costs))
    if not math.isfinite(normed_cost):
        return undetermined("no two depths overlap at any b of the grid: nothing to compare",
                            costs)
    npts = _collapse_cost([(L, t, y, np.ones_like(y), c) for L, t, y, e, c in raw], best)[1]
    if index in (0, len(grid) - 1):
        side = "lower" if index == 0 else "upper"
        return undetermined(
            f"the collapse cost is lowest at the {side} end of the grid (ln b = "
            f"{grid[index]:.4g}): b lies outside the range scanned, or the cost is flat and "
            "fixes no b", costs, normed_cost, npts)
    rng = np.random.default_rng(seed)
    boot, at_edge = [], 0
    for _ in range(n_boot):
        drawn = [(L, t, y + e * rng.standard_normal(y.shape), e, c) for L, t, y, e, c in raw]
        b_fit, _, b_index = fit(drawn)
        boot.append(b_fit)
        at_edge += b_index in (0, len(grid) - 1)
    boot = np.asarray(boot)
    nu = math.log(s) / best
    inflate = math.sqrt(max(normed_cost, 1.0))
    reason = None
    if at_edge:
        reason = (f"{at_edge} of {n_boot} bootstrap replicas have their optimum at an end of "
                  "the grid: the grid would cut off their spread, so the errors are NaN")
    elif boot.size == 0:
        reason = "n_boot = 0: no bootstrap, so no errors"
    spread = boot.size > 1 and not at_edge
    return CollapseFit(
        nu, inflate * float(np.std(math.log(s) / boot, ddof=1)) if spread else math.nan,
        math.exp(best),
        inflate * float(np.std(np.exp(boot), ddof=1)) if spread else math.nan,
        normed_cost, grid, costs, npts, reason)


class WidthFit(tuple):
    """``(nu, nu_se)`` of :func:`width_exponent`: unpacks as a pair, and ``reason`` says
    why ``nu`` (or only ``nu_se``) is NaN (``None`` when both are determined)."""

    def __new__(cls, nu: float, nu_se: float, reason: str | None = None):
        fit = super().__new__(cls, (float(nu), float(nu_se)))
        fit.reason = reason
        return fit

    @property
    def nu(self) -> float:
        return self[0]

    @property
    def nu_se(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return f"WidthFit(nu={self[0]!r}, nu_se={self[1]!r}, reason={self.reason!r})"


#: Fitted relative shrink of the widths over the depths below which they count as flat
#: (``ln w`` changing by less than this is rounding, not a trend).
_FLAT_WIDTHS = 1e-9


def width_exponent(depths, widths, s: int) -> WidthFit:
    """``ν`` from the finite-size scaling of the transition width, ``w_L ∝ b**(-L)``.

    Least squares of ``ln w_L`` on ``L`` gives ``ln b`` (minus the slope) and its standard
    error from the residuals (``N - 2`` degrees of freedom; NaN with two depths);
    ``ν = ln s / ln b`` (``docs/theory/correlations.md``) and its error by the delta
    method. Pure NumPy.

    Rules. Bad input raises: depths that are not integers ``>= 1`` (a NaN or fractional
    depth is refused), fewer than 2 distinct depths, ``widths`` of another length or not
    finite and ``> 0``, ``s`` not an integer ``>= 2``. ``ν`` exists only when the widths
    shrink with ``L`` (``b > 1``); it is *undetermined* (``nu`` and ``nu_se`` NaN, with a
    ``reason``) when the fitted widths do not shrink — ``ln b · (L_max - L_min) <= 1e-9``,
    which includes equal widths (whose rounding would otherwise give ``ν ~ 1e15``) and
    growing ones — or, with 3 or more depths, when ``ln b`` is within two standard errors
    of 0 (the data cannot tell the widths from constant, and ``ν = ln s / ln b`` is then
    unbounded above).

    Returns:
      :class:`WidthFit` ``(nu, nu_se)`` (unpacks as a pair), with ``reason``.

    Examples:
      >>> nu, nu_se = width_exponent([5, 7, 9], [0.1 * 2.0**-L for L in (5, 7, 9)], 2)
      >>> round(nu, 12), round(nu_se, 12)
      (1.0, 0.0)
      >>> fit = width_exponent([3, 5, 7], [0.1, 0.1, 0.1], 2)  # equal widths: no ν
      >>> fit.nu, fit.reason.split(" (")[0]
      (nan, 'the widths do not shrink with L')
    """
    depths = np.asarray(_check_depths(depths), np.float64)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise TypeError(f"widths must be a sequence of numbers, got {describe(widths)}")
    widths = np.asarray(widths, np.float64)
    if widths.shape != depths.shape:
        raise ValueError(f"widths = {widths.tolist()} must have one entry per depth, "
                         f"{len(depths)}")
    if not np.all(np.isfinite(widths) & (widths > 0)):
        raise ValueError(f"widths = {widths.tolist()} must be finite and > 0")
    s = check_int("s", s, minimum=2)
    slope, intercept = np.polyfit(depths, np.log(widths), 1)
    log_b = -slope
    n = len(depths)
    if n > 2:
        resid = np.log(widths) - (slope * depths + intercept)
        slope_se = math.sqrt(np.sum(resid**2) / (n - 2) / np.sum((depths - depths.mean())**2))
    else:
        slope_se = math.nan
    if log_b * (depths.max() - depths.min()) <= _FLAT_WIDTHS:
        return WidthFit(math.nan, math.nan,
                        f"the widths do not shrink with L (fitted ln b = {log_b:.3g}): "
                        "nu = ln s / ln b needs b > 1")
    if log_b <= 2 * slope_se:
        return WidthFit(math.nan, math.nan,
                        f"the fitted ln b = {log_b:.3g} is within two standard errors "
                        f"({slope_se:.3g}) of 0: the widths are not shown to shrink, and "
                        "nu = ln s / ln b is unbounded above")
    nu = math.log(s) / log_b
    return WidthFit(nu, abs(nu / log_b) * slope_se,
                    "two depths: no residuals, so no error" if n == 2 else None)


