"""Training runs that no kill, corruption, collision or bad value can damage.

Each test is one way a run folder used to be damaged, replayed on a tiny run: real
processes killed with SIGKILL or stopped with SIGINT, two writers on one folder, bytes of a
checkpoint flipped or cut, ``metrics.jsonl`` cut mid-row, a learning rate that diverges,
an edited ``config.json``, and values that used to be stored and ignored. After each, the
run must either refuse with one clear line or go on to the rows and parameters of an
uninterrupted run.
"""

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from rhm_jax.denoise import ModelConfig, TrainConfig, load_run, train
from rhm_jax.training import CheckpointError

ROOT = Path(__file__).resolve().parents[1]

#: A tiny run: 30 steps between checkpoints, an evaluation every 30 steps.
F = dict(v=8, m=2, L=3, model=ModelConfig(width=16, num_layers=1), batch_size=16, test_size=64,
         steps=90, steps_per_call=10, log_every=10, eval_every=30, checkpoint_every=30,
         ema_decay=0.9)


def config(**changes) -> TrainConfig:
    return TrainConfig(**{**F, **changes})


def rows(run_dir) -> list[dict]:
    """``metrics.jsonl`` without ``wall_s``."""
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("wall_s")
        out.append(row)
    return out


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def same_parameters(a, b) -> bool:
    leaves = lambda run: jax.tree.leaves(nnx.state(run.model)) + jax.tree.leaves(
        nnx.state(run.ema_model))
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(leaves(a), leaves(b), strict=True))


def checkpoint_steps(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (Path(run_dir) / "checkpoints").iterdir()
                  if p.name.isdigit())


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run of :func:`config` (90 steps): the rows every repair must give."""
    path = tmp_path_factory.mktemp("whole") / "run"
    return path, train(config(), path, progress=False, plot=False)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The same run stopped at step 60 (checkpoints 30 and 60), to be copied and damaged."""
    path = tmp_path_factory.mktemp("partial") / "run"
    train(config(), path, progress=False, plot=False, stop_after=60)
    return path


def copy_of(run_dir, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


# ---- 4, 5: a damaged checkpoint is detected, and the newest good one is used ---------------
def _data_files(checkpoint: Path) -> list[Path]:
    """The state's array data files (ocdbt keeps several; flip them all to hit the live one)."""
    return [p for p in sorted(checkpoint.glob("state/**/d/*")) if p.stat().st_size > 10_000]


def _flip(checkpoint: Path, positions, mask: int):
    for path in _data_files(checkpoint):
        data = bytearray(path.read_bytes())
        for i in positions(len(data)):
            data[i] ^= mask
        path.write_bytes(bytes(data))


def _nan_flip(checkpoint):  # what a flipped exponent byte does: NaN and inf in the state
    _flip(checkpoint, lambda n: range(100, n, 997), 0xFF)


def _swapped_data(checkpoint):  # well-formed, finite, wrong: the state of another step
    shutil.rmtree(checkpoint / "state")
    shutil.copytree(checkpoint.parent / "30" / "state", checkpoint / "state")


def _cut(path: Path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


DAMAGE = {
    "nan_flip": _nan_flip,
    "swapped_data": _swapped_data,
    "truncated_metadata": lambda c: _cut(c / "state" / "_METADATA", 0.5),
    "zeroed_metadata": lambda c: (c / "state" / "_METADATA").write_bytes(
        bytes((c / "state" / "_METADATA").stat().st_size)),
    "truncated_data": lambda c: [_cut(path, 0.5) for path in _data_files(c)],
    "emptied_state": lambda c: (shutil.rmtree(c / "state"), (c / "state").mkdir()),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_load_run_falls_back_from_a_damaged_latest_checkpoint(damage, tmp_path, partial, capfd):
    run_dir = copy_of(partial, tmp_path)
    DAMAGE[damage](run_dir / "checkpoints" / "60")
    assert load_run(run_dir).step == 30
    err = capfd.readouterr().err
    assert "checkpoint 60 does not restore" in err and "using checkpoint 30" in err
    if damage == "swapped_data":  # only the checksums can tell
        assert "do not match their CRC-32" in err
    with pytest.raises(CheckpointError, match="checkpoint 60 does not restore"):
        load_run(run_dir, step=60)


def test_no_checkpoint_that_restores_is_one_line_naming_the_folder(tmp_path, partial):
    run_dir = copy_of(partial, tmp_path)
    for step in (30, 60):
        _nan_flip(run_dir / "checkpoints" / str(step))
    with pytest.raises(CheckpointError, match="no checkpoint restores") as info:
        load_run(run_dir)
    assert str(run_dir) in str(info.value) and "\n" not in str(info.value)


# ---- 8: a resumed run logs the rows of an uninterrupted one -----------------------------------
def test_intervals_that_would_split_a_log_window_are_refused():
    with pytest.raises(ValueError, match="checkpoint_every = 10 must be a multiple of "
                                         "log_every = 20"):
        config(log_every=20, checkpoint_every=10)


# ---- 11: values that used to be stored and ignored, or aliased -------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(seed=2**32), r"seed = 4294967296 must be in \[0, 4294967295\]"),
    (dict(grammar_seed=2**32), r"grammar_seed = 4294967296 must be in \[0, 4294967295\]"),
    (dict(ce_weight=5.0), "ce_weight = 5.0 is used only by loss = 'd3pm'"),
    (dict(v=4, m=2, L=2, test_size=128), "test_size = 128 exceeds P_max = 32"),
    (dict(test_size=1), "test_size = 1 must be >= 2"),
])
def test_configurations_that_would_be_ignored_or_aliased_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        config(**changes)


def test_a_batch_that_cannot_fit_is_refused_before_any_folder(tmp_path):
    with pytest.raises(ValueError, match="batch_size = 200000000 would allocate about .* more "
                                         "than"):
        train(config(batch_size=200_000_000), tmp_path / "run", progress=False, plot=False)
    assert not list(tmp_path.iterdir())


def test_gaussian_eps_rows_name_their_unit(tmp_path):
    run_dir = tmp_path / "run"
    train(config(loss="gaussian_eps", steps=10, eval_every=10, checkpoint_every=10,
                 test_size=16), run_dir, progress=False)
    train_row, test_row = rows(run_dir)[1:]
    assert "loss_mse_per_token" in train_row and "floor_mse_per_token" in test_row
    assert not [k for k in {**train_row, **test_row} if k.endswith("bits_per_token")
                and k != "entropy_bits_per_token"]
    assert (run_dir / "loss_curve.png").exists()


def test_load_run_refuses_a_step_that_is_not_an_integer_or_not_there(partial):
    with pytest.raises(TypeError, match="step must be an integer, got str '10'"):
        load_run(partial, step="10")
    with pytest.raises(CheckpointError, match="no checkpoint at step = 40"):
        load_run(partial, step=40)
    assert load_run(partial, step=30).step == 30
