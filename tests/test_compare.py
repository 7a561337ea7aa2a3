"""Trained denoiser against exact BP: agreement, empirical posterior, samples, CLI."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import RHMConfig, bp, data_from_index, sample_data, sample_grammar
from rhm_jax.denoise import Denoiser, ModelConfig, TrainConfig, build_model, make_objective, train
from rhm_jax.denoise import compare
from rhm_jax.sampling import sample_disjoint_data

CFG = RHMConfig(v=4, m=2, s=2, L=3)  # d = 8, P_max = 512: every datum can be enumerated


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def all_data(grammar):
    """Every datum of the grammar (P_max = 512 of them)."""
    return np.asarray(data_from_index(grammar, list(range(CFG.P_max))).tokens)


# ---- agreement: BP in the network's place through the same code ---------------------------
@pytest.mark.parametrize("loss", ["masked_elbo", "d3pm", "gaussian_eps"])
def test_bp_against_itself_has_kl_zero_and_top1_one(loss, grammar, all_data):
    """BP plugged in as the 'network': KL 0 and top-1 1 at every t; with the whole RHM as
    training set the empirical posterior is BP's, so it agrees with BP too."""
    objective = make_objective(loss, CFG)
    predict, params = compare.bp_predictor(objective, grammar)
    x0 = sample_data(jax.random.key(1), grammar, 24).tokens
    result = compare.agreement(jax.random.key(2), predict, params, objective, grammar, x0,
                               [0.3, 0.7], train_tokens=all_data, chunk_size=16)
    assert result.times.tolist() == pytest.approx([0.3, 0.7])
    np.testing.assert_array_less(result.kl, 1e-4)
    np.testing.assert_array_equal(result.top1, 1.0)
    np.testing.assert_array_less(result.regret, 1e-6)
    np.testing.assert_array_equal(result.top1_clear, 1.0)
    np.testing.assert_array_less(0.0, result.clear)  # there are clear tokens to agree on
    np.testing.assert_array_less(result.sq_error, 1e-8)
    np.testing.assert_array_less(result.kl_emp, 2e-4)
    np.testing.assert_array_less(result.kl_emp_bp, 2e-4)
    np.testing.assert_array_equal(result.top1_emp, 1.0)
    np.testing.assert_array_equal(result.explained, 1.0)
    assert np.all(result.tokens > 0)


def test_kl_at_full_masking_is_the_distance_of_the_token_frequencies_from_uniform(grammar,
                                                                                  all_data):
    """At t = 1 every token is masked: BP's posterior of token i is the frequency of each
    symbol at position i over all data. A network that outputs uniform logits is then at
    KL = mean_i Σ_a f_i(a) log(v f_i(a)) — computed here by enumeration."""
    objective = make_objective("masked_elbo", CFG)

    class Uniform:  # a hashable predictor with constant outputs
        def __call__(self, params, x_t, t):
            return jnp.zeros(x_t.shape + (CFG.v,))

        def __hash__(self):
            return 0

        def __eq__(self, other):
            return isinstance(other, Uniform)

    x0 = sample_data(jax.random.key(3), grammar, 8).tokens
    result = compare.agreement(jax.random.key(4), Uniform(), None, objective, grammar, x0, [1.0])
    freq = np.stack([np.mean(all_data == a, axis=0) for a in range(CFG.v)], -1)  # (d, v)
    expected = np.mean(np.sum(np.where(freq > 0, freq * np.log(CFG.v * np.where(freq > 0, freq, 1)),
                                       0.0), -1))
    assert expected > 0.05  # the oracle is far from 0: the test can fail
    assert result.kl[0] == pytest.approx(expected, rel=1e-4)
    assert result.tokens[0] == CFG.d  # every token masked and compared
    # uniform outputs pick symbol 0: the regret and the clear tokens by enumeration
    top_two = np.sort(freq, -1)[:, ::-1][:, :2]
    regret = np.mean(top_two[:, 0] - freq[:, 0])
    clear = top_two[:, 0] - top_two[:, 1] >= compare.CLEAR_MARGIN
    assert regret > 0.01 and 0 < clear.sum() < CFG.d  # neither is trivially 0 or all
    assert result.regret[0] == pytest.approx(regret, rel=1e-4, abs=1e-6)
    assert result.clear[0] == pytest.approx(clear.mean())
    agree = freq[:, 0] >= top_two[:, 0] - compare.TIE_TOLERANCE
    assert result.top1_clear[0] == pytest.approx(agree[clear].mean())
    assert result.top1[0] == pytest.approx(agree.mean()) and agree.mean() < agree[clear].mean()


