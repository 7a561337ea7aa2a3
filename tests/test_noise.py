"""Tests of rhm_jax.noise against brute-force forward kernels and Bayes (``docs/theory/noise.md``).

Oracles: explicit (K, K) transition matrices built here in numpy float64, brute-force
Bayes over them, Gaussian densities and Gaussian conditioning written out by hand, and
Tweedie's formula via autodiff for the score. Distribution tests use a 5-standard-error
binomial tolerance.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax.config import RHMConfig
from rhm_jax.noise import (
    LOG_FLOOR,
    EpsilonProcess,
    Gaussian,
    Masking,
    UniformSubstitution,
)
from rhm_jax.schedules import Cosine, LinearAlphaBar, LinearBeta

CONFIG = RHMConfig(v=4, m=2, s=2, L=2)  # d = 4
V, D = CONFIG.v, CONFIG.d
NUM_SAMPLES = 20_000  # sequences per distribution test (x d = 80k tokens)
FLOOR32 = np.float32(LOG_FLOOR)

ALL_PROCESSES = [  # every type with its default schedule, plus the schedule-specific cases
    EpsilonProcess(CONFIG),
    Masking(CONFIG),
    UniformSubstitution(CONFIG),
    Gaussian(CONFIG),
    Gaussian(CONFIG, schedule=Cosine()),  # ᾱ(1) = 0 exactly: uniform evidence at t = 1
    Masking(CONFIG, schedule=LinearBeta.rhm()),  # ᾱ(1) > 0: some tokens survive t = 1
]
DISCRETE_PROCESSES = [p for p in ALL_PROCESSES if isinstance(p, (Masking, UniformSubstitution))]
# one per type, default schedule: for tests where the schedule plays no role (each new
# process or shape costs a compilation, and the whole file must stay fast)
ONE_PER_TYPE = [EpsilonProcess(CONFIG), Masking(CONFIG), UniformSubstitution(CONFIG), Gaussian(CONFIG)]
SMALL = 8  # sequences in the non-statistical tests (one shape: compilations are shared)
TIME_PAIRS = [(0.0, 0.0), (0.0, 0.3), (0.2, 0.5), (0.45, 0.5), (0.5, 0.5), (0.6, 1.0), (1.0, 1.0)]


# ---- oracles ----------------------------------------------------------------------------------
def alpha_bar(process, t) -> float:
    return float(np.float64(process.schedule.alpha_bar(t)))


def forward_matrix(process, keep: float) -> np.ndarray:
    """Explicit kernel q(x_out | x_in) as a (K, K) row-stochastic float64 matrix."""
    if isinstance(process, Masking):
        matrix = np.zeros((V + 1, V + 1))
        matrix[:V, :V] = keep * np.eye(V)
        matrix[:V, V] = 1.0 - keep
        matrix[V, V] = 1.0
        return matrix
    return keep * np.eye(V) + (1.0 - keep) / V * np.ones((V, V))


def transition_matrix(process, s, t) -> np.ndarray:
    """The s -> t kernel: keep ᾱ_t/ᾱ_s (identity when ᾱ_s = 0)."""
    a_s, a_t = alpha_bar(process, s), alpha_bar(process, t)
    return forward_matrix(process, a_t / a_s if a_s > 0 else 1.0)


def brute_reverse(process, x_t: int, s, t, x0_probs: np.ndarray) -> np.ndarray:
    """Σ_a x0_probs[a] q(x_s | x_t, x0=a) by explicit Bayes; zero evidence -> x_s = x_t."""
    q_s = forward_matrix(process, alpha_bar(process, s))[:V]
    q_ts = transition_matrix(process, s, t)
    result = np.zeros(q_ts.shape[0])
    for a in range(V):
        joint = q_ts[:, x_t] * q_s[a]
        if joint.sum() > 0:
            result += x0_probs[a] * joint / joint.sum()
        else:
            result[x_t] += x0_probs[a]
    return result


def brute_log_likelihood(process, x0_or_obs: np.ndarray, t) -> np.ndarray:
    """log p(observation_i | x0_i = a) for every a, float64 (-inf where impossible)."""
    obs = np.asarray(x0_or_obs)
    with np.errstate(divide="ignore"):
        if isinstance(process, EpsilonProcess):
            return np.log((1 - t) * np.eye(V)[obs] + t / V)
        if isinstance(process, Gaussian):
            a_t = alpha_bar(process, t)
            x = np.asarray(obs, np.float64)[..., None, :]  # (..., d, 1, v)
            means = np.sqrt(a_t) * np.eye(V)  # (a, v)
            return -((x - means) ** 2).sum(-1) / (2 * (1 - a_t)) - V / 2 * np.log(2 * np.pi * (1 - a_t))
        return np.log(forward_matrix(process, alpha_bar(process, t))[:V, obs]).transpose(
            tuple(range(1, obs.ndim + 1)) + (0,)
        )


def assert_equal_up_to_constant_in_a(log_lik, brute, atol=1e-5):
    """Equal after subtracting each token's max over a; impossible values <-> LOG_FLOOR."""
    floor = np.float64(np.asarray(LOG_FLOOR, log_lik.dtype))  # LOG_FLOOR rounded to the dtype
    log_lik = np.asarray(log_lik, np.float64)
    assert np.isfinite(log_lik).all()
    impossible = np.isneginf(brute)
    np.testing.assert_array_equal(log_lik[impossible], floor)
    assert (log_lik[~impossible] > LOG_FLOOR / 2).all()
    shifted = log_lik - log_lik.max(-1, keepdims=True)
    brute_shifted = brute - brute.max(-1, keepdims=True)
    np.testing.assert_allclose(shifted[~impossible], brute_shifted[~impossible], atol=atol, rtol=1e-5)


