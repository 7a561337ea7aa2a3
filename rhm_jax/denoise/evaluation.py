"""Held-out evaluation of a denoiser: its loss on fixed noise, and the same loss with
exact BP in the network's place (the floor it can reach, ``docs/theory/denoisers.md``).

Every evaluation of a run draws the same noise: one key per repeat and per chunk of
:data:`EVAL_CHUNK` test data, derived from the run's seed. Network and BP are therefore
scored on the same masks, and their paired difference has a far smaller error than either
loss.
"""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rhm_jax.denoise.config import TrainConfig
from rhm_jax.stats import mean_se

__all__ = ["make_eval", "eval_keys", "EVAL_CHUNK", "per_datum_loss", "bp_floor",
           "bp_per_datum"]


@lru_cache(maxsize=8)
def make_eval(config: TrainConfig, graphdef):
    """``evaluate(params, x0, key) -> (n,)`` per-sequence loss (nats), jitted (one program
    per ``config`` and ``graphdef`` in a process)."""
    objective = config.objective()

    @jax.jit
    def evaluate(params, x0, key):
        return objective.loss(nnx.merge(graphdef, params), key, x0)[0]

    return evaluate


def eval_keys(config):
    """The noise keys of the ``eval_repeats`` draws (fixed by ``seed``)."""
    return [jax.random.fold_in(jax.random.key(config.seed), 1000 + r)
            for r in range(config.eval_repeats)]


#: Test data per evaluation call. Fixed, so that the held-out noise (one key per chunk,
#: and ``t`` stratified within a chunk) depends only on the test set, ``seed`` and
#: ``eval_repeats``: runs that differ in their batch size are scored on the same masks.
EVAL_CHUNK = 512


def per_datum_loss(evaluate, params, test_tokens, config) -> np.ndarray:
    """Held-out loss of every test datum (nats), averaged over the ``eval_repeats`` fixed
    noise draws."""
    chunk = min(config.test_size, EVAL_CHUNK)
    per_datum = []
    for r, key in enumerate(eval_keys(config)):
        rows = []
        for start in range(0, test_tokens.shape[0], chunk):
            x0 = test_tokens[start:start + chunk]
            size = x0.shape[0]
            if size < chunk:  # pad the tail to the compiled shape (no second compile)
                x0 = jnp.concatenate([x0, jnp.broadcast_to(x0[:1], (chunk - size,) + x0.shape[1:])])
            rows.append(np.asarray(evaluate(params, x0, jax.random.fold_in(key, start)),
                                   np.float64)[:size])
        per_datum.append(np.concatenate(rows))
    return np.mean(per_datum, axis=0)  # average the repeats per datum first


def bp_floor(config: TrainConfig, grammar, test_tokens) -> tuple[float, float]:
    """The held-out loss with exact BP in the network's place (same data and noise keys)."""
    return mean_se(bp_per_datum(config, grammar, test_tokens))


def bp_per_datum(config: TrainConfig, grammar, test_tokens) -> np.ndarray:
    """:func:`per_datum_loss` with exact BP as the predictor (the floor of every datum)."""
    objective = config.objective()
    evaluate = jax.jit(lambda x0, key: objective.loss(objective.bp_predictor(grammar), key, x0)[0])
    return per_datum_loss(lambda params, x0, key: evaluate(x0, key), None, test_tokens, config)
