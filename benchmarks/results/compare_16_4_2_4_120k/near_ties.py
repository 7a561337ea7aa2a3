"""Where a masking network's top-1 misses against BP fall, and what top-1 a given KL allows.

Run from the repository root, after the 120k-step training run of the README:

    .venv/bin/python benchmarks/results/compare_16_4_2_4_120k/near_ties.py \
        runs/masking_w64_ml4_120k

Writes ``near_ties.jsonl`` beside this script (about 30 s on the 2-core CPU). Two kinds of
rows, both on the run's held-out data noised to mask fraction ``t`` (masked tokens only):

* ``kind = "margin"``: masked tokens grouped by BP's margin (its top probability minus its
  second): the share of tokens in the group, the network's top-1 agreement with BP there
  (ties of BP count as agreement, as in ``rhm_jax.denoise.compare``), the group's share of
  all misses, and its mean KL(BP ‖ network).
* ``kind = "noisy_bp"``: a model of an imperfect denoiser: BP's log-probabilities plus
  independent Gaussian noise of standard deviation ``sigma``, renormalised. Its mean KL and
  top-1 on the same tokens: which KL a top-1 target needs when errors do not know where
  BP's near-ties are.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.denoise.compare import TIE_TOLERANCE, network_predictor
from rhm_jax.denoise.sampling import Denoiser
from rhm_jax.denoise.train import _datasets, load_run
from rhm_jax.grammar import with_inverse_tables

MARGINS = (0.0, 1e-4, 0.01, 0.03, 0.05, 0.1, 0.3, 1.01)
SIGMAS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3)


def _kl(ref, est):
    log_ref = np.log(np.where(ref > 0, ref, 1.0))
    return np.sum(np.where(ref > 0, ref * (log_ref - np.log(np.maximum(est, 1e-30))), 0), -1)


def _agree(ref, est):
    picked = ref[np.arange(len(ref)), est.argmax(-1)]
    return picked >= ref.max(-1) - TIE_TOLERANCE


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="training run folder (masking)")
    parser.add_argument("--t", type=float, default=0.5, help="mask fraction (default 0.5)")
    parser.add_argument("--n-data", type=int, default=1024, help="held-out data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(Path(__file__).with_name("near_ties.jsonl")))
    args = parser.parse_args()

    run = load_run(args.run)
    objective, process = run.objective, run.objective.process
    if not hasattr(process, "mask_token"):
        raise ValueError(f"run = {args.run!r} is not a masking run")
    grammar = with_inverse_tables(run.grammar)
    _, test = _datasets(run.config, run.grammar)
    x0 = jnp.asarray(np.asarray(test)[:args.n_data])
    predict, params = network_predictor(Denoiser.from_run(run, ema=args.ema))
    t = jnp.full((x0.shape[0],), args.t)
    x_t = process.corrupt(jax.random.key(args.seed), x0, t)
    masked = np.asarray(x_t == process.mask_token)
    ref = np.asarray(objective.bp_target(grammar, x_t, t), np.float64)[masked]
    est = np.asarray(objective.target_probs(predict(params, x_t, t), x_t, t), np.float64)[masked]

    base = {"run": args.run, "step": run.step, "ema": args.ema, "t": args.t,
            "n_data": int(x0.shape[0]), "masked_tokens": int(len(ref)), "seed": args.seed}
    top_two = np.sort(ref, -1)[:, ::-1][:, :2]
    margin = top_two[:, 0] - top_two[:, 1]
    agree, kl = _agree(ref, est), _kl(ref, est)
    misses = max(int((~agree).sum()), 1)
    rows = [{**base, "kind": "network", "top1": float(agree.mean()), "kl": float(kl.mean())}]
    for lo, hi in zip(MARGINS[:-1], MARGINS[1:]):
        group = (margin >= lo) & (margin < hi)
        if group.any():
            rows.append({**base, "kind": "margin", "margin_low": lo, "margin_high": hi,
                         "share": float(group.mean()), "top1": float(agree[group].mean()),
                         "share_of_misses": float((group & ~agree).sum() / misses),
                         "kl": float(kl[group].mean())})
    rng = np.random.default_rng(args.seed)
    log_ref = np.log(np.maximum(ref, 1e-30))
    for sigma in SIGMAS:
        noisy = log_ref + sigma * rng.standard_normal(ref.shape)
        noisy = np.exp(noisy - noisy.max(-1, keepdims=True))
        noisy /= noisy.sum(-1, keepdims=True)
        rows.append({**base, "kind": "noisy_bp", "sigma": sigma,
                     "kl": float(_kl(ref, noisy).mean()),
                     "top1": float(_agree(ref, noisy).mean())})
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, args.out)
    for row in rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
               if k not in base})


if __name__ == "__main__":
    main()
