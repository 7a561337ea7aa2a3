"""The folder of a training run: creation, resumption and its ``metrics.jsonl``.

A run folder holds

``config.json``
    the configuration (the object's ``to_dict()``);
``meta.json``
    the command, the versions of everything and facts the task adds;
``metrics.jsonl``
    one JSON row per log interval and per evaluation, appended as training goes;
``checkpoints/<step>/``
    orbax checkpoints (:mod:`rhm_jax.training.checkpoints`);

and whatever files the task writes beside them (a loss curve).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["RunDirectory", "config_differences"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """``["seed: 0 -> 7", "model.width: 32 -> 16"]``: the fields where two configuration
    dicts differ (nested dicts compared field by field)."""
    a, b = _flatten(old), _flatten(new)
    keys = list(a) + [k for k in b if k not in a]
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


class RunDirectory:
    """One run folder and the files the training loop writes into it.

    Args:
      path: the folder.
    """

    def __init__(self, path):
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def prepare(self, config, *, resume: bool, overwrite: bool) -> None:
        """Check the folder against the request and make it ready to write ``config``.

        A new or empty folder starts a run; ``resume`` continues the run stored there (its
        ``config.json`` must equal ``config``); ``overwrite`` replaces an earlier run folder.
        Anything else is refused with a ``ValueError`` before the folder is touched.
        """
        from rhm_jax.io import write_json

        path = self.path
        if path.exists() and not path.is_dir():
            raise ValueError(f"run_dir = {str(path)!r} exists and is not a folder")
        existing = path.is_dir() and any(path.iterdir())
        if resume:
            if not (path / "config.json").exists():
                raise ValueError(f"resume: run_dir = {str(path)!r} holds no run to resume "
                                 "(no config.json)")
            stored = type(config).from_dict(json.loads((path / "config.json").read_text()))
            if stored != config:
                diff = config_differences(stored.to_dict(), config.to_dict())
                raise ValueError(f"resume: the configuration differs from the stored run "
                                 f"({'; '.join(diff)})")
        elif existing:
            if not overwrite:
                raise ValueError(f"run_dir = {str(path)!r} is not empty: pass resume=True "
                                 "(--resume) to continue it or overwrite=True (--overwrite)")
            if not (path / "config.json").exists():  # never delete what we did not write
                raise ValueError(f"run_dir = {str(path)!r} is not empty and is not a "
                                 "training run folder (no config.json): refusing to "
                                 "overwrite it")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", config.to_dict())

    def write_meta(self, meta: dict) -> None:
        """Write ``meta.json``."""
        from rhm_jax.io import write_json

        write_json(self.path / "meta.json", meta)

    # ---- metrics.jsonl ----------------------------------------------------------------
    def append_row(self, row: dict) -> None:
        """Append one row to ``metrics.jsonl``."""
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()

    def clear_rows(self) -> None:
        """Remove ``metrics.jsonl`` (a run that starts from step 0)."""
        if self.metrics_path.exists():
            self.metrics_path.unlink()

    def truncate_rows(self, step: int) -> float:
        """Drop rows logged after ``step`` (a run that died after its last checkpoint);
        returns the wall time the kept rows reached (``wall_s``, 0 without rows)."""
        path = self.metrics_path
        if not path.exists():
            return 0.0
        from rhm_jax.io import atomic_write

        rows = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        with atomic_write(path) as handle:
            handle.write("".join(r + "\n" for r in rows))
        return max([json.loads(r).get("wall_s", 0.0) for r in rows], default=0.0)
