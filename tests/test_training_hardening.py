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
from rhm_jax.training import (CheckpointError, RunLocked, TrainingDiverged,
                              TrainingInterrupted)

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


# ---- real processes -------------------------------------------------------------------------
SCRIPT = """
import json, sys
from rhm_jax.denoise import ModelConfig, TrainConfig, train
from rhm_jax.training import TrainingInterrupted
kw, run_dir, options = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
kw["model"] = ModelConfig(**kw["model"])
try:
    train(TrainConfig(**kw), run_dir, progress=False, plot=False, **options)
except TrainingInterrupted as err:
    print("INTERRUPTED", err.step, err.reached, flush=True)
    sys.exit(130)
print("DONE", flush=True)
"""


def start(run_dir, **options) -> subprocess.Popen:
    """``train(config(**kw), run_dir, **options)`` in a new process (``kw`` from
    ``options["config"]``)."""
    kw = dataclasses.asdict(config(**options.pop("config", {})))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cache = os.environ.get("RHM_JAX_COMPILE_CACHE")  # the session's cache (conftest)
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(kw), str(run_dir),
                             json.dumps(options)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, what: str, timeout: float = 120.0):
    """Poll ``condition()`` until true; fail if ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended before {what}:\n{out}\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def training_rows_anywhere(parent: Path, old: bytes | None = None):
    """A ``metrics.jsonl`` under ``parent`` (run folder or staging folder) with a train row
    that is not ``old``'s."""
    for path in glob.glob(str(parent / "**" / "metrics.jsonl"), recursive=True) + glob.glob(
            str(parent / ".*" / "metrics.jsonl")):
        data = Path(path).read_bytes()
        if data != old and b'"split": "train"' in data:
            return path
    return None


# ---- 1, 2: overwrite replaces only a training run, and only once the new one has a checkpoint
def test_overwrite_refuses_folders_that_are_not_provably_training_runs(tmp_path, partial):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "config.json").write_text(json.dumps(config().to_dict()))
    (thesis / "thesis.tex").write_text("keep me")
    (thesis / "figures").mkdir()
    other = copy_of(partial, tmp_path)  # a real run with a file of the user's in it
    (other / "notes.txt").write_text("keep me too")
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "meta.json").write_text(json.dumps({"command": "sample"}))
    (sample / "config.json").write_text(json.dumps(config().to_dict()))
    for folder, reason in ((thesis, "meta.json"), (other, "notes.txt"),
                           (sample, "not that of an rhm-jax train run")):
        before = snapshot(folder)
        with pytest.raises(ValueError, match=f"not a training run folder.*{reason}"):
            train(config(), folder, overwrite=True, progress=False, plot=False)
        assert snapshot(folder) == before


@pytest.mark.slow
def test_overwrite_killed_before_its_first_checkpoint_keeps_the_old_run(tmp_path, partial):
    run_dir = copy_of(partial, tmp_path)
    before = snapshot(run_dir)
    proc = start(run_dir, overwrite=True, config=dict(seed=1, steps=3000, checkpoint_every=3000))
    wait_for(lambda: training_rows_anywhere(tmp_path, before["metrics.jsonl"]), proc,
             "the new run's first train row")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snapshot(run_dir) == before  # the finished run is intact
    assert load_run(run_dir).step == 60


# ---- 3: one writer per run folder; readers get a whole checkpoint ---------------------------
@pytest.mark.slow
def test_second_writer_is_refused_and_readers_see_whole_checkpoints(tmp_path, capfd):
    run_dir = tmp_path / "run"
    busy = dict(steps=1500, checkpoint_every=10)  # a save and a deletion every 10 steps
    proc = start(run_dir, config=busy)
    wait_for(lambda: (run_dir / "checkpoints").is_dir() and checkpoint_steps(run_dir), proc,
             "the first checkpoint")
    for options in (dict(resume=True), dict(overwrite=True)):
        with pytest.raises(RunLocked, match=f"being written by process {proc.pid}"):
            train(config(**busy), run_dir, progress=False, plot=False, **options)
    steps = [load_run(run_dir).step for _ in range(8)]  # while checkpoints come and go
    assert all(step >= 10 and step % 10 == 0 for step in steps)
    assert "being written by process" in capfd.readouterr().err
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = load_run(run_dir).step
    train(config(**busy), run_dir, resume=True, progress=False, plot=False,
          stop_after=last + 10)  # the dead writer's lock is taken over
    assert f"took over the lock of process {proc.pid}" in capfd.readouterr().err
    keys = [(r["step"], r["split"]) for r in rows(run_dir)]
    assert len(keys) == len(set(keys)) and keys[-1][0] == last + 10  # no row twice


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


@pytest.mark.parametrize("damage", [pytest.param(name, marks=pytest.mark.slow)
                                    if name not in ("nan_flip", "swapped_data") else name
                                    for name in DAMAGE])
def test_resume_falls_back_from_a_damaged_latest_checkpoint(damage, tmp_path, partial, whole,
                                                             capfd):
    run_dir = copy_of(partial, tmp_path)
    DAMAGE[damage](run_dir / "checkpoints" / "60")
    resumed = train(config(), run_dir, resume=True, progress=False, plot=False)
    err = capfd.readouterr().err
    assert "checkpoint 60 does not restore" in err and "using checkpoint 30" in err
    assert rows(run_dir) == rows(whole[0])  # no NaN row, no hybrid row
    assert same_parameters(resumed, whole[1])
    assert checkpoint_steps(run_dir) == [60, 90]  # the bad 60 replaced by a good one


