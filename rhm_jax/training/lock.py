"""The lock of a run folder: one writer at a time, stale locks of dead processes taken over.

The lock is the file ``.NAME.lock`` beside the run folder ``NAME`` (beside, so that it
covers a run that is still being staged and survives the folder being replaced). It is
created atomically (``O_CREAT | O_EXCL``) and holds the writer's pid, host and start time,
the scheme pip and conda use. A lock whose process no longer runs on this host (or whose
pid now belongs to another process) is stale: the next writer takes it over and says so.
A lock from another host is never judged stale; its message says how to remove it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from pathlib import Path

from rhm_jax.training.errors import RunLocked

__all__ = ["RunLock", "lock_holder", "notice"]


def notice(message: str) -> None:
    """Print one line about what the library did on the user's behalf (to stderr)."""
    import sys

    print(f"rhm-jax: {message}", file=sys.stderr, flush=True)


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished


def _alive(holder: dict) -> bool:
    """Whether the process that wrote lock ``holder`` still runs (unknown hosts: yes)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    start = _process_start(pid)
    if os.path.exists("/proc") and start is None:
        return False
    return holder.get("pid_start") in (None, start)


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(run_dir) -> dict | None:
    """The ``{"pid", "host", "started"}`` of the live process writing ``run_dir``, or
    ``None`` when no live process holds its lock."""
    holder = _read_lock(RunLock(run_dir).path)
    return holder if holder and _alive(holder) else None


class RunLock:
    """The lock of one run folder: the file ``.NAME.lock`` beside it.

    Args:
      run_dir: the run folder (need not exist yet).
    """

    #: Seconds after which an empty lock file (its writer died before writing it) is stale.
    EMPTY_GRACE_S = 10.0

    def __init__(self, run_dir):
        run_dir = Path(run_dir).absolute()
        self.run_dir = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLocked` naming the live holder."""
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"), "pid_start": _process_start(os.getpid())}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held, self.owner = True, me
            return
        raise RunLocked(f"{self.run_dir}: could not take its lock {self.path}")

    def _break_if_stale(self) -> None:
        holder = _read_lock(self.path)
        if holder is None:  # released meanwhile
            return
        if holder == {}:
            with contextlib.suppress(OSError):
                if time.time() - self.path.stat().st_mtime < self.EMPTY_GRACE_S:
                    time.sleep(0.2)  # being written right now
                    return
        elif _alive(holder):
            raise RunLocked(
                f"{self.run_dir} is being written by process {holder.get('pid')} on "
                f"{holder.get('host')} (since {holder.get('started')}); wait for it to end "
                f"or stop it (if it is gone, delete {self.path})")
        # Move the stale lock aside and check it is the one we judged: a process that
        # took it over meanwhile must keep its fresh lock.
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read_lock(aside) != holder:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            os.unlink(aside)
            return
        os.unlink(aside)
        if holder:
            notice(f"{self.run_dir}: took over the lock of process {holder.get('pid')} on "
                   f"{holder.get('host')}, which no longer runs")

    def release(self) -> None:
        if self.held and _read_lock(self.path) == self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
