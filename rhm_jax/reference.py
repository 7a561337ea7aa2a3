"""Plain NumPy belief propagation on the RHM tree: a slow oracle and benchmark baseline.

This is what a user would write by hand (``docs/theory/belief_propagation.md``): a Python loop over levels, NumPy
fancy indexing on the whole batch, float64 throughout. It shares no code with
:mod:`rhm_jax.bp`, so the tests use it as an independent implementation, and the
benchmarks (``benchmarks/bench_bp.py``) use it as the baseline that the JAX version is
measured against. It is not meant to be fast.

Conventions are those of :func:`rhm_jax.bp.marginals`: uniform class prior ``1/n_c``,
uniform rule prior ``1/m``, messages normalised at every node with the logs of the
normalisers summed into ``log p(observation)``, marginals of every level ``l = 0..L``
with shape ``(n, s**l, n_l)``. A node whose subtree no tree explains gets the uniform
message and contributes ``log 0 = -inf`` to the log-evidence (the documented fallback of
:mod:`rhm_jax.bp`); NumPy's divide-by-zero warnings are silenced for that case only.

Rules are plain arrays: ``rules_list[l]`` has shape ``(n_l, m, s)``, ``n_0 = n_classes``
(for a :class:`~rhm_jax.grammar.Grammar` ``g``, pass ``[np.asarray(r) for r in g.rules]``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["numpy_marginals", "numpy_sample_posterior", "numpy_upward"]


def _normalise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the last axis (all-zero rows become uniform); also return log of the sums."""
    total = x.sum(axis=-1, keepdims=True)
    ok = total > 0
    normed = np.where(ok, x / np.where(ok, total, 1.0), 1.0 / x.shape[-1])
    with np.errstate(divide="ignore"):
        return normed, np.log(total[..., 0])


def _check(rules_list: Sequence, n_classes: int, leaf_log_likelihood) -> tuple[list, np.ndarray]:
    rules = [np.asarray(r, dtype=np.int64) for r in rules_list]
    if not rules:
        raise ValueError("rules_list is empty; it needs one (n_l, m, s) array per level")
    loglik = np.asarray(leaf_log_likelihood, dtype=np.float64)
    s = rules[0].shape[-1]
    if loglik.ndim != 3 or loglik.shape[1] != s ** len(rules):
        raise ValueError(f"leaf_log_likelihood has shape {loglik.shape}, expected (n, d, v) "
                         f"with d = s**L = {s ** len(rules)}")
    if rules[0].shape[0] != n_classes:
        raise ValueError(f"rules_list[0] has {rules[0].shape[0]} symbols but n_classes = "
                         f"{n_classes}")
    return rules, loglik


