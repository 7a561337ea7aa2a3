"""Correlated changes (``docs/theory/correlations.md``): the estimator's exact identities against the full
matrix, the factorised case (χ = 1), the RHM experiment end to end, and the control."""

import jax
import numpy as np
import pytest

from rhm_jax import Masking, RHMConfig, sample_grammar
from rhm_jax.correlations import (summarise_statistics, change_correlations, collapse_exponent,
                                  grf_change_correlations, spin_statistics, width_exponent)
from rhm_jax.experiments import sample_grammars
from rhm_jax.sharding import data_mesh

CFG = RHMConfig(v=8, m=2, s=2, L=3)


def _full_matrix(spins):
    """Oracle: ``C_ij`` with the 1/n moments, in float64 NumPy."""
    x = np.asarray(spins, np.float64)
    mean = x.mean(0)
    return x.T @ x / len(x) - np.outer(mean, mean)


def _tree_distance(d, s):
    i = np.arange(d)
    h = np.zeros((d, d), int)
    while True:
        differ = (i[:, None] // s ** h) != (i[None, :] // s ** h)
        if not differ.any():
            return h
        h = h + differ


@pytest.mark.parametrize("s, d", [(2, 16), (3, 27)])
def test_statistics_equal_full_matrix_sums(s, d):
    """Tree sums (subtree-sum variances) and position sums (FFT) equal the sums of the
    full matrix over the pairs at each distance; C is symmetric with C_ii = m(1-m)."""
    rng = np.random.default_rng(0)
    # Correlated spins: a shared block flip on top of independent ones.
    block = rng.random((40, d // s)) < 0.3
    spins = (np.repeat(block, s, axis=1) ^ (rng.random((40, d)) < 0.2)).astype(np.int8)
    stats = jax.tree.map(np.asarray, spin_statistics(spins, s, with_matrix=True))
    full = _full_matrix(spins)
    mean = spins.mean(0)
    np.testing.assert_allclose(stats.matrix, full, atol=1e-5)
    np.testing.assert_allclose(stats.matrix, stats.matrix.T, atol=0)
    np.testing.assert_allclose(np.diag(stats.matrix), mean * (1 - mean), atol=1e-6)
    h = _tree_distance(d, s)
    want_tree = [full[h <= level].sum() for level in range(h.max() + 1)]
    np.testing.assert_allclose(stats.tree, want_tree, atol=1e-4)
    r = np.abs(np.arange(d)[:, None] - np.arange(d)[None, :])
    want_position = [full[r == k].sum() for k in range(d)]
    np.testing.assert_allclose(stats.position, want_position, atol=1e-4)
    np.testing.assert_allclose(stats.changed, mean.mean(), rtol=1e-6)


def test_factorised_changes_give_chi_one():
    """Independent spins (site-dependent rates): Σ_ij C_ij = Σ_i C_ii in expectation, so
    χ = 1 within its error bar; a block-correlated case gives χ ≈ block size."""
    rng = np.random.default_rng(1)
    n_starts, n_traj, d = 200, 32, 32
    rates = rng.uniform(0.05, 0.5, (n_starts, 1, d))
    spins = (rng.random((n_starts, n_traj, d)) < rates).astype(np.int8)
    stats = jax.vmap(lambda x: spin_statistics(x, 2))(spins)
    per = {"changed": stats.changed[:, None], "tree": stats.tree[:, None],
           "position": stats.position[:, None]}
    res = summarise_statistics(np.array([0.5]), per, 2, n_traj)
    assert abs(res.chi[0] - 1) < 4 * res.chi_se[0], (res.chi, res.chi_se)
    assert res.chi_se[0] < 0.05
    # Blocks of 4 identical spins: within a start, the sum over pairs inside the blocks
    # (tree distance <= 2) is exactly 4 Σ_i C_ii; χ is 4 within its error (the sampled
    # covariances between different blocks vanish only on average).
    block = (rng.random((n_starts, n_traj, d // 4)) < 0.3).astype(np.int8)
    stats = jax.vmap(lambda x: spin_statistics(x, 2))(np.repeat(block, 4, axis=2))
    tree = np.asarray(stats.tree, np.float64)
    np.testing.assert_allclose(tree[:, 2] / tree[:, 0], 4.0, rtol=1e-5)
    np.testing.assert_allclose(tree[:, 1] / tree[:, 0], 2.0, rtol=1e-5)
    per = {"changed": stats.changed[:, None], "tree": stats.tree[:, None],
           "position": stats.position[:, None]}
    res = summarise_statistics(np.array([0.5]), per, 2, n_traj)
    assert abs(res.chi[0] - 4) < 4 * res.chi_se[0], (res.chi, res.chi_se)


@pytest.fixture(scope="module")
def masking_run():
    grammar = sample_grammar(jax.random.key(0), CFG)
    times = np.array([0.0, 0.4, 0.8])
    res = change_correlations(jax.random.key(1), grammar, Masking(CFG), times, 8, 16,
                              with_matrix=True, chunk_size=8)
    return grammar, times, res


def test_rhm_invariants(masking_run):
    _, times, res = masking_run
    d = CFG.d
    M = res.matrix
    assert M.shape == (3, d, d)
    np.testing.assert_allclose(M, M.transpose(0, 2, 1), atol=1e-6)
    # t = 0: nothing changes; the class is kept.
    assert res.changed[0] == 0 and np.all(M[0] == 0) and np.isnan(res.chi[0])
    assert res.class_kept[0] == pytest.approx(1.0, abs=1e-5)
    assert 0 < res.changed[1] < res.changed[2]
    for ti in (1, 2):
        chi_matrix = M[ti].sum() / np.trace(M[ti])
        chi_tree = (res.tree_distance[ti] * res.tree_pairs).sum() / (
            res.tree_distance[ti, 0] * d)
        chi_position = (res.position[ti] * res.position_pairs).sum() / (res.position[ti, 0] * d)
        np.testing.assert_allclose([chi_tree, chi_position], chi_matrix, rtol=1e-4)
        np.testing.assert_allclose(res.chi[ti], chi_matrix, rtol=1e-4)
        np.testing.assert_allclose(res.tree_distance[ti, 0] * d, np.trace(M[ti]), rtol=1e-4)
        assert np.isfinite(res.chi_se[ti]) and res.chi_se[ti] > 0
        # Tree distance h by the matrix: the mean C at each h.
        h = _tree_distance(d, CFG.s)
        want = [M[ti][h == level].mean() for level in range(CFG.L + 1)]
        np.testing.assert_allclose(res.tree_distance[ti], want, atol=1e-5)


def test_chunking_and_devices_do_not_change_results(masking_run):
    grammar, times, res = masking_run
    other = change_correlations(jax.random.key(1), grammar, Masking(CFG), times, 8, 16,
                                with_matrix=True, chunk_size=4, mesh=data_mesh(4))
    np.testing.assert_allclose(other.matrix, res.matrix, atol=1e-6)
    np.testing.assert_allclose(other.chi[1:], res.chi[1:], rtol=1e-5)


def test_bad_arguments_name_the_parameter():
    grammar = sample_grammar(jax.random.key(0), CFG)
    with pytest.raises(ValueError, match="n_trajectories = 1"):
        change_correlations(jax.random.key(0), grammar, Masking(CFG), [0.5], 4, 1)
    with pytest.raises(ValueError, match="n_starts = 0"):
        change_correlations(jax.random.key(0), grammar, Masking(CFG), [0.5], 0, 4)
    with pytest.raises(ValueError, match="stack"):
        change_correlations(jax.random.key(0), sample_grammars(jax.random.key(0), CFG, 2),
                            Masking(CFG), [0.5], 4, 4)
    with pytest.raises(ValueError, match="d = 12"):
        grf_change_correlations(jax.random.key(0), 12, 1.0, [0.5], 4, 4)


def test_gaussian_field_control_has_no_interior_peak():
    """No hierarchy: χ(t) grows monotonically with the noise (no interior maximum)."""
    times = np.linspace(0.1, 1.0, 7)
    res = grf_change_correlations(jax.random.key(0), 128, 2.0, times, 24, 24)
    assert np.all(np.isfinite(res.chi))
    peak = int(np.argmax(res.chi))
    assert peak == len(times) - 1, res.chi
    # Monotone within errors: no drop larger than two standard errors.
    drops = res.chi[:-1] - res.chi[1:]
    assert np.all(drops < 2 * np.hypot(res.chi_se[:-1], res.chi_se[1:])), res.chi


@pytest.mark.parametrize("argv, message", [
    (["--grf-d", "12"], "--grf-d = 12 must be a power of 2"),
    (["--n-starts", "1"], "--n-starts = 1 must be an integer >= 2"),
    (["--grf-exponent", "nan"], "--grf-exponent = nan"),
    (["--processes", "epsilon,foo"], "'foo' is not one"),
])
def test_chi_cli_refuses_bad_flags_before_work(argv, message, tmp_path, capsys):
    from rhm_jax.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["chi", *argv, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _scaling_family(nu, s, depths, seed, rel_noise=0.03):
    """Synthetic χ_L(t) = 1 + A_L·exp(-x²/0.1), x = (t - t_L)·b**L, b = s**(1/ν): a known
    exponent; grids offset differently per depth, noise of known standard error."""
    rng = np.random.default_rng(seed)
    b = s ** (1 / nu)
    times, values, errors, centres = [], [], [], []
    for L in depths:
        centre, width = 0.73 - 0.3 * b ** (-L), b ** (-L)
        t = np.linspace(centre - 1.8 * width, centre + 1.8 * width, 15) + 0.3 * width * rng.random()
        amplitude = L - 2.0
        error = np.full(t.shape, 0.03 * amplitude)
        y = 1 + amplitude * np.exp(-((t - centre) * b**L) ** 2 / 0.1)
        times.append(t)
        values.append(y + error * rng.standard_normal(t.shape))
        errors.append(error)
        centres.append(centre)
    return times, values, errors, centres


@pytest.mark.parametrize("nu, s, depths", [(1.89, 2, (5, 7, 9)), (3.0, 3, (3, 4, 5))])
def test_collapse_recovers_a_known_exponent(nu, s, depths):
    """The data collapse finds the exponent of a synthetic finite-size-scaling family
    within its (bootstrap) error, and the error is small enough to tell 1.89 from 3."""
    times, values, errors, centres = _scaling_family(nu, s, depths, seed=0)
    fit = collapse_exponent(depths, times, values, errors, centres, s, baseline=1.0, n_boot=40)
    assert abs(fit.nu - nu) < 3 * fit.nu_se, (fit.nu, fit.nu_se)
    assert 0 < fit.nu_se < 0.1 * nu, fit.nu_se
    assert fit.growth == pytest.approx(s ** (1 / fit.nu))
    assert 0.3 < fit.cost < 3, fit.cost  # collapses within the errors
    # Without the rescaling (every depth the same width) the cost is much larger.
    assert fit.costs[0] > 5 * fit.cost


def test_collapse_refuses_bad_input():
    times, values, errors, centres = _scaling_family(1.89, 2, (5, 7), seed=0)
    with pytest.raises(ValueError, match="at least 2 distinct depths"):
        collapse_exponent((5, 5), times, values, errors, centres, 2)
    with pytest.raises(ValueError, match="one entry per depth"):
        collapse_exponent((5, 7), times, values[:1], errors, centres, 2)
    with pytest.raises(ValueError, match="depth L = 7 has 2 finite points"):
        values[1][2:] = np.nan
        collapse_exponent((5, 7), times, values, errors, centres, 2)


def test_width_exponent():
    """Exact widths b**(-L) give ν = ln s / ln b exactly (the mean-field widths of
    (32, 8, 2) give ν within 2% of theory.MeanField.nu); noisy widths within the error."""
    from rhm_jax import theory

    nu, se = width_exponent([5, 7, 9], 0.3 * 1.5 ** -np.array([5.0, 7, 9]), 2)
    assert nu == pytest.approx(np.log(2) / np.log(1.5)) and se == pytest.approx(0, abs=1e-9)
    mf = theory.MeanField(32, 8, 2)
    depths = [7, 9, 11, 13]
    nu, _ = width_exponent(depths, [mf.transition_width(L) for L in depths], 2)
    assert nu == pytest.approx(mf.nu, rel=0.02)
    rng = np.random.default_rng(0)
    pulls = []
    for _ in range(200):
        widths = 1.5 ** -np.arange(3.0, 9) * np.exp(0.05 * rng.standard_normal(6))
        nu, se = width_exponent(np.arange(3, 9), widths, 3)
        pulls.append((nu - np.log(3) / np.log(1.5)) / se)
    assert 0.7 < np.std(pulls) < 1.4, np.std(pulls)
    with pytest.raises(ValueError, match="widths = .* must be finite and > 0"):
        width_exponent([5, 7], [0.1, 0.0], 2)
