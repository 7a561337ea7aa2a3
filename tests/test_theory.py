"""Tests of the mean-field theory of the ε-process (rhm_jax/theory.py, ``docs/theory/mean_field.md``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rhm_jax.config import RHMConfig
from rhm_jax.theory import (
    MeanField,
    curve_width,
    extrapolate_threshold,
    level_crossing,
    midpoint_crossing,
    p_star_s2,
)

# (v, m, s) with a transition, s = 2 and s > 2; the first is the project default.
TRANSITION_CONFIGS = [
    (32, 8, 2), (9, 4, 2), (16, 4, 2), (64, 5, 2), (8, 8, 3), (10, 3, 3), (4, 6, 3), (3, 5, 4)
]
S2_CONFIGS = [(32, 8, 2), (9, 4, 2), (16, 4, 2), (64, 5, 2), (5, 2, 2), (101, 50, 2)]
ALL_CONFIGS = TRANSITION_CONFIGS + [(9, 5, 2), (8, 2, 3), (8, 1, 2), (4, 16, 3)]


# ---- the map --------------------------------------------------------------------------------
@pytest.mark.parametrize("v,m,s", ALL_CONFIGS)
def test_fixed_points_satisfy_F_p_equals_p(v, m, s):
    mf = MeanField(v, m, s)
    points = mf.fixed_points
    assert points[0] == 1.0 / v and points[-1] == 1.0
    assert np.all(np.diff(points) > 0.0)
    np.testing.assert_allclose(mf.F(points), points, rtol=0.0, atol=1e-12)
    np.testing.assert_allclose(mf.F(np.array([1.0 / v, 1.0])), [1.0 / v, 1.0], rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("v,m,s", TRANSITION_CONFIGS)
def test_fixed_points_match_polynomial_roots(v, m, s):
    # Oracle: the roots in [1/v, 1] of F(p) - p, from numpy's companion-matrix solver on the
    # cleared numerator (p**s + c(1-p**s)) - p(p**s + f~(1-p**s)).
    mf = MeanField(v, m, s)
    numerator = np.zeros(s + 2)
    numerator[0] = -(1.0 - mf.f_tilde)
    numerator[1] = 1.0 - mf.c
    numerator[s] = -mf.f_tilde
    numerator[s + 1] = mf.c
    roots = np.roots(numerator)
    real = np.sort(roots[np.abs(roots.imag) < 1e-9].real)
    inside = real[(real > 1.0 / v + 1e-9) & (real < 1.0 - 1e-9)]
    np.testing.assert_allclose(mf.fixed_points[1:-1], inside, rtol=0.0, atol=1e-9)


@pytest.mark.parametrize("v,m,s", ALL_CONFIGS)
def test_F_prime_matches_finite_difference_and_inverse_roundtrips(v, m, s):
    mf = MeanField(v, m, s)
    p = np.linspace(1.0 / v + 1e-3, 1.0 - 1e-3, 101)
    step = 1e-6
    numerical = (mf.F(p + step) - mf.F(p - step)) / (2 * step)
    np.testing.assert_allclose(mf.F_prime(p), numerical, rtol=1e-7, atol=1e-9)
    assert mf.F_prime(1.0) == pytest.approx(mf.slope_at_one, rel=1e-12)
    assert mf.slope_at_one == pytest.approx(s * m * (v - 1) / (v**s - 1), rel=1e-15)
    np.testing.assert_allclose(mf.F_inverse(mf.F(p)), p, rtol=0.0, atol=1e-12)


def test_B_has_the_right_limit_at_one():
    for s in (2, 3, 5):
        mf = MeanField(v=8, m=2, s=s)
        assert mf.B(1.0) == pytest.approx((s - 1) / s, rel=1e-15)
        p = 1.0 - 1e-5  # raw formula, away from the 0/0
        assert mf.B(1.0) == pytest.approx((p - p**s) / (1 - p**s), abs=1e-4)
        p = np.array([0.2, 0.5, 0.9])
        np.testing.assert_allclose(mf.B(p), (p - p**s) / (1 - p**s), rtol=1e-13)
        assert mf.A(1.0) == 1.0


# ---- p*, ε*, ν --------------------------------------------------------------------------
@pytest.mark.parametrize("v,m", [(v, m) for v, m, _ in S2_CONFIGS])
def test_s2_closed_form_agrees_with_root_finding(v, m):
    mf = MeanField(v, m, 2)
    closed = p_star_s2(v, m)
    assert 1.0 / v < closed < 1.0
    assert mf.p_star == pytest.approx(closed, abs=1e-12)
    assert mf.eps_star == pytest.approx((1 - closed) * v / (v - 1), abs=1e-12)
    assert mf.slope_at_p_star == pytest.approx(float(mf.F_prime(closed)), rel=1e-10)
    assert mf.slope_at_p_star > 1.0
    assert mf.nu == pytest.approx(math.log(2) / math.log(mf.slope_at_p_star), rel=1e-12)


def test_project_default():
    mf = MeanField.from_config(RHMConfig(v=32, m=8, s=2, L=5))
    assert mf == MeanField(32, 8, 2)
    assert mf.p_star == pytest.approx(7 / 24, abs=1e-14)
    assert mf.eps_star == pytest.approx((1 - 7 / 24) * 32 / 31, abs=1e-14)
    assert mf.slope_at_p_star > 1.0
    assert mf.has_transition


@pytest.mark.parametrize("v,m,s", TRANSITION_CONFIGS)
def test_p_star_is_unstable_and_inside(v, m, s):
    mf = MeanField(v, m, s)
    assert 1.0 / v < mf.p_star < 1.0
    assert mf.slope_at_p_star > 1.0
    assert 0.0 < mf.eps_star < 1.0
    assert mf.nu > 0.0


@pytest.mark.parametrize(
    "v,s,m_boundary",
    [
        (9, 2, 5),  # 2·m·8 = 80 = 9**2 - 1
        (31, 2, 16),  # 2·16·30 = 960 = 31**2 - 1
        (4, 3, 7),  # 3·7·3 = 63 = 4**3 - 1
        (7, 3, 19),  # 3·19·6 = 342 = 7**3 - 1
    ],
)
def test_transition_flips_where_slope_at_one_is_one(v, s, m_boundary):
    below, at, above = (MeanField(v, m, s) for m in (m_boundary - 1, m_boundary, m_boundary + 1))
    assert below.slope_at_one < 1.0 < above.slope_at_one
    assert at.slope_at_one == pytest.approx(1.0, rel=1e-15)
    assert below.has_transition
    assert not at.has_transition and not above.has_transition
    assert 1.0 / v < below.p_star < 1.0
    assert math.isnan(at.p_star) and math.isnan(above.p_star) and math.isnan(above.eps_star)
    if s == 2:  # beyond the boundary the closed-form root leaves (1/v, 1)
        assert p_star_s2(v, m_boundary) == 1.0 and p_star_s2(v, m_boundary + 1) > 1.0


def test_no_transition_when_chance_is_unstable():
    # m = 1, or s = 3 with m = 2: F'(1) < 1, but 1/v is unstable and no interior p* exists.
    for v, m, s in [(8, 1, 2), (8, 2, 3)]:
        mf = MeanField(v, m, s)
        assert mf.slope_at_one < 1.0 and mf.F_prime(1.0 / v) > 1.0
        assert not mf.has_transition and math.isnan(mf.p_star)


# ---- level-wise curves --------------------------------------------------------------------
@pytest.mark.parametrize("v,m,s", TRANSITION_CONFIGS)
def test_level_curves_limits_and_shapes(v, m, s):
    mf = MeanField(v, m, s)
    eps = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    curves = mf.level_curves(eps, L=6)
    assert curves.p.shape == curves.q.shape == (7, 5)
    np.testing.assert_allclose(curves.p[:, 0], 1.0, atol=1e-12)
    np.testing.assert_allclose(curves.q[:, 0], 1.0, atol=1e-12)
    np.testing.assert_allclose(curves.p[:, -1], 1.0 / v, atol=1e-12)
    np.testing.assert_allclose(curves.p[6], 1 - eps + eps / v, atol=1e-15)
    np.testing.assert_array_equal(curves.q[0], curves.p[0])
    np.testing.assert_allclose(curves.p[0], mf.class_curve(eps, 6), atol=1e-15)
    assert np.all(np.diff(curves.p[0]) < 0.0) and np.all(np.diff(curves.q[-1]) < 0.0)
    assert np.all((curves.q >= 1.0 / v - 1e-12) & (curves.q <= 1.0 + 1e-12))
    assert mf.level_curves(0.3, L=2).p.shape == (3,)


def _collision_probability_monte_carlo(v, m, s, n_grammars, rng):
    """Mean over random root rules and positions of Σ_b π_k(b)², π_k = marginal of child k."""
    population = v**s
    keys = rng.random((n_grammars, population))
    tuples = np.argsort(keys, axis=1)[:, : v * m]  # v*m distinct s-tuples per grammar
    collisions = []
    for k in range(s):
        symbol = (tuples // v ** (s - 1 - k)) % v
        counts = np.stack([(symbol == b).sum(1) for b in range(v)], axis=1)
        collisions.append(((counts / (v * m)) ** 2).sum(1))
    return np.mean(collisions, axis=0)


@pytest.mark.parametrize("v,m,s", [(8, 3, 2), (4, 3, 3)])
def test_top_down_map_at_full_noise_matches_random_grammar(v, m, s):
    # At ε = 1 the reconstruction is a fresh draw, so q_1 is the collision probability of the
    # level-1 marginal of a random grammar: exactly 1/v + (1-1/v)(V-N)/(N(V-1)), N = v·m.
    # Oracle: sampled grammars (Monte Carlo, 5 standard errors).
    mf = MeanField(v, m, s)
    q1 = float(mf.level_curves(1.0, L=1).q[1])
    population, n_rules = v**s, v * m
    exact = 1 / v + (1 - 1 / v) * (population - n_rules) / (n_rules * (population - 1))
    assert q1 == pytest.approx(exact, abs=1e-14)
    samples = _collision_probability_monte_carlo(v, m, s, 20000, np.random.default_rng(0))
    standard_error = samples.std() / math.sqrt(samples.size)
    assert abs(samples.mean() - q1) < 5 * standard_error


# ---- finite depth -----------------------------------------------------------------------------
@pytest.mark.parametrize("v,m,s", [(32, 8, 2), (16, 4, 2), (8, 8, 3)])
def test_width_shrinks_like_inverse_slope_power(v, m, s):
    mf = MeanField(v, m, s)
    growth = mf.slope_at_p_star
    widths = np.array([mf.transition_width(L) for L in range(1, 27)])
    assert np.all(widths > 0.0) and np.all(np.diff(widths) < 0.0)
    # Linearising F around p* (Koenigs) gives w_{L+1}/w_L = (1 + O(λ**-L))/λ with an O(1)
    # coefficient, so the relative deviation must fall below λ**-L at large L.
    for L in (15, 20, 25):
        deviation = widths[L] / widths[L - 1] * growth - 1.0
        assert abs(deviation) < growth ** (-L), (L, deviation)


@pytest.mark.parametrize("v,m,s", [(32, 8, 2), (8, 8, 3)])
def test_exact_width_matches_sampled_curve(v, m, s):
    mf = MeanField(v, m, s)
    eps = np.linspace(0.0, 1.0, 200001)
    for L in (2, 5, 8):
        sampled = curve_width(eps, mf.class_curve(eps, L), low=1.0 / v, high=1.0)
        assert sampled == pytest.approx(mf.transition_width(L), abs=1e-8)


@pytest.mark.parametrize("v,m,s", TRANSITION_CONFIGS)
def test_class_curves_cross_at_critical_point(v, m, s):
    mf = MeanField(v, m, s)
    for L in (2, 4, 8, 12):
        eps_cross, p0_cross = mf.class_curve_crossing(L, L + 1)
        assert eps_cross == pytest.approx(mf.eps_star, abs=1e-9)
        assert p0_cross == pytest.approx(mf.p_star, abs=1e-9)
    # same crossing seen on sampled curves, to the grid's resolution
    eps = np.linspace(0.0, 1.0, 100001)
    difference = mf.class_curve(eps, 7) - mf.class_curve(eps, 6)
    difference[np.abs(difference) < 1e-13] = np.nan  # roundoff-level tails
    assert level_crossing(eps, difference, 0.0) == pytest.approx(mf.eps_star, abs=2e-5)


def test_midpoint_thresholds_extrapolate_to_eps_star():
    # ε_1/2(L) - ε* = A·λ**-L + O(λ**-2L): the fit removes the first term, so what is left
    # is much smaller than the deepest finite-L error and falls like λ**-2L with the depths.
    mf = MeanField(32, 8, 2)
    growth = mf.slope_at_p_star
    midpoint = 0.5 * (1.0 / mf.v + 1.0)
    residuals = []
    for first in (6, 10):
        depths = np.arange(first, first + 7)
        eps_half = np.array([float(mf.eps_at_class_belief(midpoint, L)) for L in depths])
        residual = extrapolate_threshold(depths, eps_half, growth) - mf.eps_star
        assert abs(residual) < 0.05 * abs(eps_half[-1] - mf.eps_star)
        residuals.append(residual)
    assert residuals[1] / residuals[0] == pytest.approx(growth**-8, rel=0.5)


def test_eps_at_class_belief_inverts_class_curve():
    mf = MeanField(16, 4, 2)
    eps = np.linspace(0.05, 0.95, 19)
    for L in (1, 3, 9):
        recovered = mf.eps_at_class_belief(mf.class_curve(eps, L), L)
        np.testing.assert_allclose(recovered, eps, atol=1e-9)


# ---- helpers on sampled curves ------------------------------------------------------------------
def test_midpoint_crossing_on_linear_curve_is_exact():
    eps = np.sort(np.random.default_rng(1).uniform(0.0, 1.0, 37))
    curve = 0.9 - 0.8 * eps  # crosses (0.2 + 0.6)/2 = 0.4 at ε = 0.625
    assert midpoint_crossing(eps, curve, low=0.2, high=0.6) == pytest.approx(0.625, abs=1e-14)
    assert midpoint_crossing(eps, curve, low=0.0, high=1.0) == pytest.approx(0.5, abs=1e-14)
    assert math.isnan(midpoint_crossing(eps, curve, low=0.0, high=0.0))  # never falls below 0
    assert math.isnan(midpoint_crossing(eps, curve, low=1.0, high=2.0))  # starts below 1.5
    assert math.isnan(midpoint_crossing(eps, 0.1 + 0.8 * eps, low=0.2, high=0.6))  # increasing


def test_level_crossing_takes_first_fall_and_skips_nans():
    eps = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    curve = np.array([1.0, 0.6, np.nan, 0.2, 0.6, 0.0])
    # NaN dropped: falls 0.6 -> 0.2 between ε = 0.1 and 0.3, first crossing of 0.5 at 0.15
    assert level_crossing(eps, curve, 0.5) == pytest.approx(0.15, abs=1e-14)
    with pytest.raises(ValueError, match="increasing"):
        level_crossing(eps[::-1], curve, 0.5)


def test_curve_width_of_linear_curve():
    eps = np.linspace(0.0, 1.0, 11)
    assert curve_width(eps, 0.5 - 0.4 * eps, low=0.1, high=0.5) == pytest.approx(0.8, abs=1e-14)


@pytest.mark.parametrize(
    "eps_inf,amplitude,growth", [(0.73, 0.9, 1.44), (0.2, -0.3, 1.1), (0.5, 2.0, 3.0)]
)
def test_extrapolate_threshold_recovers_synthetic_limit(eps_inf, amplitude, growth):
    depths = np.arange(2, 10)
    eps_half = eps_inf + amplitude * growth ** (-depths.astype(float))
    assert extrapolate_threshold(depths, eps_half, growth) == pytest.approx(eps_inf, abs=1e-12)
    eps_half[3] = np.nan  # a missing measurement is dropped, not propagated
    assert extrapolate_threshold(depths, eps_half, growth) == pytest.approx(eps_inf, abs=1e-12)


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_input():
    with pytest.raises(ValueError, match="m = 5 exceeds v"):
        MeanField(4, 5, 2)
    with pytest.raises(TypeError, match="v must be an integer"):
        MeanField(4.0, 2, 2)
    with pytest.raises(ValueError, match="s = 1"):
        MeanField(4, 2, 1)
    with pytest.raises(ValueError, match="n_classes = 4 differs from v = 8"):
        MeanField.from_config(RHMConfig(v=8, m=2, s=2, L=3, n_classes=4))
    mf = MeanField(8, 2, 2)
    with pytest.raises(ValueError, match=r"eps must lie in \[0, 1\]"):
        mf.level_curves([0.5, 1.2], L=3)
    with pytest.raises(ValueError, match="p0 must lie"):
        mf.eps_at_class_belief(0.05, L=3)
    with pytest.raises(ValueError, match="distinct depths"):
        mf.class_curve_crossing(3, 3)
    with pytest.raises(ValueError, match="growth_factor"):
        extrapolate_threshold([1, 2], [0.5, 0.4], 1.0)
    with pytest.raises(ValueError, match=">= 2 distinct depths"):
        extrapolate_threshold([3, 3], [0.5, 0.4], 1.5)
