"""Accelerator check: BP throughput at large batch, with a traffic-based roofline estimate.

Run on a GPU machine: ``python benchmarks/gpu_check.py --out results.jsonl``. Prints and
records, for each config and batch: compile time, median of 5 timed runs, data/s, and the
achieved bandwidth implied by the minimal message traffic (every level's messages read
and written once per pass), next to the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from rhm_jax import RHMConfig, bp, sample_data, sample_grammar
from rhm_jax.io import environment


def message_bytes(cfg: RHMConfig, itemsize: int = 4) -> int:
    """Bytes of one datum's messages over all levels (one message per node)."""
    return itemsize * sum(cfg.num_symbols(l) * cfg.s**l for l in range(cfg.L + 1))


def gather_flops(cfg: RHMConfig) -> int:
    """Multiply-adds of one upward pass per datum: every (node, symbol, rule, child)."""
    return 2 * sum(cfg.num_symbols(l) * cfg.m * cfg.s * cfg.s**l for l in range(cfg.L))


def copy_bandwidth(gigabytes: float = 4.0) -> float:
    """Achievable device bandwidth (GB/s, bytes read + written) of ``x + 1`` on a big array."""
    x = jnp.ones(int(gigabytes * 2**30 / 4 / 2), jnp.float32)
    add = jax.jit(lambda y: y + 1)
    _, median, _, _ = timed(lambda: add(x))
    return 2 * x.nbytes / median / 1e9


def timed(fn, repeats=5):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), min(runs), max(runs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_check.jsonl")
    parser.add_argument("--batches", default="1024,8192,65536")
    args = parser.parse_args()
    env = environment()
    print(env["device_kind"], env["versions"])
    peak_gbps = copy_bandwidth()
    print(f"measured copy bandwidth (x + 1): {peak_gbps:.0f} GB/s", flush=True)
    rows = []
    # passes of message traffic (read + write) per task, a lower bound on bytes moved
    passes = {"upward": 2, "marginals": 6, "posterior_sample": 3}
    flop_passes = {"upward": 1, "marginals": 3, "posterior_sample": 1}  # downward ~ 2 upwards
    for shape in [(32, 8, 2, 9), (32, 8, 2, 12), (8, 4, 3, 5), (64, 16, 2, 8)]:
        cfg = RHMConfig(*shape)
        grammar = sample_grammar(jax.random.key(0), cfg)
        for batch in [int(b) for b in args.batches.split(",")]:
            if batch * message_bytes(cfg) * 12 > 60e9:
                continue
            data = sample_data(jax.random.key(1), grammar, batch)
            loglik = jnp.log(0.7 * jax.nn.one_hot(data.tokens, cfg.v) + 0.3 / cfg.v)
            tasks = {"upward": lambda: bp.upward(grammar, loglik).log_evidence,
                     "marginals": lambda: bp.marginals(grammar, loglik).marginals,
                     "posterior_sample": lambda: bp.sample_posterior(
                         jax.random.key(2), grammar, loglik).tokens}
            for task, fn in tasks.items():
                compile_s, median, lo, hi = timed(fn)
                traffic = passes[task] * message_bytes(cfg) * batch
                row = {"config": shape, "batch": batch, "task": task, "implementation": "jax",
                       "compile_s": round(compile_s, 3), "median_s": median, "min_s": lo,
                       "max_s": hi, "data_per_s": batch / median,
                       "achieved_GBps_lower_bound": traffic / median / 1e9,
                       "copy_GBps": peak_gbps,
                       "fraction_of_copy_bandwidth": traffic / median / 1e9 / peak_gbps,
                       "achieved_GFLOPps": flop_passes[task] * gather_flops(cfg) * batch / median / 1e9,
                       "device_kind": env["device_kind"], "versions": env["versions"]}
                rows.append(row)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                  for k, v in row.items() if k != "versions"}), flush=True)
    with open(args.out, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
