"""Shared benchmark helpers: timing, memory, environment, JSONL rows.

Used by ``bench_bp.py`` (main venv) and ``pgmax_bp.py`` (run in a separate venv), so it
imports nothing from rhm_jax and only jax/numpy/psutil from third parties.

Conventions (STYLE.md): compile time is measured separately from run time; every timed
call ends in ``jax.block_until_ready``; we report the median with IQR/min/max over at least
five timed runs after warm-up; rows are appended to a JSONL file; numbers are recorded,
never asserted.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MIN_REPEATS = 5

#: Identifies one benchmark invocation (its rows share it; ratios are taken within a run).
RUN_ID = os.environ.get("RHM_BENCH_RUN_ID") or (
    datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")


def versions() -> dict:
    """Versions of the packages that matter for the numbers."""
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "numpy", "pgmax", "rhm_jax"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_info() -> dict:
    """The JAX device the numbers come from, plus the host (cores, CPU model, load)."""
    import jax

    device = jax.devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"platform": device.platform, "device_kind": device.device_kind,
            "num_devices": jax.device_count(), "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(), "load_avg_1min": load, "host": platform.node()}


def block(tree: Any) -> Any:
    """``jax.block_until_ready`` on every leaf (NumPy leaves pass through)."""
    import jax

    return jax.block_until_ready(tree)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakRSS:
    """Context manager sampling the process RSS in a thread; ``.peak`` / ``.baseline``.

    RSS is sampled every ``interval_s``; a short spike between samples can be missed, so
    the peak is a lower bound (good to within the largest live buffer's lifetime).
    """

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.baseline = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def summarize(times: list[float]) -> dict:
    """Median, IQR, min, max of run times (seconds)."""
    q25, q75 = np.percentile(times, [25, 75])
    return {"times_s": [round(t, 6) for t in times], "median_s": statistics.median(times),
            "iqr_s": float(q75 - q25), "min_s": min(times), "max_s": max(times)}


def time_calls(fn: Callable[[], Any], *, repeats: int = MIN_REPEATS, warmup: int = 1,
               budget_s: float | None = None) -> dict:
    """Warm up, then time ``repeats`` blocking calls of ``fn``; also peak RSS while timing.

    Args:
      fn: a no-argument callable; its result is passed to :func:`block`.
      repeats: timed runs (at least :data:`MIN_REPEATS`).
      warmup: untimed calls first (the first JAX call after compile still pays for
        allocations).
      budget_s: if the warm-up call alone suggests ``(warmup + repeats) * t`` would exceed
        this, raise :class:`OverBudget` instead of running on.

    Returns:
      :func:`summarize` fields plus ``warmup_s``, ``peak_rss_mb`` and ``peak_rss_delta_mb``.
    """
    repeats = max(repeats, MIN_REPEATS)
    with PeakRSS() as rss:
        warm = []
        for _ in range(max(warmup, 1)):
            start = time.perf_counter()
            block(fn())
            warm.append(time.perf_counter() - start)
            if budget_s is not None and warm[-1] * (repeats + 1) > budget_s:
                raise OverBudget(warm[-1] * (repeats + 1), budget_s)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            block(fn())
            times.append(time.perf_counter() - start)
    out = summarize(times)
    out.update(warmup_s=warm, peak_rss_mb=rss.peak / 2**20,
               peak_rss_delta_mb=(rss.peak - rss.baseline) / 2**20)
    return out


class OverBudget(Exception):
    """A case would take longer than its time budget."""

    def __init__(self, estimate_s: float, budget_s: float):
        super().__init__(f"estimated {estimate_s:.0f} s > budget {budget_s:.0f} s")
        self.estimate_s, self.budget_s = estimate_s, budget_s


def compile_jax(fn: Callable, *args, static_argnames=()) -> tuple[Callable, float, dict]:
    """``jax.jit(fn).lower(*args).compile()``, timed; also XLA's buffer sizes (bytes)."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn, static_argnames=static_argnames).lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = {}
    try:
        analysis = compiled.memory_analysis()
        memory = {"xla_temp_mb": analysis.temp_size_in_bytes / 2**20,
                  "xla_output_mb": analysis.output_size_in_bytes / 2**20,
                  "xla_argument_mb": analysis.argument_size_in_bytes / 2**20}
    except Exception:  # noqa: BLE001 - not every backend implements it
        pass
    return compiled, seconds, memory


# ---- traffic model ------------------------------------------------------------------------
def message_floats(v: int, m: int, s: int, L: int, n_classes: int) -> list[int]:
    """Floats per datum of one message array per level ``l = 0..L``: ``s**l * n_l``."""
    return [s**level * (n_classes if level == 0 else v) for level in range(L + 1)]


def traffic_bytes_per_datum(task: str, v: int, m: int, s: int, L: int, n_classes: int,
                            itemsize: int) -> dict:
    """Memory traffic implied by the messages, per datum (each array read/written once).

    ``message_bytes``: upward reads the leaf log-likelihoods, writes ``u_L``, then per level
    reads ``u_{l+1}`` and writes ``u_l``; marginals add the downward pass (read ``w_l`` and
    ``u_{l+1}``, write ``w_{l+1}``) and the products (read ``u_l, w_l``, write ``μ_l``);
    the sampler adds one read of ``u_{l+1}`` and an int32 write of the latents per level.
    ``gathered_bytes``: size of the ``(s**l, n_l, m)`` rule-slot tensors a direct
    implementation materialises (``s`` per level upward, ``2s`` more downward) — the
    traffic if nothing is fused.
    """
    sizes = message_floats(v, m, s, L, n_classes)
    leaf = s**L * v
    up = 2 * leaf + sum(sizes[level + 1] + sizes[level] for level in range(L))
    slots = [s**level * (n_classes if level == 0 else v) * m for level in range(L)]
    gathered = s * sum(slots)
    if task == "upward":
        floats, ints = up, 0
    elif task == "marginals":
        floats = up + sum(sizes[level] + 2 * sizes[level + 1] for level in range(L)) + 3 * sum(sizes)
        ints = 0
        gathered += 2 * s * sum(slots)
    elif task == "sample":
        floats = up + sum(sizes[1:])
        ints = sum(s**level for level in range(L + 1))
    else:
        raise ValueError(f"task = {task!r} must be upward, marginals or sample")
    return {"message_bytes_per_datum": floats * itemsize + ints * 4,
            "gathered_bytes_per_datum": gathered * itemsize}


def flops_per_datum(task: str, v: int, m: int, s: int, L: int, n_classes: int) -> float:
    """Floating-point operations per datum of exact BP (the work model of the roofline).

    One *rule slot* is a (node, parent symbol ``a``, rule ``psi``) triple; level ``l`` has
    ``s**l * n_l * m`` of them. The upward message of a node needs, per slot, the product
    of its ``s`` child entries and one add into the sum over ``psi``: ``s`` FLOPs, so one
    upward pass costs ``U = s * Σ_l s**l n_l m``. The downward message of child ``k``
    needs, per slot, the parent's entry times the ``s - 1`` other children (``s - 1``
    multiplies) and one add: ``s`` FLOPs per slot and child, ``s * U`` in all. Normalising
    a message costs 2 FLOPs per entry (a sum and a divide); a marginal ``u * w`` then
    normalised, 3. The sampler's top-down pass costs per node ``m (s - 1)`` multiplies for
    the rule weights and ``m`` adds for their CDF. Leaf messages (an ``exp`` per entry)
    are counted as one FLOP per entry. Padding, index arithmetic and the comparisons of
    the CDF inversion are not counted: this is the useful work, a lower bound.
    """
    sizes = message_floats(v, m, s, L, n_classes)
    slots = [s**level * (n_classes if level == 0 else v) * m for level in range(L)]
    upward = s * sum(slots) + 2 * sum(sizes[:-1]) + sizes[-1]
    if task == "upward":
        return float(upward)
    if task == "marginals":
        return float(upward + s * s * sum(slots) + 2 * sum(sizes[1:]) + 3 * sum(sizes))
    if task == "sample":
        return float(upward + sum(s**level * m * s for level in range(L)))
    raise ValueError(f"task = {task!r} must be upward, marginals or sample")


def machine_peaks(repeats: int = MIN_REPEATS, matmul_n: int = 1024,
                  copy_mb_per_device: int = 256) -> dict:
    """This machine's matmul peak (GFLOP/s) and copy bandwidth (GB/s), measured now on
    every local JAX device at once (so a run's rows can be scaled by the peaks of the
    same minutes, and runs of different days compared as fractions).

    Matmul: a float32 ``(n, n) @ (n, n)`` per device (a batch of them sharded one per
    device), ``2 n**3`` FLOPs each. Copy: ``x + 1`` in place (the input buffer donated,
    so no fresh pages are touched) on ``copy_mb_per_device`` MB per device, far beyond
    the caches; bytes = read + write. Medians of ``repeats`` calls after a warm-up.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    split = NamedSharding(mesh, PartitionSpec("d"))

    def median_s(fn, state):
        state = block(fn(state))
        times = []
        for _ in range(max(repeats, MIN_REPEATS)):
            start = time.perf_counter()
            state = block(fn(state))
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    a = jax.device_put(jnp.ones((len(devices), matmul_n, matmul_n), jnp.float32) / matmul_n, split)
    matmul = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    seconds = median_s(matmul, a)
    gflops = 2 * matmul_n**3 * len(devices) / seconds / 1e9
    floats = copy_mb_per_device * 2**20 // 4
    x = jax.device_put(jnp.zeros((len(devices), floats), jnp.float32), split)
    add = jax.jit(lambda y: y + 1, donate_argnums=0)
    seconds = median_s(add, x)
    gbps = 2 * 4 * floats * len(devices) / seconds / 1e9
    return {"matmul_gflops": gflops, "copy_gbps": gbps, "peak_devices": len(devices),
            "matmul_n": matmul_n, "copy_mb_per_device": copy_mb_per_device}


# ---- rows ---------------------------------------------------------------------------------
def base_row(*, task: str, impl: str, config: dict, batch: int, mode: str) -> dict:
    info = device_info()
    return {"time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "run_id": RUN_ID, "task": task, "implementation": impl, "config": config,
            "batch": batch, "mode": mode, "device_kind": info["device_kind"], "device": info,
            "versions": versions()}


def finish_row(row: dict, timing: dict | None, traffic: dict | None,
               flops: float | None = None, peaks: dict | None = None) -> dict:
    """Adds data/s and achieved GB/s (from the median) to a timed row; with ``flops`` per
    datum (:func:`flops_per_datum`) the achieved GFLOP/s, and with the run's
    :func:`machine_peaks` both as fractions of the machine's matmul peak and copy bandwidth."""
    if timing:
        row.update(timing)
        row["data_per_s"] = row["batch"] / timing["median_s"]
        if traffic:
            row.update(traffic)
            row["achieved_gb_per_s"] = traffic["message_bytes_per_datum"] * row["data_per_s"] / 1e9
            row["gathered_gb_per_s"] = traffic["gathered_bytes_per_datum"] * row["data_per_s"] / 1e9
        if flops:
            row["flops_per_datum"] = flops
            row["achieved_gflop_per_s"] = flops * row["data_per_s"] / 1e9
        if peaks:
            row["machine"] = peaks
            if flops:
                row["fraction_of_matmul_peak"] = row["achieved_gflop_per_s"] / peaks["matmul_gflops"]
            if traffic:
                row["fraction_of_copy_bandwidth"] = row["achieved_gb_per_s"] / peaks["copy_gbps"]
    return row


def write_row(path: str | os.PathLike | None, row: dict) -> None:
    """Append one JSON line (and print a one-line summary)."""
    summary = (f"{row['task']:9s} {_impl(row):18s} {_config_str(row['config']):>14s} "
               f"batch {row['batch']:5d}: ")
    if row.get("skipped"):
        summary += f"skipped ({row['skipped']})"
    else:
        summary += (f"{row['data_per_s']:10.1f} data/s  median {row['median_s'] * 1e3:9.2f} ms  "
                    f"compile {row.get('compile_s', 0):6.2f} s  "
                    f"rss {row.get('peak_rss_mb', 0):7.0f} MB")
        if row.get("max_abs_diff") is not None:
            summary += f"  diff {row['max_abs_diff']:.1e}"
        if row.get("fraction_of_matmul_peak") is not None:
            summary += (f"  {100 * row['fraction_of_matmul_peak']:.2f}% matmul peak, "
                        f"{100 * row.get('fraction_of_copy_bandwidth', float('nan')):.1f}% copy bw")
    print(summary, flush=True)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row, default=_jsonable) + "\n")


