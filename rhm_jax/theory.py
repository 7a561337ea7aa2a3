"""Mean-field theory of the ε-process (``docs/theory/mean_field.md``).

Host-side float64 NumPy, vectorised over arrays of noise levels ``eps``; nothing here is
traced by JAX. Notation follows ``docs/theory/mean_field.md``: ``p_l`` is the average
upward belief on the true symbol at level ``l`` (level 0 = root/class, level ``L`` =
tokens), the leaves start at ``p_L = 1 - ε + ε/v`` and every level up applies
``p_{l-1} = F(p_l)`` with

    F(p) = [p**s + c(1 - p**s)] / [p**s + f~(1 - p**s)],
    c = (m-1)/(v**s-1),  f~ = (m*v-1)/(v**s-1).

``F`` is increasing and maps ``[1/v, 1]`` onto itself, with fixed points ``1/v`` and ``1``;
when ``F'(1) = s·m(v-1)/(v**s-1) < 1`` an unstable fixed point ``p*`` separates their
basins, giving the class transition at ``ε* = (1-p*)·v/(v-1)`` in the infinite-depth limit.

Finite depth. Because ``F`` is increasing, ``F^(L+k)(u) - F^L(u)`` has the sign of
``F(u) - u``, so class curves ``p_0(ε)`` of any two depths cross *exactly* at
``(ε*, p*)``; and near ``p*`` the inverse map contracts by ``1/F'(p*)`` per level, so the
width of the transition shrinks like ``F'(p*)**(-L)`` (corrections are relatively
``O(F'(p*)**(-L))``).

The helpers :func:`level_crossing`, :func:`midpoint_crossing`, :func:`curve_width` and
:func:`extrapolate_threshold` work on arbitrary sampled curves, so the same analysis
applies to measured BP curves (``docs/theory/phase_transition.md``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import NamedTuple

import numpy as np

from rhm_jax.config import RHMConfig
from rhm_jax.validation import check_int, describe, integral_value

_BISECTION_STEPS = 200  # more than float64 needs; the loop exits when the bracket stops shrinking
_ROOT_SCAN_POINTS = 4097  # grid that brackets the interior fixed points before bisection
_CROSSING_BRACKET_DELTA = 1e-6  # normalised class belief at the ends of the crossing bracket


class LevelCurves(NamedTuple):
    """Mean-field curves of every level, each of shape ``(L+1,) + eps.shape``.

    Attributes:
      p: upward belief on the true symbol, ``p[l]`` for level ``l`` (0 = root).
      q: probability that level ``l`` is reconstructed, top-down (``q[0] = p[0]``).
    """

    p: np.ndarray
    q: np.ndarray


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} = {value} must be >= {minimum}")
    return int(value)


def _check_finite(name: str, value) -> float:
    """A finite real number (not a bool), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value} must be finite")
    return float(value)


def _check_eps(eps) -> np.ndarray:
    eps = np.asarray(eps, dtype=np.float64)
    if not np.all((eps >= 0.0) & (eps <= 1.0)):
        raise ValueError(f"eps must lie in [0, 1], got values in [{eps.min()}, {eps.max()}]")
    return eps


def _bisect(func, lo: float, hi: float) -> float:
    """Root of a scalar ``func`` with ``func(lo)`` and ``func(hi)`` of opposite signs."""
    f_lo = func(lo)
    if f_lo == 0.0:
        return lo
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # bracket is two adjacent floats
            break
        f_mid = func(mid)
        if f_mid == 0.0:
            return mid
        if (f_mid > 0.0) == (f_lo > 0.0):
            lo, f_lo = mid, f_mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def p_star_s2(v: int, m: int) -> float:
    """Closed-form unstable fixed point for ``s = 2``: ``p* = (m-1)/(v-m)``
    (``docs/theory/mean_field.md``).

    For ``s = 2``, ``F(p) = p`` is a cubic with roots ``1``, ``1/v`` and ``(m-1)/(v-m)``
    (the product of the roots is ``(m-1)/(v(v-m))``). The value is returned as it is, even
    when it falls outside ``(1/v, 1)`` (no transition); it is ``inf`` for ``m = v``.

    Args:
      v: vocabulary size.
      m: number of rules per symbol.

    Returns:
      ``(m-1)/(v-m)`` as a float.
    """
    v = _check_int("v", v, 2)
    m = _check_int("m", m, 1)
    return math.inf if m == v else (m - 1) / (v - m)


