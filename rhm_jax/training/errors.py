"""The ways a training run stops early, each a type of its own with a one-line message.

========================  ===================  =========================================
exception                 base                 meaning
========================  ===================  =========================================
:class:`TrainingDiverged`  ``RuntimeError``     a loss or the state became NaN or ±inf;
                                               nothing non-finite was written
:class:`TrainingInterrupted` ``KeyboardInterrupt`` Ctrl-C (SIGINT); the run is resumable
                                               from ``step``
:class:`RunLocked`         ``ValueError``       another live process writes the run folder
:class:`CheckpointError`   ``ValueError``       no checkpoint of the run restores and
                                               verifies
========================  ===================  =========================================
"""

from __future__ import annotations

__all__ = ["TrainingDiverged", "TrainingInterrupted", "RunLocked", "CheckpointError"]


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite value; it stopped before writing or saving it.

    Attributes:
      step: the step whose loss (or state) was not finite.
      last_checkpoint: the newest checkpoint of the run (``None`` when there is none; the
        run folder is then left as it was before training started).
    """

    def __init__(self, message: str, step: int, last_checkpoint: int | None):
        super().__init__(message)
        self.step, self.last_checkpoint = step, last_checkpoint


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) at a clean point: no save was cut short.

    Attributes:
      step: the step a resumed run starts from (its newest checkpoint), or ``None`` when
        no checkpoint was written yet (the run folder is then as it was before).
      reached: the step training had completed when it stopped.
      run_dir: the run folder.
    """

    def __init__(self, message: str, step: int | None, reached: int, run_dir):
        super().__init__(message)
        self.step, self.reached, self.run_dir = step, reached, run_dir

    def __str__(self) -> str:
        return self.args[0]


class RunLocked(ValueError):
    """The run folder is being written by another live process (its lock file names it)."""


class CheckpointError(ValueError):
    """No checkpoint of a run restores and verifies (the message names the folder and
    each checkpoint's reason)."""
