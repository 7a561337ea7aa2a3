"""Where a masking network's top-1 misses against BP fall, and what top-1 a given KL allows.

Run from the repository root, after the 120k-step training run of docs/results/training.md:

    .venv/bin/python benchmarks/analysis/near_ties.py \
        runs/masking_w64_ml4_120k

Writes ``benchmarks/results/compare/16_4_2_4_120k/near_ties.jsonl`` (about 30 s on the 2-core CPU). Every number
is taken on the run's held-out data noised to mask fraction ``t``, masked tokens only, with
the statistics of ``rhm-jax compare`` (``rhm_jax.denoise.compare.token_stats``: BP's ties
count as agreement). Rows, by ``kind``:

* ``network``: the network's top-1 agreement and KL(BP ‖ network), and the share of its
  misses on tokens that are not clear (BP's top two within ``CLEAR_MARGIN``).
* ``margin``: masked tokens grouped by BP's margin (its top probability minus its second):
  the group's share of tokens, the network's top-1 there, the group's share of all misses,
  its mean KL.
* ``noisy_bp``: a model of an imperfect denoiser: BP's log-probabilities plus independent
  Gaussian noise of standard deviation ``sigma``, renormalised; its KL and top-1.
* ``noisy_bp_interpolated``: from those rows (linear in log KL): the KL at which noisy BP
  reaches top-1 ``TARGET_TOP1``, and noisy BP's top-1 at the network's KL.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.denoise.compare import CLEAR_MARGIN, token_stats, network_predictor
from rhm_jax.denoise.sampling import Denoiser
from rhm_jax.denoise.train import datasets, load_run
from rhm_jax.grammar import with_inverse_tables

MARGINS = (0.0, 1e-4, 0.01, 0.03, CLEAR_MARGIN, 0.1, 0.3, 1.01)
SIGMAS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3)
TARGET_TOP1 = 0.97


def _totals(ref, est, include):
    """``(KL, top-1 agreements, tokens)`` summed over the included tokens."""
    sums = np.asarray(token_stats(ref, est, include), np.float64).sum(0)
    return sums[0], sums[1], sums[3]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="training run folder (masking)")
    parser.add_argument("--t", type=float, default=0.5, help="mask fraction (default 0.5)")
    parser.add_argument("--n-data", type=int, default=1024, help="held-out data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "results" / "compare" / "16_4_2_4_120k" / "near_ties.jsonl"))
    args = parser.parse_args()

    run = load_run(args.run)
    objective, process = run.objective, run.objective.process
    if not hasattr(process, "mask_token"):
        raise ValueError(f"run = {args.run!r} is not a masking run")
    grammar = with_inverse_tables(run.grammar)
    _, test = datasets(run.config, run.grammar)
    x0 = jnp.asarray(np.asarray(test)[:args.n_data])
    predict, params = network_predictor(Denoiser.from_run(run, ema=args.ema))
    t = jnp.full((x0.shape[0],), args.t)
    x_t = process.corrupt(jax.random.key(args.seed), x0, t)
    masked = x_t == process.mask_token
    ref = objective.bp_target(grammar, x_t, t)
    est = objective.target_probs(predict(params, x_t, t), x_t, t)

    top_two = jax.lax.top_k(ref, 2)[0]
    margin = top_two[..., 0] - top_two[..., 1]
    base = {"run": args.run, "step": run.step, "ema": args.ema, "t": args.t,
            "n_data": int(x0.shape[0]), "masked_tokens": int(masked.sum()), "seed": args.seed}
    kl, agree, tokens = _totals(ref, est, masked)
    misses = tokens - agree
    _, agree_unclear, unclear = _totals(ref, est, masked & (margin < CLEAR_MARGIN))
    network_kl = kl / tokens
    rows = [{**base, "kind": "network", "top1": agree / tokens, "kl": network_kl,
             "clear_margin": CLEAR_MARGIN,
             "share_of_misses_not_clear": (unclear - agree_unclear) / misses}]
    for lo, hi in zip(MARGINS[:-1], MARGINS[1:]):
        group_kl, group_agree, group = _totals(ref, est, masked & (margin >= lo) & (margin < hi))
        if group:
            rows.append({**base, "kind": "margin", "margin_low": lo, "margin_high": hi,
                         "share": group / tokens, "top1": group_agree / group,
                         "share_of_misses": (group - group_agree) / misses,
                         "kl": group_kl / group})
    log_ref = jnp.log(jnp.maximum(ref, 1e-30))
    noisy_rows = []
    for i, sigma in enumerate(SIGMAS):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(args.seed + 1), i), ref.shape)
        noisy = jax.nn.softmax(log_ref + sigma * noise, axis=-1)
        noisy_kl, noisy_agree, _ = _totals(ref, noisy, masked)
        noisy_rows.append({**base, "kind": "noisy_bp", "sigma": sigma, "kl": noisy_kl / tokens,
                           "top1": noisy_agree / tokens})
    rows += noisy_rows
    log_kl = np.log([r["kl"] for r in noisy_rows])
    top1 = np.array([r["top1"] for r in noisy_rows])  # falls as sigma grows
    rows.append({**base, "kind": "noisy_bp_interpolated", "target_top1": TARGET_TOP1,
                 "kl_at_target_top1": float(np.exp(np.interp(TARGET_TOP1, top1[::-1],
                                                             log_kl[::-1]))),
                 "network_kl": network_kl,
                 "top1_at_network_kl": float(np.interp(np.log(network_kl), log_kl, top1))})
    rows = [{k: (float(v) if isinstance(v, (np.floating, jax.Array)) else v)
             for k, v in row.items()} for row in rows]
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, args.out)
    for row in rows:
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()
               if k not in base})


if __name__ == "__main__":
    main()
