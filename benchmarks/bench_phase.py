"""Wall time of the main job, ``rhm-jax phase`` (default or ``--quick``), recorded as JSONL.

Runs the command in a subprocess (a fresh JAX, so compile time is included as a user
sees it) and appends one row: mode, wall seconds, per-task seconds from its meta.json,
the machine's load average at start, device kind and versions.

The job runs with its persistent compilation cache off (``RHM_JAX_COMPILE_CACHE=0``), so
every row is a cold start; ``--compile-cache`` instead runs it twice on one fresh, empty
cache folder and records both wall times, their ratio and whether the two
``results.jsonl`` are byte-identical (the CLI keeps the cache on by default).

Usage: ``python benchmarks/bench_phase.py [--quick] [--devices N] [--compile-cache]
[--out benchmarks/results/bench/phase.jsonl]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _run_job(args, folder: str, cache: str):
    """``(wall seconds, meta.json, results.jsonl bytes)`` of one ``rhm-jax phase`` run."""
    command = [sys.executable, "-m", "rhm_jax", "phase", "--no-progress", "--out", folder]
    if args.quick:
        command.append("--quick")
    if args.devices:
        command += ["--devices", str(args.devices)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "RHM_JAX_COMPILE_CACHE": cache})
    wall = time.perf_counter() - start
    with open(os.path.join(folder, "meta.json")) as handle:
        meta = json.load(handle)
    with open(os.path.join(folder, "results.jsonl"), "rb") as handle:
        return wall, meta, handle.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time `rhm-jax phase --quick`")
    parser.add_argument("--devices", type=int, default=None,
                        help="pass --devices N to the job (N emulated CPU devices)")
    parser.add_argument("--out", default="benchmarks/results/bench/phase.jsonl")
    parser.add_argument("--compile-cache", action="store_true",
                        help="run twice on one fresh compilation cache; record both times")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        cache = os.path.join(scratch, "cache") if args.compile_cache else "0"
        runs = [_run_job(args, os.path.join(scratch, f"run{i}"), cache)
                for i in range(2 if args.compile_cache else 1)]
    wall, meta, results = runs[0]
    row = {"benchmark": "phase", "mode": "quick" if args.quick else "default",
           "devices": args.devices or 1,
           "wall_s": round(wall, 2), "inner_wall_s": meta["wall_seconds"],
           "task_seconds": meta["task_seconds"], "load_avg_1min_at_start": load,
           "cpu_count": os.cpu_count(), "device_kind": meta["environment"]["device_kind"],
           "versions": meta["environment"]["versions"], "utc": meta["environment"]["utc"]}
    if args.compile_cache:
        second_wall, second_meta, second_results = runs[1]
        row.update(compile_cache=True, second_wall_s=round(second_wall, 2),
                   second_inner_wall_s=second_meta["wall_seconds"],
                   cold_over_warm=round(wall / second_wall, 2),
                   identical_results=results == second_results)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
