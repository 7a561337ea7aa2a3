"""PGMax baseline for ``bench_bp.py``: sum-product BP on the RHM factor graph.

Run by ``bench_bp.py`` with the interpreter of a venv that has pgmax (``--pgmax-python``),
because pgmax 0.6.1 pulls in tensorflow, jupyter, sphinx … as hard requirements; its code
only needs jax, numpy, numba and scipy (see ``benchmarks/README.md`` for the venv recipe).

Usage: ``python pgmax_bp.py CASE.npz META_JSON`` where CASE.npz holds ``rules{l}``,
``loglik`` (n, d, v) and ``reference{l}`` (float64 marginals of the first data, from
:mod:`rhm_jax.reference`), and META_JSON has ``config``, ``batches``, ``repeats``, ``mode``,
``out`` (JSONL path or null) and ``budget_s``.

Graph: one variable group per level (``n_0 = n_classes`` states at the root, ``v`` below);
one enumeration factor per internal node over (parent, children) whose valid configurations
are the ``n_l * m`` rows ``(a, R[a, psi, 0..s-1])`` with log-potential 0 (the uniform rule
prior only shifts the log-evidence); leaf evidence = the leaf log-likelihoods. A flooding
schedule on a tree converges after ``diameter = 2L`` iterations; we run ``2L + 1`` with no
damping at temperature 1 (sum-product), batched with ``jax.vmap`` over the evidence.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from pathlib import Path

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
if len(sys.argv) > 2 and json.loads(sys.argv[2]).get("run_id"):  # share the parent's run id
    os.environ["RHM_BENCH_RUN_ID"] = json.loads(sys.argv[2])["run_id"]
from common import (OverBudget, base_row, compile_jax, finish_row, time_calls,  # noqa: E402
                    traffic_bytes_per_datum, write_row)

# pgmax 0.6.1 calls jax.lib.xla_bridge.get_backend(), removed in recent JAX.
if not hasattr(jax.lib, "xla_bridge"):
    jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)

from pgmax import fgraph, fgroup, infer, vgroup  # noqa: E402


def build(rules_list, n_classes, v):
    """Factor graph, its BP functions and the variable groups per level."""
    s = rules_list[0].shape[-1]
    L = len(rules_list)
    levels = [vgroup.NDVarArray(num_states=n_classes if level == 0 else v, shape=(s**level,))
              for level in range(L + 1)]
    graph = fgraph.FactorGraph(variable_groups=levels)
    for level, rules in enumerate(rules_list):
        n_l, m, _ = rules.shape
        configs = np.concatenate([np.repeat(np.arange(n_l), m)[:, None], rules.reshape(-1, s)], 1)
        variables = [[levels[level][j]] + [levels[level + 1][j * s + k] for k in range(s)]
                     for j in range(s**level)]
        graph.add_factors(fgroup.EnumFactorGroup(variables_for_factors=variables,
                                                 factor_configs=configs))
    return graph, levels


def main():
    case = np.load(sys.argv[1])
    meta = json.loads(sys.argv[2])
    config = meta["config"]
    v, L, n_classes = config["v"], config["L"], config["n_classes"]
    rules_list = [case[f"rules{level}"] for level in range(L)]
    reference = [case[f"reference{level}"] for level in range(L + 1)]
    start = time.perf_counter()
    graph, levels = build(rules_list, n_classes, v)
    bp = infer.BP(graph.bp_state, temperature=1.0)
    build_s = time.perf_counter() - start
    num_iters = 2 * L + 1

    def marginals_one(loglik):
        arrays = bp.init(evidence_updates={levels[-1]: loglik})
        arrays = bp.run(arrays, num_iters=num_iters, damping=0.0)
        beliefs = infer.get_marginals(bp.get_beliefs(arrays))
        return tuple(beliefs[group] for group in levels)

    batched = jax.vmap(marginals_one)
    for batch in meta["batches"]:
        loglik = jnp.asarray(case["loglik"][:batch], jnp.float32)
        row = base_row(task="marginals", impl="pgmax", config=config, batch=batch,
                       mode=meta["mode"])
        row.update(graph_build_s=build_s, num_iters=num_iters)
        compiled, compile_s, memory = compile_jax(batched, loglik)
        row.update(compile_s=compile_s, **memory)
        try:
            timing = time_calls(lambda: compiled(loglik), repeats=meta["repeats"],
                                budget_s=meta["budget_s"])
        except OverBudget as err:
            row["skipped"] = str(err)
            write_row(meta["out"], row)
            continue
        out = compiled(loglik)
        count = min(batch, len(reference[0]))
        row["max_abs_diff"] = float(max(
            np.max(np.abs(np.asarray(x[:count], np.float64) - r[:count]))
            for x, r in zip(out, reference)))
        traffic = traffic_bytes_per_datum("marginals", v, config["m"], config["s"], L,
                                          n_classes, 4)
        write_row(meta["out"], finish_row(row, timing, traffic))


if __name__ == "__main__":
    main()
