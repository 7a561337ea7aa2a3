import json
import os

import jax
import numpy as np
import pytest

from rhm_jax import EpsilonProcess, Masking, RHMConfig, sample_grammar, theory
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
    with pytest.raises(ValueError, match="times must lie in"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(CFG), [0.5, 1.5], 8)
    with pytest.raises(ValueError, match="n_data"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(CFG), [0.5], 0)
    with pytest.raises(ValueError, match="axis named 'data'"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(CFG), [0.5], 8,
                         mesh=jax.make_mesh((4,), ("batch",)))
    with pytest.raises(ValueError, match="process.config"):
        forward_backward(jax.random.key(0), grammar, EpsilonProcess(RHMConfig(4, 2, 2, 2)),
                         [0.5], 8)


def test_phase_cli_quick(tmp_path):
    from rhm_jax.cli import main

    out = tmp_path / "phase"
    assert main(["phase", "--quick", "--no-progress", "--L", "2", "--processes",
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
        main(["phase", "--processes", "nonsense", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # rejected before any work or file
