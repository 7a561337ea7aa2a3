"""Tests of rhm_jax.exact: the exact BP denoiser and reverse samplers (``docs/theory/belief_propagation.md`` and ``docs/theory/phase_transition.md``).

Oracles: brute-force enumeration of every datum of a tiny grammar (posterior means, the
D3PM x0 target as a leave-one-out posterior, the Gaussian score as the autodiff gradient of
the exact log p_t), and, for the samplers, the exact BP marginals and one-shot posterior
sampling, compared per level with a paired z-test (4 standard errors of the per-datum
differences). Shapes are shared between tests: every new shape costs an XLA compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import (
    EpsilonProcess,
    Gaussian,
    Masking,
    RHMConfig,
    UniformSubstitution,
    bp,
    digits_from_tokens,
    sample_data,
    sample_grammar,
)
from rhm_jax.exact import (
    d3pm_x0_target,
    gaussian_score,
    one_shot_sample,
    posterior_mean,
    reconstruction_by_level,
    reverse_sample,
    reverse_step,
)

from oracle import brute_force_posterior, enumerate_data

TINY = RHMConfig(v=3, m=2, s=2, L=2, n_classes=2)  # d = 4, P_max = 16
TINY_N = 3
SMALL = RHMConfig(v=8, m=2, s=2, L=3, n_classes=8)  # d = 8, P_max = 1024
NUM_DATA = 4000


@pytest.fixture(scope="module")
def tiny_grammar():
    return sample_grammar(jax.random.key(1), TINY)


@pytest.fixture(scope="module")
def small_setup():
    grammar = sample_grammar(jax.random.key(0), SMALL)
    return grammar, sample_data(jax.random.key(1), grammar, NUM_DATA, return_latents=True)


def _tiny_observation(grammar, process, t, seed=2):
    x0 = sample_data(jax.random.key(seed), grammar, TINY_N).tokens
    return process.corrupt(jax.random.key(seed + 1), x0, t)


def assert_same_mean(first, second, z=4.0):
    """Paired z-test per level: |mean(first - second)| < z·SE of the per-datum differences."""
    diff = np.asarray(first, np.float64) - np.asarray(second, np.float64)
    standard_error = diff.std(axis=0, ddof=1) / np.sqrt(diff.shape[0])
    assert (np.abs(diff.mean(axis=0)) < z * standard_error + 1e-12).all(), (
        f"mean differences {diff.mean(axis=0)} vs SE {standard_error}")


def _marginal_overlap(grammar, process, x_t, t, latents):
    """Per datum and level, the mean over nodes of μ_{l,j}(true symbol) (marginal P_l)."""
    result = bp.marginals(grammar, process.leaf_log_likelihood(x_t, t))
    return np.stack([np.asarray(jnp.take_along_axis(mu, true[..., None], -1)[..., 0].mean(-1))
                     for mu, true in zip(result.marginals, latents)], axis=-1)


# ---- exact denoiser quantities against brute force ----------------------------------------
@pytest.mark.parametrize("process", [EpsilonProcess(TINY), Masking(TINY),
                                     UniformSubstitution(TINY), Gaussian(TINY)],
                         ids=lambda p: type(p).__name__)
def test_posterior_mean_is_bp_leaf_marginal_and_brute_force(tiny_grammar, process):
    with jax.enable_x64(True):
        x_t = _tiny_observation(tiny_grammar, process, 0.4)
        loglik = process.leaf_log_likelihood(x_t, 0.4)
        mean = posterior_mean(tiny_grammar, process, x_t, 0.4)
        assert mean.shape == (TINY_N, TINY.d, TINY.v) and mean.dtype == jnp.float64
        np.testing.assert_array_equal(mean, bp.marginals(tiny_grammar, loglik).marginals[-1])
        _, brute_marginals, _, _ = brute_force_posterior(tiny_grammar, loglik)
        np.testing.assert_allclose(mean, brute_marginals[-1], atol=1e-10)


def test_posterior_mean_unbatched_and_vmapped_over_t(tiny_grammar):
    process = UniformSubstitution(TINY)
    with jax.enable_x64(True):
        x_t = _tiny_observation(tiny_grammar, process, 0.4)
        times = jnp.array([0.1, 0.4, 0.7])
        swept = jax.vmap(lambda t: posterior_mean(tiny_grammar, process, x_t, t))(times)
        for k, t in enumerate(times):
            np.testing.assert_allclose(swept[k], posterior_mean(tiny_grammar, process, x_t, t),
                                       atol=1e-12)
        single = posterior_mean(tiny_grammar, process, x_t[1], 0.4)
        np.testing.assert_allclose(single, posterior_mean(tiny_grammar, process, x_t, 0.4)[1],
                                   atol=1e-12)


def test_gaussian_score_is_gradient_of_exact_log_density(tiny_grammar):
    process, t = Gaussian(TINY), 0.3
    with jax.enable_x64(True):
        latents, _ = enumerate_data(tiny_grammar)
        all_onehot = jax.nn.one_hot(latents[-1], TINY.v, dtype=jnp.float64)  # (P, d, v)
        alpha_bar = process.schedule.alpha_bar(t)

        def log_density(x_t):  # log p_t(x_t) = log mean_data Π_i N(x_t,i; √ᾱ e_{x_i}, (1-ᾱ)I)
            sq = jnp.sum((x_t[None] - jnp.sqrt(alpha_bar) * all_onehot) ** 2, axis=(1, 2))
            log_normal = -sq / (2 * (1 - alpha_bar)) - TINY.d * TINY.v / 2 * jnp.log(
                2 * jnp.pi * (1 - alpha_bar))
            return jax.scipy.special.logsumexp(log_normal) - jnp.log(all_onehot.shape[0])

        x_t = _tiny_observation(tiny_grammar, process, t)
        assert x_t.dtype == jnp.float64
        expected = jax.vmap(jax.grad(log_density))(x_t)
        score = gaussian_score(tiny_grammar, process, x_t, t)
        assert score.shape == x_t.shape
        np.testing.assert_allclose(score, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("process", [UniformSubstitution(TINY), Masking(TINY)],
                         ids=lambda p: type(p).__name__)
def test_d3pm_x0_target_is_leave_one_out_posterior(tiny_grammar, process):
    t = 0.5
    with jax.enable_x64(True):
        x_t = _tiny_observation(tiny_grammar, process, t)
        loglik = process.leaf_log_likelihood(x_t, t)
        target = d3pm_x0_target(tiny_grammar, process, x_t, t)
        mean = posterior_mean(tiny_grammar, process, x_t, t)
        for i in range(TINY.d):  # p(x0_i = a | x_t without token i's own evidence)
            _, brute, _, _ = brute_force_posterior(tiny_grammar, loglik.at[:, i].set(0.0))
            np.testing.assert_allclose(target[:, i], brute[-1][:, i], atol=1e-10)
        lik = np.exp(np.asarray(loglik))
        positive = (lik > 0).all(-1)  # μ / lik is defined on every symbol
        with np.errstate(invalid="ignore"):  # 0/0 where lik = 0; those tokens are skipped
            ratio = np.asarray(mean) / lik
            ratio /= ratio.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.asarray(target)[positive], ratio[positive], atol=1e-10)
        if isinstance(process, UniformSubstitution):
            assert positive.all()
        assert np.abs(np.asarray(target) - np.asarray(mean)).max() > 0.05  # it is not μ


# ---- samplers: one-shot versus step-by-step (in law) -------------------------------------
# Times in the middle of SMALL's class transition (P_0 ≈ 0.3–0.45), and the num_steps to
# try per process: each is one compilation of the scanned sampler, so the one-step
# case (whose code path, the last step's x0 draw, is the same for every process) runs once
MID_TRANSITION = [
    (Masking(SMALL), 0.7, (3, 1)),
    (UniformSubstitution(SMALL), 0.5, (3,)),
    (Gaussian(SMALL), 0.25, (2,)),
]


@pytest.mark.parametrize("process,t,step_counts", MID_TRANSITION,
                         ids=[type(case[0]).__name__ for case in MID_TRANSITION])
def test_reverse_sample_matches_one_shot_in_law(small_setup, process, t, step_counts):
    grammar, data = small_setup
    x_t = process.corrupt(jax.random.key(2), data.tokens, t)
    one_shot = reconstruction_by_level(
        grammar, data.latents, one_shot_sample(jax.random.key(3), grammar, process, x_t, t))
    marginal = _marginal_overlap(grammar, process, x_t, t, data.latents)
    assert 0.2 < marginal[:, 0].mean() < 0.6  # the class is mid-transition
    assert_same_mean(one_shot, marginal)  # counting and marginal forms of P_l agree
    for num_steps in step_counts:
        tokens = reverse_sample(jax.random.key(4), grammar, process, x_t, t, num_steps)
        assert tokens.shape == (NUM_DATA, SMALL.d) and tokens.dtype == jnp.int32
        assert bool(digits_from_tokens(grammar, tokens)[1].all())  # exact draws are grammatical
        if isinstance(process, Masking):  # and agree with every unmasked token
            unmasked = np.asarray(x_t) != process.mask_token
            np.testing.assert_array_equal(np.asarray(tokens)[unmasked], np.asarray(x_t)[unmasked])
        assert_same_mean(reconstruction_by_level(grammar, data.latents, tokens), one_shot)


def test_factorised_reverse_sample(small_setup):
    """One factorised step draws tokens independently from μ_L; the z-test tells it apart."""
    grammar, data = small_setup
    process, t, _ = MID_TRANSITION[1]
    x_t = process.corrupt(jax.random.key(2), data.tokens, t)
    one_shot = reconstruction_by_level(
        grammar, data.latents, one_shot_sample(jax.random.key(3), grammar, process, x_t, t))
    tokens = reverse_sample(jax.random.key(4), grammar, process, x_t, t, 1, joint=False)
    assert tokens.shape == (NUM_DATA, SMALL.d) and tokens.dtype == jnp.int32
    factorised = reconstruction_by_level(grammar, data.latents, tokens)
    # the same law as independent numpy draws from the BP leaf marginals, at every level
    mean = np.asarray(posterior_mean(grammar, process, x_t, t), np.float64)
    gumbel = np.random.default_rng(0).gumbel(size=mean.shape)
    with np.errstate(divide="ignore"):
        independent = np.argmax(np.log(mean) + gumbel, axis=-1).astype(np.int32)
    assert_same_mean(factorised, reconstruction_by_level(grammar, data.latents, independent))
    assert not bool(digits_from_tokens(grammar, tokens)[1].all())
    # per token it is exact: level L agrees with one-shot ...
    assert_same_mean(factorised[:, -1:], one_shot[:, -1:])
    # ... but the class and intermediate levels do not: the z-test has power
    with pytest.raises(AssertionError):
        assert_same_mean(factorised[:, :-1], one_shot[:, :-1])


# ---- reverse_step --------------------------------------------------------------------------
@pytest.mark.parametrize("joint", [True, False])
@pytest.mark.parametrize("process", [Masking(TINY), UniformSubstitution(TINY), Gaussian(TINY)],
                         ids=lambda p: type(p).__name__)
def test_reverse_step_shapes(tiny_grammar, process, joint):
    x_t = _tiny_observation(tiny_grammar, process, 0.6)

    def step(key, x, s, t):
        return reverse_step(key, tiny_grammar, process, x, s, t, joint=joint)

    key = jax.random.key(0)
    for batch in (x_t, x_t[0]):  # abstract evaluation: no compilation
        out = jax.eval_shape(step, key, batch, 0.2, 0.6)
        assert out.shape == batch.shape and out.dtype == batch.dtype
    # a sweep over times is one vmap
    swept = jax.eval_shape(jax.vmap(step, in_axes=(None, None, 0, 0)), key, x_t,
                           jnp.array([0.1, 0.2]), jnp.array([0.5, 0.6]))
    assert swept.shape == (2,) + x_t.shape and swept.dtype == x_t.dtype


def test_reverse_step_jit_matches_no_jit(tiny_grammar):
    process = UniformSubstitution(TINY)
    x_t = _tiny_observation(tiny_grammar, process, 0.6)
    x_s = reverse_step(jax.random.key(5), tiny_grammar, process, x_t, 0.2, 0.6)
    traced = jax.jit(lambda key, x, s, t: reverse_step(key, tiny_grammar, process, x, s, t))
    np.testing.assert_array_equal(x_s, traced(jax.random.key(5), x_t, 0.2, 0.6))
    assert x_s.dtype == jnp.int32 and int(x_s.min()) >= 0 and int(x_s.max()) < TINY.v
    assert (np.asarray(x_s) != np.asarray(x_t)).any()  # it moved


# ---- reconstruction_by_level ---------------------------------------------------------------
def test_reconstruction_by_level(small_setup):
    grammar, data = small_setup
    np.testing.assert_array_equal(reconstruction_by_level(grammar, data.latents, data.tokens), 1.0)
    other = jnp.roll(data.tokens, 1, axis=0)  # every datum compared with its neighbour
    result = np.asarray(reconstruction_by_level(grammar, data.latents, other))
    for level, latent in enumerate(data.latents):
        expected = (np.asarray(latent) == np.roll(np.asarray(latent), 1, axis=0)).mean(-1)
        np.testing.assert_allclose(result[:, level], expected)
    # an ungrammatical x̂0: nothing above the tokens is reconstructed
    broken = data.tokens.at[:, :SMALL.s].set(data.tokens[:, :1])  # a repeated pair is no rule...
    valid = np.asarray(digits_from_tokens(grammar, broken)[1])
    assert (~valid).any()
    result = np.asarray(reconstruction_by_level(grammar, data.latents, broken))
    assert (result[~valid, :-1] == 0).all()
    same_token = np.asarray(broken) == np.asarray(data.tokens)
    np.testing.assert_allclose(result[:, -1], same_token.mean(-1))
    single = reconstruction_by_level(grammar, [x[0] for x in data.latents], data.tokens[0])
    assert single.shape == (SMALL.L + 1,)


# ---- bad input -----------------------------------------------------------------------------
def test_bad_inputs_raise(tiny_grammar):
    masking = Masking(TINY)
    x_t = np.full((2, TINY.d), TINY.v, np.int32)  # all masked
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="s = 0.5 must be < t = 0.5"):
        reverse_step(key, tiny_grammar, masking, x_t, 0.5, 0.5)
    with pytest.raises(ValueError, match="s = 0.6 must be < t = 0.5"):
        reverse_step(key, tiny_grammar, masking, x_t, 0.6, 0.5)
    with pytest.raises(TypeError, match="EpsilonProcess"):
        reverse_step(key, tiny_grammar, EpsilonProcess(TINY), x_t % TINY.v, 0.1, 0.5)
    with pytest.raises(TypeError, match="EpsilonProcess"):
        reverse_sample(key, tiny_grammar, EpsilonProcess(TINY), x_t % TINY.v, 0.5, 2)
    with pytest.raises(ValueError, match="num_steps = 0"):
        reverse_sample(key, tiny_grammar, masking, x_t, 0.5, 0)
    with pytest.raises(ValueError, match="t = 0 must be > 0"):
        reverse_sample(key, tiny_grammar, masking, x_t, 0.0, 2)
    with pytest.raises(ValueError, match=r"t = 1.5 must lie in \[0, 1\]"):
        posterior_mean(tiny_grammar, masking, x_t, 1.5)
    with pytest.raises(ValueError, match="x_t contains 4"):
        one_shot_sample(key, tiny_grammar, UniformSubstitution(TINY), x_t + 1, 0.5)
    with pytest.raises(TypeError, match="must be Gaussian"):
        gaussian_score(tiny_grammar, masking, x_t, 0.5)
    with pytest.raises(ValueError, match=r"process.config has \(d, v\)"):
        posterior_mean(tiny_grammar, Masking(SMALL), np.zeros((2, SMALL.d), np.int32), 0.5)
    with pytest.raises(ValueError, match="L \\+ 1 = 3 arrays"):
        reconstruction_by_level(tiny_grammar, (np.zeros((2, 1), np.int32),), x_t % TINY.v)
    with pytest.raises(ValueError, match="x_hat_tokens contains 3"):
        reconstruction_by_level(tiny_grammar, (np.zeros((2, 1), np.int32),), x_t)
