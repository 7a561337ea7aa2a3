"""Bounded memory of large experiments: ``forward_backward`` at growing ``n_data``.

Runs :func:`rhm_jax.experiments.forward_backward` (exact BP marginals and one posterior
draw per datum, every noise level) for increasing ``n_data`` in one process and records,
after each, the wall time, the process's peak RSS so far (``ru_maxrss``) and, on an
accelerator, the device's peak bytes in use. Peaks only grow, so a peak that stays flat
while ``n_data`` grows 10x shows that memory is set by the chunk, not by ``n_data``.

Usage::

    python benchmarks/bench_memory.py --quick        # CPU: (32,8,2,9), n_data 256 and 2560
    python benchmarks/bench_memory.py                # (32,8,2,12), n_data 1e5 and 1e6 (GPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import jax

from common import base_row, write_row
from rhm_jax import EpsilonProcess, RHMConfig, sample_grammar
from rhm_jax.experiments import forward_backward
from rhm_jax.grammar import with_inverse_tables

HERE = Path(__file__).resolve().parent


def peak_rss_mb() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", default=None, help="v,m,s,L")
    parser.add_argument("--n-data", type=int, nargs="+", default=None)
    parser.add_argument("--times", type=float, nargs="+", default=[0.6, 0.73, 0.85])
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="data per compiled call (the same for every n_data, so one compile)")
    parser.add_argument("--out", default=str(HERE / "results" / "bench" / "memory.jsonl"))
    args = parser.parse_args(argv)
    shape = tuple(int(x) for x in (args.config or ("32,8,2,9" if args.quick else "32,8,2,12")).split(","))
    n_values = args.n_data or ([256, 2560] if args.quick else [100_000, 1_000_000])
    on_cpu = jax.default_backend() == "cpu"
    chunk_size = args.chunk_size or (128 if on_cpu else 8192)
    cfg = RHMConfig(*shape)
    grammar = with_inverse_tables(sample_grammar(jax.random.key(0), cfg))
    process = EpsilonProcess(cfg)
    config = dict(v=cfg.v, m=cfg.m, s=cfg.s, L=cfg.L, n_classes=cfg.n_classes)
    for n_data in n_values:
        start = time.perf_counter()
        result = forward_backward(jax.random.key(1), grammar, process, args.times, n_data,
                                  chunk_size=chunk_size, progress=True)
        wall = time.perf_counter() - start
        row = base_row(task="forward_backward", impl="jax", config=config, batch=n_data,
                       mode="quick" if args.quick else "full")
        row.update(n_data=n_data, times=list(args.times), chunk_size=chunk_size, wall_s=wall,
                   data_per_s=n_data * len(args.times) / wall, median_s=wall,
                   peak_rss_mb=peak_rss_mb(), device_peak_mb=device_peak_mb(),
                   class_P_marginal=[float(x) for x in result.marginal[0, :, 0]])
        write_row(args.out, row)
        print(json.dumps({k: row[k] for k in ("n_data", "wall_s", "data_per_s", "peak_rss_mb",
                                               "device_peak_mb")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