def assert_binomial(counts, total, p, z=5.0):
    """|p̂ - p| < z·sqrt(p(1-p)/N) elementwise (exact when p is 0 or 1)."""
    p = np.asarray(p, np.float64)
    p_hat = np.asarray(counts, np.float64) / total
    tolerance = z * np.sqrt(p * (1 - p) / total) + 1e-12
    assert (np.abs(p_hat - p) <= tolerance).all(), f"p_hat={p_hat}\np={p}\ntol={tolerance}"


# test inputs come from numpy: cheaper than compiling jax.random samplers for each shape
def random_tokens(seed, n=NUM_SAMPLES, d=D):
    return np.random.default_rng(seed).integers(0, V, (n, d), dtype=np.int32)


def random_probs(seed, shape):
    return np.random.default_rng(seed).dirichlet(np.ones(V), shape).astype(np.float32)


def random_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def valid_observation(process, seed=0, n=SMALL, t=0.5):
    """A numpy draw from the forward kernel at time t, written out independently of corrupt."""
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, V, (n, D), dtype=np.int32)
    if isinstance(process, EpsilonProcess):
        return x0
    a_t = alpha_bar(process, t)
    if isinstance(process, Gaussian):
        noise = rng.standard_normal((n, D, V))
        return (np.sqrt(a_t) * np.eye(V)[x0] + np.sqrt(1 - a_t) * noise).astype(np.float32)
    kept = rng.random((n, D)) < a_t
    if isinstance(process, Masking):
        return np.where(kept, x0, V).astype(np.int32)
    return np.where(kept, x0, rng.integers(0, V, (n, D))).astype(np.int32)


# ---- forward corruption frequencies -------------------------------------------------------------
HALF = NUM_SAMPLES // 2
TWO_TIMES = np.where(np.arange(NUM_SAMPLES) < HALF, 0.3, 0.7)  # one time per sequence


@pytest.mark.parametrize("schedule", [LinearAlphaBar(), LinearBeta.rhm()], ids=repr)
def test_masking_frequencies_match_keep_probability_per_sample_t(schedule):
    process = Masking(CONFIG, schedule=schedule)
    x0 = random_tokens(0)
    x_t = np.asarray(process.corrupt(jax.random.key(1), x0, TWO_TIMES))
    assert x_t.dtype == np.int32
    masked = x_t == V
    np.testing.assert_array_equal(x_t[~masked], x0[~masked])  # kept tokens are intact
    for rows, time in ((slice(None, HALF), 0.3), (slice(HALF, None), 0.7)):
        assert_binomial(masked[rows].sum(), masked[rows].size, 1 - alpha_bar(process, time))


def test_masking_exact_fraction():
    config = RHMConfig(v=4, m=2, s=2, L=3)  # d = 8
    process = Masking(config, exact_fraction=True)
    x0 = random_tokens(2, d=config.d)
    x_t = np.asarray(process.corrupt(jax.random.key(3), x0, 0.325))  # (1 - 0.675)·8 = 2.6 -> 3
    masked = x_t == V
    np.testing.assert_array_equal(masked.sum(1), 3)
    np.testing.assert_array_equal(x_t[~masked], x0[~masked])
    assert_binomial(masked.sum(0), NUM_SAMPLES, np.full(config.d, 3 / 8))  # uniform positions
    num_masked = np.arange(NUM_SAMPLES) % 9
    x_t = np.asarray(process.corrupt(jax.random.key(4), x0, num_masked / 8))  # per-sequence t
    np.testing.assert_array_equal((x_t == V).sum(1), num_masked)