def _config_str(config) -> str:
    if isinstance(config, dict):
        return "({v},{m},{s},{L})".format(**config)
    return "(" + ",".join(str(x) for x in config) + ")"


def _impl(row: dict) -> str:
    return row.get("implementation") or row["impl"]


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


# ---- reporting ----------------------------------------------------------------------------
def read_rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def markdown_table(rows: list[dict], baselines=("numpy", "pgmax")) -> str:
    """Median data/s per (task, config, batch) and impl (newest row of each), with
    ``jax / baseline`` ratios taken within one run against the baseline's best batch (its
    highest data/s: NumPy is fastest per datum at small batches), shown as ``(@batch)``."""
    latest = {}
    for row in rows:  # file order = time order: later rows win
        latest[(row["task"], _impl(row), _config_str(row["config"]), row["batch"],
                row.get("mode", "?"))] = row
    by_run = {}
    for row in latest.values():
        if not row.get("skipped"):
            key = (row.get("run_id", row.get("mode", "?")), row["task"], _config_str(row["config"]), _impl(row))
            if key not in by_run or row["data_per_s"] > by_run[key]["data_per_s"]:
                by_run[key] = row
    impls = sorted({k[1] for k in latest}, key=lambda x: (x != "jax", x))
    lines = ["| task | config | batch | mode | " + " | ".join(impls) + " | "
             + " | ".join(f"jax/{b}" for b in baselines) + " |",
             "|" + "---|" * (4 + len(impls) + len(baselines))]
    keys = sorted({(k[0], k[2], k[3], k[4]) for k in latest},
                  key=lambda k: (k[3], TASK_ORDER.get(k[0], 9), k[1], k[2]))
    for task, config, batch, mode in keys:
        cells, ratios = [], []
        for impl in impls:
            row = latest.get((task, impl, config, batch, mode))
            cells.append("" if row is None else ("skip" if row.get("skipped")
                                                 else f"{row['data_per_s']:,.0f}"))
        jax_row = latest.get((task, "jax", config, batch, mode))
        for base in baselines:
            ref = by_run.get(((jax_row or {}).get("run_id", mode), task, config, base))
            if jax_row and not jax_row.get("skipped") and ref:
                ratios.append(f"{jax_row['data_per_s'] / ref['data_per_s']:,.0f}x (@{ref['batch']})")
            else:
                ratios.append("")
        lines.append(f"| {task} | {config} | {batch} | {mode} | " + " | ".join(cells) + " | "
                     + " | ".join(ratios) + " |")
    return "\n".join(lines)


TASK_ORDER = {"marginals": 0, "upward": 1, "sample": 2}
