"""The training loop, shared by every model: compiled step groups, rows, checkpoints.

The loop knows nothing of grammars or images. A task (:class:`TrainTask`) supplies the
state, the compiled steps, what a training row and an evaluation row contain, and what a
checkpoint stores; :func:`fit` runs it into a run folder
(:class:`~rhm_jax.training.runs.RunDirectory`):

* steps run ``steps_per_call`` at a time (one compiled call; the Python overhead of a call
  is larger than a small model's step on CPU);
* every ``log_every`` steps a ``"train"`` row summarises the steps since the last one;
* every ``eval_every`` steps (and at step 0) an ``"test"`` row evaluates the state;
* every ``checkpoint_every`` steps, and when the run stops, the state is checkpointed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from rhm_jax.training.checkpoints import Checkpointer
from rhm_jax.training.runs import RunDirectory

__all__ = ["LoopConfig", "TrainTask", "fit"]


class LoopConfig(Protocol):
    """What the loop reads from a task's configuration (a frozen dataclass)."""

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

    def init_state(self) -> Any:
        """The state at step 0 (also the template a checkpoint is restored into)."""

    def checkpoint_items(self, state) -> dict:
        """Name -> pytree of arrays: what a checkpoint of ``state`` stores."""

    def restore(self, template, items: dict) -> Any:
        """The state rebuilt from restored ``items`` (as :meth:`checkpoint_items` gave
        them), with ``template`` the state of :meth:`init_state`."""

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


def fit(task: TrainTask, run_dir, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None, command: str = "train"):
    """Trains ``task`` into ``run_dir``; returns the final state.

    Args:
      task: the model, data and loss (:class:`TrainTask`).
      run_dir: the run folder.
      resume: continue from the latest checkpoint in ``run_dir``.
      overwrite: replace an earlier run in ``run_dir``.
      progress: show a progress bar.
      stop_after: stop (after checkpointing) once this step is reached.
      command: the command stored in ``meta.json``.
    """
    from rhm_jax.io import environment

    config = task.config
    run = RunDirectory(run_dir)
    run.prepare(config, resume=resume, overwrite=overwrite)
    state = task.init_state()
    checkpoints = Checkpointer(run.checkpoint_dir)
    wall_offset, start_step = 0.0, 0
    if resume and checkpoints.latest_step() is not None:
        start_step = checkpoints.latest_step()
        state = task.restore(state, checkpoints.restore(start_step, task.checkpoint_items(state)))
        wall_offset = run.truncate_rows(start_step)
    else:
        run.clear_rows()
    run.write_meta({"command": command, "environment": environment(), **task.meta(state)})
    state = task.start(state)
    end_step = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, unit="step", desc="train")

    start = time.perf_counter()
    if start_step == 0:
        run.append_row({**_header(0, "test", config, 0.0), **task.eval_row(state)})
    window, step = [], start_step
    while step < end_step:
        n = min(config.steps_per_call, end_step - step)
        state, metrics = task.run_steps(state, n)  # data, loss and update, compiled
        metrics = jax.tree.map(np.asarray, metrics)
        window.append(metrics)
        step += n
        wall = wall_offset + time.perf_counter() - start
        if bar is not None:
            bar.update(n)
            bar.set_postfix_str(task.progress_text(metrics))
        if step % config.log_every == 0 or step == config.steps:
            joined = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
            run.append_row({**_header(step, "train", config, wall), **task.train_row(joined)})
            window = []
        if step % config.eval_every == 0 or step == config.steps:
            run.append_row({**_header(step, "test", config, wall), **task.eval_row(state)})
            task.after_eval(run.path)
        if step % config.checkpoint_every == 0 or step == end_step:
            checkpoints.save(step, task.checkpoint_items(state), config.to_dict())
    if bar is not None:
        bar.close()
    return state


def _header(step: int, split: str, config, wall: float) -> dict:
    return {"step": step, "split": split, "data_seen": step * config.batch_size,
            "wall_s": round(wall, 3)}
