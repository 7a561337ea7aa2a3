"""Result files: atomic writes, tidy JSONL rows, and the run's environment."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
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
