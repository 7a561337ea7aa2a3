"""Benchmark data sampling and noising throughput (tokens/s) of rhm_jax.

Usage::

    python benchmarks/bench_data.py --quick                # < 60 s on a 2-core CPU
    python benchmarks/bench_data.py                        # full mode (a few minutes)
    python benchmarks/bench_data.py --table                # markdown table of the latest rows
    python benchmarks/bench_data.py --quick --out /tmp/x.jsonl

Tasks (each one jitted function of the batch, timed with ``block_until_ready``):

* ``sample``: :func:`rhm_jax.sample_data` (uniform class, uniform rule at every node).
* ``corrupt:<process>``: ``process.corrupt(key, tokens, t)`` on a sampled batch, at the mid
  noise level ``t = 0.5``, for the four processes (``epsilon``: :class:`EpsilonProcess`,
  whose observation is the clean sequence, so this is only the call overhead;
  ``masking``, ``uniform``: :class:`UniformSubstitution`; ``gaussian``: float ``(n, d, v)``).
* ``loglik:<process>``: ``process.leaf_log_likelihood(observation, t)`` of a corrupted batch
  (float ``(n, d, v)``, what BP consumes).
* ``sample+corrupt+loglik:<process>``: the input pipeline of an experiment, fused in one
  jitted function (``--quick``: masking and Gaussian only, to stay under a minute).

Implementations: ``jax`` (the library) and, for ``sample`` only, ``numpy``: the same
generative process written in plain NumPy (ancestral sampling level by level with a
``numpy.random.Generator``, vectorised over the batch), one baseline row per config at batch
``--numpy-batch`` (checked against :func:`rhm_jax.data_from_digits` on the same rule choices).

Each row (appended to ``--out``, default ``benchmarks/results/bench/data.jsonl``) carries the
median, IQR, min and max of at least 5 timed runs after warm-up, compile time separately,
``tokens_per_s = batch * d / median_s`` and ``data_per_s``, device kind and versions. Cases
whose arrays would exceed ``--max-gb`` (default 4 GB) are recorded as skipped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import (RUN_ID, OverBudget, _config_str, base_row, compile_jax, finish_row,
                    read_rows, time_calls, write_row)
from rhm_jax import (EpsilonProcess, Gaussian, Masking, RHMConfig, UniformSubstitution,
                     data_from_digits, sample_data, sample_grammar)

HERE = Path(__file__).resolve().parent

QUICK_CONFIGS = [(32, 8, 2, 9), (8, 4, 3, 5)]
FULL_CONFIGS = [(32, 8, 2, 9), (32, 8, 2, 12), (8, 4, 3, 5), (64, 16, 2, 8)]
PROCESSES = {"epsilon": EpsilonProcess, "masking": Masking, "uniform": UniformSubstitution,
             "gaussian": Gaussian}
T_MID = 0.5  # mid noise level (ε = 0.5 for the ε-process)
TASK_KINDS = ("sample", "corrupt", "loglik", "sample+corrupt+loglik")


# ---- NumPy baseline -----------------------------------------------------------------------
def numpy_sample_tokens(rng: np.random.Generator, flat_rules: list, cfg: RHMConfig, n: int):
    """Ancestral sampling level by level, vectorised over the batch: ``(n, d)`` int32.

    ``flat_rules[l]`` is ``rules[l].reshape(n_l * m, s)``; a node with symbol ``a`` and rule
    choice ``psi`` expands into ``flat_rules[l][a * m + psi]``.
    """
    symbols = rng.integers(0, cfg.n_classes, size=(n, 1), dtype=np.int32)
    for level in range(cfg.L):
        psi = rng.integers(0, cfg.m, size=symbols.shape, dtype=np.int32)
        symbols = flat_rules[level][symbols * cfg.m + psi].reshape(n, -1)
    return symbols


def numpy_tokens_from_digits(flat_rules: list, cfg: RHMConfig, digits: np.ndarray):
    """The same expansion driven by given digits ``(class, psi_0, psi_1, ...)`` (for checking)."""
    symbols, offset = digits[:, :1], 1
    for level in range(cfg.L):
        width = cfg.s**level
        psi = digits[:, offset:offset + width]
        offset += width
        symbols = flat_rules[level][symbols * cfg.m + psi].reshape(len(digits), -1)
    return symbols


def numpy_matches_jax(grammar, flat_rules) -> bool:
    """The NumPy expansion and :func:`data_from_digits` agree on 64 random digit rows."""
    cfg = grammar.config
    rng = np.random.default_rng(1)
    digits = np.concatenate([rng.integers(0, cfg.n_classes, (64, 1)),
                             rng.integers(0, cfg.m, (64, cfg.num_internal_nodes))], 1).astype(np.int32)
    expected = np.asarray(data_from_digits(grammar, jnp.asarray(digits)).tokens)
    return bool(np.array_equal(numpy_tokens_from_digits(flat_rules, cfg, digits), expected))


# ---- JAX cases ----------------------------------------------------------------------------
def estimate_bytes(task: str, process: str | None, cfg: RHMConfig, batch: int) -> int:
    """Bytes of the arrays a case materialises (inputs, outputs, main temporaries)."""
    ints = batch * cfg.d * 4  # int32 tokens
    floats = batch * cfg.d * cfg.v * 4  # float32 (n, d, v)
    if task == "sample":
        return 3 * ints  # tokens, the level above, the rule choices
    if task == "corrupt":
        return ints + (2 * floats if process == "gaussian" else 3 * ints)
    if task == "loglik":
        return floats + (floats if process == "gaussian" else ints)
    return 3 * ints + (2 * floats if process == "gaussian" else floats)


def make_case(task: str, process, grammar, batch: int, tokens, observation):
    """(function, its arguments) for one task; ``t`` is an argument (traced), as in a sweep."""
    t = jnp.asarray(T_MID, jnp.float32)
    key = jax.random.key(3)
    if task == "sample":
        return (lambda key, grammar: sample_data(key, grammar, batch).tokens), (key, grammar)
    if task == "corrupt":
        return process.corrupt, (key, tokens, t)
    if task == "loglik":
        return process.leaf_log_likelihood, (observation, t)

    def pipeline(key, grammar, t):
        data_key, noise_key = jax.random.split(key)
        clean = sample_data(data_key, grammar, batch).tokens
        return process.leaf_log_likelihood(process.corrupt(noise_key, clean, t), t)

    return pipeline, (key, grammar, t)


def run_jax_case(fn, call_args, args, row, keep_output=False):
    """Compile, time; returns the row and (if ``keep_output``) one output of the call, which
    later tasks take as input (no second compile of the same function outside the timing)."""
    compiled, compile_s, memory = compile_jax(fn, *call_args)
    row.update(compile_s=compile_s, **memory)
    try:
        timing = time_calls(lambda: compiled(*call_args), repeats=args.repeats,
                            budget_s=args.case_budget_s)
    except OverBudget as err:
        row["skipped"] = str(err)
        return row, None
    return finish_row(row, timing, None), (compiled(*call_args) if keep_output else None)


def run_numpy_sample(grammar, batch, args, row):
    cfg = grammar.config
    flat_rules = [np.asarray(r).reshape(-1, cfg.s) for r in grammar.rules]
    rng = np.random.default_rng(0)
    row.update(compile_s=0.0, matches_jax=numpy_matches_jax(grammar, flat_rules))
    try:
        timing = time_calls(lambda: numpy_sample_tokens(rng, flat_rules, cfg, batch),
                            repeats=args.repeats, budget_s=args.case_budget_s)
    except OverBudget as err:
        row["skipped"] = str(err)
        return row
    return finish_row(row, timing, None)


def record(args, row, cfg):
    row["d"] = cfg.d
    if "median_s" in row:
        row["tokens_per_s"] = row["batch"] * cfg.d / row["median_s"]
    write_row(args.out, row)
    if "tokens_per_s" in row:
        print(f"{'':12s}-> {row['tokens_per_s'] / 1e6:10.2f} M tokens/s", flush=True)
    return row


# ---- reporting ----------------------------------------------------------------------------
def _task_key(task: str):
    kind, _, process = task.partition(":")
    order = TASK_KINDS.index(kind) if kind in TASK_KINDS else 9
    procs = list(PROCESSES)
    return order, procs.index(process) if process in procs else -1


def markdown_table(rows: list[dict]) -> str:
    """tokens/s per (task, config, batch, mode) for jax and numpy (newest row of each), and
    ``jax / numpy`` for ``sample`` within one run (NumPy at the same batch, else its batch
    shown as ``(@batch)``)."""
    latest = {}
    for row in rows:  # file order = time order: later rows win
        key = (row["task"], row["implementation"], _config_str(row["config"]), row["batch"],
               row.get("mode", "?"))
        latest[key] = row
    numpy_rows = {}
    for (task, impl, config, batch, mode), row in latest.items():
        if impl == "numpy" and not row.get("skipped"):
            numpy_rows.setdefault((row["run_id"], task, config), {})[batch] = row
    lines = ["| task | config (v,m,s,L) | d | batch | mode | jax tokens/s | jax median ms "
             "| compile s | numpy tokens/s | jax/numpy |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first_seen = {}  # configs in the order they were run
    for k in latest:
        first_seen.setdefault(k[2], len(first_seen))
    keys = sorted({(k[0], k[2], k[3], k[4]) for k in latest},
                  key=lambda k: (k[3], first_seen[k[1]], k[2], _task_key(k[0])))
    for task, config, batch, mode in keys:
        jax_row = latest.get((task, "jax", config, batch, mode))
        np_row = latest.get((task, "numpy", config, batch, mode))
        d = (jax_row or np_row)["d"]
        cells = []
        if jax_row is None:
            cells += ["", "", ""]
        elif jax_row.get("skipped"):
            cells += ["skip", "", f"{jax_row.get('compile_s', 0):.2f}" if "compile_s" in jax_row else ""]
        else:
            cells += [f"{jax_row['tokens_per_s']:,.0f}", f"{jax_row['median_s'] * 1e3:,.2f}",
                      f"{jax_row['compile_s']:.2f}"]
        cells.append("" if np_row is None else
                     ("skip" if np_row.get("skipped") else f"{np_row['tokens_per_s']:,.0f}"))
        ratio = ""
        if jax_row and not jax_row.get("skipped"):
            refs = numpy_rows.get((jax_row["run_id"], task, config), {})
            ref = refs.get(batch) or (refs[max(refs)] if refs else None)
            if ref:
                ratio = f"{jax_row['tokens_per_s'] / ref['tokens_per_s']:,.1f}x"
                if ref["batch"] != batch:
                    ratio += f" (@{ref['batch']})"
        cells.append(ratio)
        lines.append(f"| {task} | {config} | {d} | {batch} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 configs, batch 1024, < 60 s")
    p.add_argument("--out", default=str(HERE / "results" / "bench" / "data.jsonl"), help="JSONL file to append to")
    p.add_argument("--table", action="store_true",
                   help="only print a markdown table of the latest rows of --out")
    p.add_argument("--config", nargs="+", help="configs as v,m,s,L (default: by mode)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: by mode)")
    p.add_argument("--numpy-batch", type=int, default=1024, help="batch of the NumPy baseline")
    p.add_argument("--process", nargs="+", choices=list(PROCESSES), default=list(PROCESSES))
    p.add_argument("--pipeline-process", nargs="+", choices=list(PROCESSES),
                   help="processes of the fused pipeline task (default: all; --quick: "
                        "masking and gaussian, the int and the float observation)")
    p.add_argument("--task", nargs="+", choices=TASK_KINDS, default=list(TASK_KINDS))
    p.add_argument("--repeats", type=int, default=5, help="timed runs (at least 5)")
    p.add_argument("--max-gb", type=float, default=4.0, help="skip cases with larger arrays")
    p.add_argument("--case-budget-s", type=float, default=None,
                   help="skip cases whose warm-up + repeats would take longer (default by mode)")
    args = p.parse_args(argv)
    args.repeats = max(args.repeats, 5)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else None
    args.configs = configs or (QUICK_CONFIGS if args.quick else FULL_CONFIGS)
    args.batches = args.batch or ([1024] if args.quick else [1024, 8192])
    args.pipeline_process = args.pipeline_process or (
        ["masking", "gaussian"] if args.quick else list(PROCESSES))
    args.case_budget_s = args.case_budget_s or (10.0 if args.quick else 60.0)
    return args


def tasks_for(args) -> list[tuple[str, str | None]]:
    out = []
    for kind in args.task:
        if kind == "sample":
            out.append(("sample", None))
        else:
            names = args.pipeline_process if kind == "sample+corrupt+loglik" else args.process
            out += [(kind, name) for name in names if name in args.process]
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        print(markdown_table(read_rows(args.out)))
        return
    mode = "quick" if args.quick else "full"
    start = time.perf_counter()
    rows = []
    for v, m, s, L in args.configs:
        cfg = RHMConfig(v=v, m=m, s=s, L=L)
        config = dict(v=v, m=m, s=s, L=L, n_classes=cfg.n_classes)
        grammar = sample_grammar(jax.random.key(0), cfg)
        processes = {name: PROCESSES[name](cfg) for name in args.process}
        if "sample" in args.task:  # the same-run baseline
            row = base_row(task="sample", impl="numpy", config=config, batch=args.numpy_batch,
                           mode=mode)
            rows.append(record(args, run_numpy_sample(grammar, args.numpy_batch, args, row), cfg))
        for batch in args.batches:
            outputs = {}  # "sample" -> clean tokens, "corrupt:<process>" -> observation
            for kind, name in tasks_for(args):
                task = kind if name is None else f"{kind}:{name}"
                process = processes.get(name)
                row = base_row(task=task, impl="jax", config=config, batch=batch, mode=mode)
                row.update(process=name, t=None if name is None else T_MID)
                estimate = estimate_bytes(kind, name, cfg, batch)
                if estimate > args.max_gb * 1e9:
                    row["skipped"] = f"arrays ~{estimate / 1e9:.1f} GB > {args.max_gb} GB"
                    rows.append(record(args, row, cfg))
                    continue
                if kind in ("corrupt", "loglik") and "sample" not in outputs:
                    outputs["sample"] = sample_data(jax.random.key(1), grammar, batch).tokens
                if kind == "loglik" and f"corrupt:{name}" not in outputs:
                    outputs[f"corrupt:{name}"] = process.corrupt(jax.random.key(2), outputs["sample"], T_MID)
                fn, call_args = make_case(kind, process, grammar, batch, outputs.get("sample"),
                                          outputs.get(f"corrupt:{name}"))
                keep = kind in ("sample", "corrupt")
                row, output = run_jax_case(fn, call_args, args, row, keep_output=keep)
                if output is not None:
                    outputs[task] = output
                if kind == "loglik":  # the observation is not needed any more
                    outputs.pop(f"corrupt:{name}", None)
                del call_args, output
                rows.append(record(args, row, cfg))
            del outputs
        jax.clear_caches()
    print(f"total {time.perf_counter() - start:.0f} s (run {RUN_ID})\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
