"""Wall time of the main job, ``rhm-jax phase`` (default or ``--quick``), recorded as JSONL.

Runs the command in a subprocess (a fresh JAX, so compile time is included as a user
sees it) and appends one row: mode, wall seconds, per-task seconds from its meta.json,
the machine's load average at start, device kind and versions.

Usage: ``python benchmarks/bench_phase.py [--quick] [--devices N] [--out benchmarks/results/phase.jsonl]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time `rhm-jax phase --quick`")
    parser.add_argument("--devices", type=int, default=None,
                        help="pass --devices N to the job (N emulated CPU devices)")
    parser.add_argument("--out", default="benchmarks/results/phase.jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "rhm_jax", "phase", "--no-progress", "--out", folder]
        if args.quick:
            command.append("--quick")
        if args.devices:
            command += ["--devices", str(args.devices)]
        load = os.getloadavg()[0]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        meta = json.load(open(os.path.join(folder, "meta.json")))
    row = {"benchmark": "phase", "mode": "quick" if args.quick else "default",
           "devices": args.devices or 1,
           "wall_s": round(wall, 2), "inner_wall_s": meta["wall_seconds"],
           "task_seconds": meta["task_seconds"], "load_avg_1min_at_start": load,
           "cpu_count": os.cpu_count(), "device_kind": meta["environment"]["device_kind"],
           "versions": meta["environment"]["versions"], "utc": meta["environment"]["utc"]}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
