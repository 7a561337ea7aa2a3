"""The public API refuses numbers it cannot stand behind and says why in one line.

Each test is one case that the library used to get wrong: a value wrapped by an int32
cast, a fit that returned a number where it has none (the edge of its search grid, widths
that do not shrink), a raw error from deep inside (``ZeroDivisionError``,
``AttributeError``, a JAX key error), an allocation that cannot fit started anyway, an
option silently ignored, a NaN written to a JSON row.
"""

import json
import math

import jax
import numpy as np
import pytest

from rhm_jax import Masking, RHMConfig, parse, sample_data, sample_grammar

CFG = RHMConfig(v=8, m=2, s=2, L=3)  # d = 8


@pytest.fixture(scope="module")
def grammar():
    return sample_grammar(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def tokens(grammar):
    return np.asarray(sample_data(jax.random.key(1), grammar, 4).tokens)


@pytest.fixture
def tiny_memory(monkeypatch):
    """A device with 1 kB of memory: every sizeable call must be refused with its size."""
    import rhm_jax.validation as validation

    monkeypatch.setattr(validation, "memory_limit", lambda *a, **k: (1000, "a 1 kB test device"))


# ---- 1. tokens are range-checked before the int32 cast ---------------------------------------
@pytest.mark.parametrize("value", [2**32 + 3, 2**31, -(2**31) - 1])
def test_parse_refuses_int64_tokens_that_int32_would_wrap(grammar, tokens, value):
    wide = tokens.astype(np.int64)
    wide[1, 2] = value
    with pytest.raises(ValueError, match=rf"tokens\[1, 2\] = {value} must lie in \[-2147483648, "):
        parse(grammar, wide)
    assert bool(np.all(parse(grammar, tokens.astype(np.int64)).valid[0]))


def test_parse_accepts_every_int32_value_as_before(grammar, tokens):
    wide = tokens.astype(np.int64)
    wide[0, 0] = -(2**31)  # the smallest int32: an invalid leaf, not an error
    assert not bool(parse(grammar, wide).valid[0][0, 0])
    assert bool(np.all(parse(grammar, tokens.astype(np.uint8)).valid[0]))


# ---- 4. parse: lists and empty batches ---------------------------------------------------------
def test_parse_reads_lists_of_ints_like_numpy(grammar, tokens):
    from_list = parse(grammar, tokens.tolist())
    for got, want in zip(jax.tree.leaves(from_list), jax.tree.leaves(parse(grammar, tokens))):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="tokens must be a rectangular array"):
        parse(grammar, [[0] * 8, [0] * 7])
    with pytest.raises(TypeError, match="tokens must have an integer dtype, got float"):
        parse(grammar, [[0.5] * 8])


def test_parse_of_an_empty_batch_is_empty(grammar):
    tree = parse(grammar, np.zeros((0, CFG.d), np.int32))
    assert [x.shape for x in tree.valid] == [(0, 1), (0, 2), (0, 4), (0, 8)]
    assert [x.shape for x in tree.choices] == [(0, 1), (0, 2), (0, 4)]


# ---- 2. fits: bad input refused, a fit without meaning undetermined ---------------------------
def test_width_exponent_of_widths_that_do_not_shrink_is_undetermined():
    from rhm_jax.correlations import width_exponent

    for widths in ([0.1, 0.1, 0.1], [0.1, 0.2, 0.3], [0.1, 0.1]):  # ν was 3.9e15, then inf
        fit = width_exponent([3, 5, 7][:len(widths)], widths, 2)
        assert math.isnan(fit.nu) and math.isnan(fit.nu_se), fit
        assert "do not shrink with L" in fit.reason
    noisy = width_exponent([3, 4, 5], [0.10, 0.12, 0.095], 2)  # ln b within 2 SE of 0
    assert math.isnan(noisy.nu) and "within two standard errors" in noisy.reason
    nu, nu_se = width_exponent([3, 5, 7], [0.1 * 1.5**-L for L in (3, 5, 7)], 2)  # a pair
    assert nu == pytest.approx(math.log(2) / math.log(1.5)) and nu_se < 1e-9


@pytest.mark.parametrize("depths, error, text", [
    ([3, float("nan"), 7], TypeError, "depths[1] must be an integer, got float nan"),
    ([3, 5.5, 7], TypeError, "depths[1] must be an integer, got float 5.5"),
    ([0, 5, 7], ValueError, "depths[0] = 0 must be >= 1"),
])
def test_width_exponent_refuses_depths_that_are_not_depths(depths, error, text):
    from rhm_jax.correlations import width_exponent

    with pytest.raises(error) as info:
        width_exponent(depths, [0.1, 0.05, 0.02], 2)
    assert text in str(info.value)