def test_no_checkpoint_that_restores_is_one_line_naming_the_folder(tmp_path, partial):
    run_dir = copy_of(partial, tmp_path)
    for step in (30, 60):
        _nan_flip(run_dir / "checkpoints" / str(step))
    before = snapshot(run_dir)
    for attempt in (lambda: train(config(), run_dir, resume=True, progress=False, plot=False),
                    lambda: load_run(run_dir)):
        with pytest.raises(CheckpointError, match="no checkpoint restores") as info:
            attempt()
        assert str(run_dir) in str(info.value) and "\n" not in str(info.value)
    assert snapshot(run_dir) == before


# ---- 6: a row cut mid-write ------------------------------------------------------------------
def test_a_partial_last_row_is_dropped_on_resume(tmp_path, partial, whole, capfd):
    run_dir = copy_of(partial, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 70, "split": "tra')
    train(config(), run_dir, resume=True, progress=False, plot=False)
    assert "dropped a partial last row" in capfd.readouterr().err
    assert rows(run_dir) == rows(whole[0])


# ---- 4, 7: divergence stops the run before anything non-finite is written --------------------
def test_divergence_stops_before_writing_a_non_finite_row_or_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"^diverged at step \d+: ") as info:
        train(config(learning_rate=1e8, grad_clip=0.0), run_dir, progress=False, plot=False)
    assert "\n" not in str(info.value)
    if run_dir.exists():  # it diverged after its first checkpoint: everything kept is finite
        text = (run_dir / "metrics.jsonl").read_text()
        assert "NaN" not in text and "Infinity" not in text
        assert load_run(run_dir).step == info.value.last_checkpoint
    else:
        assert info.value.last_checkpoint is None and not list(tmp_path.iterdir())


# ---- 8: a resumed run logs the rows of an uninterrupted one -----------------------------------
def test_intervals_that_would_split_a_log_window_are_refused():
    with pytest.raises(ValueError, match="checkpoint_every = 10 must be a multiple of "
                                         "log_every = 20"):
        config(log_every=20, checkpoint_every=10)
    with pytest.raises(ValueError, match="stop_after = 30 must be a multiple of log_every = 20"):
        train(config(log_every=20, checkpoint_every=20), "unused", stop_after=30)


# ---- 9: Ctrl-C ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    busy = dict(steps=3000, checkpoint_every=10)  # Ctrl-C lands near a save
    proc = start(run_dir, config=busy)
    wait_for(lambda: run_dir.is_dir() and len(checkpoint_steps(run_dir)) >= 2, proc,
             "two checkpoints")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Event loop is closed" not in err
    _, step, reached = out.split()
    assert int(reached) >= int(step) >= 20
    assert load_run(run_dir).step == int(step)
    assert not (tmp_path / ".run.lock").exists()
    train(config(**busy), run_dir, resume=True, progress=False, plot=False,
          stop_after=int(step) + 10)
    keys = [(r["step"], r["split"]) for r in rows(run_dir)]
    assert len(keys) == len(set(keys)) and keys[-1][0] == int(step) + 10


@pytest.mark.slow
def test_sigint_before_the_first_checkpoint_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, config=dict(steps=3000, checkpoint_every=3000))
    wait_for(lambda: training_rows_anywhere(tmp_path), proc, "the first train row")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and out.split()[:2] == ["INTERRUPTED", "None"], err[-3000:]
    assert not list(tmp_path.iterdir())  # no folder, no staging folder, no lock


# ---- 10: the checkpoint's configuration is the run's; the history is not restarted silently ---
def test_an_edited_config_or_a_lost_history_is_refused(tmp_path, partial):
    run_dir = copy_of(partial, tmp_path)
    stored = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**stored, "seed": 7}))
    with pytest.raises(ValueError, match=r"stored with checkpoint 60 \(seed: 0 -> 7\)"):
        train(config(seed=7), run_dir, resume=True, progress=False, plot=False)
    (run_dir / "config.json").write_text(json.dumps(stored))
    (run_dir / "metrics.jsonl").unlink()
    before = snapshot(run_dir)
    with pytest.raises(ValueError, match="metrics.jsonl is missing"):
        train(config(), run_dir, resume=True, progress=False, plot=False)
    assert snapshot(run_dir) == before


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


# ---- 12: nothing half-made; bad arguments refused -------------------------------------------
def test_a_run_that_fails_before_its_first_step_leaves_nothing(tmp_path, monkeypatch):
    train_module = sys.modules["rhm_jax.denoise.train"]  # the package's ``train`` is the function

    def broken(*args):
        raise RuntimeError("no data today")

    monkeypatch.setattr(train_module, "datasets", broken)
    with pytest.raises(RuntimeError, match="no data today"):
        train(config(), tmp_path / "new" / "run", progress=False, plot=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stop_after, error", [
    (-5, ValueError), ("2", TypeError), (2.5, TypeError), (0, ValueError)])
def test_bad_stop_after_is_refused(tmp_path, stop_after, error):
    with pytest.raises(error, match="stop_after"):
        train(config(), tmp_path / "run", stop_after=stop_after)
    assert not list(tmp_path.iterdir())


def test_load_run_refuses_a_step_that_is_not_an_integer_or_not_there(partial):
    with pytest.raises(TypeError, match="step must be an integer, got str '10'"):
        load_run(partial, step="10")
    with pytest.raises(CheckpointError, match="no checkpoint at step = 40"):
        load_run(partial, step=40)
    assert load_run(partial, step=30).step == 30
