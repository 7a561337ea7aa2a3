"""Benchmark the correlated-changes experiment, :func:`rhm_jax.correlations.change_correlations`.

Usage::

    python benchmarks/bench_chi.py --quick        # L = 5, 16 starts x 16 trajectories (< 1 min)
    python benchmarks/bench_chi.py                # the reference row: L = 9, 64 x 64, 15 levels
    python benchmarks/bench_chi.py --process masking --L 7 --starts 32 --trajectories 32

One row per (process, config), appended to ``--out`` (default
``benchmarks/results/bench/chi.jsonl``), exact BP on ``(32, 8, 2, L)``, 15 noise levels evenly in
``[0.05, 0.95]`` (``--levels``).

Compile time is measured separately (STYLE.md): ``change_correlations`` compiles one
program per chunk of starts (``chunk_size`` starts; the shapes do not depend on
``n_starts``), so a first call on one chunk of starts pays the compile; ``compile_s`` is that
call's time minus one chunk's share of the steady-state median (``median_s / n_chunks``).
The timed runs then run the whole experiment (``--repeats``, default 1 in full mode: one
call takes minutes on a 2-core CPU; the row says how many were timed). Numbers are recorded,
never asserted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from common import PeakRSS, base_row, summarize, write_row
from rhm_jax import EpsilonProcess, Masking, RHMConfig, sample_grammar
from rhm_jax.correlations import change_correlations
from rhm_jax.sharding import data_mesh

HERE = Path(__file__).resolve().parent
PROCESSES = {"epsilon": EpsilonProcess, "masking": Masking}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="L = 5, 16 starts x 16 trajectories")
    p.add_argument("--L", type=int, default=None, help="depth (default 9; quick 5)")
    p.add_argument("--starts", type=int, default=None, help="starts (default 64; quick 16)")
    p.add_argument("--trajectories", type=int, default=None,
                   help="trajectories per start (default 64; quick 16)")
    p.add_argument("--levels", type=int, default=15, help="noise levels (default 15)")
    p.add_argument("--process", nargs="+", choices=list(PROCESSES), default=["epsilon"])
    p.add_argument("--repeats", type=int, default=None,
                   help="timed full runs (default 1; quick 3)")
    p.add_argument("--out", default=str(HERE / "results" / "bench" / "chi.jsonl"),
                   help="JSONL file to append to")
    args = p.parse_args(argv)
    args.L = args.L or (5 if args.quick else 9)
    args.starts = args.starts or (16 if args.quick else 64)
    args.trajectories = args.trajectories or (16 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 1)
    for name in ("L", "starts", "trajectories", "levels", "repeats"):
        if getattr(args, name) < (2 if name in ("starts", "trajectories") else 1):
            p.error(f"--{name} = {getattr(args, name)} is too small")
    return args


def main(argv=None):
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    cfg = RHMConfig(v=32, m=8, s=2, L=args.L)
    config = dict(v=cfg.v, m=cfg.m, s=cfg.s, L=cfg.L, n_classes=cfg.n_classes)
    grammar = sample_grammar(jax.random.key(0), cfg)
    times = np.linspace(0.05, 0.95, args.levels)
    mesh = data_mesh()
    chunk = max(8, mesh.devices.size)  # change_correlations' default chunk of starts
    n_chunks = math.ceil(args.starts / chunk)
    for name in args.process:
        process = PROCESSES[name](cfg)
        run = lambda n: change_correlations(jax.random.key(1), grammar, process, times, n,
                                            args.trajectories, mesh=mesh)
        row = base_row(task=f"chi:{name}", impl="jax", config=config,
                       batch=args.starts * args.trajectories * args.levels, mode=mode)
        row.update(process=name, n_starts=args.starts, n_trajectories=args.trajectories,
                   n_levels=args.levels, chunk_size=chunk, n_chunks=n_chunks)
        start = time.perf_counter()
        run(min(chunk, args.starts))  # compiles; results come back as NumPy (blocking)
        first_s = time.perf_counter() - start
        timed = []
        with PeakRSS() as rss:
            for _ in range(args.repeats):
                start = time.perf_counter()
                res = run(args.starts)
                timed.append(time.perf_counter() - start)
        row.update(summarize(timed))
        row["repeats"] = len(timed)
        row["first_call_s"] = first_s
        row["compile_s"] = max(first_s - statistics.median(timed) / n_chunks, 0.0)
        row["peak_rss_mb"] = rss.peak / 2**20
        row["data_per_s"] = row["batch"] / row["median_s"]  # trajectories x levels per s
        row["chi_max"] = float(np.nanmax(res.chi))
        row["chi_argmax_t"] = float(times[np.nanargmax(res.chi)])
        write_row(args.out, row)


if __name__ == "__main__":
    main()