def _child_factors(level_rules: np.ndarray, child_messages: np.ndarray) -> list[np.ndarray]:
    """``[u_{child k}(R[a, psi, k])]_k``, each of shape ``(n, nodes, n_l, m)``."""
    s = level_rules.shape[-1]
    n, width, v = child_messages.shape
    groups = child_messages.reshape(n, width // s, s, v)
    return [groups[:, :, k, :][:, :, level_rules[..., k]] for k in range(s)]


def numpy_upward(rules_list: Sequence, n_classes: int, leaf_log_likelihood):
    """Upward pass: ``u_{l,j}(a) ∝ Σ_psi Π_k u_{l+1, j*s+k}(R_l[a, psi, k])`` (``docs/theory/belief_propagation.md``).

    Args:
      rules_list: ``L`` integer arrays, level ``l`` of shape ``(n_l, m, s)``.
      n_classes: number of root symbols ``n_c``.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods ``log p(obs_i | x0_i = a)``.

    Returns:
      ``(messages, log_evidence)``: a list over levels ``0..L`` of normalised float64
      messages ``(n, s**l, n_l)`` and the ``(n,)`` log-evidence.

    Examples:
      >>> import numpy as np
      >>> rules = [np.array([[[0, 1]], [[1, 0]]])]  # v = n_c = 2, m = 1, s = 2, L = 1
      >>> messages, log_ev = numpy_upward(rules, 2, np.log([[[0.9, 0.1], [0.2, 0.8]]]))
      >>> messages[0].round(3).tolist(), round(float(np.exp(log_ev[0])), 3)
      ([[[0.973, 0.027]]], 0.37)
    """
    rules, loglik = _check(rules_list, n_classes, leaf_log_likelihood)
    peak = loglik.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    message, log_norm = _normalise(np.exp(loglik - peak))
    log_evidence = (log_norm + peak[..., 0]).sum(axis=-1)
    messages = [message]
    for level in range(len(rules) - 1, -1, -1):
        factors = _child_factors(rules[level], message)
        message, log_norm = _normalise(np.prod(factors, axis=0).sum(axis=-1))
        log_evidence = log_evidence + log_norm.sum(axis=-1) - message.shape[1] * np.log(
            rules[level].shape[1])
        messages.insert(0, message)
    return messages, log_evidence - np.log(n_classes)


def numpy_marginals(rules_list: Sequence, n_classes: int, leaf_log_likelihood):
    """Exact posterior marginals of every level and the log-evidence (slow NumPy oracle).

    Same quantities and conventions as :func:`rhm_jax.bp.marginals`; the downward message
    ``w_{l+1, j*s+k}(b) ∝ Σ_a w_{l,j}(a) Σ_psi [R_l[a,psi,k] = b] Π_{k'≠k} u(R_l[a,psi,k'])``
    is a matrix product with the one-hot encoding of ``R_l[..., k]`` (``docs/theory/belief_propagation.md``).

    Args:
      rules_list: ``L`` integer arrays, level ``l`` of shape ``(n_l, m, s)``.
      n_classes: number of root symbols ``n_c``.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods.

    Returns:
      ``(marginals, log_evidence)``: a list over levels ``0..L`` of float64 ``(n, s**l, n_l)``
      posterior marginals and the ``(n,)`` log-evidence.

    Examples:
      >>> import numpy as np
      >>> rules = [np.array([[[0, 1]], [[1, 0]]])]
      >>> marg, _ = numpy_marginals(rules, 2, np.log([[[0.9, 0.1], [0.2, 0.8]]]))
      >>> marg[1].round(3).tolist()
      [[[0.973, 0.027], [0.027, 0.973]]]
    """
    rules, loglik = _check(rules_list, n_classes, leaf_log_likelihood)
    upward, log_evidence = numpy_upward(rules, n_classes, loglik)
    n = loglik.shape[0]
    downward = [np.full((n, 1, n_classes), 1.0 / n_classes)]
    for level, level_rules in enumerate(rules):
        n_l, m, s = level_rules.shape
        child = upward[level + 1]
        v = child.shape[-1]
        factors = _child_factors(level_rules, child)
        parent = downward[-1][..., None]  # (n, nodes, n_l, 1)
        nodes = parent.shape[1]
        children = np.empty((n, nodes, s, v))
        for k in range(s):
            others = [factors[j] for j in range(s) if j != k]
            weight = parent * np.prod(others, axis=0)  # (n, nodes, n_l, m)
            onehot = np.eye(v)[level_rules[..., k].reshape(-1)]  # (n_l * m, v)
            children[:, :, k, :] = weight.reshape(n, nodes, n_l * m) @ onehot
        downward.append(_normalise(children.reshape(n, nodes * s, v))[0])
    marginals = [_normalise(u * w)[0] for u, w in zip(upward, downward)]
    return marginals, log_evidence


def _categorical(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One draw per row of ``probs`` (last axis, need not be normalised) by inverse CDF."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[:-1] + (1,)) * cdf[..., -1:]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


def numpy_sample_posterior(rng: np.random.Generator, rules_list: Sequence, n_classes: int,
                           leaf_log_likelihood):
    """One exact draw of the whole tree per datum from ``p(tree | observation)`` (slow oracle).

    Root from its posterior; then, top-down, for each sampled symbol ``a`` the rule ``psi``
    with probability ``∝ Π_k u_{child k}(R[a, psi, k])`` (``docs/theory/belief_propagation.md``). Data whose
    evidence is impossible get a draw from the uniform fallback messages.

    Args:
      rng: a ``numpy.random.Generator``.
      rules_list: ``L`` integer arrays, level ``l`` of shape ``(n_l, m, s)``.
      n_classes: number of root symbols ``n_c``.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods.

    Returns:
      ``(tokens, latents)``: ``(n, d)`` int64 tokens and a list over levels ``0..L`` of the
      ``(n, s**l)`` sampled symbols (``latents[0][:, 0]`` is the class, ``latents[-1]`` is
      ``tokens``).

    Examples:
      >>> import numpy as np
      >>> rules = [np.array([[[0, 1]], [[1, 0]]])]
      >>> loglik = np.log([[[1.0, 1e-9], [1e-9, 1.0]]])
      >>> tokens, latents = numpy_sample_posterior(np.random.default_rng(0), rules, 2, loglik)
      >>> tokens.tolist(), latents[0].tolist()
      ([[0, 1]], [[0]])
    """
    rules, loglik = _check(rules_list, n_classes, leaf_log_likelihood)
    upward, _ = numpy_upward(rules, n_classes, loglik)
    n = loglik.shape[0]
    symbols = _categorical(rng, upward[0])  # (n, 1): the root marginal is u_0 (uniform prior)
    latents = [symbols]
    for level, level_rules in enumerate(rules):
        s = level_rules.shape[-1]
        nodes = symbols.shape[1]
        chosen = level_rules[symbols]  # (n, nodes, m, s)
        groups = upward[level + 1].reshape(n, nodes, s, -1)
        weight = np.ones(chosen.shape[:-1])
        for k in range(s):
            weight = weight * np.take_along_axis(groups[:, :, k, :], chosen[..., k], axis=-1)
        psi = _categorical(rng, weight)  # (n, nodes)
        children = np.take_along_axis(chosen, psi[..., None, None], axis=2)[:, :, 0, :]
        symbols = children.reshape(n, nodes * s)
        latents.append(symbols)
    return latents[-1], latents