def _peaks(depths=(3, 5), b=1.5, centre=0.5):
    """Noiseless peaks ``1 + 5 exp(-((t - centre) b**L)**2)`` sampled on 11 points each."""
    times = [np.linspace(centre - 2 * b**-L, centre + 2 * b**-L, 11) for L in depths]
    values = [1 + 5 * np.exp(-((t - centre) * b**L) ** 2) for t, L in zip(times, depths)]
    return list(depths), times, values, [np.full(11, 0.1)] * len(depths), [centre] * len(depths)


def test_collapse_of_flat_curves_is_undetermined_not_the_grid_edge():
    from rhm_jax.correlations import collapse_exponent

    depths, times, _, errors, centres = _peaks()
    flat = [np.full(11, 2.0)] * 2  # was ν = 34.66 = ln 2 / 0.02, the grid's first point
    fit = collapse_exponent(depths, times, flat, errors, centres, 2, n_boot=2)
    assert math.isnan(fit.nu) and math.isnan(fit.growth) and math.isnan(fit.nu_se)
    assert "lower end of the grid" in fit.reason
    no_peak = collapse_exponent(depths, times, flat, errors, centres, 2, baseline=2.0, n_boot=0)
    assert math.isnan(no_peak.nu) and "no peak above the baseline" in no_peak.reason
    apart = collapse_exponent(depths, [times[0], times[1] + 5], _peaks()[2], errors, centres, 2,
                              n_boot=0)
    assert math.isnan(apart.nu) and "no two depths overlap" in apart.reason


def test_collapse_with_its_optimum_inside_the_grid_is_a_number():
    from rhm_jax.correlations import collapse_exponent

    fit = collapse_exponent(*_peaks(), 2, baseline=1.0, n_boot=2)
    assert fit.growth == pytest.approx(1.5, rel=0.02) and fit.reason is None
    assert math.isfinite(fit.nu_se)
    edge = collapse_exponent(*_peaks(), 2, baseline=1.0, log_growth=[0.1, 0.2, 0.3], n_boot=0)
    assert math.isnan(edge.nu) and "upper end of the grid (ln b = 0.3)" in edge.reason


@pytest.mark.parametrize("change, error, text", [
    ({"baseline": float("nan")}, ValueError, "baseline = nan must be finite"),
    ({"baseline": "1"}, TypeError, "baseline must be a finite number, got str '1'"),
    ({"log_growth": [-1.0, -0.5]}, ValueError, "log_growth = [-1.0, -0.5] must be a strictly"),
    ({"log_growth": []}, ValueError, "log_growth = [] must be a strictly increasing"),
    ({"log_growth": [0.1, 0.3, 0.2]}, ValueError, "must be a strictly increasing"),
    ({"n_boot": 2.5}, TypeError, "n_boot must be an integer, got float 2.5"),
    ({"n_boot": 1}, ValueError, "n_boot = 1 must be 0 (no error bar) or >= 2"),
    ({"n_boot": -3}, ValueError, "n_boot = -3 must be >= 0"),
    ({"seed": -1}, ValueError, "seed = -1 must be >= 0"),
    ({"depths": [3.5, 5]}, TypeError, "depths[0] must be an integer, got float 3.5"),
    ({"errors": [np.full(11, -0.1)] * 2}, ValueError, "errors[0][0] = -0.1 (depth L = 3) must "
                                                      "be >= 0"),
])
def test_collapse_refuses_input_that_has_no_meaning(change, error, text):
    from rhm_jax.correlations import collapse_exponent

    depths, times, values, errors, centres = _peaks()
    args = {"depths": depths, "times": times, "values": values, "errors": errors,
            "centres": centres, "s": 2, "n_boot": 0, **change}
    with pytest.raises(error) as info:
        collapse_exponent(**args)
    assert text in str(info.value)


# ---- 3. correlated changes: one start, keys, sizes that cannot fit ----------------------------
def test_change_correlations_refuses_one_start_like_the_gaussian_field(grammar):
    from rhm_jax.correlations import change_correlations, grf_change_correlations

    with pytest.raises(ValueError, match=r"n_starts = 1 must be >= 2"):  # was chi = [nan]
        change_correlations(jax.random.key(0), grammar, Masking(CFG), [0.5], 1, 4)
    with pytest.raises(ValueError, match=r"n_starts = 1 must be >= 2"):
        grf_change_correlations(jax.random.key(0), 16, 1.0, [0.5], 1, 4)


@pytest.mark.parametrize("key", [0, np.zeros(3, np.uint32), "seed"])
def test_grf_change_correlations_refuses_a_non_key(key):
    from rhm_jax.correlations import grf_change_correlations

    with pytest.raises(TypeError, match="key must be a PRNG key from jax.random.key"):
        grf_change_correlations(key, 16, 1.0, [0.5], 2, 2)


