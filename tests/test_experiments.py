import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import (EpsilonProcess, Gaussian, LinearAlphaBar, Masking, RHMConfig,
                     UniformSubstitution, bp, sample_data, sample_grammar, theory)
from rhm_jax.experiments import forward_backward, sample_grammars, to_rows
from rhm_jax.sharding import data_mesh

CFG = RHMConfig(v=32, m=8, s=2, L=4)
MF = theory.MeanField(32, 8, 2)


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def eps_sweep(grammar):
    eps = np.linspace(0.0, 1.0, 11)
    return eps, forward_backward(jax.random.key(1), grammar, EpsilonProcess(CFG), eps, 384,
                                 chunk_size=128)


def test_sharded_equals_unsharded_and_chunking_invariant(grammar):
    assert jax.device_count() == 4, "conftest sets 4 emulated CPU devices"
    eps = np.array([0.3, 0.7])
    proc = Masking(CFG)
    one = forward_backward(jax.random.key(2), grammar, proc, eps, 64, chunk_size=32,
                           mesh=data_mesh(1))
    four = forward_backward(jax.random.key(2), grammar, proc, eps, 64, chunk_size=32,
                            mesh=data_mesh(4))
    other_chunks = forward_backward(jax.random.key(2), grammar, proc, eps, 64, chunk_size=64,
                                    mesh=data_mesh(4))
    # Same keys, same draws: the sampled estimator is a count, so it must match exactly.
    np.testing.assert_array_equal(one.sampled, four.sampled)
    np.testing.assert_array_equal(one.sampled, other_chunks.sampled)
    np.testing.assert_allclose(one.marginal, four.marginal, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(one.marginal, other_chunks.marginal, rtol=1e-6, atol=1e-7)
    # A user's mesh straight from jax.make_mesh (explicit axes by default) works the same.
    explicit = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    mine = forward_backward(jax.random.key(2), grammar, proc, eps, 64, chunk_size=32,
                            mesh=explicit)
    np.testing.assert_array_equal(one.sampled, mine.sampled)
    np.testing.assert_allclose(one.marginal, mine.marginal, rtol=1e-6, atol=1e-7)
    # A 2-D mesh: the batch splits over "data" only and is replicated over the other axis.
    two_d = jax.make_mesh((2, 2), ("model", "data"))
    grid = forward_backward(jax.random.key(2), grammar, proc, eps, 64, chunk_size=32,
                            mesh=two_d)
    np.testing.assert_array_equal(one.sampled, grid.sampled)
    np.testing.assert_allclose(one.marginal, grid.marginal, rtol=1e-6, atol=1e-7)
    for res in (one, four, other_chunks, mine, grid):  # BP draws are trees of the grammar
        np.testing.assert_array_equal(res.per_level_validity, 1.0)
        np.testing.assert_array_equal(res.per_level_validity_se, 0.0)


def test_marginal_and_sampled_estimators_agree(eps_sweep):
    _, res = eps_sweep
    diff = res.sampled - res.marginal
    # The sampled estimator's variance dominates; 5 standard errors, plus float slack.
    bound = 5 * np.sqrt(res.sampled_se**2 + res.marginal_se**2) + 1e-6
    assert np.all(np.abs(diff) <= bound), np.max(np.abs(diff) / bound)
    assert res.marginal[0, 0, 0] == pytest.approx(1.0, abs=1e-6)  # no noise: class kept
    np.testing.assert_allclose(res.marginal[0, -1, 0], 1 / 32, atol=1e-6)  # ε = 1: chance


def test_bp_matches_mean_field_away_from_threshold(eps_sweep):
    eps, res = eps_sweep
    q = MF.level_curves(eps, CFG.L).q  # (L+1, T)
    away = np.abs(eps - MF.eps_star) > 0.05
    gap = np.abs(res.marginal[0].T - q)[:, away]  # (L+1, T_away)
    # "A few hundredths": the mean field ignores fluctuations of the grammar; allow
    # 0.05 plus 4 standard errors of the estimate.
    tol = 0.05 + 4 * res.marginal_se[0].T[:, away]
    assert np.all(gap <= tol), (gap.max(), np.unravel_index(gap.argmax(), gap.shape))


def test_class_transition_sharpens_with_depth():
    eps = np.linspace(0.0, 1.0, 26)
    widths = {}
    # Mean field: class width 0.215 -> 0.103 from L=5 to 7 (-> 0 like F'(p*)**-L), token
    # width 0.281 -> 0.250 (it tends to a finite limit, ~0.24).
    for L in (5, 7):
        cfg = RHMConfig(v=32, m=8, s=2, L=L)
        g = sample_grammar(jax.random.key(L), cfg)
        res = forward_backward(jax.random.key(3), g, EpsilonProcess(cfg), eps, 256)
        curve = res.marginal[0]
        widths[L] = [theory.curve_width(eps, curve[:, level], 1 / 32, 1.0)
                     for level in (0, L)]
    class_w = {L: w[0] for L, w in widths.items()}
    token_w = {L: w[1] for L, w in widths.items()}
    assert class_w[7] < 0.7 * class_w[5], class_w
    assert token_w[7] > 0.8 * token_w[5], token_w  # tokens do not sharpen
    assert token_w[7] > 1.5 * class_w[7], (token_w, class_w)


def test_quenched_average_over_grammars():
    cfg = RHMConfig(v=8, m=2, s=2, L=3)
    stack = sample_grammars(jax.random.key(0), cfg, 3)
    assert stack.rules[0].shape == (3, 8, 2, 2)
    res = forward_backward(jax.random.key(1), stack, EpsilonProcess(cfg), [0.2, 0.5], 64)
    assert res.marginal.shape == (3, 2, 4)
    mean, se_data, se_total = res.over_grammars()
    np.testing.assert_allclose(mean, res.marginal.mean(0))
    assert np.all(se_total >= 0) and np.all(se_data > 0)
    # Each grammar in the stack gives what it gives alone.
    single = jax.tree.map(lambda r: r[1], stack)
    alone = forward_backward(jax.random.key(1), single, EpsilonProcess(cfg), [0.2, 0.5], 64)
    np.testing.assert_allclose(alone.marginal[0], res.marginal[1], rtol=1e-5, atol=1e-6)
    rows = to_rows(res, cfg, "epsilon")
    assert len(rows) == 2 * 4 and rows[0]["n_grammars"] == 3
    json.dumps(rows)


def test_bad_arguments(grammar):
    eps = EpsilonProcess(CFG)
    with pytest.raises(ValueError, match="times must lie in"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5, 1.5], 8)
    with pytest.raises(ValueError, match="n_data = 0 must be >= 1"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 0)
    with pytest.raises(ValueError, match="max_batch = 0 must be >= 1"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, max_batch=0)
    with pytest.raises(ValueError, match="chunk_size = -4 must be >= 1"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, chunk_size=-4)
    with pytest.raises(TypeError, match="chunk_size must be an integer, got float 2.5"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, chunk_size=2.5)
    with pytest.raises(TypeError, match="max_batch must be an integer"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, max_batch=True)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        forward_backward(0, grammar, eps, [0.5], 8)
    with pytest.raises(ValueError, match="denoiser_params is given but denoiser is None"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, denoiser_params={"w": 1.0})
    with pytest.raises(ValueError, match="EpsilonProcess, which samples no observation"):
        forward_backward(jax.random.key(0), grammar, eps, [0.5], 8, denoiser=_identity)
    with pytest.raises(TypeError, match="denoiser must be a function"):
        forward_backward(jax.random.key(0), grammar, Masking(CFG), [0.5], 8, denoiser="bp")
    with pytest.raises(ValueError, match="axis named 'data'"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(CFG), [0.5], 8,
                         mesh=jax.make_mesh((4,), ("batch",)))
    with pytest.raises(ValueError, match="process.config"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(RHMConfig(4, 2, 2, 2)),
                         [0.5], 8)


