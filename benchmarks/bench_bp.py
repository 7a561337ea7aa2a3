"""Benchmark exact BP on the RHM: rhm_jax.bp against NumPy, PGMax and alternative JAX forms.

Usage::

    python benchmarks/bench_bp.py --quick                  # < 2 min on a 2-core CPU
    python benchmarks/bench_bp.py                          # full CPU mode
    python benchmarks/bench_bp.py --impl jax numpy --out benchmarks/results/bench/bp.jsonl

Tasks: ``marginals`` (all levels, :func:`rhm_jax.bp.marginals`), ``upward`` (class posterior
and log-evidence, :func:`rhm_jax.bp.upward`), ``sample`` (one exact posterior tree per
datum, :func:`rhm_jax.bp.sample_posterior`). Leaf likelihoods: ε-process (ε = 0.3) on data
sampled from the grammar. One JSON row per (task, impl, config, batch) is appended to
``--out``; see ``benchmarks/README.md`` for the fields and the latest numbers.

Implementations (``--impl``):

* ``jax``: the library (:mod:`rhm_jax.bp`), whatever its current formulation.
* ``reference``: the reference JAX formulation of ``reference_bp.py`` in ``--reference-dir`` (an outside formulation, opt-in)
  (a comparator kept outside the project and imported from there through ``sys.path``,
  ``--reference-dir``): symbol-major, batch-last messages, ``lax.map`` over chunks of 8
  data on one device, and with several devices ``shard_map`` over all of them with chunks
  of 4 per device (its own defaults). Its evidence is built from the tokens inside, the same
  ε-process likelihoods as the other rows. Tasks ``marginals`` and ``sample``.
* ``numpy``: :mod:`rhm_jax.reference` (float64, loops over levels): the hand-written baseline.
* ``pgmax``: PGMax sum-product BP on the same factor graph, in its own venv
  (``benchmarks/pgmax_bp.py`` through ``--pgmax-python``).
* ``jax-grad-leaf``: leaf marginals only, as ``jax.grad`` of the library's
  ``upward(...).log_evidence`` w.r.t. the leaf log-likelihoods (no downward pass written).
* ``jax-bf-*``: self-contained copies of the original formulation, layout ``(n, nodes, n_l)``
  (batch first, symbols last: the gathers index the minor axis). ``-onehot`` is the
  original downward pass (recompute the gathered slots, one-hot einsum), ``-segsum``
  scatter-adds instead, ``-store`` keeps the gathered slots of the upward pass, ``-grad``
  gets every marginal as ``jax.grad`` of the log-evidence w.r.t. the leaf log-likelihoods
  and zero node potentials (``μ_l = ∂ log p / ∂ φ_l``).
* ``jax-chunk64``: the library under ``jax.lax.map`` over chunks of 64 data (smaller
  working set per step; tests whether large batches lose to cache/allocation effects).
* ``jax-bl``: layout ``(nodes, n_l, n)`` (batch last: every gather copies a whole batch row),
  sum over ``psi`` unrolled, downward through host-built inverse tables (for each child
  symbol ``b`` the padded slots ``(a, psi)`` with ``R[a, psi, k] = b``: gathers, no scatter).

The ``jax-*`` alternatives run only on the quick configs at batch 1024 (they are for
choosing a formulation); pass ``--config`` / ``--batch`` to run them elsewhere.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --devices N (one emulated CPU device per core) must be set before JAX starts.
if "--devices" in sys.argv[:-1]:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count="
                               + sys.argv[sys.argv.index("--devices") + 1])

import jax
import jax.numpy as jnp
import numpy as np

from common import (RUN_ID, OverBudget, base_row, markdown_table, read_rows, compile_jax, finish_row,
                    flops_per_datum, machine_peaks, message_floats, time_calls,
                    traffic_bytes_per_datum, write_row)
from rhm_jax import EpsilonProcess, RHMConfig, bp, sample_data, sample_grammar
from rhm_jax.grammar import with_inverse_tables
from rhm_jax.reference import numpy_marginals, numpy_sample_posterior, numpy_upward
from rhm_jax.sharding import batch_sharding, data_mesh

HERE = Path(__file__).resolve().parent
#: A folder holding an outside reference formulation ``reference_bp.py`` to time next to
#: rhm_jax: opt-in by ``--reference-dir`` or ``$RHM_PERF_REFERENCE`` (no default).
REFERENCE_DIR = os.environ.get("RHM_PERF_REFERENCE")
EPSILON = 0.3
FULL_CONFIGS = [(32, 8, 2, 9), (32, 8, 2, 12), (8, 4, 3, 5), (64, 16, 2, 8)]
QUICK_CONFIGS = [(32, 8, 2, 9), (8, 4, 3, 5)]
TASKS = ("marginals", "upward", "sample")
VARIANTS = {  # impl -> tasks it implements
    "jax": TASKS, "numpy": TASKS, "pgmax": ("marginals",), "jax-grad-leaf": ("marginals",),
    "jax-bf-onehot": ("marginals", "upward"), "jax-bf-segsum": ("marginals",),
    "jax-bf-store": ("marginals",), "jax-bf-grad": ("marginals",), "jax-bl": TASKS,
    "jax-chunk64": TASKS, "reference": ("marginals", "sample"),
}
QUICK_IMPLS = ("jax", "reference", "numpy", "pgmax")
ALTERNATIVES_BATCH = 1024  # the batch the alternative formulations are compared at
# jax-bf-grad at (32, 8, 2, 9), batch 1024 was OOM-killed at 24 GB RSS (XLA keeps every
# level's gathered slots for the backward pass), so by default it runs at batch 64 only.
SMALL_BATCH_ONLY = {"jax-bf-grad": 64}


# ---- shared small pieces ------------------------------------------------------------------
_barrier = jax.lax.optimization_barrier


def _normalise(x, axis):
    """Normalise ``axis`` (all-zero slices become uniform); also the log of the sums."""
    total = jnp.sum(x, axis=axis, keepdims=True)
    ok = total > 0
    normed = jnp.where(ok, x / jnp.where(ok, total, 1), 1 / x.shape[axis])
    return normed, jnp.log(jnp.squeeze(total, axis))


def _leaf(loglik, axis):
    """Max-shifted softmax along the symbol axis and the per-token log-normalisers."""
    peak = jnp.max(loglik, axis=axis, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0)
    msg, log_total = _normalise(jnp.exp(loglik - peak), axis)
    return msg, log_total + jnp.squeeze(peak, axis)


# ---- batch-first layout (n, nodes, n_l): the original rhm_jax.bp formulation ----------------
def _bf_slots(rules, child):
    """``[u_{child k}(R[a, psi, k])]_k``, each ``(n, nodes, n_l, m)``."""
    s = rules.shape[-1]
    n, width, v = child.shape
    groups = child.reshape(n, width // s, s, v)
    return [jnp.take(groups[:, :, k], rules[..., k], axis=-1, mode="clip") for k in range(s)]


def _bf_upward(rules_list, n_classes, loglik, potentials=None, keep_slots=False):
    message, log_norm = _leaf(loglik, -1)
    log_evidence = jnp.sum(log_norm, axis=-1)
    messages, stored = [message], []
    for level in range(len(rules_list) - 1, -1, -1):
        rules = rules_list[level]
        slots = _bf_slots(rules, message)
        total = functools.reduce(jnp.multiply, slots).sum(-1)
        if potentials is not None:
            total = total * jnp.exp(potentials[level])
        message, log_total = _normalise(total, -1)
        log_evidence += jnp.sum(log_total, -1) - total.shape[1] * jnp.log(rules.shape[1])
        messages.insert(0, message)
        stored.insert(0, slots if keep_slots else None)
    return messages, log_evidence - jnp.log(n_classes), stored


def _bf_downward_step(rules, parent, slots, v, scatter):
    """Prefix/suffix exclusive products, then one-hot einsum (original) or scatter-add."""
    s = rules.shape[-1]
    n, nodes, _ = parent.shape
    prefix = [jnp.ones_like(slots[0])]
    for factor in slots[:-1]:
        prefix.append(prefix[-1] * factor)
    suffix = jnp.ones_like(slots[0])
    children = [None] * s
    for k in range(s - 1, -1, -1):
        weight = parent[..., None] * prefix[k] * suffix
        if scatter:
            children[k] = jnp.zeros((n, nodes, v), weight.dtype).at[:, :, rules[..., k]].add(weight)
        else:
            onehot = jax.nn.one_hot(rules[..., k], v, dtype=weight.dtype)
            children[k] = jnp.einsum("xjam,amb->xjb", weight, onehot,
                                     precision=jax.lax.Precision.HIGHEST)
        suffix = suffix * slots[k]
    return _normalise(jnp.stack(children, axis=2).reshape(n, nodes * s, v), -1)[0]


def bf_marginals(rules_list, n_classes, loglik, *, scatter=False, store=False):
    up, log_evidence, stored = _bf_upward(rules_list, n_classes, loglik, keep_slots=store)
    n, v = loglik.shape[0], loglik.shape[-1]
    down = [jnp.full((n, 1, n_classes), 1 / n_classes, loglik.dtype)]
    for level, rules in enumerate(rules_list):
        slots = stored[level] if store else _bf_slots(rules, up[level + 1])
        down.append(_bf_downward_step(rules, down[-1], slots, v, scatter))
    return tuple(_normalise(u * w, -1)[0] for u, w in zip(up, down)), log_evidence


def bf_upward(rules_list, n_classes, loglik):
    up, log_evidence, _ = _bf_upward(rules_list, n_classes, loglik)
    return up[0][:, 0], log_evidence


def bf_grad_marginals(rules_list, n_classes, loglik):
    """``μ_l = ∂ log p(obs) / ∂ φ_l`` at ``φ_l = 0`` (node potentials); ``μ_L`` w.r.t. the leaves."""
    n = loglik.shape[0]
    s = rules_list[0].shape[-1]
    potentials = [jnp.zeros((n, s**level, r.shape[0]), loglik.dtype)
                  for level, r in enumerate(rules_list)]

    def total_log_evidence(loglik, potentials):
        log_evidence = _bf_upward(rules_list, n_classes, loglik, potentials)[1]
        return jnp.sum(log_evidence), log_evidence

    (_, log_evidence), (leaf_grad, node_grads) = jax.value_and_grad(
        total_log_evidence, argnums=(0, 1), has_aux=True)(loglik, potentials)
    return tuple(node_grads) + (leaf_grad,), log_evidence


# ---- batch-last layout (nodes, n_l, n) ----------------------------------------------------
def _rows(x, index):
    """``x[:, index]`` along the symbol axis: each entry copies a contiguous batch row."""
    return jnp.take(x, index, axis=1, mode="clip")


def _bl_upward(rules_list, n_classes, loglik):
    message, log_norm = _leaf(jnp.transpose(loglik, (1, 2, 0)), 1)  # (d, v, n)
    log_evidence = jnp.sum(log_norm, axis=0)
    messages = [message]
    for level in range(len(rules_list) - 1, -1, -1):
        rules = rules_list[level]
        n_l, m, s = rules.shape
        width, v, n = message.shape
        groups = message.reshape(width // s, s, v, n)
        total = None
        for psi in range(m):  # unrolled: XLA fuses gathers, products and sum in one pass
            term = functools.reduce(jnp.multiply, [_rows(groups[:, k], rules[:, psi, k])
                                                   for k in range(s)])
            total = term if total is None else total + term
        # Barriers: without them XLA fuses the gathers into every consumer and recomputes them.
        message, log_total = _normalise(_barrier(total), 1)
        message = _barrier(message)
        log_evidence += jnp.sum(log_total, 0) - (width // s) * jnp.log(m)
        messages.insert(0, message)
    return messages, log_evidence - jnp.log(n_classes)


def inverse_tables_host(rules_list, v):
    """Per level and child position ``k``: for each child symbol ``b`` the padded list of
    slots ``(a, psi)`` with ``R[a, psi, k] = b`` as ``(parent (v, C), symbols (s, v, C),
    valid (v, C))``; ``C`` = the largest count (host NumPy, from concrete rules)."""
    tables = []
    for rules in rules_list:
        rules = np.asarray(rules)
        n_l, m, s = rules.shape
        flat_rules = rules.reshape(-1, s)
        level = []
        for k in range(s):
            flat = flat_rules[:, k]
            width = max(int(np.bincount(flat, minlength=v).max()), 1)
            slot = np.zeros((v, width), np.int32)
            valid = np.zeros((v, width), np.float32)
            for b in range(v):
                where = np.flatnonzero(flat == b)
                slot[b, :len(where)] = where
                valid[b, :len(where)] = 1
            level.append((jnp.asarray(slot // m), jnp.asarray(flat_rules[slot].transpose(2, 0, 1)),
                          jnp.asarray(valid)))
        tables.append(tuple(level))
    return tuple(tables)


def _bl_downward_step(level_tables, parent, child_up):
    """``w_{child k}(b) = Σ_c valid[b,c] w(parent[b,c]) Π_{k'≠k} u_{k'}(symbols[k',b,c])``."""
    s = len(level_tables)
    nodes = parent.shape[0]
    _, v, n = child_up.shape
    groups = child_up.reshape(nodes, s, v, n)
    children = []
    for k, (parent_symbol, symbols, valid) in enumerate(level_tables):
        total = None
        for column in range(parent_symbol.shape[1]):
            term = _rows(parent, parent_symbol[:, column]) * valid[:, column, None].astype(parent.dtype)
            for other in range(s):
                if other != k:
                    term = term * _rows(groups[:, other], symbols[other, :, column])
            total = term if total is None else total + term
        children.append(_barrier(total))
    return _barrier(_normalise(jnp.stack(children, axis=1).reshape(nodes * s, v, n), 1)[0])


def bl_marginals(rules_list, n_classes, loglik, tables):
    up, log_evidence = _bl_upward(rules_list, n_classes, loglik)
    n = loglik.shape[0]
    down = [jnp.full((1, n_classes, n), 1 / n_classes, loglik.dtype)]
    for level in range(len(rules_list)):
        down.append(_bl_downward_step(tables[level], down[-1], up[level + 1]))
    marginals = tuple(jnp.transpose(_normalise(u * w, 1)[0], (2, 0, 1)) for u, w in zip(up, down))
    return marginals, log_evidence


def bl_upward(rules_list, n_classes, loglik):
    up, log_evidence = _bl_upward(rules_list, n_classes, loglik)
    return up[0][0].T, log_evidence


def _bl_categorical(key, weight):
    """One draw along axis 1 of ``(nodes, K, n)`` by inverse CDF (one uniform per row)."""
    cdf = jnp.cumsum(weight, axis=1)
    u = jax.random.uniform(key, (weight.shape[0], 1, weight.shape[2]), cdf.dtype) * cdf[:, -1:]
    return jnp.minimum(jnp.sum(cdf <= u, axis=1), weight.shape[1] - 1).astype(jnp.int32)


def bl_sample(key, rules_list, n_classes, loglik):
    """One exact tree per datum: root from ``u_0``, then ``psi ∝ Π_k u_{child k}(R[a,psi,k])``."""
    up, _ = _bl_upward(rules_list, n_classes, loglik)
    keys = jax.random.split(key, len(rules_list) + 1)
    symbols = _bl_categorical(keys[0], up[0])  # (1, n)
    latents = [symbols]
    for level, rules in enumerate(rules_list):
        n_l, m, s = rules.shape
        nodes, n = symbols.shape
        chosen = jnp.take(rules, symbols, axis=0, mode="clip")  # (nodes, n, m, s)
        groups = up[level + 1].reshape(nodes, s, -1, n)
        weight = None
        for k in range(s):
            index = jnp.transpose(chosen[..., k], (0, 2, 1))  # (nodes, m, n)
            factor = jnp.take_along_axis(groups[:, k], index, axis=1, mode="clip")
            weight = factor if weight is None else weight * factor
        psi = _bl_categorical(keys[level + 1], weight)  # (nodes, n)
        children = jnp.take_along_axis(chosen, psi[:, :, None, None], axis=2, mode="clip")[:, :, 0]
        symbols = jnp.transpose(children, (0, 2, 1)).reshape(nodes * s, n)
        latents.append(symbols)
    return tuple(x.T for x in latents)


# ---- harness ------------------------------------------------------------------------------
def _estimate_bytes(impl, task, cfg: RHMConfig, batch):
    """Rough peak working set (bytes) to skip hopeless cases before compiling them."""
    sizes = message_floats(cfg.v, cfg.m, cfg.s, cfg.L, cfg.n_classes)
    slots = max(cfg.s**level * cfg.num_symbols(level) * cfg.m for level in range(cfg.L))
    itemsize = 8 if impl == "numpy" else 4
    if impl in ("jax", "jax-grad-leaf", "jax-bl"):  # lower bound; XLA's own figure decides
        per_datum = 4 * sum(sizes) + 3 * max(sizes)
    elif task == "marginals":
        per_datum = 3 * sum(sizes) + (2 * cfg.s + 3) * slots
    else:
        per_datum = sum(sizes) + (cfg.s + 1) * slots
    return per_datum * itemsize * batch


def _max_diff(marginals, reference):
    return float(max(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
                     for a, b in zip(marginals, reference)))


def _jax_case(impl, task, grammar, loglik, key):
    """(function, args, a function of the output giving its marginals or None)."""
    cfg = grammar.config
    rules = tuple(grammar.rules)
    nc = cfg.n_classes
    if impl == "jax":
        # What a user's call outside jit gets: inverse tables of the concrete rules, the
        # batch sharded over all devices when there are several (--devices), and the
        # program the public function dispatches to for that placement and chunk size
        # (wrapping the public function itself in jit would hide the input's sharding).
        grammar = with_inverse_tables(grammar)
        if jax.device_count() > 1:
            loglik = jax.device_put(loglik, batch_sharding(data_mesh()))
        placement, chunk = bp._placement_and_chunk(grammar, loglik, None)
        if task == "sample":
            fn = lambda key, g, x: bp._sample_posterior(key, g, x, 1, chunk, placement)  # noqa: E731
            return fn, (key, grammar, loglik), None
        inner = {"marginals": bp._marginals_jit, "upward": bp._upward_jit}[task]
        fn = lambda g, x: inner(g, x, chunk, False, placement)  # noqa: E731
        return fn, (grammar, loglik), (lambda out: out.marginals) if task == "marginals" else None
    if impl.startswith("jax-chunk"):
        return _chunked(task, int(impl[len("jax-chunk"):]), grammar, loglik, key)
    if impl == "jax-grad-leaf":
        leaf_grad = jax.grad(lambda g, x: jnp.sum(bp.upward(g, x).log_evidence), argnums=1)
        return leaf_grad, (grammar, loglik), lambda out: (out,)
    if task == "upward":
        fn = {"jax-bf-onehot": bf_upward, "jax-bl": bl_upward}[impl]
        return lambda rules, loglik: fn(rules, nc, loglik), (rules, loglik), None
    if task == "sample":
        return lambda key, rules, loglik: bl_sample(key, rules, nc, loglik), (key, rules, loglik), None
    first = lambda out: out[0]  # noqa: E731
    if impl == "jax-bl":
        tables = inverse_tables_host(rules, cfg.v)
        return (lambda rules, loglik, tables: bl_marginals(rules, nc, loglik, tables),
                (rules, loglik, tables), first)
    fn = {"jax-bf-onehot": bf_marginals,
          "jax-bf-segsum": functools.partial(bf_marginals, scatter=True),
          "jax-bf-store": functools.partial(bf_marginals, store=True),
          "jax-bf-grad": bf_grad_marginals}[impl]
    return lambda rules, loglik: fn(rules, nc, loglik), (rules, loglik), first


def _chunked(task, chunk, grammar, loglik, key):
    """The library mapped over batch chunks (``lax.map``): a small working set per step."""
    n = loglik.shape[0]
    chunk = min(chunk, n)
    pieces = loglik.reshape(n // chunk, chunk, *loglik.shape[1:])
    merge = lambda tree: jax.tree.map(lambda x: x.reshape(n, *x.shape[2:]), tree)  # noqa: E731
    if task == "sample":
        def fn(key, grammar, pieces):
            keys = jax.random.split(key, pieces.shape[0])
            return merge(jax.lax.map(lambda a: bp.sample_posterior(a[0], grammar, a[1]), (keys, pieces)))
        return fn, (key, grammar, pieces), None
    library = {"marginals": bp.marginals, "upward": bp.upward}[task]
    fn = lambda grammar, pieces: merge(jax.lax.map(lambda x: library(grammar, x), pieces))  # noqa: E731
    return fn, (grammar, pieces), (lambda out: out.marginals) if task == "marginals" else None


def _recompiles(task, grammar, loglik) -> int:
    """Compilations of the public function over 3 repeated calls with new inputs (new
    likelihoods and a new grammar of the same config) after a first call: should be 0."""
    jitted = {"marginals": bp._marginals_jit, "upward": bp._upward_jit,
              "sample": bp._sample_posterior}[task]
    def call(g, x, key):
        if task == "sample":
            return bp.sample_posterior(key, g, x)
        return getattr(bp, task)(g, x)
    jax.block_until_ready(call(grammar, loglik, jax.random.key(0)))
    before = jitted._cache_size()
    for seed in range(1, 4):
        other = sample_grammar(jax.random.key(100 + seed), grammar.config)
        jax.block_until_ready(call(other, loglik * 1.0, jax.random.key(seed)))
    return jitted._cache_size() - before


def _compile_and_time(fn, call_args, args, row):
    """``(compiled, timing)``, or ``(None, None)`` with ``row["skipped"]`` saying why (XLA
    buffers above ``--max-gb``, or over the case budget). Compile time and memory go in
    ``row``."""
    compiled, compile_s, memory = compile_jax(fn, *call_args)
    row.update(compile_s=compile_s, **memory)
    xla_bytes = sum(memory.values()) * 2**20 if memory else 0
    if xla_bytes > args.max_gb * 1e9:
        row["skipped"] = f"XLA buffers {xla_bytes / 1e9:.1f} GB > {args.max_gb} GB"
        return None, None
    try:
        timing = time_calls(lambda: compiled(*call_args), repeats=args.repeats,
                            budget_s=args.case_budget_s)
    except OverBudget as err:
        row["skipped"] = str(err)
        return None, None
    return compiled, timing


def run_jax(impl, task, grammar, loglik, reference, args, row, traffic, flops=None):
    fn, call_args, marginals_of = _jax_case(impl, task, grammar, loglik, jax.random.key(7))
    compiled, timing = _compile_and_time(fn, call_args, args, row)
    if compiled is None:
        return row
    if impl == "jax":
        row["recompiles_on_repeat"] = _recompiles(task, grammar, loglik)
    if marginals_of is not None and reference is not None:
        out = marginals_of(compiled(*call_args))
        levels = reference if len(out) == len(reference) else reference[-len(out):]
        row["max_abs_diff"] = _max_diff([x[:len(reference[0])] for x in out], levels)
    return finish_row(row, timing, traffic, flops, args.peaks)


def _reference_module(directory):
    """``reference_bp`` imported from ``directory`` (outside the project) via ``sys.path``."""
    if directory is None or not (Path(directory) / "reference_bp.py").exists():
        return None
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    import reference_bp

    return reference_bp


def run_reference(task, grammar, tokens, reference, args, row, traffic, flops=None):
    """The reference formulation (``reference_bp.py``) on the same tokens and likelihoods:
    chunks of 8 on one device; with several, the batch sharded over all of them (its
    ``make_sharded_fns``, chunks of 4 per device)."""
    ref = _reference_module(args.reference_dir)
    if ref is None:
        row["skipped"] = f"no reference_bp.py in --reference-dir {str(args.reference_dir)!r}"
        return row
    tables = ref.Tables([np.asarray(r) for r in grammar.rules])
    if jax.device_count() > 1:
        marg, samp, put = ref.make_sharded_fns(tables, EPSILON)
        row["implementation"] = f"reference-{jax.device_count()}dev"
    else:
        (marg, samp), put = ref.make_chunked_fns(tables, EPSILON), (lambda x: x)
    x = put(tokens)
    if task == "sample":
        fn, call_args = samp, (jax.random.PRNGKey(7), x)
    else:
        fn, call_args = marg, (x,)
    compiled, timing = _compile_and_time(fn, call_args, args, row)
    if compiled is None:
        return row
    if task == "marginals" and reference is not None:
        out = compiled(*call_args)
        row["max_abs_diff"] = _max_diff([np.asarray(a)[:len(reference[0])] for a in out], reference)
    return finish_row(row, timing, traffic, flops, args.peaks)


def run_numpy(task, grammar, loglik, reference, args, row, traffic, flops=None):
    cfg = grammar.config
    rules = [np.asarray(r) for r in grammar.rules]
    loglik = np.asarray(loglik, np.float64)
    rng = np.random.default_rng(0)
    fn = {"marginals": lambda: numpy_marginals(rules, cfg.n_classes, loglik),
          "upward": lambda: numpy_upward(rules, cfg.n_classes, loglik),
          "sample": lambda: numpy_sample_posterior(rng, rules, cfg.n_classes, loglik)}[task]
    row["compile_s"] = 0.0
    try:
        timing = time_calls(fn, repeats=args.repeats, warmup=1, budget_s=args.case_budget_s)
    except OverBudget as err:
        row["skipped"] = str(err)
        return row
    if task == "marginals" and reference is not None:
        row["max_abs_diff"] = _max_diff([x[:len(reference[0])] for x in fn()[0]], reference)
    return finish_row(row, timing, traffic, flops, args.peaks)


def run_pgmax(grammar, loglik, reference, batches, args, mode):
    """Run ``pgmax_bp.py`` in the PGMax venv; it appends its own rows to ``args.out``."""
    cfg = grammar.config
    config = dict(v=cfg.v, m=cfg.m, s=cfg.s, L=cfg.L, n_classes=cfg.n_classes)
    python = args.pgmax_python
    if not python or not Path(python).exists():
        for batch in batches:
            row = base_row(task="marginals", impl="pgmax", config=config, batch=batch, mode=mode)
            row["skipped"] = f"no PGMax interpreter (--pgmax-python {python!r})"
            write_row(args.out, row)
        return
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp) / "case.npz"
        arrays = {f"rules{level}": np.asarray(r) for level, r in enumerate(grammar.rules)}
        arrays.update({f"reference{level}": np.asarray(x) for level, x in enumerate(reference)})
        np.savez(case, loglik=np.asarray(loglik[:max(batches)]), **arrays)
        meta = dict(config=config, batches=list(batches), repeats=args.repeats, mode=mode,
                    run_id=RUN_ID,
                    out=str(args.out) if args.out else None, budget_s=args.case_budget_s)
        command = [python, str(HERE / "pgmax_bp.py"), str(case), json.dumps(meta)]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.pgmax_timeout_s)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-3:]
            row = base_row(task="marginals", impl="pgmax", config=config, batch=max(batches),
                           mode=mode)
            row["skipped"] = "pgmax_bp.py failed: " + " | ".join(tail)
            write_row(args.out, row)


