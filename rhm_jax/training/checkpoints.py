"""Orbax checkpoints of a run: named pytree items plus the configuration as JSON.

A checkpoint ``checkpoints/<step>/`` holds one orbax item per name given to
:meth:`Checkpointer.save` (the train state, and whatever else rebuilds the run, such as a
grammar's rules) and a ``config`` item, the run's configuration as JSON: a checkpoint alone
rebuilds its run. Saves are synchronous and committed atomically by orbax (written under a
temporary name, renamed when complete), so a checkpoint directory that exists is whole.

Verification. Only finite states are saved, with a CRC-32 of every item in the
checkpoint's metadata; a restored checkpoint must match its CRCs, be finite and have its
template's shapes and dtypes. :meth:`Checkpointer.restore_latest` falls back to the newest
checkpoint that passes, saying which ones it skipped; as orbax deletes old checkpoints
only after a newer one is committed (``max_to_keep``), the last good checkpoint is never
deleted in favour of a bad one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, TypeVar

import jax
import numpy as np

from rhm_jax.training.errors import CheckpointError
from rhm_jax.training.lock import notice

__all__ = ["Checkpointer", "ConfigMismatch", "NonFiniteState", "checksums", "all_finite_host"]

T = TypeVar("T")


class ConfigMismatch(ValueError):
    """A checkpoint restores, but was written by another configuration: a refusal, never a
    reason to fall back to an older checkpoint."""


def _retrying(make, tries: int = 5):
    """``make()``, tried again when a checkpoint that a live writer deletes vanishes
    between being listed and being read."""
    for attempt in range(tries):
        try:
            return make()
        except FileNotFoundError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


class NonFiniteState(ValueError):
    """A state with NaN or ±inf values, which is never saved."""


def checksums(items: dict) -> dict:
    """``{name: "crc32 hex"}`` over every leaf's shape, dtype and bytes, in tree order."""
    out = {}
    for name, item in items.items():
        crc = 0
        for leaf in jax.tree.leaves(item):
            array = np.asarray(leaf)
            crc = zlib.crc32(f"{array.shape}{array.dtype}".encode(), crc)
            crc = zlib.crc32(np.ascontiguousarray(array).tobytes(), crc)
        out[name] = f"{crc:08x}"
    return out


def all_finite_host(items) -> bool:
    """True when every floating-point leaf of ``items`` is finite (checked on the host)."""
    for leaf in jax.tree.leaves(items):
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            return False
    return True