@pytest.mark.parametrize("schedule", [Cosine(), LinearAlphaBar()], ids=repr)
def test_uniform_substitution_frequencies_match_forward_kernel(schedule):
    process = UniformSubstitution(CONFIG, schedule=schedule)
    x0 = random_tokens(5)
    x_t = np.asarray(process.corrupt(jax.random.key(6), x0, TWO_TIMES))
    for rows, time in ((slice(None, HALF), 0.3), (slice(HALF, None), 0.7)):
        expected = forward_matrix(process, alpha_bar(process, time))
        for a in range(V):
            from_a = x_t[rows][x0[rows] == a]
            assert_binomial(np.bincount(from_a, minlength=V), from_a.size, expected[a])


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_gaussian_mean_and_covariance_match_forward_kernel(t):
    process = Gaussian(CONFIG)
    x0 = random_tokens(7)
    x_t = np.asarray(process.corrupt(jax.random.key(8), x0, t), np.float64)
    a_t = alpha_bar(process, t)
    residual = (x_t - np.sqrt(a_t) * np.eye(V)[x0]).reshape(-1, V)  # should be N(0, (1-ᾱ) I)
    n = residual.shape[0]
    np.testing.assert_array_less(np.abs(residual.mean(0)), 5 * np.sqrt((1 - a_t) / n))
    np.testing.assert_array_less(np.abs(residual.var(0) - (1 - a_t)), 5 * (1 - a_t) * np.sqrt(2 / n))
    off_diagonal = np.cov(residual.T)[~np.eye(V, dtype=bool)]
    np.testing.assert_array_less(np.abs(off_diagonal), 5 * (1 - a_t) / np.sqrt(n))


def test_epsilon_process_corrupt_returns_clean_tokens():
    x0 = random_tokens(9, n=SMALL)
    np.testing.assert_array_equal(EpsilonProcess(CONFIG).corrupt(jax.random.key(0), x0, 0.4), x0)


# ---- leaf likelihoods -----------------------------------------------------------------------------
@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
@pytest.mark.parametrize("t", [0.0, 0.05, 0.4, 0.8, 1.0])
def test_leaf_log_likelihood_equals_brute_force_up_to_constant(process, t):
    observation = valid_observation(process, seed=10, t=t)
    log_lik = process.leaf_log_likelihood(observation, t)
    assert log_lik.shape == (SMALL, D, V) and log_lik.dtype == jnp.float32
    if isinstance(process, Gaussian) and alpha_bar(process, t) == 1.0:
        pytest.skip("ᾱ = 1: the Gaussian density is a delta; covered by the endpoint tests")
    brute = brute_log_likelihood(process, observation, t)
    atol = 1e-5 if not isinstance(process, Gaussian) else 1e-4 * (1 + np.abs(brute).max())
    assert_equal_up_to_constant_in_a(log_lik, brute, atol=atol)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
def test_zero_noise_gives_one_hot_evidence(process):
    x0 = random_tokens(12, n=SMALL)
    log_lik = process.leaf_log_likelihood(valid_observation(process, seed=12, t=0.0), 0.0)
    assert np.isfinite(np.asarray(log_lik)).all()
    np.testing.assert_array_equal(jax.nn.softmax(log_lik, axis=-1), np.eye(V)[x0])


@pytest.mark.parametrize(
    "process",
    [p for p in ALL_PROCESSES if not isinstance(getattr(p, "schedule", None), LinearBeta)],
    ids=repr,
)
def test_full_noise_gives_uniform_evidence(process):
    log_lik = process.leaf_log_likelihood(valid_observation(process, seed=14, t=1.0), 1.0)
    assert np.isfinite(np.asarray(log_lik)).all()
    np.testing.assert_allclose(jax.nn.softmax(log_lik, axis=-1), np.full((SMALL, D, V), 1 / V), atol=1e-7)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