def make_inputs(cfg: RHMConfig, batch: int):
    """The grammar, a function giving the leaf log-likelihoods of the first ``n`` data,
    and the ``(batch, d)`` tokens they come from (for the reference formulation, which
    builds the same ε-process evidence from tokens itself).

    Only the tokens of the largest batch are kept (int32); the float log-likelihoods are
    made per batch, so the process RSS does not carry an unused 8192-datum input.
    """
    grammar = sample_grammar(jax.random.key(0), cfg)
    tokens = sample_data(jax.random.key(1), grammar, batch).tokens
    process = EpsilonProcess(cfg)
    return grammar, lambda n: process.leaf_log_likelihood(tokens[:n], EPSILON), tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 configs, batch 64/1024, < 2 min")
    p.add_argument("--out", default=str(HERE / "results" / "bench" / "bp.jsonl"), help="JSONL file to append to")
    p.add_argument("--impl", nargs="+", choices=sorted(VARIANTS), help="implementations to run")
    p.add_argument("--task", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--config", nargs="+", help="configs as v,m,s,L (default: by mode)")
    p.add_argument("--batch", nargs="+", type=int, help="batch sizes (default: by mode)")
    p.add_argument("--numpy-batch", nargs="+", type=int, help="batches for numpy (default: by mode)")
    p.add_argument("--pgmax-batch", nargs="+", type=int, help="batches for PGMax (default: by mode)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs (at least 5)")
    p.add_argument("--max-gb", type=float, default=8.0, help="skip cases needing more memory")
    p.add_argument("--case-budget-s", type=float, default=None,
                   help="skip cases whose warm-up + repeats would take longer (default by mode)")
    p.add_argument("--pgmax-python", default=os.environ.get("PGMAX_PYTHON"),
                   help="interpreter of a venv with pgmax installed (default: $PGMAX_PYTHON; "
                        "without it the PGMax rows are skipped)")
    p.add_argument("--pgmax-timeout-s", type=float, default=600)
    p.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR,
                   help="folder holding an outside reference_bp.py to time next to rhm_jax "
                        "(default: $RHM_PERF_REFERENCE; without it the reference rows are "
                        "skipped)")
    p.add_argument("--no-peaks", action="store_true",
                   help="skip measuring the machine's matmul peak and copy bandwidth")
    p.add_argument("--devices", type=int, default=None,
                   help="emulate N CPU devices and shard the jax batch over them (one per core)")
    p.add_argument("--table", metavar="JSONL", help="only print a markdown table of JSONL's rows")
    args = p.parse_args(argv)
    args.impl = args.impl or list(QUICK_IMPLS if args.quick else VARIANTS)
    args.repeats = max(args.repeats, 5)
    args.explicit_configs = bool(args.config)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.config] if args.config else None
    args.configs = configs or (QUICK_CONFIGS if args.quick else FULL_CONFIGS)
    args.batches = args.batch or ([64, 1024] if args.quick else [64, 1024, 8192])
    args.numpy_batches = args.numpy_batch or ([16] if args.quick else [16, 64, 1024])
    args.pgmax_batches = args.pgmax_batch or ([16] if args.quick else [64])
    args.case_budget_s = args.case_budget_s or (20.0 if args.quick else 100.0)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        print(markdown_table(read_rows(args.table)))
        return
    mode = "quick" if args.quick else "full"
    start = time.perf_counter()
    args.peaks = None if args.no_peaks else machine_peaks()
    if args.peaks:
        print(f"machine: matmul {args.peaks['matmul_gflops']:.0f} GFLOP/s, copy "
              f"{args.peaks['copy_gbps']:.1f} GB/s on {args.peaks['peak_devices']} device(s)", flush=True)
    seconds_per_datum = {}  # (impl, task, config) -> from the last batch, to skip hopeless ones
    for v, m, s, L in args.configs:
        cfg = RHMConfig(v=v, m=m, s=s, L=L)
        config = dict(v=v, m=m, s=s, L=L, n_classes=cfg.n_classes)
        grammar, leaf_log_likelihood, tokens = make_inputs(
            cfg, max(args.batches + args.numpy_batches + args.pgmax_batches))
        # Reference marginals of the first 16 data (float64 NumPy), compared with every impl.
        reference = numpy_marginals([np.asarray(r) for r in grammar.rules], cfg.n_classes,
                                    np.asarray(leaf_log_likelihood(16), np.float64))[0]
        if "pgmax" in args.impl and "marginals" in args.task:
            run_pgmax(grammar, leaf_log_likelihood(max(args.pgmax_batches)), reference,
                      args.pgmax_batches, args, mode)
        for task in args.task:
            for impl in args.impl:
                if impl == "pgmax" or task not in VARIANTS[impl]:
                    continue
                alternative = impl.startswith("jax-")
                if alternative and not args.explicit_configs and (v, m, s, L) not in QUICK_CONFIGS:
                    continue
                batches = args.numpy_batches if impl == "numpy" else args.batches
                if alternative and not args.batch:
                    batches = [SMALL_BATCH_ONLY.get(impl, ALTERNATIVES_BATCH)]
                for batch in batches:
                    row = base_row(task=task, impl=impl, config=config, batch=batch, mode=mode)
                    if impl == "jax" and jax.device_count() > 1:
                        row["implementation"] = f"jax-{jax.device_count()}dev"
                    itemsize = 8 if impl == "numpy" else 4
                    traffic = traffic_bytes_per_datum(task, v, m, s, L, cfg.n_classes, itemsize)
                    flops = flops_per_datum(task, v, m, s, L, cfg.n_classes)
                    estimate = _estimate_bytes(impl, task, cfg, batch)
                    per_datum = seconds_per_datum.get((impl, task, (v, m, s, L)))
                    if estimate > args.max_gb * 1e9:
                        row["skipped"] = f"estimated {estimate / 1e9:.1f} GB > {args.max_gb} GB"
                    elif per_datum and per_datum * batch * (args.repeats + 1) > args.case_budget_s:
                        row["skipped"] = (f"estimated {per_datum * batch * (args.repeats + 1):.0f} s "
                                          f"(from the smaller batch) > budget {args.case_budget_s:.0f} s")
                    else:
                        loglik = leaf_log_likelihood(batch)
                        if impl == "numpy":
                            row = run_numpy(task, grammar, loglik, reference, args, row, traffic, flops)
                        elif impl == "reference":
                            row = run_reference(task, grammar, tokens[:batch], reference, args, row,
                                                traffic, flops)
                        else:
                            row = run_jax(impl, task, grammar, loglik, reference, args, row, traffic,
                                          flops)
                        if "median_s" in row:
                            seconds_per_datum[(impl, task, (v, m, s, L))] = row["median_s"] / batch
                    write_row(args.out, row)
                    jax.clear_caches()
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