@contextlib.contextmanager
def _quiet_asyncio():
    """Orbax reports a damaged file once as an exception and again through asyncio's
    logger; the exception is enough."""
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ignore_late_reads() -> None:
    """After a restore fails, reads it had started still finish and try to report to
    its event loop, which is closed by then: one "Event loop is closed" RuntimeError per
    read, sent to ``sys.unraisablehook``. Drop exactly those (once installed, for good)."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        if (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


class Checkpointer:
    """Save and restore the checkpoints in one ``checkpoints/`` folder.

    Args:
      directory: the ``checkpoints/`` folder.
      max_to_keep: checkpoints kept (older ones are deleted after a newer one is saved).
      writer: the process that trains the run (it holds the run's lock): creates
        ``directory`` and removes the temporary folders of saves that a kill cut short. A
        reader passes ``False`` and changes nothing.
    """

    def __init__(self, directory, *, max_to_keep: int = 2, writer: bool = True):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=writer,
                                               cleanup_tmp_directories=writer,
                                               enable_async_checkpointing=False)
        self.manager = _retrying(lambda: ocp.CheckpointManager(self.directory, options=options))
        self.rejected: list[int] = []  # checkpoints that failed verification

    def steps(self) -> list[int]:
        """The steps of the committed checkpoints, newest first.

        Read from the folder's names (orbax commits a checkpoint by renaming its temporary
        folder to the bare step), not through orbax's listing, which reads each
        checkpoint's metadata and fails when a live writer deletes one meanwhile.
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted((int(name) for name in names if name.isdigit()), reverse=True)

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (``None`` when there is none)."""
        steps = self.steps()
        return steps[0] if steps else None

    def save(self, step: int, items: dict, config: dict) -> None:
        """Save ``items`` (name -> pytree) and ``config`` (JSON) as checkpoint ``step``.

        Checkpoints that failed verification are deleted first (a good one now replaces
        them). Raises :class:`NonFiniteState` for a state with NaN or ±inf, which is never
        saved.
        """
        import orbax.checkpoint as ocp

        if not all_finite_host(items):
            raise NonFiniteState(f"refusing to save a non-finite state at step {step}")
        if self.rejected:
            self.manager.reload()
        for bad in self.rejected:
            if bad in self.manager.all_steps():
                self.manager.delete(bad)
        self.rejected = []
        args = {name: ocp.args.StandardSave(item) for name, item in items.items()}
        self.manager.save(step, args=ocp.args.Composite(**args,
                                                        config=ocp.args.JsonSave(config)),
                          custom_metadata={"crc32": checksums(items)})
        self.manager.wait_until_finished()

    def restore_config(self, step: int) -> dict:
        """The configuration stored in checkpoint ``step``."""
        import orbax.checkpoint as ocp

        config = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))["config"]
        if not isinstance(config, dict):
            raise ValueError("its stored configuration is not a JSON object")
        return config

    def restore(self, step: int, templates: dict) -> dict:
        """The items of checkpoint ``step``, restored into the shapes and dtypes of
        ``templates`` (name -> pytree of arrays, as given to :meth:`save`) and verified:
        their CRCs (when stored), finiteness, shapes and dtypes. ``ValueError`` if not."""
        import orbax.checkpoint as ocp

        abstract = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, item)
                    for name, item in templates.items()}
        stored = (self.manager.metadata(step).custom_metadata or {}).get("crc32")
        with _quiet_asyncio():
            restored = self.manager.restore(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardRestore(item) for name, item in abstract.items()}))
        items = {name: restored[name] for name in templates}
        for name, item in items.items():
            got, want = jax.tree.structure(item), jax.tree.structure(abstract[name])
            if got != want:
                raise ValueError(f"item {name!r} has another structure than its template")
            for a, b in zip(jax.tree.leaves(item), jax.tree.leaves(abstract[name])):
                if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
                    raise ValueError(f"item {name!r} has an array of {a.dtype}{list(a.shape)} "
                                     f"where {b.dtype}{list(b.shape)} is expected")
        if stored is not None:
            actual = checksums(items)
            bad = [name for name in items if stored.get(name) != actual[name]]
            if bad:
                raise ValueError(f"its data do not match their CRC-32 ({', '.join(bad)})")
        if not all_finite_host(items):
            raise ValueError("it holds NaN or ±inf values")
        return items

    def restore_latest(self, build: Callable[[int], T], *, what: str) -> tuple[int, T]:
        """``(step, build(step))`` for the newest checkpoint where ``build`` succeeds.

        ``build(step)`` restores and verifies checkpoint ``step`` (typically with
        :meth:`restore_config` and :meth:`restore`) and raises on a damaged one; the loop
        then says so and tries the next older one. A :class:`ConfigMismatch` is raised at
        once. A checkpoint deleted meanwhile by a live writer (``max_to_keep``) is skipped
        silently. Raises :class:`CheckpointError` when none restores.

        Args:
          build: restores one checkpoint.
          what: the run folder, for messages.
        """
        reasons = []
        for _ in range(3):  # a live writer may delete the steps we listed: list again
            vanished = False
            for step in self.steps():
                if step in (s for s, _ in reasons):
                    continue
                try:
                    result = build(step)
                except ConfigMismatch:
                    raise
                except Exception as err:  # noqa: BLE001 - any damage means: try an older one
                    _ignore_late_reads()
                    if not (self.directory / str(step)).is_dir():
                        vanished = True
                        break
                    reasons.append((step, _reason(err)))
                    self.rejected.append(step)
                    notice(f"{what}: checkpoint {step} does not restore ({_reason(err)}); "
                           "trying an older one")
                    continue
                if reasons:
                    notice(f"{what}: using checkpoint {step}")
                return step, result
            if not vanished:
                break
        if not reasons:
            raise CheckpointError(f"{what} has no checkpoint to restore")
        detail = "; ".join(f"step {s}: {r}" for s, r in reasons)
        raise CheckpointError(f"{what}: no checkpoint restores ({detail})")