@dataclasses.dataclass(frozen=True)
class MeanField:
    """Mean-field map of the ε-process for an RHM with ``n_classes = v``
    (``docs/theory/mean_field.md``).

    Args:
      v: vocabulary size.
      m: number of production rules per symbol (``1 <= m <= v**(s-1)``).
      s: branching factor.

    Examples:
      >>> mf = MeanField(v=32, m=8, s=2)
      >>> mf.has_transition, round(mf.p_star, 6), round(7 / 24, 6)
      (True, 0.291667, 0.291667)
      >>> round(mf.slope_at_p_star, 4), round(mf.eps_star, 4), round(mf.nu, 3)
      (1.4422, 0.7312, 1.893)
      >>> curves = mf.level_curves([0.0, 0.5, 1.0], L=3)
      >>> curves.p.shape, np.round(curves.q[0], 3).tolist()
      ((4, 3), [1.0, 0.804, 0.031])
    """

    v: int
    m: int
    s: int

    def __post_init__(self):
        for name, minimum in (("v", 2), ("m", 1), ("s", 2)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        if self.m > self.v ** (self.s - 1):
            raise ValueError(
                f"m = {self.m} exceeds v**(s-1) = {self.v}**{self.s - 1} = "
                f"{self.v ** (self.s - 1)}: the v*m rules of a level must be distinct s-tuples"
            )

    @classmethod
    def from_config(cls, config: RHMConfig) -> MeanField:
        """The mean-field map of ``config`` (its depth ``L`` is passed to the methods)."""
        if config.n_classes != config.v:
            raise ValueError(
                f"n_classes = {config.n_classes} differs from v = {config.v}: the mean-field "
                "map (docs/theory/mean_field.md) assumes the root has the same alphabet as "
                "the levels below"
            )
        return cls(v=config.v, m=config.m, s=config.s)

    # ---- constants of the map ---------------------------------------------------------
    @property
    def c(self) -> float:
        """``c = (m-1)/(v**s-1)``."""
        return (self.m - 1) / (self.v**self.s - 1)

    @property
    def f_tilde(self) -> float:
        """``f~ = (m*v-1)/(v**s-1)``."""
        return (self.m * self.v - 1) / (self.v**self.s - 1)

    @property
    def slope_at_one(self) -> float:
        """``F'(1) = s·m(v-1)/(v**s-1)``; the transition needs it below 1."""
        return self.s * self.m * (self.v - 1) / (self.v**self.s - 1)

    # ---- the map and its derivative ---------------------------------------------------
    def F(self, p):
        """``F(p) = [p**s + c(1-p**s)] / [p**s + f~(1-p**s)]`` elementwise
        (``docs/theory/mean_field.md``)."""
        x = np.asarray(p, dtype=np.float64) ** self.s
        return (x + self.c * (1.0 - x)) / (x + self.f_tilde * (1.0 - x))

    def F_prime(self, p):
        """``F'(p) = s·p**(s-1)·(f~ - c) / [p**s + f~(1-p**s)]**2`` elementwise.

        ``F`` is a Möbius map of ``x = p**s`` whose derivative in ``x`` is
        ``(f~ - c)/denominator**2``; the chain rule gives the factor ``s·p**(s-1)``.
        """
        p = np.asarray(p, dtype=np.float64)
        x = p**self.s
        denominator = x + self.f_tilde * (1.0 - x)
        return self.s * p ** (self.s - 1) * (self.f_tilde - self.c) / denominator**2

    def F_inverse(self, y):
        """Inverse of ``F`` on ``[1/v, 1]``: ``p = [(y f~ - c)/((1-c) - y(1-f~))]**(1/s)``."""
        y = np.asarray(y, dtype=np.float64)
        x = (y * self.f_tilde - self.c) / ((1.0 - self.c) - y * (1.0 - self.f_tilde))
        return x ** (1.0 / self.s)

    def A(self, p):
        """``A(p) = [p**s + c(p - p**s)] / [p**s + c(1-p**s)]``: child right given parent right."""
        p = np.asarray(p, dtype=np.float64)
        x = p**self.s
        return (x + self.c * (p - x)) / (x + self.c * (1.0 - x))

    def B(self, p):
        """``B(p) = (p - p**s)/(1 - p**s)``: child right given parent wrong.

        Written as ``p·(1 + p + … + p**(s-2)) / (1 + p + … + p**(s-1))`` so that ``p = 1``
        is not a 0/0; the limit there is ``(s-1)/s``.
        """
        p = np.asarray(p, dtype=np.float64)
        powers = p[..., None] ** np.arange(self.s)
        return p * powers[..., : self.s - 1].sum(-1) / powers.sum(-1)

    # ---- fixed points -----------------------------------------------------------------
    @functools.cached_property
    def fixed_points(self) -> np.ndarray:
        """All fixed points of ``F`` in ``[1/v, 1]``, ascending (``1/v`` and ``1`` included).

        ``(F(p) - p)·denominator·(v**s-1)`` is the degree-``s+1`` polynomial
        ``-(v**s-m·v)p**(s+1) + (v**s-m)p**s - (m·v-1)p + (m-1)``; dividing out the known
        roots ``1`` and ``1/v`` leaves a degree-``s-1`` quotient whose roots in
        ``(1/v, 1)`` are bracketed on a grid and refined by bisection. The deflation
        avoids the 0/0 of bisecting ``F(p) - p`` next to its known roots.
        """
        v, m, s = self.v, self.m, self.s
        coefficients = np.zeros(s + 2)  # highest degree first, as np.polyval expects
        coefficients[0] = -(v**s - m * v)
        coefficients[1] = v**s - m
        coefficients[s] = -(m * v - 1)
        coefficients[s + 1] = m - 1
        quotient, _ = np.polydiv(coefficients, np.polymul([1.0, -1.0], [1.0, -1.0 / v]))

        def deflated(p):
            return float(np.polyval(quotient, p))

        grid = np.linspace(1.0 / v, 1.0, _ROOT_SCAN_POINTS)
        values = np.polyval(quotient, grid)
        interior = []
        for i in range(len(grid) - 1):
            if values[i] == 0.0 and 0 < i:
                interior.append(grid[i])
            elif values[i] * values[i + 1] < 0.0:
                interior.append(_bisect(deflated, grid[i], grid[i + 1]))
        points = np.array([1.0 / v, *interior, 1.0])
        points.setflags(write=False)  # cached: callers must not edit it in place
        return points

    @functools.cached_property
    def p_star(self) -> float:
        """Unstable interior fixed point ``p*`` (``F'(p*) > 1``); NaN when there is none."""
        interior = self.fixed_points[1:-1]
        unstable = interior[self.F_prime(interior) > 1.0]
        return float(unstable[-1]) if unstable.size else math.nan

    @property
    def has_transition(self) -> bool:
        """Whether the class has a noise threshold: ``F'(1) < 1``
        (``docs/theory/mean_field.md``).

        The inequality is tested in exact integers, ``s·m(v-1) < v**s - 1``, so
        configurations with ``F'(1) = 1`` exactly are classified without rounding. It
        also requires ``p*`` to exist, which fails only when ``1/v`` is itself unstable
        and no interior fixed point appears (e.g. ``m = 1``: the class is readable from
        any noise below ``ε = 1``).
        """
        return self.s * self.m * (self.v - 1) < self.v**self.s - 1 and not math.isnan(self.p_star)

    @property
    def slope_at_p_star(self) -> float:
        """``F'(p*)``, the growth factor per level of deviations from ``p*``."""
        return float(self.F_prime(self.p_star))

    @property
    def eps_star(self) -> float:
        """Critical noise of the infinite-depth limit, ``ε* = (1-p*)·v/(v-1)``."""
        return float(self.eps_from_leaf_belief(self.p_star))

    @property
    def nu(self) -> float:
        """Correlation-length exponent ``ν = ln s / ln F'(p*)``
        (``docs/theory/correlations.md``)."""
        return math.log(self.s) / math.log(self.slope_at_p_star)

    # ---- noise <-> leaf belief ----------------------------------------------------------
    def leaf_belief(self, eps):
        """``p_L = 1 - ε + ε/v``, the leaf belief on the true token under the ε-process."""
        eps = _check_eps(eps)
        return 1.0 - eps + eps / self.v

    def eps_from_leaf_belief(self, p):
        """Inverse of :meth:`leaf_belief`: ``ε = (1-p)·v/(v-1)``."""
        return (1.0 - np.asarray(p, dtype=np.float64)) * self.v / (self.v - 1)

    # ---- level-wise curves at depth L ---------------------------------------------------
    def level_curves(self, eps, L: int) -> LevelCurves:
        """Bottom-up ``p_l(ε)`` and top-down ``q_l(ε)`` for every level of a depth-``L`` tree.

        ``p_L = 1 - ε + ε/v``, ``p_{l-1} = F(p_l)``; ``q_0 = p_0``,
        ``q_l = q_{l-1}·A(p_l) + (1-q_{l-1})·B(p_l)`` (``docs/theory/mean_field.md``).

        Args:
          eps: noise levels in ``[0, 1]``, any shape.
          L: depth.

        Returns:
          :class:`LevelCurves` with arrays of shape ``(L+1,) + eps.shape``, indexed by level.
        """
        L = _check_int("L", L, 1)
        leaf = self.leaf_belief(eps)
        p = np.empty((L + 1,) + leaf.shape)
        p[L] = leaf
        for level in range(L, 0, -1):
            p[level - 1] = self.F(p[level])
        q = np.empty_like(p)
        q[0] = p[0]
        for level in range(1, L + 1):
            q[level] = q[level - 1] * self.A(p[level]) + (1.0 - q[level - 1]) * self.B(p[level])
        return LevelCurves(p=p, q=q)

    def class_curve(self, eps, L: int):
        """``p_0(ε)`` at depth ``L`` (equal to ``q_0``), shape ``eps.shape``."""
        L = _check_int("L", L, 1)
        p = self.leaf_belief(eps)
        for _ in range(L):
            p = self.F(p)
        return p

    def eps_at_class_belief(self, p0, L: int):
        """The noise at which ``p_0(ε) = p0`` at depth ``L``, via ``F``'s inverse, exactly.

        Iterating ``F_inverse`` converges towards ``p*``, so this stays accurate where the
        class curve is too steep to sample (large ``L``).

        Args:
          p0: class beliefs in ``[1/v, 1]``.
          L: depth.

        Returns:
          ``ε`` with ``class_curve(ε, L) == p0``, same shape as ``p0``.
        """
        L = _check_int("L", L, 1)
        p = np.asarray(p0, dtype=np.float64)
        if not np.all((p >= 1.0 / self.v) & (p <= 1.0)):
            raise ValueError(f"p0 must lie in [1/v, 1] = [{1.0 / self.v}, 1], got {p0!r}")
        for _ in range(L):
            p = self.F_inverse(p)
        return self.eps_from_leaf_belief(p)

    def transition_width(self, L: int, lower: float = 0.1, upper: float = 0.9) -> float:
        """Width in ε of the class transition at depth ``L``.

        With the normalised class curve ``(p_0 - 1/v)/(1 - 1/v)`` falling from 1 to 0,
        the width is ``ε(lower) - ε(upper)`` (10%–90% by default), computed exactly by
        :meth:`eps_at_class_belief`. It shrinks like ``F'(p*)**(-L)``
        (``docs/theory/mean_field.md``).
        """
        chance = 1.0 / self.v
        levels = chance + np.array([lower, upper]) * (1.0 - chance)
        eps_lower, eps_upper = self.eps_at_class_belief(levels, L)
        return float(eps_lower - eps_upper)

    def class_curve_crossing(self, L_first: int, L_second: int) -> tuple[float, float]:
        """Where the class curves ``p_0(ε)`` of two depths cross, by bisection in ε.

        The bracket runs over the transition of the shallower curve (normalised class
        belief from ``1 - 1e-6`` down to ``1e-6``). The theory predicts ``(ε*, p*)``
        exactly (module docstring); this is the numerical check of that prediction.

        Returns:
          ``(eps_cross, p0_cross)``; NaNs when the curves do not cross in the bracket.
        """
        shallow, deep = sorted(
            (_check_int("L_first", L_first, 1), _check_int("L_second", L_second, 1))
        )
        if shallow == deep:
            raise ValueError(f"L_first = L_second = {shallow}: two distinct depths are needed")
        chance = 1.0 / self.v
        fractions = np.array([1.0 - _CROSSING_BRACKET_DELTA, _CROSSING_BRACKET_DELTA])
        levels = chance + fractions * (1.0 - chance)
        eps_lo, eps_hi = self.eps_at_class_belief(levels, shallow)

        def difference(eps):
            return float(self.class_curve(eps, deep) - self.class_curve(eps, shallow))

        if not difference(eps_lo) > 0.0 > difference(eps_hi):
            return math.nan, math.nan
        eps_cross = _bisect(difference, float(eps_lo), float(eps_hi))
        return eps_cross, float(self.class_curve(eps_cross, shallow))


# ---- analysis of sampled curves (theory or measured) ------------------------------------
def _sampled_curve(eps, curve) -> tuple[np.ndarray, np.ndarray]:
    eps = np.asarray(eps, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    if eps.ndim != 1 or eps.shape != curve.shape:
        raise ValueError(
            f"eps and curve must be 1-D of the same length, got {eps.shape} and {curve.shape}"
        )
    keep = np.isfinite(eps) & np.isfinite(curve)
    eps, curve = eps[keep], curve[keep]
    if np.any(np.diff(eps) <= 0.0):
        raise ValueError("eps must be strictly increasing")
    return eps, curve


def level_crossing(eps, curve, level: float) -> float:
    """First ε where a sampled, decreasing(-ish) curve falls through ``level``.

    Linear interpolation between the first pair of samples with ``curve >= level`` then
    ``curve < level``. Non-finite samples are dropped.

    Args:
      eps: strictly increasing sample points, shape ``(n,)``.
      curve: values at ``eps``, shape ``(n,)``.
      level: the value to cross.

    Returns:
      The crossing ε, or NaN if the curve never falls through ``level`` (a non-finite
      ``level`` is refused: no curve crosses it).
    """
    level = _check_finite("level", level)
    eps, curve = _sampled_curve(eps, curve)
    above = curve >= level
    falls = np.flatnonzero(above[:-1] & ~above[1:])
    if falls.size == 0:
        return math.nan
    i = falls[0]
    fraction = (curve[i] - level) / (curve[i] - curve[i + 1])
    return float(eps[i] + fraction * (eps[i + 1] - eps[i]))


def midpoint_crossing(eps, curve, low: float, high: float) -> float:
    """ε where a sampled decreasing curve crosses ``(low + high)/2`` (NaN if it does not).

    Use ``low = 1/v``, ``high = 1`` on a class curve to get the threshold ``ε_1/2(L)``,
    for theory curves and measured BP curves alike (``docs/theory/phase_transition.md``,
    ``docs/theory/mean_field.md``).

    Examples:
      >>> eps = np.linspace(0.0, 1.0, 11)
      >>> round(midpoint_crossing(eps, 1.0 - eps, low=0.0, high=0.5), 6)
      0.75
    """
    return level_crossing(eps, curve, 0.5 * (low + high))


def curve_width(
    eps, curve, low: float, high: float, lower: float = 0.1, upper: float = 0.9
) -> float:
    """Width in ε of a sampled decreasing curve going from ``high`` to ``low``.

    The curve is normalised as ``(curve - low)/(high - low)`` and the width is the ε at
    which it crosses ``lower`` minus the ε at which it crosses ``upper`` (10%–90% by
    default), each by :func:`level_crossing`. NaN if either crossing is missing.
    ``low``, ``high``, ``lower`` and ``upper`` must be finite with ``low != high`` (the
    normalisation divides by ``high - low``); anything else is refused.
    """
    for name, value in (("low", low), ("high", high), ("lower", lower), ("upper", upper)):
        _check_finite(name, value)
    if high == low:
        raise ValueError(f"high = low = {low}: the curve's range must not be empty (it is "
                         "normalised by high - low)")
    eps, curve = _sampled_curve(eps, curve)
    normalised = (curve - low) / (high - low)
    return level_crossing(eps, normalised, lower) - level_crossing(eps, normalised, upper)


def extrapolate_threshold(L_values, eps_half_values, growth_factor: float) -> float:
    """Infinite-depth threshold from finite-depth ones, ``ε_1/2(L) = ε_∞ + A·λ**(-L)``.

    Linear least squares in ``(ε_∞, A)`` with ``λ = growth_factor`` given (the theory's
    ``F'(p*)``, ``docs/theory/mean_field.md``). Non-finite thresholds are dropped.

    Args:
      L_values: depths, shape ``(n,)``: integers ``>= 1`` (a NaN or fractional depth is
        refused, not fitted).
      eps_half_values: thresholds measured at those depths, shape ``(n,)``.
      growth_factor: ``λ > 1``, finite.

    Returns:
      ``ε_∞``.
    """
    given = L_values.tolist() if isinstance(L_values, np.ndarray) else L_values
    eps_half = np.asarray(eps_half_values, dtype=np.float64)
    if np.shape(given) != eps_half.shape or np.ndim(given) != 1:
        raise ValueError(f"L_values and eps_half_values must be 1-D of the same length, got "
                         f"{np.shape(given)} and {eps_half.shape}")
    L_values = np.array([check_int(f"L_values[{i}]", integral_value(L), minimum=1)
                         for i, L in enumerate(given)], dtype=np.float64)
    growth_factor = _check_finite("growth_factor", growth_factor)
    if not growth_factor > 1.0:
        raise ValueError(f"growth_factor = {growth_factor} must be > 1")
    keep = np.isfinite(eps_half)
    L_values, eps_half = L_values[keep], eps_half[keep]
    if np.unique(L_values).size < 2:
        raise ValueError(f"need thresholds at >= 2 distinct depths, got L = {L_values.tolist()}")
    design = np.stack([np.ones_like(L_values), growth_factor ** (-L_values)], axis=1)
    (eps_inf, _amplitude), *_ = np.linalg.lstsq(design, eps_half, rcond=None)
    return float(eps_inf)


def class_thresholds(eps, class_curves: dict, n_classes: int, mean_field=None) -> dict:
    """Finite-depth class thresholds of the ε-process and their infinite-depth extrapolation.

    For each depth ``L``, ``ε_1/2(L)`` is where the class curve ``P_0(ε)`` crosses the
    midpoint between 1 and chance ``1/n_classes`` (:func:`midpoint_crossing`). With a mean
    field (``n_classes == v``) that has a transition, the thresholds of at least two depths
    are extrapolated to ``L → ∞`` (:func:`extrapolate_threshold`, ``λ = F'(p*)``) next to
    ``ε*`` and the mean field's own finite-depth thresholds. A value that cannot be
    determined is ``None`` with a ``reason`` (the dictionary is written as strict JSON).

    Args:
      eps: noise levels, shape ``(n,)``.
      class_curves: ``{L: P_0 at eps}`` per depth.
      n_classes: number of classes.
      mean_field: a :class:`MeanField`, or ``None``.

    Returns:
      ``{"definition", "eps_half": {L: ε or None}, ...}`` with, when a mean field is given,
      ``eps_star_mean_field``, ``eps_half_extrapolated`` (or a reason) and
      ``mean_field_eps_half``.
    """
    out = {"definition": "eps where the epsilon-process class curve P_0 crosses (1 + 1/n_c)/2",
           "eps_half": {}}
    for L, curve in class_curves.items():
        if len(curve) < 2:
            continue
        crossing = midpoint_crossing(np.asarray(eps), np.asarray(curve), 1.0 / n_classes, 1.0)
        out["eps_half"][str(L)] = None if np.isnan(crossing) else float(crossing)
    if mean_field is None:
        return out
    if not (np.isfinite(mean_field.eps_star) and np.isfinite(mean_field.slope_at_p_star)):
        out["eps_star_mean_field"] = None
        out["eps_half_extrapolated"] = None
        out["reason"] = (f"the mean field of (v, m, s) = ({mean_field.v}, {mean_field.m}, "
                         f"{mean_field.s}) has no class transition")
        return out
    out["eps_star_mean_field"] = float(mean_field.eps_star)
    known = [(int(L), e) for L, e in out["eps_half"].items() if e is not None]
    if len(known) >= 2:
        Ls, es = zip(*known)
        extrapolated = extrapolate_threshold(np.array(Ls), np.array(es),
                                             mean_field.slope_at_p_star)
        if 0.0 <= extrapolated <= 1.0:
            out["eps_half_extrapolated"] = float(extrapolated)
        else:
            out["eps_half_extrapolated"] = None
            out["eps_half_extrapolated_reason"] = (
                f"the fit gives {extrapolated:.4g}, outside [0, 1]: the depths' thresholds do "
                "not approach a limit as the mean field's growth factor says")
        out["mean_field_eps_half"] = {
            str(L): float(mean_field.eps_at_class_belief(0.5 * (1 + 1 / mean_field.v), L))
            for L in class_curves}
    return out
