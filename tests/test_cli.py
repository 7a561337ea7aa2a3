"""The command line's one vocabulary: flags, defaults in help, experiment files, aliases."""

import json
import pathlib

import pytest

from rhm_jax.cli import COMMANDS, build_parser, main
from rhm_jax.cli.train import QUICK, RECIPE, config_from_args

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_version(capsys):
    from rhm_jax import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"rhm-jax {__version__}"


def test_every_command_is_listed_and_every_flag_shows_its_default():
    commands = _subparsers()
    assert list(commands) == [c.__name__.rsplit(".", 1)[1] for c in COMMANDS]
    for name, parser in commands.items():
        for action in parser._actions:
            if not action.option_strings or action.help in (None, "==SUPPRESS=="):
                continue
            takes_value = action.nargs != 0
            if takes_value:  # a flag with a value says what it is when not given
                text = parser._get_formatter()._get_help_string(action)
                assert "default" in text, (name, action.option_strings, text)


@pytest.mark.parametrize("command", ["sample", "phase", "chi", "train", "compare"])
def test_every_computing_command_has_devices_out_and_overwrite(command):
    flags = {s for a in _subparsers()[command]._actions for s in a.option_strings}
    assert {"--devices", "--out", "--overwrite", "--no-compile-cache"} <= flags


def test_process_names_are_the_libraries_in_every_command():
    from rhm_jax.cli.flags import processes_flag
    from rhm_jax.denoise.objectives import PROCESS_OF_OBJECTIVE
    from rhm_jax.noise import PROCESSES

    assert processes_flag(",".join(PROCESSES)) == list(PROCESSES)
    parser = build_parser()
    trained = {config_from_args(parser.parse_args(["train", "--process", p])).loss
               for p in ("masking", "uniform", "gaussian")}
    assert trained == {"masked_elbo", "d3pm", "gaussian_x0"}
    eps = config_from_args(parser.parse_args(["train", "--process", "gaussian", "--loss", "eps"]))
    assert PROCESS_OF_OBJECTIVE[eps.loss] == "gaussian" and eps.loss == "gaussian_eps"


def test_bare_train_is_the_recipe_and_the_config_file_is_the_stored_run():
    parser = build_parser()
    stored = json.loads((ROOT / "benchmarks/results/train/masking_w64_ml4/config.json")
                        .read_text())
    from_file = config_from_args(parser.parse_args(
        ["train", "--config", str(ROOT / "configs/masking_16_4_2_4.toml")]))
    assert from_file.to_dict() == stored
    assert config_from_args(parser.parse_args(["train"])).to_dict() == stored
    bare = config_from_args(parser.parse_args(["train"]))
    assert bare.model.width == RECIPE["model.width"] and bare.model.mlp_levels == bare.L
    assert bare.learning_rate == 2e-3 and bare.ema_decay == 0.999


def test_flags_override_the_file_and_quick_shrinks_it(tmp_path):
    parser = build_parser()
    path = ROOT / "configs/masking_16_4_2_4.toml"
    config = config_from_args(parser.parse_args(["train", "--config", str(path), "--quick",
                                                 "--steps", "60", "--lr", "1e-3"]))
    assert config.steps == 60 and config.learning_rate == 1e-3  # flags win
    assert config.batch_size == QUICK["batch_size"] and config.model.width == 32  # quick
    assert config.model.mlp_levels == 4  # from the file


@pytest.mark.parametrize("text, message", [
    ("widht = 3\n", "widht is not a training setting"),
    ("[model]\nwidht = 3\n", "[model] widht is not a network setting"),
    ("v = [", "is not valid TOML"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SystemExit) as info:
        main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--process", "gaussian-eps"], "--process gaussian --loss eps"),
    (["train", "--process", "epsilon"], "processes with a training loss"),
    (["train", "--process", "masking", "--loss", "eps"], "--loss = 'eps' is not a loss of"),
])
def test_train_process_and_loss_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(argv + ["--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_helps_library_defaults_are_the_dataclasses():
    import dataclasses

    from rhm_jax.cli.train import LIBRARY_DEFAULTS
    from rhm_jax.denoise.models import ModelConfig
    from rhm_jax.denoise.train import TrainConfig

    own = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    own.update({f"model.{f.name}": f.default for f in dataclasses.fields(ModelConfig)})
    shown = {"online": None, "auto": None}
    for field, value in LIBRARY_DEFAULTS.items():
        assert own[field] == shown.get(value, value), field


def test_every_stored_run_is_reproduced_by_its_config_json():
    from rhm_jax.denoise.train import TrainConfig

    parser = build_parser()
    stored = sorted((ROOT / "benchmarks/results/train").glob("*/config.json"))
    assert len(stored) >= 6
    for path in stored:
        config = config_from_args(parser.parse_args(["train", "--config", str(path)]))
        # a field newer than the run takes the library's default, as when it was trained
        assert config == TrainConfig.from_dict(json.loads(path.read_text())), path


#: Each experiment file and the stored run it describes.
RECIPES = {"masking_16_4_2_4": "masking_w64_ml4", "masking_16_4_2_4_120k": "masking_w64_ml4_120k",
           "d3pm_8_3_2_3": "study_d3pm", "masking_8_3_2_3": "study_masking"}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_experiment_file_is_its_stored_run(recipe):
    from rhm_jax.denoise.train import TrainConfig

    assert sorted(p.stem for p in (ROOT / "configs").glob("*.toml")) == sorted(RECIPES)
    config = config_from_args(build_parser().parse_args(
        ["train", "--config", str(ROOT / "configs" / f"{recipe}.toml")]))
    stored = ROOT / "benchmarks/results/train" / RECIPES[recipe] / "config.json"
    assert config == TrainConfig.from_dict(json.loads(stored.read_text()))


def test_class_thresholds_are_null_with_a_reason_where_undetermined():
    import numpy as np

    from rhm_jax.theory import MeanField, class_thresholds

    eps = np.linspace(0, 1, 11)
    curves = {3: np.linspace(1, 0.1, 11), 5: np.linspace(1, 0.1, 11) ** 0.5}
    no_transition = MeanField(4, 4, 2)  # m = v: every token is possible, no class transition
    out = class_thresholds(eps, curves, 4, no_transition)
    assert out["eps_half_extrapolated"] is None and "no class transition" in out["reason"]
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # strict JSON: no NaN
    # thresholds that move away from the limit the mean field predicts: outside [0, 1]
    far = class_thresholds(eps, {2: np.linspace(1, 0.0, 11), 3: np.linspace(1, 0.5, 11)}, 8,
                           MeanField(8, 2, 2))
    assert far["eps_half"]["3"] > far["eps_half"]["2"]  # the drop moves away with depth
    assert far["eps_half_extrapolated"] is None
    assert "outside [0, 1]" in far["eps_half_extrapolated_reason"]


@pytest.mark.parametrize("out, message", [
    ("", "--out = '' must name a folder"),
    ("/proc/rhm-jax-test/run", "/proc"),
])
def test_train_refuses_an_output_folder_it_cannot_write(out, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--quick", "--v", "8", "--m", "2", "--L", "3", "--out", out])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_diverging_run_is_one_line_and_exit_1(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--quick", "--v", "8", "--m", "2", "--L", "3", "--lr", "1e8",
                 "--grad-clip", "0", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "diverged at step" in err and "Traceback" not in err
    metrics = out / "metrics.jsonl"
    if metrics.exists():  # no row holds a NaN
        assert "NaN" not in metrics.read_text()
