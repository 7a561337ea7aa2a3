"""Brute-force oracles: enumerate every datum of a tiny grammar (independent of BP)."""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from rhm_jax import data_from_digits, index_to_digits


def enumerate_data(grammar):
    """All ``P_max`` data of a tiny grammar with their latents, as numpy arrays."""
    cfg = grammar.config
    assert cfg.P_max <= 200_000, "brute force only for tiny grammars"
    digits = index_to_digits(cfg, range(cfg.P_max))
    data = data_from_digits(grammar, jnp.asarray(digits))
    return [np.asarray(x) for x in data.latents], digits


def brute_force_posterior(grammar, leaf_log_likelihood):
    """Exact log-evidence, per-level marginals and the posterior over all data.

    Computed in float64 numpy from the definition: ``p(datum) = 1/P_max`` and
    ``p(obs | datum) = Π_i lik_i(x_i)``.
    """
    cfg = grammar.config
    latents, _ = enumerate_data(grammar)
    tokens = latents[-1]  # (P, d)
    loglik = np.asarray(leaf_log_likelihood, np.float64)  # (n, d, v)
    n = loglik.shape[0]
    # log p(obs | datum) for each observation and datum: (n, P)
    joint = np.zeros((n, tokens.shape[0]))
    for i in range(cfg.d):
        joint += loglik[:, i, :][:, tokens[:, i]]
    top = joint.max(axis=1, keepdims=True)
    weights = np.exp(joint - top)
    total = weights.sum(axis=1, keepdims=True)
    log_evidence = (np.log(total[:, 0]) + top[:, 0]) - np.log(cfg.P_max)
    posterior = weights / total
    marginals = []
    for level, symbols in enumerate(latents):
        n_l = cfg.num_symbols(level)
        onehot = np.eye(n_l)[symbols]  # (P, nodes, n_l)
        marginals.append(np.einsum("xp,pja->xja", posterior, onehot))
    return log_evidence, marginals, posterior, tokens
