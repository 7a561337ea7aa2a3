"""Benchmark denoiser training throughput: steps/s, tokens/s, compile time, peak memory.

Usage::

    python benchmarks/bench_train.py --quick            # about a minute on a 2-core CPU
    python benchmarks/bench_train.py                    # both architectures, two sizes
    python benchmarks/bench_train.py --out /tmp/x.jsonl

Rows (appended to ``--out``, default ``benchmarks/results/bench/train.jsonl``): one per
(architecture, size, step implementation). Implementations of the same optimisation step:

* ``functional-scan``: what :func:`rhm_jax.denoise.train.train` runs — the model
  ``nnx.split`` once, a pure ``jax.jit`` function that ``nnx.merge`` s it, ``steps_per_call``
  steps per call inside ``jax.lax.scan``;
* ``functional``: the same step, one step per call;
* ``nnx.jit``: Flax's transform over the stateful ``nnx.Optimizer`` (``wrt=nnx.Param``),
  one step per call — the baseline the functional form is compared with in the same run.

Each row has compile time (first call) separately from the median of timed repeats,
``steps_per_s``, ``tokens_per_s = steps_per_s · batch · d`` and the process's peak RSS
while timing; ratios between implementations are taken within one run (``run_id``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import RUN_ID, base_row, time_calls
from rhm_jax.denoise import ModelConfig, TrainConfig
from rhm_jax.denoise.train import init_state, make_grammar, make_optimizer, make_train_steps
from rhm_jax.sampling import sample_data

HERE = Path(__file__).resolve().parent

#: (label, RHM (v, m, s, L), width, transformer layers)
SIZES = [("small", (16, 4, 2, 4), 128, 4), ("large", (32, 8, 2, 7), 256, 6)]
QUICK_SIZES = [("small", (16, 4, 2, 4), 64, 2)]


def _config(arch, rhm, width, layers, batch, steps_per_call):
    v, m, s, L = rhm
    model = ModelConfig(arch, width=width, num_layers=layers, num_heads=4)
    return TrainConfig(v=v, m=m, s=s, L=L, model=model, batch_size=batch, steps=10**6,
                       steps_per_call=steps_per_call, log_every=steps_per_call,
                       eval_every=steps_per_call, checkpoint_every=steps_per_call)


def _nnx_jit_step(config):
    """Flax's stateful form: nnx.Optimizer updated inside nnx.jit, one step per call."""
    from rhm_jax.denoise.models import build_model

    objective = config.objective()
    model = build_model(config.rhm_config, config.model, objective.num_input_states, config.seed)
    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    grammar = make_grammar(config)

    @nnx.jit
    def step(model, optimizer, key):
        data_key, loss_key = jax.random.split(key)
        x0 = sample_data(data_key, grammar, config.batch_size).tokens

        def loss_fn(model):
            return jnp.mean(objective.loss(model, loss_key, x0)[0])

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    keys = iter(jax.random.split(jax.random.key(0), 10_000))
    return lambda: step(model, optimizer, next(keys))


def bench_one(arch, label, rhm, width, layers, batch, steps_per_call, impl, repeats, out):
    config = _config(arch, rhm, width, layers, batch, steps_per_call if impl == "functional-scan" else 1)
    row = base_row(task=f"train:{arch}", impl=impl, config=dict(zip("vmsL", rhm)), batch=batch,
                   mode="quick" if out is None else "full")
    row.update(size=label, width=width, num_layers=layers if arch == "transformer" else None,
               loss=config.loss)
    if impl == "nnx.jit":
        call = _nnx_jit_step(config)
        steps = 1
    else:
        graphdef, state = init_state(config)
        run = make_train_steps(config, graphdef, make_grammar(config))
        steps = config.steps_per_call
        holder = {"state": state}

        def call():
            holder["state"], metrics = run(holder["state"], None, steps)
            return metrics

    start = time.perf_counter()
    jax.block_until_ready(call())
    row["compile_s"] = time.perf_counter() - start  # first call: trace + compile + one run
    timing = time_calls(call, repeats=repeats, warmup=1)
    row.update(timing)
    row["steps_per_call"] = steps
    row["steps_per_s"] = steps / timing["median_s"]
    row["tokens_per_s"] = row["steps_per_s"] * batch * config.rhm_config.d
    row["data_per_s"] = row["steps_per_s"] * batch
    print(f"{arch:11s} {label:5s} {impl:16s} batch {batch:4d}: {row['steps_per_s']:8.2f} steps/s "
          f"{row['tokens_per_s']:11.0f} tokens/s  compile {row['compile_s']:6.2f} s  "
          f"rss {row.get('peak_rss_mb', 0):6.0f} MB", flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps-per-call", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "bench" / "train.jsonl"))
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    import json

    rows = []
    for label, rhm, width, layers in sizes:
        for arch in ("unet", "transformer"):
            for impl in ("functional-scan", "functional", "nnx.jit"):
                row = bench_one(arch, label, rhm, width, layers, args.batch, args.steps_per_call,
                                impl, args.repeats, args.out)
                rows.append(row)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row, default=str) + "\n")
    print(f"run {RUN_ID}: steps/s relative to nnx.jit (same run)")
    for label, *_ in sizes:
        for arch in ("unet", "transformer"):
            sel = {r["implementation"]: r for r in rows if r["size"] == label and r["task"] == f"train:{arch}"}
            base = sel["nnx.jit"]["steps_per_s"]
            print(f"  {arch:11s} {label:5s} " + "  ".join(
                f"{k} {v['steps_per_s'] / base:5.2f}x" for k, v in sel.items()))


if __name__ == "__main__":
    main()
