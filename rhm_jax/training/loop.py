"""The training loop, shared by every model: compiled step groups, rows, checkpoints.

The loop knows nothing of grammars or images. A task (:class:`TrainTask`) supplies the
state, the compiled steps, what a training row and an evaluation row contain, and what a
checkpoint stores; :func:`fit` runs it into a run folder
(:class:`~rhm_jax.training.runs.RunDirectory`):

* steps run ``steps_per_call`` at a time (one compiled call; the Python overhead of a call
  is larger than a small model's step on CPU);
* every ``log_every`` steps a ``"train"`` row summarises the steps since the last one;
* every ``eval_every`` steps (and at step 0) a ``"test"`` row evaluates the state;
* every ``checkpoint_every`` steps, and when the run stops, the state is checkpointed.

Nothing non-finite is written: a NaN or ±inf in a step's metrics, an evaluation row or the
state stops the run with :class:`~rhm_jax.training.errors.TrainingDiverged`. Ctrl-C
(SIGINT) is taken at the end of the current step group or save, and stops the run with
:class:`~rhm_jax.training.errors.TrainingInterrupted`; a second Ctrl-C stops it at once,
except inside a save. A resumed run writes the rows and checkpoints of an uninterrupted one
(``wall_s`` aside).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from rhm_jax.training.checkpoints import Checkpointer, ConfigMismatch, NonFiniteState
from rhm_jax.training.errors import CheckpointError, TrainingDiverged, TrainingInterrupted
from rhm_jax.training.runs import RunDirectory, config_differences
from rhm_jax.validation import check_int

__all__ = ["LoopConfig", "TrainTask", "fit", "check_stop_after"]


class LoopConfig(Protocol):
    """What the loop reads from a task's configuration (a frozen dataclass).

    ``log_every``, ``eval_every`` and ``checkpoint_every`` are multiples of
    ``steps_per_call``, and ``checkpoint_every`` a multiple of ``log_every`` unless it is at
    least ``steps`` (so that a run resumed from a checkpoint logs the same rows as an
    uninterrupted one).
    """

    steps: int
    batch_size: int
    steps_per_call: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, d: dict) -> Any: ...


class TrainTask(Protocol):
    """A model, its data and its loss, as the loop drives them.

    ``State`` is any pytree (e.g. :class:`~rhm_jax.training.state.TrainState`); its
    position in the data and noise streams must be its step alone, so that a run resumed
    from a checkpoint continues exactly as an uninterrupted one.
    """

    config: LoopConfig
    #: Optional: the progress bar's label (default ``"train"``).
    name: str
    #: Files and folders the task writes into the run folder (e.g. ``"loss_curve.png"``).
    run_files: tuple[str, ...]

    def init_state(self) -> Any:
        """The state at step 0 (also the template a checkpoint is restored into)."""

    def checkpoint_items(self, state) -> dict:
        """Name -> pytree of arrays: what a checkpoint of ``state`` stores."""

    def restore(self, template, items: dict) -> Any:
        """The state rebuilt from restored ``items`` (as :meth:`checkpoint_items` gave
        them), with ``template`` the state of :meth:`init_state`; raises ``ValueError``
        when the items are not valid (the loop then falls back to an older checkpoint)."""

    def start(self, state) -> Any:
        """Prepare data and programs for training from ``state`` (on its devices)."""

    def run_steps(self, state, num_steps: int) -> tuple[Any, dict]:
        """``num_steps`` optimisation steps: the new state and per-step metrics (name ->
        array of length ``num_steps``)."""

    def train_row(self, metrics: dict) -> dict:
        """The values of a ``"train"`` row from the metrics of the steps it covers."""

    def eval_row(self, state) -> dict:
        """The values of a ``"test"`` row: ``state`` evaluated on held-out data."""

    def meta(self, state) -> dict:
        """Facts stored in ``meta.json`` (e.g. the number of parameters)."""

    def progress_text(self, metrics: dict) -> str:
        """A short text for the progress bar from the last call's metrics."""

    def after_eval(self, folder: Path) -> None:
        """Called after each evaluation row (e.g. to redraw a loss curve)."""


