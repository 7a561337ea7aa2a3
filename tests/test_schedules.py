"""Tests of rhm_jax.schedules against independent numpy formulas (``docs/theory/noise.md``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax.schedules import Cosine, LinearAlphaBar, LinearBeta

ALL_SCHEDULES = [LinearBeta(), LinearBeta.rhm(), Cosine(), Cosine(offset=0.0), LinearAlphaBar()]


def numpy_ddpm_alpha_bar(beta_min, beta_max, T):
    """Independent oracle: ᾱ_k for k = 0..T by cumulative product, float64."""
    betas = np.linspace(beta_min, beta_max, T)
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


def numpy_cosine_alpha_bar(t, offset):
    """Nichol & Dhariwal's formula as written (cos² form), float64."""
    f = lambda u: np.cos((u + offset) / (1 + offset) * np.pi / 2) ** 2  # noqa: E731
    return f(np.asarray(t, np.float64)) / f(0.0)


# ---- linear β ------------------------------------------------------------------------------
def test_ddpm_alpha_bar_at_final_step_matches_numpy_cumprod():
    expected = numpy_ddpm_alpha_bar(1e-4, 0.02, 1000)
    assert expected[-1] == pytest.approx(4.0358e-5, rel=1e-3)  # the well-known DDPM value
    sched = LinearBeta(1e-4, 0.02, 1000)
    np.testing.assert_allclose(float(sched.alpha_bar_at_step(1000)), expected[-1], rtol=1e-5)
    np.testing.assert_allclose(float(sched.alpha_bar(1.0)), expected[-1], rtol=1e-5)


@pytest.mark.parametrize("sched", [LinearBeta(), LinearBeta(1e-3, 0.1, 200), LinearBeta(0.01, 0.01, 1)])
def test_linear_beta_every_step_matches_numpy_cumprod(sched):
    expected = numpy_ddpm_alpha_bar(sched.beta_min, sched.beta_max, sched.T)
    steps = jnp.arange(sched.T + 1)
    np.testing.assert_allclose(sched.alpha_bar_at_step(steps), expected, rtol=1e-5)
    expected_betas = np.linspace(sched.beta_min, sched.beta_max, sched.T)
    np.testing.assert_allclose(sched.beta(jnp.arange(1, sched.T + 1)), expected_betas, rtol=1e-6)
    # continuous time hits the integer steps exactly
    np.testing.assert_allclose(sched.alpha_bar(steps / sched.T), expected, rtol=1e-5)


def rhm_study_alpha_bar(beta1=1e-3, beta2=0.1, T=200):
    """The RHM diffusion study's ``ᾱ_k``, k = 0..T: ``Π_{j=0..k}(1-β_j)``, ``β_j = β1+(β2-β1)j/T``
    (a plain loop, independent of the library's table); ``ᾱ_0 = 1`` is the clean datum."""
    out, product = [1.0], 1.0
    for j in range(T + 1):
        product *= 1.0 - (beta1 + (beta2 - beta1) * j / T)
        if j >= 1:
            out.append(product)
    return np.array(out)


def test_linear_beta_interpolates_log_alpha_bar_between_steps():
    sched = LinearBeta.rhm()
    expected = rhm_study_alpha_bar()
    steps = np.arange(200)
    midpoints = (steps + 0.5) / 200
    np.testing.assert_allclose(
        sched.alpha_bar(midpoints), np.sqrt(expected[:-1] * expected[1:]), rtol=1e-5
    )


def test_rhm_constant():
    assert LinearBeta.rhm() == LinearBeta(beta_min=1e-3, beta_max=0.1, T=200, product_from_zero=True)
    assert LinearBeta.rhm() != LinearBeta(beta_min=1e-3, beta_max=0.1, T=200)


def test_rhm_study_schedule_hand_computed_values():
    # by hand: β_0 = 0.001, β_1 = 0.001 + 0.099/200 = 0.001495, β_2 = 0.00199
    sched = LinearBeta.rhm()
    assert float(sched.alpha_bar(0.0)) == 1.0
    np.testing.assert_allclose(float(sched.alpha_bar_at_step(1)), 0.999 * 0.998505, rtol=1e-6)
    np.testing.assert_allclose(float(sched.alpha_bar_at_step(2)), 0.999 * 0.998505 * 0.99801,
                               rtol=1e-6)
    # the study's last step: reachable at t = 1 (the DDPM-convention table stops at 3.04e-5)
    np.testing.assert_allclose(float(sched.alpha_bar(1.0)), 2.7322e-5, rtol=1e-4)
    steps = jnp.arange(201)
    expected = rhm_study_alpha_bar()
    np.testing.assert_allclose(sched.alpha_bar_at_step(steps), expected, rtol=1e-5)
    np.testing.assert_allclose(sched.alpha_bar(steps / 200), expected, rtol=1e-5)
    # β(k) is the noise of step k: ᾱ_k = ᾱ_{k-1}(1 - β(k)); step 1 carries β_0 and β_1
    np.testing.assert_allclose(float(sched.beta(1)), 1 - 0.999 * 0.998505, rtol=1e-5)
    np.testing.assert_allclose(sched.beta(jnp.arange(2, 201)),
                               1e-3 + 0.099 * np.arange(2, 201) / 200, rtol=1e-5)