@pytest.mark.parametrize("t", [0.0, 1e-7, 1e-4, 0.5, 1.0])
def test_leaf_log_likelihood_finite_everywhere(process, t):
    log_lik = process.leaf_log_likelihood(valid_observation(process, seed=16, t=t), t)
    assert np.isfinite(np.asarray(log_lik)).all()
    probs = jax.nn.softmax(log_lik, axis=-1)
    assert np.isfinite(np.asarray(probs)).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("process_type", [Gaussian, UniformSubstitution])
def test_tiny_noise_variance_gives_finite_one_hot_evidence(process_type):
    process = process_type(CONFIG, schedule=LinearAlphaBar())  # t = 1e-7: 1 - ᾱ ≈ 1e-7
    x0 = random_tokens(18, n=SMALL)
    observation = valid_observation(process, seed=18, t=1e-7)  # same rng stream: x0 first
    if isinstance(process, UniformSubstitution):
        observation = x0  # ᾱ ≈ 1: the draw keeps every token; make the check independent of it
    log_lik = process.leaf_log_likelihood(observation, 1e-7)
    assert np.isfinite(np.asarray(log_lik)).all()
    np.testing.assert_allclose(jax.nn.softmax(log_lik, axis=-1), np.eye(V)[x0], atol=1e-5)


def test_log_floor_is_finite_and_vanishes_after_normalisation():
    assert np.isfinite(FLOOR32) and np.isfinite(np.float32(4096) * FLOOR32)
    probs = np.asarray(jax.nn.softmax(jnp.array([0.0, LOG_FLOOR, -3.0, LOG_FLOOR], jnp.float32)))
    assert probs[1] == 0.0 and probs[3] == 0.0 and np.isfinite(probs).all()


@pytest.mark.parametrize("process", ONE_PER_TYPE, ids=repr)
def test_float64_under_x64(process):
    with jax.enable_x64(True):
        observation = valid_observation(process, seed=20, t=0.3)
        if isinstance(process, Gaussian):
            observation = np.float64(observation)
            assert process.corrupt(jax.random.key(21), random_tokens(21, n=SMALL), 0.3).dtype == jnp.float64
        log_lik = process.leaf_log_likelihood(observation, 0.3)
        assert log_lik.dtype == jnp.float64
        assert_equal_up_to_constant_in_a(log_lik, brute_log_likelihood(process, observation, 0.3), atol=1e-10)


@pytest.mark.parametrize("process", ONE_PER_TYPE, ids=repr)
def test_unbatched_sequence_matches_batch_row(process):
    observation = valid_observation(process, seed=22)
    np.testing.assert_array_equal(
        process.leaf_log_likelihood(observation[1], 0.4), process.leaf_log_likelihood(observation, 0.4)[1]
    )
    if isinstance(process, Masking):  # one corrupt is enough: the shapes code is shared
        tokens = random_tokens(23, n=1)[0]
        x_t = process.corrupt(jax.random.key(24), tokens, 0.4)
        assert x_t.shape == (D,) and ((x_t == tokens) | (x_t == V)).all()


# ---- reverse kernels (masking, uniform) ---------------------------------------------------------
def all_observations(process):
    """Every observable value at every position, cycled over SMALL rows: shape (SMALL, d)."""
    return np.tile((np.arange(SMALL, dtype=np.int32) % process.num_states)[:, None], (1, D))


@pytest.mark.parametrize("process", DISCRETE_PROCESSES, ids=repr)
@pytest.mark.parametrize("s, t", TIME_PAIRS)
def test_reverse_kernel_matches_brute_force_bayes(process, s, t):
    x_t = all_observations(process)
    x0_probs = random_probs(25, x_t.shape)
    kernel = np.asarray(process.reverse_kernel(x_t, s, t, x0_probs), np.float64)
    assert kernel.shape == x_t.shape + (process.num_states,)
    for row in range(SMALL):
        for pos in range(D):
            expected = brute_reverse(process, x_t[row, pos], s, t, np.float64(x0_probs[row, pos]))
            np.testing.assert_allclose(kernel[row, pos], expected, atol=2e-6)
    # known x0: posterior_kernel is the one-hot case
    for a in range(V):
        posterior = np.asarray(process.posterior_kernel(x_t, s, t, np.full(x_t.shape, a)), np.float64)
        for row in range(SMALL):
            expected = brute_reverse(process, x_t[row, 0], s, t, np.eye(V)[a])
            expected = np.broadcast_to(expected, (D, len(expected)))
            np.testing.assert_allclose(posterior[row], expected, atol=2e-6)