def test_gaussian_field_that_cannot_fit_is_refused_with_its_size():
    from rhm_jax.correlations import grf_change_correlations

    with pytest.raises(ValueError) as info:  # was an OverflowError from inside JAX
        grf_change_correlations(jax.random.key(0), 2**40, 1.0, [0.5], 2, 2)
    # 40 bytes x 2 starts x 2 trajectories x 1 level x 2**40 sites
    assert ("grf_change_correlations(d=1099511627776, n_starts=2, n_trajectories=2) with 1 "
            "noise level: one compiled call would allocate about 175.9 TB") in str(info.value)


def test_change_correlations_that_cannot_fit_is_refused_with_its_size(grammar, tiny_memory):
    from rhm_jax.correlations import (change_correlations, change_correlations_bytes,
                                      grf_change_correlations)

    want = change_correlations_bytes(CFG, 4, 8, 2, chunk_size=8)
    assert want.device > 1000
    with pytest.raises(ValueError) as info:
        change_correlations(jax.random.key(0), grammar, Masking(CFG), [0.2, 0.5], 4, 8)
    assert "change_correlations(n_starts=4, n_trajectories=8) with 2 noise levels at d = 2**3:" \
        " one compiled call would allocate about" in str(info.value)
    assert "more than a 1 kB test device: lower n_trajectories" in str(info.value)
    with pytest.raises(ValueError, match="grf_change_correlations.*would allocate about"):
        grf_change_correlations(jax.random.key(0), 16, 1.0, [0.5], 2, 2)


def test_change_correlations_of_enormous_size_is_refused_on_any_machine(grammar):
    from rhm_jax.correlations import change_correlations

    with pytest.raises(ValueError, match=r"the statistics of every start would allocate about "
                                         r"\d+\.\d [TPE]B"):
        change_correlations(jax.random.key(0), grammar, Masking(CFG), np.linspace(0, 1, 1000),
                            2**32, 2)


# ---- 4. denoisers: argument types, start time, sizes, unused options --------------------------
@pytest.fixture(scope="module")
def denoiser():
    from flax import nnx

    from rhm_jax.denoise import Denoiser, ModelConfig, TreeUNet, make_objective

    net = TreeUNet(CFG, ModelConfig(width=8), num_states=CFG.v + 1, rngs=nnx.Rngs(0))
    return Denoiser(net, make_objective("masked_elbo", CFG))


def _run_of(denoiser):
    from rhm_jax.denoise.train import Run

    return Run(None, None, denoiser.model, None, 0, denoiser.objective)


@pytest.mark.parametrize("call", ["generate", "experiment_denoiser", "reverse_sample",
                                  "predict_x0"])
def test_a_training_run_is_not_a_denoiser(denoiser, call):
    from rhm_jax import denoise

    run = _run_of(denoiser)
    x_t = np.full((2, CFG.d), CFG.v)
    calls = {"generate": lambda d: denoise.generate(jax.random.key(0), d, 2),
             "experiment_denoiser": lambda d: denoise.experiment_denoiser(d),
             "reverse_sample": lambda d: denoise.reverse_sample(jax.random.key(0), d, None,
                                                                x_t, 1.0),
             "predict_x0": lambda d: denoise.predict_x0(d, x_t, 1.0)}
    with pytest.raises(TypeError, match=r"denoiser must be a rhm_jax.denoise.Denoiser, got Run: "
                                        r"wrap a training run with Denoiser.from_run\(run\)"):
        calls[call](run)  # generate was an AttributeError
    with pytest.raises(TypeError, match="denoiser must be a rhm_jax.denoise.Denoiser, got str 'x'"):
        calls[call]("x")


@pytest.mark.parametrize("t, text", [(0.0, "t = 0.0 must be in (0, 1]"),
                                     ([0.5, 0.0], "t[1] = 0.0 must be in (0, 1]")])
def test_reverse_sample_refuses_to_start_at_time_zero(denoiser, t, text):
    from rhm_jax.denoise import reverse_sample

    with pytest.raises(ValueError) as info:
        reverse_sample(jax.random.key(0), denoiser, None, np.full((2, CFG.d), CFG.v), t)
    assert text in str(info.value)


def test_generate_that_cannot_fit_is_refused_with_its_size(denoiser):
    from rhm_jax.denoise import generate
    from rhm_jax.denoise.sampling import generate_bytes

    # 4 bytes x 10**9 x 8 tokens x (1 state + 3 x 8 symbols + 2 x 8 channels) = 1.3 TB
    assert generate_bytes(denoiser, 10**9) == 4 * 10**9 * 8 * 41
    with pytest.raises(ValueError, match=r"generate\(n=1000000000\) at d = 2\*\*3 tokens would "
                                         r"allocate about 1.3 TB, more than"):
        generate(jax.random.key(0), denoiser, 10**9)


