"""The comparison refuses, or corrects with a warning, inputs it would otherwise misreport:
EMA asked of a run without it, more held-out data than the run's test set, times that
coincide on the training grid, a config.json that disagrees with the checkpoint."""

import json
import os
import shutil
import warnings

import jax
import numpy as np
import pytest

from rhm_jax import RHMConfig, sample_data, sample_grammar
from rhm_jax.denoise import ModelConfig, TrainConfig, make_objective, train
from rhm_jax.denoise import compare

CFG = RHMConfig(v=4, m=2, s=2, L=3)
TEST_SIZE = 16
MEASURES = ("agreement", "compare_losses", "network_samples", "bp_chain_samples",
            "forward_backward_pair", "representation_similarity")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny masking run without EMA, its test set TEST_SIZE data."""
    path = tmp_path_factory.mktemp("runs") / "masking"
    config = TrainConfig(v=4, m=2, s=2, L=3, loss="masked_elbo",
                         model=ModelConfig("unet", width=8), batch_size=8, steps=10,
                         warmup_steps=2, test_size=TEST_SIZE, steps_per_call=10,
                         log_every=10, eval_every=10, checkpoint_every=10, eval_repeats=1)
    train(config, path, progress=False, plot=False)
    return path


@pytest.fixture
def no_measures(monkeypatch):
    """Every measure of compare_run fails the test: a refusal must come before any work."""
    from rhm_jax.denoise.compare import run as run_module

    def fail(*args, **kwargs):
        raise AssertionError("a measure ran before the refusal")

    for name in MEASURES:
        monkeypatch.setattr(run_module, name, fail)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_ema_on_a_run_without_ema_is_refused(run_dir, no_measures):
    with pytest.raises(ValueError, match=r"ema = True") as info:
        compare.compare_run(run_dir, ema=True)
    message = _one_line(info)
    assert str(run_dir) in message and "no EMA" in message and "ema_decay = 0.0" in message


def test_n_data_beyond_the_test_set_is_clamped_with_a_warning_and_recorded(run_dir):
    expected = rf"n_data = 100000 .*\({TEST_SIZE} held-out data\): using {TEST_SIZE}"
    with pytest.warns(UserWarning, match=expected):
        result = compare.compare_run(run_dir, n_data=100000, times=[0.5], n_samples=4,
                                     fb_data=4, num_steps=4, bp_chain=False, chunk_size=16)
    assert result.n_data == TEST_SIZE and result.fb_data == 4 and result.ema is False
    assert result.agreement.n_data == TEST_SIZE and result.representation.n_data == TEST_SIZE
    rows = result.rows()
    assert {r["n_data"] for r in rows if r["measure"] in ("agreement", "representation")} \
        == {TEST_SIZE}
    assert {r["ema"] for r in rows} == {False}


@pytest.mark.parametrize("loss", ["d3pm", "gaussian_x0", "gaussian_eps"])
def test_times_that_snap_to_one_grid_time_are_refused(loss):
    objective = make_objective(loss, CFG)
    step = 1.0 / objective.num_steps
    with pytest.raises(ValueError, match=r"times") as info:
        compare.snap_times(objective, [1e-9, 1e-3, 0.5])
    message = _one_line(info)
    assert f"1e-09, 0.001 -> {step:g}" in message and f"T = {objective.num_steps}" in message
    np.testing.assert_allclose(compare.snap_times(objective, [1e-9, 0.5]), [step, 0.5])


def test_agreement_refuses_duplicate_times_before_any_work():
    grammar = sample_grammar(jax.random.key(0), CFG)
    objective = make_objective("d3pm", CFG)
    x0 = sample_data(jax.random.key(1), grammar, 4).tokens

    def predict(params, x_t, t):
        raise AssertionError("the predictor ran before the refusal")

    with pytest.raises(ValueError, match=r"0\.001, 1e-09 -> 0\.005"):
        compare.agreement(jax.random.key(2), predict, None, objective, grammar, x0,
                          [0.5, 1e-3, 1e-9])


def test_duplicate_times_of_a_masking_run_are_refused(run_dir, no_measures):
    with pytest.raises(ValueError, match=r"0\.5 more than once") as info, \
            warnings.catch_warnings():
        warnings.simplefilter("error")  # the default n_data fits any test set: no warning
        compare.compare_run(run_dir, times=[0.25, 0.5, 0.5])
    _one_line(info)


def _edited_copy(run_dir, path, **changes):
    shutil.copytree(run_dir, path)
    config = json.loads((path / "config.json").read_text())
    for name, value in changes.items():
        if "__" in name:
            outer, inner = name.split("__")
            config[outer][inner] = value
        else:
            config[name] = value
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_config_json_that_disagrees_with_the_checkpoint_is_refused(run_dir, tmp_path,
                                                                   no_measures):
    edited = _edited_copy(run_dir, tmp_path / "edited", loss="d3pm", model__width=16)
    with pytest.raises(ValueError, match=r"config\.json") as info:
        compare.compare_run(edited)
    message = _one_line(info)
    assert "loss ('d3pm' in config.json, 'masked_elbo' in the checkpoint)" in message
    assert "model.width (16 in config.json, 8 in the checkpoint)" in message
    assert "test_size" not in message  # only the differing fields are named


def test_config_json_that_is_no_training_configuration_is_refused(run_dir, tmp_path,
                                                                  no_measures):
    edited = _edited_copy(run_dir, tmp_path / "edited", loss="nonsense")
    with pytest.raises(ValueError, match=r"config\.json is not a valid training") as info:
        compare.compare_run(edited)
    _one_line(info)


def test_compare_cli_refuses_a_config_json_edited_to_another_loss(run_dir, tmp_path, capsys):
    """The command line's own default number of steps comes from config.json: the
    refusal keeps it from choosing D3PM's grid sampler for a masking checkpoint."""
    from rhm_jax.cli import main

    edited = _edited_copy(run_dir, tmp_path / "edited", loss="d3pm")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["compare", str(edited), "--quick", "--no-progress", "--out", str(out)])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "loss ('d3pm' in config.json, 'masked_elbo'" in lines[0], lines
    assert not out.exists() or not os.listdir(out)