@pytest.mark.parametrize("process", DISCRETE_PROCESSES, ids=repr)
@pytest.mark.parametrize("s, t", TIME_PAIRS)
def test_reverse_kernel_composes_with_forward_kernels(process, s, t):
    q_s = forward_matrix(process, alpha_bar(process, s))[:V]
    q_t = forward_matrix(process, alpha_bar(process, t))[:V]
    # Chapman-Kolmogorov: Σ_{x_s} q(x_s | x0) q(x_t | x_s) = q(x_t | x0)
    np.testing.assert_allclose(q_s @ transition_matrix(process, s, t), q_t, atol=1e-6)
    # the reverse kernel inverts it: Σ_{x_t} q(x_s | x_t, x0) q(x_t | x0) = q(x_s | x0)
    x_t = all_observations(process)
    for a in range(V):
        posterior = np.asarray(process.posterior_kernel(x_t, s, t, np.full(x_t.shape, a)), np.float64)
        posterior = posterior[: process.num_states, 0]  # row k holds x_t = k
        np.testing.assert_allclose(q_t[a] @ posterior, q_s[a], atol=2e-6)


@pytest.mark.parametrize("process", DISCRETE_PROCESSES, ids=repr)
def test_reverse_kernel_normalises_with_per_sample_times(process):
    rng = np.random.default_rng(26)
    t = rng.random(SMALL).astype(np.float32)
    s = (t * rng.random(SMALL)).astype(np.float32)
    t[:2], s[:2] = [0.0, 1.0], [0.0, 0.5]
    t[2], s[2] = 0.007, 0.0009  # ᾱ_s ≈ ᾱ_t ≈ 1: float32 cancellation in 1 - ᾱ
    x_t = valid_observation(process, seed=26)  # impossible (x_t, x0) pairs fall back to x_s = x_t
    kernel = np.asarray(process.reverse_kernel(x_t, s, t, random_probs(27, (SMALL, D))))
    assert (kernel >= 0).all()
    np.testing.assert_allclose(kernel.sum(-1), 1.0, atol=1e-6)
    # s = t: nothing to undo, x_s = x_t
    same = process.reverse_kernel(x_t, t, t, random_probs(28, (SMALL, D)))
    np.testing.assert_allclose(same, np.eye(process.num_states)[x_t], atol=1e-6)


@pytest.mark.parametrize(
    "process", [Masking(CONFIG), UniformSubstitution(CONFIG, schedule=LinearAlphaBar())], ids=repr
)
def test_sample_reverse_joint_frequencies_per_sample_times(process):
    x0 = random_tokens(27)
    x_t = process.corrupt(jax.random.key(28), x0, TWO_TIMES)  # t = 0.3 or 0.7 per sequence
    earlier = np.where(TWO_TIMES == 0.3, 0.1, 0.4)
    onehot = np.eye(V, dtype=np.float32)[x0]
    x_s = np.asarray(process.sample_reverse(jax.random.key(29), x_t, earlier, TWO_TIMES, onehot))
    x_t = np.asarray(x_t)
    assert x_s.dtype == np.int32
    num_states = process.num_states
    for rows, s, t in ((slice(None, HALF), 0.1, 0.3), (slice(HALF, None), 0.4, 0.7)):
        q_s = forward_matrix(process, alpha_bar(process, s))[:V]
        q_ts = transition_matrix(process, s, t)
        for a in range(V):
            from_a = x0[rows] == a
            pairs = x_s[rows][from_a] * num_states + x_t[rows][from_a]
            counts = np.bincount(pairs, minlength=num_states**2).reshape(num_states, num_states)
            assert_binomial(counts, from_a.sum(), q_s[a][:, None] * q_ts)  # q(x_s, x_t | x0 = a)


# ---- Gaussian reverse process --------------------------------------------------------------------
@pytest.mark.parametrize("s, t", [(0.0, 0.4), (0.1, 0.5), (0.3, 0.31), (0.5, 0.5), (0.2, 1.0), (0.0, 0.0)])
def test_gaussian_posterior_matches_gaussian_conditioning(s, t):
    process = Gaussian(CONFIG)
    x_t = random_normal(30, (SMALL, D, V))
    x0_mean = random_probs(31, (SMALL, D))
    mean, variance = process.posterior_mean_variance(x_t, s, t, x0_mean)
    a_s, a_t = alpha_bar(process, s), alpha_bar(process, t)
    x_t64, x0_64 = np.float64(x_t), np.float64(x0_mean)
    if a_t == 1.0:  # x_s = x_t = x0 surely
        expected_mean, expected_var = x_t64, 0.0
    else:  # (x_s, x_t) jointly Gaussian given x0: condition x_s on x_t
        cov = np.sqrt(a_t / a_s) * (1 - a_s)
        expected_mean = np.sqrt(a_s) * x0_64 + cov / (1 - a_t) * (x_t64 - np.sqrt(a_t) * x0_64)
        expected_var = (1 - a_s) - cov**2 / (1 - a_t)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, np.broadcast_to(expected_var, mean.shape), rtol=1e-4, atol=1e-7)


