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
def partial(tmp_path_factory, whole):
    """The same run stopped at step 60 (checkpoints 30 and 60), to be copied and damaged."""
    path = tmp_path_factory.mktemp("partial") / "run"
    train(config(), path, progress=False, plot=False, stop_after=60)
    return path


def copy_of(run_dir, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


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