def test_phase_cli_quick(tmp_path):
    from rhm_jax.cli import main

    out = tmp_path / "phase"
    assert main(["phase", "--quick", "--no-progress", "--L", "2", "--process",
                 "epsilon,uniform", "--times", "3", "--n-data", "16", "--out", str(out)]) == 0
    names = set(os.listdir(out))
    assert {"results.jsonl", "meta.json", "finite_size.json", "phase_class.png",
            "phase_levels.png", "phase_processes.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # atomic writes left nothing behind
    rows = [json.loads(line) for line in open(out / "results.jsonl")]
    assert len(rows) == 2 * 3 * 3  # processes × times × levels
    assert {r["process"] for r in rows} == {"epsilon", "uniform"}
    meta = json.load(open(out / "meta.json"))
    assert meta["config"]["seed"] == 0 and "versions" in meta["environment"]
    with pytest.raises(SystemExit):
        main(["phase", "--process", "nonsense", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # rejected before any work or file


# ---- any denoiser through the same experiment ---------------------------------------------
SMALL = RHMConfig(v=8, m=2, s=2, L=3)


@pytest.fixture(scope="module")
def small_grammar():
    return sample_grammar(jax.random.key(5), SMALL)


def _identity(params, key, x_t, t):
    """x̂0 = x_t: the noisy tokens themselves."""
    return x_t


def _shift_late(params, key, x_t, t):
    """x̂0 = x_t, shifted by ``params["shift"]`` (mod v) where t > 0.5."""
    late = (t > 0.5)[:, None]
    return jnp.where(late, (x_t + params["shift"]) % SMALL.v, x_t)


def _random_tokens(params, key, x_t, t):
    """x̂0 uniform over the alphabet, ignoring x_t."""
    return jax.random.randint(key, x_t.shape, 0, SMALL.v)


def _argmax(params, key, x_t, t):
    return jnp.argmax(x_t, axis=-1)


def _within(got, want, se, n, n_se=5, slack=1e-6):
    """|got - want| within ``n_se`` standard errors: the larger of the measured one and
    the Bernoulli bound ``sqrt(p(1-p)/n)`` (a per-datum fraction in [0, 1] with mean p has
    at most that variance; the measured one is 0 when a rare event was never seen)."""
    got, want, se = np.broadcast_arrays(np.asarray(got), np.asarray(want), np.asarray(se))
    bound = np.maximum(se, np.sqrt(want * (1 - want) / n))
    assert np.all(np.abs(got - want) <= n_se * bound + slack), (got, want, bound)


def _pure_noise_levels(config):
    """Uniform i.i.d. tokens (independent of x0): a node is valid with probability
    ``V_l = V_{l+1}**s · n_l m / v**s`` (``V_L = 1``); a valid node's symbol is uniform over
    ``n_l`` (every symbol owns m tuples), so ``P_l = V_l / n_l``."""
    valid = [1.0]
    for level in range(config.L - 1, -1, -1):
        n_l = config.num_symbols(level)
        valid.insert(0, valid[0] ** config.s * n_l * config.m / config.v**config.s)
    kept = [p / config.num_symbols(level) for level, p in enumerate(valid)]
    return np.array(valid), np.array(kept)


def test_bp_path_equals_a_slow_per_datum_reimplementation(small_grammar):
    """The experiment through parse-and-compare gives, datum by datum, what the definition
    gives: BP on that datum's evidence, one posterior draw with that datum's key, its tree
    compared with the true one (no parser, no chunking, no folding of noise levels)."""
    cfg, grammar, proc = SMALL, small_grammar, UniformSubstitution(SMALL)
    times, n_data = np.array([0.2, 0.5, 0.8]), 10
    res = forward_backward(jax.random.key(3), grammar, proc, times, n_data, chunk_size=4)
    internal = jax.jit(bp.marginals_and_messages)
    draw = jax.jit(bp.sample_tree)
    marginal = np.zeros((n_data, len(times), cfg.L + 1))
    sampled = np.zeros_like(marginal)
    for i in range(n_data):
        data_key, noise_key, post_key = jax.random.split(jax.random.fold_in(jax.random.key(3), i), 3)
        x0 = sample_data(data_key, grammar, 1, return_latents=True)
        for j, t in enumerate(times):
            x_t = proc.corrupt(noise_key, x0.tokens, float(t))
            mu, messages, _, _ = internal(grammar, proc.leaf_log_likelihood(x_t, float(t)))
            tree = draw(post_key[None], grammar, messages, mu[0][:, :, 0]).latents
            for level in range(cfg.L + 1):
                truth = np.asarray(bp.reverse_digits(x0.latents[level], cfg.s, axis=1))[0]
                mu_l = np.asarray(mu[level])[0]  # (n_l, nodes), internal node order
                marginal[i, j, level] = mu_l[truth, np.arange(len(truth))].mean()
                sampled[i, j, level] = np.mean(np.asarray(tree[level]) == np.asarray(x0.latents[level]))
    np.testing.assert_array_equal(res.sampled[0], sampled.mean(0))
    np.testing.assert_allclose(res.sampled_se[0], sampled.std(0, ddof=1) / np.sqrt(n_data),
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(res.marginal[0], marginal.mean(0), rtol=1e-5, atol=1e-7)
    # Float32 sums of squares: the standard error loses digits to cancellation.
    np.testing.assert_allclose(res.marginal_se[0], marginal.std(0, ddof=1) / np.sqrt(n_data),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(res.per_level_validity, 1.0)
    assert 0 < sampled[:, -1].mean() < 1  # the test sees both kept and changed nodes


def test_identity_denoiser_keeps_each_token_with_its_exact_probability(small_grammar):
    cfg = SMALL
    proc = UniformSubstitution(cfg, schedule=LinearAlphaBar())  # ᾱ_t = 1 - t
    times, n_data = np.array([0.0, 0.3, 0.6, 1.0]), 512
    res = forward_backward(jax.random.key(4), small_grammar, proc, times, n_data,
                           denoiser=_identity)
    assert res.marginal is None and res.marginal_se is None
    alpha_bar = 1.0 - times
    _within(res.sampled[0, :, -1], alpha_bar + (1 - alpha_bar) / cfg.v, res.sampled_se[0, :, -1],
            n_data)
    np.testing.assert_array_equal(res.sampled[0, 0], 1.0)  # t = 0: x_t = x0 at every level
    np.testing.assert_array_equal(res.per_level_validity[0, :, -1], 1.0)  # tokens stay in [0, v)
    valid, kept = _pure_noise_levels(cfg)  # t = 1: x_t is pure noise
    _within(res.per_level_validity[0, -1], valid, res.per_level_validity_se[0, -1], n_data)
    _within(res.sampled[0, -1], kept, res.sampled_se[0, -1], n_data)
    # Validity falls with t and bounds the kept fraction (an invalid node is changed).
    assert np.all(np.diff(res.per_level_validity[0, :, :-1], axis=0) <= 0)
    assert np.all(res.sampled <= res.per_level_validity)
    rows = to_rows(res, cfg, "uniform", denoiser="identity")
    assert rows[0]["P_marginal"] is None and rows[-1]["valid"] == res.per_level_validity[0, -1, -1]
    json.dumps(rows)
    with pytest.raises(ValueError, match="marginal estimator needs exact BP"):
        res.over_grammars("marginal")

    # The denoiser sees each row's own time and its params; new parameter values (a new
    # checkpoint) reuse the compiled program.
    chex.clear_trace_counter()
    shift_late = chex.assert_max_traces(_shift_late, n=1)
    late = times > 0.5
    for shift in (1, 3):
        res = forward_backward(jax.random.key(4), small_grammar, proc, times, n_data,
                               denoiser=shift_late, denoiser_params={"shift": jnp.int32(shift)})
        want = np.where(late, (1 - alpha_bar) / cfg.v, alpha_bar + (1 - alpha_bar) / cfg.v)
        _within(res.sampled[0, :, -1], want, res.sampled_se[0, :, -1], n_data)
    # A random denoiser draws from its key: tokens uniform, whatever x_t.
    res = forward_backward(jax.random.key(4), small_grammar, proc, times, n_data,
                           denoiser=_random_tokens)
    _within(res.per_level_validity[0], valid, res.per_level_validity_se[0], n_data)
    _within(res.sampled[0], kept, res.sampled_se[0], n_data)


def test_denoiser_with_masking_sharded_equals_unsharded(small_grammar):
    """Masked tokens left in x̂0 are invalid leaves: P_L = α_t = the valid leaf fraction.
    A deterministic denoiser gives the same counts on any mesh and chunking."""
    proc, times = Masking(SMALL), np.array([0.25, 0.75])
    runs = [forward_backward(jax.random.key(6), small_grammar, proc, times, 96, chunk_size=chunk,
                             mesh=data_mesh(devices), denoiser=_identity)
            for devices, chunk in ((1, 32), (4, 96))]
    for res in runs[1:]:
        np.testing.assert_array_equal(res.sampled, runs[0].sampled)
        np.testing.assert_array_equal(res.per_level_validity, runs[0].per_level_validity)
        np.testing.assert_allclose(res.sampled_se, runs[0].sampled_se, rtol=1e-6)
    res = runs[0]
    np.testing.assert_array_equal(res.sampled[..., -1], res.per_level_validity[..., -1])
    _within(res.sampled[0, :, -1], 1 - times, res.sampled_se[0, :, -1], 96)


def test_argmax_denoiser_on_gaussian_noise(small_grammar):
    """argmax of x_t = sqrt(ᾱ) onehot(x0) + sqrt(1-ᾱ) η is x0 with probability
    ``∫ φ(z) Φ(z + sqrt(ᾱ/(1-ᾱ)))**(v-1) dz``."""
    from scipy import integrate, stats

    cfg, proc = SMALL, Gaussian(SMALL)
    times = np.array([0.1, 0.15, 0.25])  # DDPM linear β: ᾱ = 0.90, 0.79, 0.52
    res = forward_backward(jax.random.key(8), small_grammar, proc, times, 384, denoiser=_argmax)
    want = []
    for t in times:
        alpha_bar = float(proc.schedule.alpha_bar(t))
        shift = np.sqrt(alpha_bar / (1 - alpha_bar))
        want.append(integrate.quad(lambda z: stats.norm.pdf(z) * stats.norm.cdf(z + shift)
                                   ** (cfg.v - 1), -np.inf, np.inf)[0])
    assert 0.3 < min(want) and max(want) < 0.95  # informative times
    _within(res.sampled[0, :, -1], want, res.sampled_se[0, :, -1], 384)
    np.testing.assert_array_equal(res.per_level_validity[0, :, -1], 1.0)


def test_denoiser_output_is_checked(small_grammar):
    def floats(params, key, x_t, t):
        return x_t.astype(jnp.float32)

    with pytest.raises(ValueError, match=r"denoiser returned a float32 array of shape \(\d+, 8\)"):
        forward_backward(jax.random.key(0), small_grammar, Masking(SMALL), [0.5], 8,
                         denoiser=floats)

    class Unhashable:
        __hash__ = None

        def __call__(self, params, key, x_t, t):
            return x_t

    with pytest.raises(TypeError, match="denoiser must be hashable"):
        forward_backward(jax.random.key(0), small_grammar, Masking(SMALL), [0.5], 8,
                         denoiser=Unhashable())