def test_token_stats_counts_ties_of_bp_as_agreement():
    ref = jnp.array([[[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.7, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    est = jnp.array([[[0.3, 0.6, 0.05, 0.05], [0.1, 0.8, 0.05, 0.05], [0.1, 0.1, 0.1, 0.7]]])
    include = jnp.array([[True, True, False]])
    kl, top1, sq, count, regret, clear_top1, clear = np.asarray(
        compare.token_stats(ref, est, include))[0]
    ref64, est64 = np.asarray(ref, np.float64)[0, :2], np.asarray(est, np.float64)[0, :2]
    expected_kl = np.sum(np.where(ref64 > 0, ref64 * np.log(np.where(ref64 > 0, ref64, 1) / est64), 0))
    assert count == 2 and top1 == 1  # the tie counts, the wrong argmax does not
    assert regret == pytest.approx(0.7 - 0.2)  # the wrong argmax costs BP's 0.7 - 0.2
    assert clear == 1 and clear_top1 == 0  # a tie is not clear; 0.7 vs 0.2 is
    assert kl == pytest.approx(expected_kl, rel=1e-5)
    assert sq == pytest.approx(np.sum((est64 - ref64) ** 2), rel=1e-5)


# ---- the empirical posterior --------------------------------------------------------------
@pytest.mark.parametrize("loss", ["masked_elbo", "d3pm", "gaussian_x0"])
def test_empirical_posterior_of_all_data_is_bp(loss, grammar, all_data):
    """P = P_max: the empirical distribution is the RHM, so its posterior marginals and
    evidence are BP's, exactly (here to float32 rounding), whatever the chunking."""
    process = make_objective(loss, CFG).process
    x0 = sample_data(jax.random.key(5), grammar, 16).tokens
    t = jnp.array([0.2, 0.5, 0.8, 0.95] * 4)
    loglik = process.leaf_log_likelihood(process.corrupt(jax.random.key(6), x0, t), t)
    exact = bp.marginals(grammar, loglik)
    marginals, log_evidence = compare.empirical_marginals(all_data, loglik, chunk_size=100)
    np.testing.assert_allclose(marginals, exact.marginals[-1], atol=2e-5)
    np.testing.assert_allclose(log_evidence, exact.log_evidence, rtol=1e-5, atol=1e-4)
    again, _ = compare.empirical_marginals(all_data[::-1], loglik, chunk_size=512)
    np.testing.assert_allclose(again, marginals, atol=2e-6)


def test_empirical_posterior_of_a_few_data_by_hand(grammar, all_data):
    """Three training data, uniform substitution: weights ∝ Π_i lik_i(x^μ_i) by hand."""
    process = make_objective("d3pm", CFG).process
    train = all_data[[3, 100, 400]]
    x_t = process.corrupt(jax.random.key(7), jnp.asarray(train[:1]), 0.6)
    loglik = np.asarray(process.leaf_log_likelihood(x_t, 0.6), np.float64)[0]
    weights = np.exp([loglik[np.arange(CFG.d), x].sum() for x in train])
    weights /= weights.sum()
    expected = sum(w * np.eye(CFG.v)[x] for w, x in zip(weights, train))
    marginals, _ = compare.empirical_marginals(train, loglik[None], chunk_size=2)
    np.testing.assert_allclose(marginals[0], expected, atol=1e-5)


def test_masked_observation_that_no_training_datum_explains_has_floor_evidence(all_data):
    process = make_objective("masked_elbo", CFG).process
    train, other = all_data[:10], all_data[10:11]
    loglik = process.leaf_log_likelihood(jnp.asarray(other), 0.0)  # nothing masked
    _, log_evidence = compare.empirical_marginals(train, loglik)
    assert float(log_evidence[0]) < 0.5 * -1e30


# ---- samples ------------------------------------------------------------------------------
def test_exact_rhm_samples_are_valid_at_every_level_and_random_ones_as_enumeration_says(
        grammar, all_data):
    exact = np.asarray(sample_data(jax.random.key(8), grammar, 200).tokens)
    stats = compare.sample_stats(grammar, exact)
    np.testing.assert_array_equal(stats.valid, 1.0)
    assert stats.fully_valid == 1.0 and stats.class_histogram.sum() == 200
    assert stats.copy is None and stats.copy_perfect is None
    # random sequences: fully valid exactly when they are one of the P_max data
    noise = np.asarray(jax.random.randint(jax.random.key(9), (300, CFG.d), 0, CFG.v))
    mixed = np.concatenate([exact[:100], noise])
    stats = compare.sample_stats(grammar, mixed)
    members = compare.copy_flags(mixed, all_data)
    assert stats.fully_valid == pytest.approx(members.mean())
    assert 0.25 < stats.fully_valid < 0.5  # the noise is mostly invalid: the test has power
    assert stats.valid[-1] == 1.0 and np.all(np.diff(stats.valid) >= 0)


def _datum_index(tokens, all_data):
    """Index of each row in ``all_data``, -1 for a sequence no tree generates."""
    index = {row.tobytes(): i for i, row in enumerate(np.asarray(all_data, np.int32))}
    return np.array([index.get(row.tobytes(), -1) for row in np.asarray(tokens, np.int32)])


def _chi2_bound(df, p=1e-4):
    from scipy.stats import chi2

    return chi2.ppf(1.0 - p, df)


def test_first_hit_chain_with_bp_is_an_exact_posterior_draw(grammar, all_data):
    """Masking's one-token-at-a-time chain with BP's marginals draws exactly from
    ``p(x0 | x_t)``: from all masks every one of the P_max data equally often, from a partly
    masked ``x_t`` the data that agree with its tokens equally often (chi-square at
    p = 1e-4). The grid chain with as many steps (d) gives invalid sequences from all masks:
    the test has power."""
    from rhm_jax.denoise.sampling import first_hit_chain, reverse_chain
    from rhm_jax.grammar import with_inverse_tables

    objective = make_objective("masked_elbo", CFG)
    mask = objective.process.mask_token
    predict = objective.bp_predictor(with_inverse_tables(grammar))
    n = 16 * CFG.P_max
    first_hit = jax.jit(lambda k, x, t: first_hit_chain(predict, objective, k, x, t))
    x_1 = jnp.full((n, CFG.d), mask, jnp.int32)
    idx = _datum_index(first_hit(jax.random.key(20), x_1, jnp.ones(n)), all_data)
    assert np.all(idx >= 0)
    counts = np.bincount(idx, minlength=CFG.P_max)
    expected = n / CFG.P_max
    assert np.sum((counts - expected) ** 2 / expected) < _chi2_bound(CFG.P_max - 1)

    keep = np.arange(CFG.d) % 4 == 1  # positions 1 and 5 observed
    datum = all_data[37]
    x_t = jnp.broadcast_to(jnp.where(jnp.asarray(keep), datum, mask), (n, CFG.d))
    idx = _datum_index(first_hit(jax.random.key(21), x_t, jnp.full((n,), 0.75)), all_data)
    support = np.flatnonzero(np.all(all_data[:, keep] == datum[keep], axis=1))
    assert np.all(np.isin(idx, support)) and len(support) > 8
    counts = np.bincount(idx, minlength=CFG.P_max)[support]
    expected = n / len(support)
    assert np.sum((counts - expected) ** 2 / expected) < _chi2_bound(len(support) - 1)

    grid = jax.jit(lambda k: reverse_chain(predict, objective, k, x_1, jnp.ones(n),
                                           CFG.d))(jax.random.key(22))
    assert np.mean(_datum_index(grid, all_data) < 0) > 0.05


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_first_hit_chain_unmasks_at_the_forward_process_masking_times(schedule):
    """A predictor that answers token 0 after time 0.3 and token 1 before it: from all masks
    at t = 1, a token is revealed after 0.3 exactly when it was masked after 0.3 in the
    forward process, with probability α(0.3) — a binomial test of the chain's times (for the
    cosine schedule, of the inverse of α by bisection)."""
    from rhm_jax.denoise.sampling import first_hit_chain
    from rhm_jax.schedules import Cosine, LinearAlphaBar

    sched = LinearAlphaBar() if schedule == "linear" else Cosine()
    objective = make_objective("masked_elbo", CFG, schedule=sched)
    late, early = (jnp.array([0.0, -1e9, -1e9, -1e9]), jnp.array([-1e9, 0.0, -1e9, -1e9]))

    def predict(x, t):
        return jnp.where((t > 0.3)[:, None, None], late, early) + jnp.zeros(x.shape + (CFG.v,))

    n = 2000
    x_1 = jnp.full((n, CFG.d), objective.process.mask_token, jnp.int32)
    out = np.asarray(jax.jit(lambda k: first_hit_chain(predict, objective, k, x_1, jnp.ones(n)))(
        jax.random.key(23)))
    assert set(np.unique(out)) <= {0, 1}
    p = float(sched.alpha_bar(0.3))
    frac = np.mean(out == 0, axis=1)  # per sequence: 8 tokens, Binomial(8, p) / 8
    se = np.sqrt(p * (1 - p) / CFG.d / n)
    assert abs(frac.mean() - p) < 4.5 * se


def test_copy_fraction_of_a_set_against_itself_is_one_and_against_disjoint_data_zero(grammar):
    first, second = sample_disjoint_data(jax.random.key(10), grammar, [64, 64])
    a, b = np.asarray(first.tokens), np.asarray(second.tokens)
    assert compare.copy_fraction(a, a) == 1.0
    assert compare.copy_fraction(a, b) == 0.0
    assert compare.copy_fraction(np.concatenate([a[:16], b[:48]]), a) == 0.25
    stats = compare.sample_stats(grammar, b, train_tokens=a)
    assert stats.copy == 0.0 and stats.copy_perfect == 64 / CFG.P_max


# ---- hidden representations ---------------------------------------------------------------
def test_transformer_layer_activations_are_the_networks_own():
    """The per-layer activations re-run the transformer's forward pass: the last one, read
    out, is the network's output (the U-Net's levels are its own ``levels``)."""
    from flax import nnx

    model = build_model(CFG, ModelConfig("transformer", width=8, num_layers=2, num_heads=2),
                        CFG.v + 1, seed=0)
    graphdef, params = nnx.split(model)

    @jax.jit  # one compiled call instead of op-by-op dispatch
    def run(params, x, t):
        net = nnx.merge(graphdef, params)
        layers = compare.layer_activations(net, x, t)
        return layers, net.readout(net.out_norm(layers[-1])), net(x, t)

    x = jax.random.randint(jax.random.key(11), (3, CFG.d), 0, CFG.v)
    t = jnp.zeros(3)
    layers, read_out, output = run(params, x, t)
    assert len(layers) == 3 and all(h.shape == (3, CFG.d, 8) for h in layers)
    np.testing.assert_allclose(read_out, output, atol=1e-5)
    with pytest.raises(TypeError, match="must be a TreeUNet or a Transformer"):
        compare.layer_activations(object(), x, t)


def test_representation_of_an_unchanged_reconstruction_is_identical(grammar):
    """At t ≈ 0 nothing is masked, so x̂0 = x0: similarity 1 at every level and P_l = 1."""
    objective = make_objective("masked_elbo", CFG)
    model = build_model(CFG, ModelConfig(width=8), objective.num_input_states, seed=1)
    x0 = sample_data(jax.random.key(12), grammar, 16).tokens
    rep = compare.representation_similarity(jax.random.key(13), Denoiser(model, objective),
                                            grammar, x0, [1e-7], num_steps=2)
    assert rep.kind == "level" and rep.similarity.shape == (1, CFG.L + 1)
    np.testing.assert_allclose(rep.similarity, 1.0, atol=1e-5)
    np.testing.assert_array_equal(rep.P_sampled, 1.0)
    assert np.all(rep.chance < 0.9999)  # different data are not identical


# ---- the command line ---------------------------------------------------------------------
def _tiny_run(path):
    model = ModelConfig("unet", width=16)
    config = TrainConfig(v=4, m=2, s=2, L=3, loss="masked_elbo", model=model, batch_size=16,
                         steps=10, warmup_steps=2, test_size=24, train_size=48,
                         steps_per_call=10, log_every=10, eval_every=10, checkpoint_every=10,
                         eval_repeats=1)
    train(config, path, progress=False, plot=False)
    return config


def test_compare_cli_end_to_end(tmp_path, capsys):
    from rhm_jax.cli import main
    from rhm_jax.io import read_jsonl

    _tiny_run(tmp_path / "run_a")
    shutil.copytree(tmp_path / "run_a", tmp_path / "run_b")  # two runs: the sweep's files
    out = tmp_path / "cmp"
    code = main(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--quick",
                 "--no-progress", "--n-data", "12", "--n-samples", "12", "--times", "0.5,1",
                 "--num-steps", "8", "--out", str(out)])
    assert code == 0
    files = sorted(os.listdir(out))
    assert files == ["agreement.png", "forward_backward.png", "generation.png", "meta.json",
                     "representation.png", "results.jsonl", "sweep.jsonl", "sweep.png"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["command"] == "compare"
    assert meta["runs"][0]["train_config"]["train_size"] == 48 and meta["environment"]["versions"]
    rows = read_jsonl(out / "results.jsonl")
    measures = {r["measure"] for r in rows}
    assert measures == {"agreement", "loss", "generation", "forward_backward", "representation"}
    for r in rows:
        assert r["v"] == 4 and r["train_size"] == 48 and r["seed"] == 0
    agree = [r for r in rows if r["measure"] == "agreement"]
    assert len(agree) == 2 * 2 and all(r["kl"] >= 0 and 0 <= r["top1"] <= 1 for r in agree)
    assert all(r["kl_emp"] is not None for r in agree)  # a finite training set
    assert all(r["regret"] >= 0 and 0 <= r["clear"] <= 1 for r in agree)
    generated = {(r["run"], r["source"], r["level"]): r for r in rows if r["measure"] == "generation"}
    assert generated[(str(tmp_path / "run_a"), "bp_exact", 0)]["fully_valid"] == 1.0
    assert generated[(str(tmp_path / "run_a"), "bp_exact", 0)]["copy_perfect"] == 48 / CFG.P_max
    fb = [r for r in rows if r["measure"] == "forward_backward"]
    assert {r["source"] for r in fb} == {"network", "bp"}
    assert all(r["P_marginal"] is None for r in fb if r["source"] == "network")
    assert all(r["valid"] == 1.0 for r in fb if r["source"] == "bp")
    sweep = read_jsonl(out / "sweep.jsonl")
    assert len(sweep) == 2 and sweep[0]["P_units"] == 48 / (4 * 2**4)
    assert sweep[0]["entropy"] == pytest.approx(CFG.log_P_max / CFG.d)
    # the P_0 gap: the network's sampled curve against BP's marginal one, at its worst t
    p0 = {(r["source"], r["t"]): r for r in fb if r["level"] == 0 and r["run"] == sweep[0]["run"]}
    gaps = {t: p0[("network", t)]["P_sampled"] - p0[("bp", t)]["P_marginal"] for t in (0.5, 1.0)}
    worst = max(gaps, key=lambda t: abs(gaps[t]))
    assert sweep[0]["P0_gap_max"] == pytest.approx(abs(gaps[worst]))
    assert sweep[0]["P0_gap_max_t"] == worst and sweep[0]["P0_gap_max_se"] > 0
    assert "top-1 at t = 0.5" in capsys.readouterr().out
    # the sweep figure with an online run (no training set, no copies)
    from rhm_jax.plotting.comparison import plot_sweep

    online = dict(sweep[1], online=True, train_size=None, P_units=None, network_copy=None,
                  kl_emp_mean=None)
    plot_sweep([sweep[0], online], str(tmp_path / "sweep_online.png"))
    assert (tmp_path / "sweep_online.png").stat().st_size > 0


def _fake_run(path):
    """A folder that passes the run-folder checks (config.json and a checkpoint step)."""
    path.mkdir()
    config = TrainConfig(v=4, m=2, s=2, L=3, test_size=128)
    (path / "config.json").write_text(json.dumps(config.to_dict()))
    (path / "checkpoints" / "10").mkdir(parents=True)
    return path


@pytest.mark.parametrize("argv, error", [
    (["{missing}"], "RUN_DIR = '{missing}' is not a folder"),
    (["{empty}"], "is not a training run (no config.json and checkpoints/"),
    (["{run}", "{run}"], "the same run is given twice"),
    (["{run}", "--times", "0,0.5"], "--times = '0,0.5' must be > 0"),
    (["{run}", "--times", "0:1:3"], "--times = '0:1:3' must be > 0"),
    (["{run}", "--n-data", "0"], "--n-data = 0 must be an integer >= 1"),
    (["{run}", "--n-fb-data", "-3"], "--n-fb-data = -3 must be an integer >= 1"),
    (["{run}", "--num-steps", "x"], "--num-steps = 'x' must be an integer"),
    (["{run}", "--out", "{run}"], "overlaps RUN_DIR"),
    (["{run}", "--out", "{run}/sub"], "overlaps RUN_DIR"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(argv, error, tmp_path, capsys):
    from rhm_jax.cli import main

    run = _fake_run(tmp_path / "run")
    (tmp_path / "empty").mkdir()
    names = {"run": str(run), "missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}
    argv = [a.format(**names) for a in argv]
    error = error.format(**names)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        main(["compare", *argv])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rhm-jax compare: error: "), lines
    assert error in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json"]  # the run is untouched