def test_gaussian_sample_reverse_matches_forward_joint():
    process = Gaussian(CONFIG)
    s, t = 0.2, 0.5
    x0 = random_tokens(31)
    onehot = np.eye(V)[x0]
    x_t = process.corrupt(jax.random.key(32), x0, t)
    x_s = np.asarray(process.sample_reverse(jax.random.key(33), x_t, s, t, np.float32(onehot)), np.float64)
    a_s, a_t = alpha_bar(process, s), alpha_bar(process, t)
    residual_s = (x_s - np.sqrt(a_s) * onehot).reshape(-1, V)
    residual_t = (np.float64(x_t) - np.sqrt(a_t) * onehot).reshape(-1, V)
    n = residual_s.shape[0]
    np.testing.assert_array_less(np.abs(residual_s.mean(0)), 5 * np.sqrt((1 - a_s) / n))
    np.testing.assert_array_less(np.abs(residual_s.var(0) - (1 - a_s)), 5 * (1 - a_s) * np.sqrt(2 / n))
    # Cov(x_s, x_t | x0) = sqrt(ᾱ_t/ᾱ_s)(1-ᾱ_s): the reverse step keeps the forward joint
    cov = (residual_s * residual_t).mean(0)
    np.testing.assert_array_less(np.abs(cov - np.sqrt(a_t / a_s) * (1 - a_s)), 5 / np.sqrt(n))


@pytest.mark.parametrize("t", [0.05, 0.3, 0.8])
def test_gaussian_score_is_gradient_of_log_marginal(t):
    """Tweedie: ∇ log Σ_a π(a) N(x; sqrt(ᾱ) e_a, (1-ᾱ) I) = score(x, t, E[x0 | x])."""
    process = Gaussian(CONFIG)
    x_t = random_normal(34, (SMALL, D, V))
    log_prior = np.log(random_probs(35, (SMALL, D)))
    a_t = alpha_bar(process, t)

    def log_marginal(x):
        log_density = -((x[..., None, :] - np.sqrt(a_t) * jnp.eye(V)) ** 2).sum(-1) / (2 * (1 - a_t))
        return jax.nn.logsumexp(log_prior + log_density, axis=-1).sum()

    posterior = np.asarray(jax.nn.softmax(log_prior + process.leaf_log_likelihood(x_t, t), axis=-1))
    score = process.score(x_t, t, posterior)
    np.testing.assert_allclose(score, jax.grad(log_marginal)(x_t), rtol=1e-4, atol=1e-4)


def test_gaussian_score_finite_at_zero_noise():
    process = Gaussian(CONFIG)
    x0 = random_tokens(36, n=SMALL)
    onehot = np.eye(V, dtype=np.float32)[x0]
    x_t = onehot  # the only possible observation at t = 0
    np.testing.assert_array_equal(process.score(x_t, 0.0, onehot), 0.0)
    assert np.isfinite(np.asarray(process.score(x_t, 0.0, np.full_like(onehot, 1 / V)))).all()