# ---- cosine and linear ᾱ -----------------------------------------------------------------
@pytest.mark.parametrize("offset", [0.008, 0.0, 0.2])
def test_cosine_matches_formula(offset):
    t = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(Cosine(offset).alpha_bar(t), numpy_cosine_alpha_bar(t, offset), atol=2e-6)


def test_linear_alpha_bar_is_one_minus_t():
    t = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(LinearAlphaBar().alpha_bar(t), 1.0 - t, atol=1e-7)


# ---- shared properties ---------------------------------------------------------------------
@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=repr)
def test_monotone_decreasing_in_unit_interval_with_endpoints(sched):
    t = jnp.linspace(0.0, 1.0, 2001)
    alpha_bar = np.asarray(sched.alpha_bar(t))
    assert np.all(np.diff(alpha_bar) < 0), "ᾱ must strictly decrease"
    assert np.all((alpha_bar >= 0) & (alpha_bar <= 1))
    assert alpha_bar[0] == 1.0
    if isinstance(sched, LinearBeta):
        reference = rhm_study_alpha_bar if sched.product_from_zero else numpy_ddpm_alpha_bar
        expected_end = reference(sched.beta_min, sched.beta_max, sched.T)[-1]
        np.testing.assert_allclose(alpha_bar[-1], expected_end, rtol=1e-5)
    else:
        assert alpha_bar[-1] == 0.0  # cosine: exactly 0 (sin form), not a cos(π/2) residue


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=repr)
def test_jit_and_vmap_agree_with_eager(sched):
    t = jnp.array([0.0, 0.013, 0.5, 0.77, 1.0])
    eager = sched.alpha_bar(t)
    # XLA may fuse differently under jit: allow a few ulps
    np.testing.assert_allclose(jax.jit(sched.alpha_bar)(t), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(sched.alpha_bar)(t), eager, rtol=1e-6)
    # schedules are hashable, so they can be static jit arguments
    by_static = jax.jit(lambda s, x: s.alpha_bar(x), static_argnums=0)(sched, t)
    np.testing.assert_allclose(by_static, eager, rtol=1e-6)


def test_float64_under_x64():
    with jax.enable_x64(True):
        for sched in ALL_SCHEDULES:
            assert sched.alpha_bar(0.3).dtype == jnp.float64
        exact = numpy_ddpm_alpha_bar(1e-4, 0.02, 1000)
        np.testing.assert_allclose(LinearBeta().alpha_bar_at_step(jnp.arange(1001)), exact, rtol=1e-12)
        t = np.linspace(0, 1, 11)
        np.testing.assert_allclose(Cosine().alpha_bar(t), numpy_cosine_alpha_bar(t, 0.008), atol=1e-12)


def test_equal_schedules_hash_equal():
    assert hash(LinearBeta()) == hash(LinearBeta(1e-4, 0.02, np.int64(1000)))
    assert LinearBeta() == LinearBeta(np.float64(1e-4), 0.02, 1000)
    assert Cosine() != Cosine(0.01)


# ---- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_min=0.0), "beta_min"),
        (dict(beta_min=-1e-3), "beta_min"),
        (dict(beta_min=1.0, beta_max=1.0), "beta_min"),
        (dict(beta_min=0.1, beta_max=0.01), "beta_max"),
        (dict(beta_max=1.0), "beta_max"),
        (dict(beta_max=math.nan), "beta_max"),
        (dict(T=0), "T"),
    ],
)
def test_linear_beta_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearBeta(**kwargs)


def test_linear_beta_rejects_non_integer_T():
    with pytest.raises(TypeError, match="T"):
        LinearBeta(T=10.5)


@pytest.mark.parametrize("offset", [-0.1, math.inf])
def test_cosine_rejects_bad_offset(offset):
    with pytest.raises(ValueError, match="offset"):
        Cosine(offset)


@pytest.mark.parametrize("sched", ALL_SCHEDULES, ids=repr)
@pytest.mark.parametrize("t", [-0.01, 1.5, math.nan, np.array([0.2, 1.01])])
def test_alpha_bar_rejects_time_outside_unit_interval(sched, t):
    with pytest.raises(ValueError, match=r"t = .* \[0, 1\]"):
        sched.alpha_bar(t)


def test_steps_are_checked():
    sched = LinearBeta.rhm()
    with pytest.raises(ValueError, match=r"k = 201 .* \[0, T=200\]"):
        sched.alpha_bar_at_step(201)
    with pytest.raises(ValueError, match=r"k = -1"):
        sched.alpha_bar_at_step(jnp.array([3, -1]))
    with pytest.raises(ValueError, match=r"k = 0 .* \[1, T=200\]"):
        sched.beta(0)
    with pytest.raises(TypeError, match="k must be an integer"):
        sched.alpha_bar_at_step(0.5)