def check_stop_after(stop_after, config) -> int | None:
    """``stop_after`` checked: ``None``, or a step ``>= 1`` at which the run can be
    resumed with the rows of an uninterrupted run (a multiple of ``log_every``, or at
    least ``steps``)."""
    if stop_after is None:
        return None
    stop_after = check_int("stop_after", stop_after, minimum=1)
    if stop_after < config.steps and stop_after % config.log_every:
        raise ValueError(f"stop_after = {stop_after} must be a multiple of log_every = "
                         f"{config.log_every} (a resumed run continues from that step)")
    return stop_after


class _Interrupts:
    """SIGINT deferred to clean points of the loop (main thread only)."""

    def __init__(self):
        self.requested = self.critical = False

    def _handle(self, signum, frame):
        if self.requested and not self.critical:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else
                          signal.default_int_handler)

    @contextlib.contextmanager
    def save(self):
        """A save is never cut short: interrupts wait until it is done."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False


class _Position:
    """How far the run got: the step reached and the newest checkpoint in place."""

    def __init__(self):
        self.step, self.saved = 0, None


def fit(task: TrainTask, run_dir, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None, command: str = "train"):
    """Trains ``task`` into ``run_dir``; returns the final state.

    Args:
      task: the model, data and loss (:class:`TrainTask`).
      run_dir: the run folder (see :mod:`rhm_jax.training.runs`).
      resume: continue from the newest checkpoint in ``run_dir`` that restores.
      overwrite: replace an earlier run of ``command`` in ``run_dir`` (at the new run's
        first checkpoint).
      progress: show a progress bar.
      stop_after: stop (after checkpointing) once this step is reached
        (:func:`check_stop_after`).
      command: the command stored in ``meta.json``.

    Raises:
      TrainingDiverged: a non-finite loss, evaluation or state.
      TrainingInterrupted: SIGINT; the run resumes from the exception's ``step``.
      RunLocked: another live process writes ``run_dir``.
      CheckpointError: ``resume`` found no checkpoint that restores.
    """
    config = task.config
    stop_after = check_stop_after(stop_after, config)
    end_step = config.steps if stop_after is None else min(config.steps, stop_after)
    run = RunDirectory(run_dir, command=command, config_type=type(config),
                       task_files=getattr(task, "run_files", ()))
    position, interrupts = _Position(), _Interrupts()
    run.acquire()
    failed = True
    try:
        with interrupts.installed():
            state, checkpoints, wall_offset = _open(task, run, position, resume, overwrite)
            state = _loop(task, run, checkpoints, state, position, end_step, wall_offset,
                          progress, interrupts)
        failed = False
        return state
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted):
            raise
        raise _interrupted(run, position) from None
    finally:
        run.release(failed=failed)


def _interrupted(run: RunDirectory, position: _Position) -> TrainingInterrupted:
    if position.saved is None:
        where = "before its first checkpoint: nothing to resume"
        if run.target.exists():
            where += f"; {run.target} is as it was"
    else:
        where = f"resume from its checkpoint at step {position.saved}"
    return TrainingInterrupted(f"training interrupted at step {position.step} ({where})",
                               position.saved, position.step, run.target)


def _open(task, run: RunDirectory, position: _Position, resume: bool, overwrite: bool):
    """The state to start from, its checkpointer and the wall time already spent."""
    from rhm_jax.io import environment

    config = task.config
    template = task.init_state()
    wall_offset = 0.0
    if resume:
        run.check_resumable()
        stored = config_differences(_normalised(type(config), run.read_config()),
                                    config.to_dict())
        if stored:
            raise ValueError(f"resume: the configuration differs from the stored run "
                             f"({'; '.join(stored)})")
        if not run.checkpoint_dir.is_dir():
            raise CheckpointError(f"resume: {run.target} has no checkpoints/ to resume from")
        checkpoints = Checkpointer(run.checkpoint_dir)
        wanted = _normalised(type(config), config.to_dict())

        def build(step):
            found = _normalised(type(config), checkpoints.restore_config(step))
            if found != wanted:
                raise ConfigMismatch(
                    f"resume: {run.target / 'config.json'} differs from the configuration "
                    f"stored with checkpoint {step} "
                    f"({'; '.join(config_differences(found, wanted))}); the checkpoint's is "
                    "the run's: restore config.json, or start a new run")
            items = checkpoints.restore(step, task.checkpoint_items(template))
            return task.restore(template, items)

        step, state = checkpoints.restore_latest(build, what=str(run.target))
        position.step = position.saved = step
        wall_offset = run.repair_rows(step)
    else:
        run.create(overwrite=overwrite)
        run.write_json("config.json", config.to_dict())
        checkpoints, state = Checkpointer(run.checkpoint_dir), template
    run.write_json("meta.json", {"command": run.command, "environment": environment(),
                                 **task.meta(state)})
    return task.start(state), checkpoints, wall_offset


def _normalised(config_type, d: dict) -> dict:
    try:
        return config_type.from_dict(d).to_dict()
    except (TypeError, ValueError):
        return d


def _loop(task, run, checkpoints, state, position, end_step, wall_offset, progress,
          interrupts):
    config = task.config
    step = position.step
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, unit="step",
                   desc=getattr(task, "name", "train"))
    start = time.perf_counter()
    try:
        if step == 0:
            run.append_row(_checked({**_header(0, "test", config, 0.0), **task.eval_row(state)},
                                    position))
        window = []
        while step < end_step:
            if interrupts.requested:  # Ctrl-C: stop between step groups, never mid-save
                raise _interrupted(run, position)
            n = min(config.steps_per_call, end_step - step)
            state, metrics = task.run_steps(state, n)  # data, loss and update, compiled
            metrics = jax.tree.map(np.asarray, metrics)
            _check_metrics(metrics, step, position)
            window.append(metrics)
            step = position.step = step + n
            wall = wall_offset + time.perf_counter() - start
            if bar is not None:
                bar.update(n)
                bar.set_postfix_str(task.progress_text(metrics))
            if step % config.log_every == 0 or step == config.steps:
                joined = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
                run.append_row(_checked({**_header(step, "train", config, wall),
                                         **task.train_row(joined)}, position))
                window = []
            if step % config.eval_every == 0 or step == config.steps:
                run.append_row(_checked({**_header(step, "test", config, wall),
                                         **task.eval_row(state)}, position))
                task.after_eval(run.path)
            if step % config.checkpoint_every == 0 or step == end_step:
                checkpoints = _save(task, run, checkpoints, state, step, position, interrupts)
    finally:
        if bar is not None:
            bar.close()
    return state


def _save(task, run, checkpoints, state, step, position, interrupts) -> Checkpointer:
    """Checkpoint ``state`` (finite only); a staged run moves into place at its first."""
    items = task.checkpoint_items(state)
    with interrupts.save():
        run.sync_rows()
        try:
            checkpoints.save(step, items, task.config.to_dict())
        except NonFiniteState:
            raise _diverged(step, "the state", "NaN or ±inf", position) from None
        if run.staged:
            run.publish()
            checkpoints = Checkpointer(run.checkpoint_dir)
        position.saved = step
    return checkpoints


def _diverged(step, name, value, position) -> TrainingDiverged:
    saved = ("no checkpoint was written" if position.saved is None
             else f"the run resumes from its checkpoint at step {position.saved}")
    return TrainingDiverged(f"diverged at step {step}: {name} = {value}; nothing non-finite "
                            f"was written ({saved})", step, position.saved)


def _check_metrics(metrics: dict, step: int, position) -> None:
    """Raise :class:`TrainingDiverged` at the first step with a non-finite metric."""
    for name, values in metrics.items():
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            first = int(np.argmin(np.isfinite(values).reshape(len(values), -1).all(axis=1)))
            raise _diverged(step + first + 1, name, values[first], position)


def _checked(row: dict, position) -> dict:
    for name, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _diverged(row["step"], name, value, position)
    return row


def _header(step: int, split: str, config, wall: float) -> dict:
    return {"step": step, "split": split, "data_seen": step * config.batch_size,
            "wall_s": round(wall, 3)}