# ---- transformations: vmap over t, jit --------------------------------------------------------------
@pytest.mark.parametrize("process", ONE_PER_TYPE, ids=repr)
def test_vmap_over_t_equals_python_loop_and_jit_equals_no_jit(process):
    times = jnp.array([0.0, 0.2, 0.6, 1.0])
    keys = jax.random.split(jax.random.key(37), times.shape[0])
    x0 = random_tokens(38, n=SMALL)

    def corrupt_then_likelihood(proc, key, t):
        observation = proc.corrupt(key, x0, t)
        return observation, proc.leaf_log_likelihood(observation, t)

    observations, log_lik = jax.vmap(lambda key, t: corrupt_then_likelihood(process, key, t))(keys, times)
    chex.clear_trace_counter()  # the counter is keyed by code object, shared across params
    jitted = jax.jit(chex.assert_max_traces(corrupt_then_likelihood, n=1), static_argnums=0)
    for index, t in enumerate(times):  # a new t must not recompile; processes are static arguments
        observation, looped_log_lik = jitted(process, keys[index], float(t))
        np.testing.assert_allclose(observations[index], observation, rtol=1e-6)
        # atol: the Gaussian's entries are differences to the token's max, some near 0
        np.testing.assert_allclose(log_lik[index], looped_log_lik, rtol=1e-6, atol=1e-7)
        with jax.disable_jit():  # op by op: no XLA compilation or fusion
            unjitted = process.leaf_log_likelihood(observation, float(t))
        np.testing.assert_allclose(unjitted, looped_log_lik, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("process", ONE_PER_TYPE[1:], ids=repr)
def test_reverse_vmap_over_times_equals_unjitted_loop(process):
    pairs = jnp.array([[0.0, 0.3], [0.2, 0.5], [0.6, 1.0]])
    x_t = valid_observation(process, seed=39)
    probs = random_probs(40, (SMALL, D))
    if isinstance(process, Gaussian):
        reverse = lambda s, t: process.posterior_mean_variance(x_t, s, t, probs)  # noqa: E731
    else:
        reverse = lambda s, t: process.reverse_kernel(x_t, s, t, probs)  # noqa: E731
    vmapped = jax.vmap(lambda st: reverse(st[0], st[1]))(pairs)
    with jax.disable_jit():  # op by op: no XLA compilation or fusion
        looped = [reverse(s, t) for s, t in pairs]
    looped = jax.tree.map(lambda *leaves: jnp.stack(leaves), *looped)
    chex.assert_trees_all_close(vmapped, looped, rtol=1e-5, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", ALL_PROCESSES, ids=repr)
@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), np.array([0.2] * (SMALL - 1) + [1.2])])
def test_time_outside_unit_interval_raises(process, t):
    with pytest.raises(ValueError, match=r"t = .* must lie in \[0, 1\]"):
        process.corrupt(jax.random.key(0), random_tokens(51, n=SMALL), t)
    with pytest.raises(ValueError, match=r"t = .* must lie in \[0, 1\]"):
        process.leaf_log_likelihood(valid_observation(process), t)


@pytest.mark.parametrize("process", ONE_PER_TYPE, ids=repr)
def test_time_with_wrong_shape_raises(process):
    with pytest.raises(ValueError, match=rf"t has shape \(3,\).*\({SMALL},\)"):
        process.leaf_log_likelihood(valid_observation(process), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"t has shape \(2, 1\)"):
        process.corrupt(jax.random.key(0), random_tokens(0, n=2), np.zeros((2, 1)))
    with pytest.raises(TypeError, match="t must be a real number"):
        process.corrupt(jax.random.key(0), random_tokens(0, n=2), np.array(0.5 + 0.5j))


@pytest.mark.parametrize("process", ONE_PER_TYPE, ids=repr)
def test_bad_tokens_raise(process):
    good = random_tokens(52, n=2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=rf"tokens contains {V}, but values must lie in \[0, {V}\)"):
        process.corrupt(key, np.where(good == 0, V, good), 0.5)
    with pytest.raises(ValueError, match=r"tokens contains -1"):
        process.corrupt(key, np.where(good == 0, -1, good), 0.5)
    with pytest.raises(TypeError, match="tokens must have an integer dtype, got float32"):
        process.corrupt(key, good.astype(np.float32), 0.5)
    with pytest.raises(TypeError, match="tokens must have an integer dtype, got bool"):
        process.corrupt(key, good > 0, 0.5)
    with pytest.raises(ValueError, match=rf"tokens has shape \(2, {D + 1}\).*d = s\*\*L = {D}"):
        process.corrupt(key, np.zeros((2, D + 1), np.int32), 0.5)
    with pytest.raises(ValueError, match=rf"tokens has shape \(2, 2, {D}\)"):
        process.corrupt(key, np.zeros((2, 2, D), np.int32), 0.5)


@pytest.mark.parametrize("process", ONE_PER_TYPE[:3], ids=repr)
def test_bad_discrete_observations_raise(process):
    upper = process.num_states if isinstance(process, Masking) else V
    observation = np.full((SMALL, D), upper - 1, np.int32)
    process.leaf_log_likelihood(observation, 0.5)  # the largest legal value (mask for Masking)
    message = rf"observation contains {upper}, but values must lie in \[0, {upper}\)"
    with pytest.raises(ValueError, match=message):
        process.leaf_log_likelihood(observation + 1, 0.5)
    with pytest.raises(TypeError, match="observation must have an integer dtype"):
        process.leaf_log_likelihood(observation.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="observation has shape"):
        process.leaf_log_likelihood(observation[:, :-1], 0.5)


