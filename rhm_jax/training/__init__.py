"""A generic, resumable training loop: run folders, orbax checkpoints and the loop itself.

Nothing here knows what is trained. A model plugs in as a
:class:`~rhm_jax.training.loop.TrainTask` — its state, its compiled steps, its rows and its
checkpoint items — and :func:`~rhm_jax.training.loop.fit` runs it:

* :mod:`~rhm_jax.training.loop` — the loop: compiled step groups, train and evaluation
  rows, checkpoints, progress bar, the non-finite guard, Ctrl-C;
* :mod:`~rhm_jax.training.runs` — the run folder: staging, replacement, ``metrics.jsonl``;
* :mod:`~rhm_jax.training.lock` — one writer per run folder;
* :mod:`~rhm_jax.training.checkpoints` — verified orbax checkpoints of named pytrees plus
  the configuration, restored with fallback;
* :mod:`~rhm_jax.training.errors` — how a run stops early;
* :mod:`~rhm_jax.training.state` — the train state of an NNX model and tree helpers.
"""

from rhm_jax.training.checkpoints import Checkpointer
from rhm_jax.training.errors import (CheckpointError, RunLocked, TrainingDiverged,
                                     TrainingInterrupted)
from rhm_jax.training.lock import RunLock, lock_holder
from rhm_jax.training.loop import LoopConfig, TrainTask, check_stop_after, fit
from rhm_jax.training.runs import RunDirectory, config_differences
from rhm_jax.training.state import TrainState

__all__ = ["Checkpointer", "CheckpointError", "RunLocked", "TrainingDiverged",
           "TrainingInterrupted", "RunLock", "lock_holder", "LoopConfig", "TrainTask",
           "check_stop_after", "fit", "RunDirectory", "config_differences", "TrainState"]
