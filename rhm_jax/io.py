"""Result files: run folders replaced whole, atomic writes, tidy JSONL rows, and the run's
environment."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A crash or an exception leaves any previous ``path`` untouched and no partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_jsonl(path, rows) -> None:
    """Write ``rows`` (dicts) as one JSON object per line, atomically."""
    with atomic_write(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=False) + "\n")


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2)
        handle.write("\n")


def read_jsonl(path) -> list[dict]:
    """Read a JSONL file into a list of dicts."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def environment() -> dict:
    """Versions, devices and host facts to store next to results."""
    import jax
    import numpy as np

    import rhm_jax

    versions = {"python": sys.version.split()[0], "rhm_jax": rhm_jax.__version__,
                "jax": jax.__version__, "numpy": np.__version__}
    for name in ("jaxlib", "flax", "optax"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    devices = jax.devices()
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "process_count": jax.process_count(),
        "platform": platform.platform(),
        "x64": bool(jax.config.jax_enable_x64),
        "utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---- run folders ----------------------------------------------------------------------------
def run_folder_command(path) -> str | None:
    """The command that wrote the rhm-jax run folder ``path`` (its ``meta.json`` names
    it), or ``None`` when ``path`` is not such a folder."""
    try:
        with open(Path(path) / "meta.json") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    command = meta.get("command") if isinstance(meta, dict) else None
    return command if isinstance(command, str) else None


def is_run_folder(path) -> bool:
    """True when ``path`` holds an rhm-jax run: a ``meta.json`` naming its command."""
    return run_folder_command(path) is not None


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path, flag: str = "--out", *, command: str | None = None,
                        overwrite: bool = False) -> Path:
    """Refuse, before any work, a folder that a run cannot write and then replace.

    The one rule of every command's output folder: a folder that does not exist yet (its
    parents are created) or an empty folder is written; an existing run folder is replaced
    only with ``overwrite`` and only by the ``command`` that wrote it (whole, when the new
    run completes); anything else is refused with a one-line ``ValueError`` naming
    ``flag``: an existing file, a path under a file, a folder that cannot be written, a
    non-empty folder that is not an rhm-jax run (it is never deleted), another command's
    run.
    """
    text = os.fspath(path)
    if not text.strip():
        raise ValueError(f"{flag} = {text!r} must name a folder")
    path = Path(text)
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"{flag} = {text} is an existing file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        kind = run_folder_command(path)
        if kind is None:
            raise ValueError(f"{flag} = {text} is a non-empty folder that is not an rhm-jax "
                             "run (no meta.json): name a new or empty folder; rhm-jax replaces "
                             "only its own run folders")
        if command is not None and kind != command:
            raise ValueError(f"{flag} = {text} holds an rhm-jax {kind} run, which "
                             f"`rhm-jax {command}` never replaces: name another folder")
        if not overwrite:
            raise ValueError(f"{flag} = {text} holds an earlier {kind} run: add --overwrite to "
                             "replace it when this run completes, or name a new folder")
    anchor = _nearest_existing(path if path.is_dir() else path.absolute().parent)
    if not anchor.is_dir():
        raise ValueError(f"{flag} = {text}: {anchor} is a file, so no folder can be made "
                         "under it")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} = {text}: {anchor} is not writable")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Remove the staging folders of ``target`` left by runs that were killed.

    A staging folder is named ``.NAME.partial-<pid>-*`` (or ``.NAME.old-<pid>-*`` while a
    completed run is swapped in); one whose process no longer runs on this host is removed.
    Returns the removed folders.
    """
    removed = []
    parent = target.absolute().parent
    if not parent.is_dir():
        return removed
    for kind in ("partial", "old"):
        for entry in parent.glob(f".{target.name}.{kind}-*"):
            pid = entry.name[len(f".{target.name}.{kind}-"):].split("-", 1)[0]
            if entry.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


class RunFolder:
    """An output folder that always describes one whole run.

    The run writes into a fresh staging folder beside the target (``.NAME.partial-*``);
    :meth:`commit` writes ``meta.json`` with ``"complete": true`` last and then moves the
    staging folder into place, replacing an earlier run folder whole (so no file of an
    older run survives next to the new ones). An interrupted run leaves the target as it
    was; :meth:`discard` (or leaving the ``with`` block by an exception) removes the
    staging folder.

    The target is checked with :func:`check_output_folder` (``overwrite`` allows replacing
    an earlier run of the same ``command``), stale staging folders of killed runs are
    removed (:func:`remove_stale_staging`), and the staging folder is created, in the
    constructor: all before any work, so a bad ``--out`` fails at once.

    Examples:
      >>> import tempfile, os
      >>> root = tempfile.mkdtemp()
      >>> with RunFolder(os.path.join(root, "run"), command="demo") as folder:
      ...     write_json(folder.file("result.json"), {"x": 1})
      ...     final = folder.commit({"seed": 0})
      >>> sorted(os.listdir(os.path.join(root, "run")))
      ['meta.json', 'result.json']
    """

    def __init__(self, path, *, command: str, flag: str = "--out", overwrite: bool = False):
        self.target = check_output_folder(path, flag, command=command, overwrite=overwrite)
        self.command = command
        parent = self.target.absolute().parent
        remove_stale_staging(self.target)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(
                prefix=f".{self.target.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as err:
            raise ValueError(f"{flag} = {os.fspath(path)}: cannot create a folder in "
                             f"{parent} ({err.strerror or err})") from None
        self.committed = False

    def file(self, name: str) -> str:
        """Path of ``name`` inside the staging folder (where the run writes)."""
        return str(self.staging / name)

    def commit(self, meta: dict) -> Path:
        """Write ``meta.json`` (with the command and ``"complete": true``) and move the run
        into place. Returns the final folder."""
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_json(self.file("meta.json"), {"command": self.command, **meta,
                                            "complete": True, "completed_utc": stamp})
        target, old = self.target, None
        if target.is_dir():
            if any(target.iterdir()):
                if run_folder_command(target) != self.command:  # replaced meanwhile
                    raise ValueError(f"{target} is no longer an rhm-jax {self.command} run "
                                     f"folder; this run's results are kept in {self.staging}")
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{os.getpid()}-",
                                            dir=target.parent))
                os.replace(target, old / target.name)
            else:
                target.rmdir()
        os.replace(self.staging, target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def discard(self) -> None:
        """Remove the staging folder of a run that did not complete."""
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