def test_bad_gaussian_observations_raise():
    process = Gaussian(CONFIG)
    message = rf"observation has shape \(2, {D}, {V + 1}\).*\(d, v\) = \({D}, {V}\)"
    with pytest.raises(ValueError, match=message):
        process.leaf_log_likelihood(np.zeros((2, D, V + 1), np.float32), 0.5)
    with pytest.raises(ValueError, match="observation has shape"):
        process.leaf_log_likelihood(np.zeros((2, D), np.int32), 0.5)  # tokens, not x_t
    with pytest.raises(TypeError, match="observation must have a floating dtype"):
        process.leaf_log_likelihood(np.zeros((2, D, V), np.int32), 0.5)
    with pytest.raises(ValueError, match="observation contains non-finite"):
        process.leaf_log_likelihood(np.full((2, D, V), np.nan, np.float32), 0.5)
    with pytest.raises(ValueError, match=rf"x0_mean has shape \(2, 3, {V}\)"):
        process.score(np.zeros((2, D, V), np.float32), 0.5, np.zeros((2, 3, V), np.float32))


@pytest.mark.parametrize("process", ONE_PER_TYPE[1:], ids=repr)
def test_bad_reverse_arguments_raise(process):
    x_t = valid_observation(process)
    probs = np.full((SMALL, D, V), 1 / V, np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"s = 0.6 must be <= t = 0.4"):
        process.sample_reverse(key, x_t, 0.6, 0.4, probs)
    with pytest.raises(ValueError, match=r"s = -0.1 must lie in \[0, 1\]"):
        process.sample_reverse(key, x_t, -0.1, 0.4, probs)
    with pytest.raises(ValueError, match="x0_probs has shape"):
        process.sample_reverse(key, x_t, 0.2, 0.4, probs[:, :, :-1])
    with pytest.raises(ValueError, match="x0_probs has a row summing to 2"):
        process.sample_reverse(key, x_t, 0.2, 0.4, 2 * probs)
    negative = np.tile(np.array([-0.25, 0.75, 0.25, 0.25], np.float32), (SMALL, D, 1))  # sums to 1
    with pytest.raises(ValueError, match="x0_probs contains -0.25"):
        process.sample_reverse(key, x_t, 0.2, 0.4, negative)
    if not isinstance(process, Gaussian):
        with pytest.raises(ValueError, match=r"s = 0.6 must be <= t = 0.4"):
            process.reverse_kernel(x_t, 0.6, 0.4, probs)
        with pytest.raises(ValueError, match=rf"x0 contains {V}"):
            process.posterior_kernel(x_t, 0.2, 0.4, np.full((SMALL, D), V))
    else:
        with pytest.raises(ValueError, match=r"s = 0.6 must be <= t = 0.4"):
            process.posterior_mean_variance(x_t, 0.6, 0.4, probs)


def test_value_checks_are_skipped_for_tracers_but_shape_checks_are_not():
    process = UniformSubstitution(CONFIG)
    observation = valid_observation(process)
    leaf_log_likelihood = jax.jit(process.leaf_log_likelihood)
    leaf_log_likelihood(observation, 1.5)  # t is traced inside jit: no value check, no crash
    with pytest.raises(ValueError, match="t has shape"):
        leaf_log_likelihood(observation, jnp.zeros(3))
    with pytest.raises(TypeError, match="observation must have an integer dtype"):
        leaf_log_likelihood(observation.astype(np.float32), 0.5)


def test_constructors_validate_their_fields():
    with pytest.raises(TypeError, match="config must be an RHMConfig"):
        Masking(config=(4, 2, 2, 2))
    with pytest.raises(TypeError, match="schedule must have an alpha_bar"):
        UniformSubstitution(CONFIG, schedule=object())
    with pytest.raises(TypeError, match="exact_fraction must be a bool"):
        Masking(CONFIG, exact_fraction=1)
    assert hash(Masking(CONFIG)) == hash(Masking(RHMConfig(4, 2, 2, 2)))
    assert Gaussian(CONFIG) != Gaussian(CONFIG, schedule=LinearBeta.rhm())