@pytest.mark.parametrize("name, option, value", [
    ("masked_elbo", "ce_weight", 5), ("masked_elbo", "num_steps", 100),
    ("gaussian_x0", "ce_weight", 0.5), ("gaussian_eps", "ce_weight", 1.0)])
def test_an_option_the_objective_does_not_use_is_refused(name, option, value):
    from rhm_jax.denoise import make_objective

    with pytest.raises(ValueError, match=rf"{option} = {value} is not used by the '{name}' "
                                         "objective"):
        make_objective(name, CFG, **{option: value})
    make_objective(name, CFG, ce_weight=0.0)  # the defaults stay accepted
    make_objective(name, CFG, ce_weight=0, num_steps=None)


# ---- 5. forward-backward: no bare NaN in a JSON row; sizes refused ----------------------------
def test_one_datum_has_no_standard_error_and_its_rows_say_none(grammar):
    from rhm_jax import EpsilonProcess
    from rhm_jax.experiments import forward_backward, to_rows

    res = forward_backward(jax.random.key(1), grammar, EpsilonProcess(CFG), [0.0, 0.5], 1)
    assert np.all(np.isnan(res.sampled_se)) and np.all(np.isnan(res.marginal_se))  # was 0
    rows = to_rows(res, CFG, "epsilon")
    text = json.dumps(rows, allow_nan=False)  # strict JSON: a NaN would raise
    assert all(row["P_sampled_se"] is None and row["valid_se"] is None for row in rows)
    assert all(row["P_sampled"] is not None for row in json.loads(text))


def test_to_rows_turns_every_nan_into_none():
    from rhm_jax.experiments import ForwardBackwardResult, to_rows

    nan = np.full((1, 1, CFG.L + 1), np.nan)
    res = ForwardBackwardResult(np.array([0.5]), None, None, nan, nan, 3, nan, nan)
    rows = to_rows(res, CFG, "masking")
    json.dumps(rows, allow_nan=False)
    assert {row["P_sampled"] for row in rows} == {None} and rows[0]["changed_tokens"] is None


def test_forward_backward_that_cannot_fit_is_refused_with_its_size(grammar, tiny_memory):
    from rhm_jax import EpsilonProcess
    from rhm_jax.experiments import forward_backward

    with pytest.raises(ValueError, match=r"forward_backward: one compiled call of 64 data x 2 "
                                         r"noise levels x 1 grammars at d = 2\*\*3 would allocate"):
        forward_backward(jax.random.key(1), grammar, EpsilonProcess(CFG), [0.0, 0.5], 64)


def test_more_data_than_distinct_keys_is_refused(grammar):
    from rhm_jax import EpsilonProcess
    from rhm_jax.experiments import forward_backward

    with pytest.raises(ValueError, match=r"n_data = 4294967297 must be <= 2\*\*32"):
        forward_backward(jax.random.key(1), grammar, EpsilonProcess(CFG), [0.5], 2**32 + 1)


@pytest.mark.parametrize("call, error, text", [
    (lambda th: th.extrapolate_threshold([3, float("nan"), 7], [0.5, 0.6, 0.7], 1.4),
     TypeError, "L_values[1] must be an integer, got float nan"),  # was a LinAlgError
    (lambda th: th.extrapolate_threshold([3, 5, 7], [0.5, 0.6, 0.7], float("inf")),
     ValueError, "growth_factor = inf must be finite"),
    (lambda th: th.extrapolate_threshold([3, 5], [0.5, 0.6], "2"),
     TypeError, "growth_factor must be a finite number, got str '2'"),
    (lambda th: th.curve_width([0.0, 0.5, 1.0], [1.0, 0.5, 0.0], 0.5, 0.5),
     ValueError, "high = low = 0.5: the curve's range must not be empty"),
    (lambda th: th.midpoint_crossing([0.0, 0.5, 1.0], [1.0, 0.5, 0.0], float("nan"), 1.0),
     ValueError, "level = nan must be finite"),
])
def test_threshold_helpers_refuse_input_that_has_no_meaning(call, error, text):
    from rhm_jax import theory

    with pytest.raises(error) as info:
        call(theory)
    assert text in str(info.value)


def test_denoiser_output_that_int32_cannot_hold_is_an_invalid_leaf_not_a_token():
    from rhm_jax.experiments import call_denoiser

    with jax.enable_x64(True):
        x_t = np.zeros((1, CFG.d), np.int64)
        out = call_denoiser(lambda p, k, x, t: x + np.array([2**32 + 3] + [1] * 7), None, None,
                            x_t, np.zeros(1), CFG)
    assert out.dtype == np.int32 and np.asarray(out).tolist() == [[-1] + [1] * 7]
