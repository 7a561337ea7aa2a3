"""The folder of a training run: its lock, its creation and replacement, ``metrics.jsonl``.

A run folder holds

``config.json``
    the configuration (the object's ``to_dict()``);
``meta.json``
    the command, the versions of everything and facts the task adds;
``metrics.jsonl``
    one JSON row per log interval and per evaluation, appended as training goes;
``checkpoints/<step>/``
    orbax checkpoints (:mod:`rhm_jax.training.checkpoints`);

and the files the task names (a loss curve). Guarantees:

* one writer: ``.NAME.lock`` beside the folder (:mod:`rhm_jax.training.lock`);
* a new run is written into a staging folder beside the target (``.NAME.staging-*``) and
  moved into place at its first checkpoint, replacing an earlier run there only then: a
  run killed before that leaves the target as it was;
* ``overwrite`` replaces only a folder that is provably a training run of this command
  (its ``meta.json``, a ``config.json`` that parses, and no file a run does not write);
* a row is appended whole; a partial last row (a kill mid-write) is dropped on resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import secrets
from pathlib import Path

from rhm_jax.training.lock import RunLock, notice

__all__ = ["RunDirectory", "config_differences"]

#: Files and folders every run folder has (the task adds its own).
RUN_FILES = ("config.json", "meta.json", "metrics.jsonl", "checkpoints")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """The fields where two configuration dicts differ (nested dicts field by field).

    Examples:
      >>> config_differences({"seed": 0, "model": {"width": 32}},
      ...                    {"seed": 7, "model": {"width": 32}})
      ['seed: 0 -> 7']
    """
    a, b = _flatten(old), _flatten(new)
    keys = list(a) + [k for k in b if k not in a]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


# ---- the folder -------------------------------------------------------------------------------
def _created_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, outermost first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def _fresh_folder(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/prefix<random>`` with the permissions ``mkdir`` gives (unlike
    ``tempfile.mkdtemp``'s owner-only ones, which the run folder would keep)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


class RunDirectory:
    """One run folder and the files the training loop writes into it.

    Args:
      target: the run folder.
      command: the command a run of this kind stores in ``meta.json``.
      config_type: the configuration class (``from_dict`` parses ``config.json``).
      task_files: the files and folders the task writes beside :data:`RUN_FILES`.
    """

    def __init__(self, target, *, command: str = "train", config_type=None,
                 task_files=()):
        self.target = Path(target)
        self.path = self.target  # where files are written now (a staging folder at first)
        self.command, self.config_type = command, config_type
        self.names = set(RUN_FILES) | set(task_files)
        self.staged = False
        self.lock = RunLock(self.target)
        self._made_parents: list[Path] = []

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # -- what a folder is ----------------------------------------------------------------
    def not_a_run(self, folder: Path, *, only_run_files: bool = True) -> str | None:
        """Why ``folder`` is not provably a run of this command (``None`` when it is): its
        ``meta.json`` names the command, its ``config.json`` parses, and (with
        ``only_run_files``) it holds nothing a run does not write."""
        found = {}
        for name in ("meta.json", "config.json"):
            try:
                found[name] = json.loads((folder / name).read_text())
            except FileNotFoundError:
                return f"it has no {name}"
            except (OSError, ValueError):
                return f"its {name} is not readable JSON"
        meta, config = found["meta.json"], found["config.json"]
        if not isinstance(meta, dict) or meta.get("command") != self.command:
            return f"its meta.json is not that of an rhm-jax {self.command} run"
        if self.config_type is not None:
            try:
                self.config_type.from_dict(config)
            except (TypeError, ValueError) as err:
                return f"its config.json does not parse ({err})"
        if not only_run_files:
            return None
        tmp = re.compile(r"^\.(.+)\.[^.]+\.tmp$")  # atomic_write's temporary files
        for entry in folder.iterdir():
            match = tmp.match(entry.name)
            if entry.name not in self.names and not (match and match[1] in self.names):
                return f"it holds {entry.name!r}, which a run does not write"
        checkpoints = folder / "checkpoints"
        if checkpoints.is_dir():
            for entry in checkpoints.iterdir():
                if not re.match(r"^\d+(\.orbax-checkpoint-tmp.*)?$", entry.name):
                    return f"its checkpoints/ holds {entry.name!r}"
        return None

    def _siblings(self, kind: str) -> list[Path]:
        parent = self.target.absolute().parent
        return sorted(parent.glob(f".{self.target.name}.{kind}-*")) if parent.is_dir() else []

    def _clean_leftovers(self) -> None:
        """Remove what a killed writer of this folder left beside it (we hold the lock)."""
        for old in self._siblings("old"):
            inner = old / self.target.name
            if inner.is_dir() and not self.target.exists():  # killed mid-swap: put it back
                os.replace(inner, self.target)
                notice(f"{self.target}: restored the earlier run that a killed "
                       "overwrite had moved aside")
            shutil.rmtree(old, ignore_errors=True)
        for staging in self._siblings("staging"):
            shutil.rmtree(staging, ignore_errors=True)

    # -- opening ------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the folder's lock (creating missing parent folders for it)."""
        target = self.target
        if os.path.lexists(target) and not target.is_dir():
            raise ValueError(f"run_dir = {str(target)!r} exists and is not a folder")
        self._made_parents = _created_parents(target)
        try:
            target.absolute().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"run_dir = {str(target)!r}: cannot create its folder "
                             f"({err.strerror or err})") from None
        try:
            self.lock.acquire()
        except BaseException:
            self._remove_made_parents()
            raise
        self._clean_leftovers()

    def release(self, *, failed: bool) -> None:
        """Release the lock; a run that never reached its first checkpoint leaves nothing."""
        if self.staged:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path, self.staged = self.target, False
        self.lock.release()
        if failed and not self.target.exists():
            self._remove_made_parents()

    def _remove_made_parents(self) -> None:
        for folder in reversed(self._made_parents):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def check_resumable(self) -> None:
        """Refuse to resume a folder that holds no run of this command."""
        path = self.target
        if not (path / "config.json").exists():
            raise ValueError(f"resume: run_dir = {str(path)!r} holds no run to resume "
                             "(no config.json)")
        reason = self.not_a_run(path, only_run_files=False)  # resuming deletes nothing
        if reason is not None:
            raise ValueError(f"resume: run_dir = {str(path)!r} is not an rhm-jax "
                             f"{self.command} run: {reason}")
        if not self.metrics_path.exists():
            raise ValueError(f"resume: {self.metrics_path} is missing, so the run's history "
                             "would restart mid-run: restore it, or start the run again "
                             "with overwrite=True (--overwrite)")

    def read_config(self) -> dict:
        return json.loads((self.target / "config.json").read_text())

    def create(self, *, overwrite: bool) -> None:
        """Start a new run in a staging folder beside the target.

        The target must not exist, be empty, or (with ``overwrite``) be provably a run of
        this command; it is replaced only by :meth:`publish`.
        """
        target = self.target
        if target.is_dir() and any(target.iterdir()):
            if not overwrite:
                raise ValueError(f"run_dir = {str(target)!r} is not empty: pass resume=True "
                                 "(--resume) to continue it or overwrite=True (--overwrite)")
            reason = self.not_a_run(target)
            if reason is not None:  # never delete what we did not write
                raise ValueError(f"run_dir = {str(target)!r} is not empty and is not a "
                                 f"training run folder ({reason}): refusing to overwrite it")
        self.path = _fresh_folder(target.absolute().parent, f".{target.name}.staging-")
        self.staged = True

    def publish(self) -> None:
        """Move a staged run into place (at its first checkpoint), replacing the target."""
        if not self.staged:
            return
        target = self.target
        old = None
        if target.is_dir() and any(target.iterdir()):
            reason = self.not_a_run(target)
            if reason is not None:
                raise ValueError(f"{target} is no longer a training run folder ({reason}); "
                                 f"the new run is kept in {self.path}")
            old = _fresh_folder(target.absolute().parent, f".{target.name}.old-")
            os.replace(target, old / target.name)
        elif target.is_dir():
            target.rmdir()
        os.replace(self.path, target)
        self.path, self.staged = target, False
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    # -- files ----------------------------------------------------------------------------
    def write_json(self, name: str, obj) -> None:
        from rhm_jax.io import write_json

        write_json(self.path / name, obj)

    def append_row(self, row: dict) -> None:
        """Append one row to ``metrics.jsonl`` (one write of one whole line)."""
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def sync_rows(self) -> None:
        """Flush ``metrics.jsonl`` to disk (before a checkpoint that its rows lead up to)."""
        if self.metrics_path.exists():
            with open(self.metrics_path, "rb+") as handle:
                os.fsync(handle.fileno())

    def repair_rows(self, step: int) -> float:
        """Make ``metrics.jsonl`` end at checkpoint ``step``; returns its last ``wall_s``.

        Rows after ``step`` (logged after the checkpoint a resumed run starts from) are
        dropped, and so is a partial last row (a kill mid-write). A damaged row elsewhere,
        or rows that stop short of ``step``, are refused: the history would have a hole.
        """
        path = self.metrics_path
        text = path.read_text()
        lines = text.split("\n")
        tail = lines.pop()  # "" when the file ends with a newline
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append((line, json.loads(line)))
            except ValueError:
                if number == len(lines) and not tail:
                    tail = line
                    break
                raise ValueError(f"resume: {path} line {number} is not a JSON row: repair "
                                 "or remove it") from None
        if tail.strip():
            notice(f"{path}: dropped a partial last row (its writer was stopped mid-row)")
        kept = [(line, row) for line, row in rows if row.get("step", 0) <= step]
        last = max((row.get("step", 0) for _, row in kept), default=0)
        if last != step:
            raise ValueError(f"resume: {path} ends at step {last}, but the run resumes from "
                             f"its checkpoint at step {step}: rows are missing; restore the "
                             "file, or start again with overwrite=True (--overwrite)")
        new_text = "".join(line + "\n" for line, _ in kept)
        if new_text != text:
            from rhm_jax.io import atomic_write

            with atomic_write(path) as handle:
                handle.write(new_text)
        return max([row.get("wall_s", 0.0) for _, row in kept], default=0.0)
