"""Exact belief propagation on the RHM tree (DESIGN.md §3).

The RHM is a tree-structured factor graph, so sum-product BP gives exact posteriors.
Messages are kept *scaled*: every message is normalised to sum to one and the logs of the
normalisers are summed into ``log_evidence`` (the dynamax HMM convention: cheaper than full
log-space, and exact). Inputs are leaf log-likelihoods ``(n, d, v)``; any per-token
constant in them is harmless (it cancels in the posteriors and shifts ``log_evidence`` by
the same constant that the likelihood definition leaves free).

Impossible evidence. A node whose subtree admits no tree of the grammar gets an all-zero
upward message. We record ``log 0 = -inf`` in ``log_evidence`` and replace that message by
the uniform one, so every later quantity stays finite. Documented fallback: where
``log_evidence == -inf`` the marginals are finite, normalised, but carry no meaning (nodes
with no explanation get the uniform marginal). No NaN is ever produced.

Layout: one array per level, batch axis first, ``(n, s**l, n_l)``; symbols last so the
gathers ``u[..., rules[..., k]]`` read contiguous rows.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rhm_jax.grammar import Grammar
from rhm_jax.sampling import Data

_HIGHEST = jax.lax.Precision.HIGHEST


class Upward(NamedTuple):
    """Result of the upward pass.

    Attributes:
      messages: tuple over levels ``l = 0..L`` of normalised upward messages
        ``u_l`` with shape ``(n, s**l, n_l)``: ``u_{l,j}(a) ∝ p(evidence below j | a)``.
      class_posterior: ``(n, n_classes)`` posterior of the class (uniform prior).
      log_evidence: ``(n,)`` ``log p(observation)``; ``-inf`` where nothing explains it.
    """

    messages: tuple
    class_posterior: jax.Array
    log_evidence: jax.Array


class BPResult(NamedTuple):
    """Result of full BP.

    Attributes:
      marginals: tuple over levels ``l = 0..L`` of ``(n, s**l, n_l)`` posterior marginals
        ``μ_l``; ``marginals[0][:, 0]`` is the class posterior, ``marginals[-1]`` is
        ``E[onehot(x0) | observation]``.
      upward: the normalised upward messages (as in :class:`Upward`).
      downward: the normalised downward messages ``w_l`` (``w_0`` is the uniform prior).
      log_evidence: ``(n,)`` ``log p(observation)``.
    """

    marginals: tuple
    upward: tuple
    downward: tuple
    log_evidence: jax.Array


def _normalise(x: jax.Array):
    """Normalise the last axis; all-zero rows become uniform. Returns (x, log of the sum)."""
    total = jnp.sum(x, axis=-1, keepdims=True)
    ok = total > 0
    normed = jnp.where(ok, x / jnp.where(ok, total, 1), 1 / x.shape[-1])
    return normed, jnp.log(total[..., 0])


def _leaf_messages(leaf_log_likelihood: jax.Array):
    """Scaled leaf messages ``u_L`` and per-token log-normalisers (max-shifted softmax)."""
    peak = jnp.max(leaf_log_likelihood, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0)  # an all -inf row: impossible token
    scaled, log_total = _normalise(jnp.exp(leaf_log_likelihood - peak))
    return scaled, log_total + peak[..., 0]


def _gather_children(rules: jax.Array, child_messages: jax.Array) -> list:
    """``[u_{child k}(R[a, psi, k])]_k``, each ``(n, nodes, n_l, m)``."""
    s = rules.shape[-1]
    n, width, v = child_messages.shape
    groups = child_messages.reshape(n, width // s, s, v)
    # mode="clip": rule symbols are in range by construction; the default "fill" mode
    # costs compile time that grows steeply with L.
    return [jnp.take(groups[:, :, k, :], rules[..., k], axis=-1, mode="clip") for k in range(s)]


def _upward_step(rules: jax.Array, child_messages: jax.Array):
    """``u_{l,j}(a) ∝ Σ_psi Π_k u_{l+1, j*s+k}(R_l[a, psi, k])`` (DESIGN.md §3).

    Returns the normalised message and ``log(normaliser) - log m`` per node (the ``1/m``
    is the uniform rule prior).
    """
    gathered = _gather_children(rules, child_messages)
    product = gathered[0]
    for factor in gathered[1:]:
        product = product * factor
    message, log_total = _normalise(jnp.sum(product, axis=-1))
    return message, log_total - jnp.log(rules.shape[1])


def _upward(grammar: Grammar, leaf_log_likelihood: jax.Array) -> Upward:
    cfg = grammar.config
    message, log_norm = _leaf_messages(leaf_log_likelihood)
    log_evidence = jnp.sum(log_norm, axis=-1)
    messages = [message]
    for level in range(cfg.L - 1, -1, -1):
        message, log_norm = _upward_step(grammar.rules[level], message)
        log_evidence = log_evidence + jnp.sum(log_norm, axis=-1)
        messages.insert(0, message)
    # Root: p(obs) = Σ_a u_0(a) / n_c, with u_0 normalised to sum to one.
    log_evidence = log_evidence - jnp.log(cfg.n_classes)
    return Upward(tuple(messages), messages[0][:, 0], log_evidence)


def _downward_step(rules: jax.Array, parent_downward: jax.Array, child_upward: jax.Array):
    """``w_{l+1, j*s+k}(b) ∝ Σ_a w_{l,j}(a) Σ_psi [R[a,psi,k] = b] Π_{k'≠k} u_{k'}(R[a,psi,k'])``.

    The exclusive products use prefix/suffix products (no division, so zeros are safe);
    the sum over ``(a, psi)`` with ``R[a, psi, k] = b`` is a one-hot contraction.
    """
    s = rules.shape[-1]
    v = child_upward.shape[-1]
    n, nodes, _ = parent_downward.shape
    gathered = _gather_children(rules, child_upward)
    prefix = [jnp.ones_like(gathered[0])]
    for factor in gathered[:-1]:
        prefix.append(prefix[-1] * factor)
    suffix = jnp.ones_like(gathered[0])
    children = [None] * s
    for k in range(s - 1, -1, -1):
        weight = parent_downward[..., None] * prefix[k] * suffix  # (n, nodes, n_l, m)
        onehot = jax.nn.one_hot(rules[..., k], v, dtype=weight.dtype)  # (n_l, m, v)
        children[k] = jnp.einsum("xjam,amb->xjb", weight, onehot, precision=_HIGHEST)
        suffix = suffix * gathered[k]
    stacked = jnp.stack(children, axis=2).reshape(n, nodes * s, v)
    return _normalise(stacked)[0]


def _marginals(grammar: Grammar, leaf_log_likelihood: jax.Array) -> BPResult:
    cfg = grammar.config
    up = _upward(grammar, leaf_log_likelihood)
    n = leaf_log_likelihood.shape[0]
    dtype = up.messages[0].dtype
    downward = [jnp.full((n, 1, cfg.n_classes), 1 / cfg.n_classes, dtype)]
    for level in range(cfg.L):
        downward.append(_downward_step(grammar.rules[level], downward[-1], up.messages[level + 1]))
    marginals = tuple(_normalise(u * w)[0] for u, w in zip(up.messages, downward))
    return BPResult(marginals, up.messages, tuple(downward), up.log_evidence)


def _check_leaf_log_likelihood(grammar: Grammar, leaf_log_likelihood) -> jax.Array:
    if not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must be a Grammar, got {type(grammar).__name__}")
    cfg = grammar.config
    leaf_log_likelihood = jnp.asarray(leaf_log_likelihood)
    if leaf_log_likelihood.ndim != 3 or leaf_log_likelihood.shape[1:] != (cfg.d, cfg.v):
        raise ValueError(
            f"leaf_log_likelihood has shape {leaf_log_likelihood.shape}, expected "
            f"(n, d, v) = (n, {cfg.d}, {cfg.v})")
    if not jnp.issubdtype(leaf_log_likelihood.dtype, jnp.floating):
        raise ValueError(f"leaf_log_likelihood has dtype {leaf_log_likelihood.dtype}; "
                         "it must be floating point")
    return leaf_log_likelihood


_upward_jit = jax.jit(_upward)
_marginals_jit = jax.jit(_marginals)


def upward(grammar: Grammar, leaf_log_likelihood) -> Upward:
    """Upward pass only: class posterior and ``log p(observation)`` (the fast path).

    Args:
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods ``log p(obs_i | x0_i = a)``.

    Returns:
      :class:`Upward`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 2)
      >>> loglik = jnp.log(jax.nn.one_hot(x.tokens, 8) * 0.9 + 0.1 / 8)
      >>> bool(jnp.all(jnp.argmax(upward(g, loglik).class_posterior, -1) == x.classes))
      True
    """
    return _upward_jit(grammar, _check_leaf_log_likelihood(grammar, leaf_log_likelihood))


def marginals(grammar: Grammar, leaf_log_likelihood) -> BPResult:
    """Exact posterior marginals of every level and the log-evidence (DESIGN.md §3).

    Args:
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)`` log-likelihoods ``log p(obs_i | x0_i = a)``.

    Returns:
      :class:`BPResult`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 4)
      >>> bp = marginals(g, jnp.log(jax.nn.one_hot(x.tokens, 8) + 1e-30))
      >>> [tuple(mu.shape) for mu in bp.marginals]
      [(4, 1, 8), (4, 2, 8), (4, 4, 8), (4, 8, 8)]
      >>> bool(jnp.allclose(bp.marginals[-1], jax.nn.one_hot(x.tokens, 8)))
      True
    """
    return _marginals_jit(grammar, _check_leaf_log_likelihood(grammar, leaf_log_likelihood))


def _sample_tree(key: jax.Array, grammar: Grammar, messages: tuple, class_posterior) -> Data:
    """One exact draw of the whole tree per datum from ``p(tree | observation)``.

    Root from its posterior; then, top-down, for each sampled symbol ``a`` the rule
    ``psi`` with probability ``∝ Π_k u_{child k}(R[a, psi, k])`` (DESIGN.md §3).
    """
    cfg = grammar.config
    keys = jax.random.split(key, cfg.L + 1)
    n = class_posterior.shape[0]
    symbols = jax.random.categorical(keys[0], jnp.log(class_posterior))[:, None].astype(jnp.int32)
    latents, psis = [symbols], []
    for level in range(cfg.L):
        chosen = jnp.take(grammar.rules[level], symbols, axis=0, mode="clip")  # (n, nodes, m, s)
        nodes = symbols.shape[1]
        groups = messages[level + 1].reshape(n, nodes, cfg.s, -1)
        weight = jnp.ones(chosen.shape[:-1], groups.dtype)
        for k in range(cfg.s):
            weight = weight * jnp.take_along_axis(groups[:, :, k, :], chosen[..., k], axis=-1,
                                                  mode="clip")
        psi = jax.random.categorical(keys[level + 1], jnp.log(weight)).astype(jnp.int32)
        children = jnp.take_along_axis(chosen, psi[..., None, None], axis=2, mode="clip")[:, :, 0, :]
        symbols = children.reshape(n, nodes * cfg.s)
        latents.append(symbols)
        psis.append(psi)
    digits = jnp.concatenate([latents[0]] + psis, axis=1)
    return Data(latents[-1], latents[0][:, 0], tuple(latents), digits)


@partial(jax.jit, static_argnames="num_samples")
def _sample_posterior(key, grammar, leaf_log_likelihood, num_samples):
    up = _upward(grammar, leaf_log_likelihood)
    draws = jax.vmap(lambda k: _sample_tree(k, grammar, up.messages, up.class_posterior))(
        jax.random.split(key, num_samples))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), draws)  # (n, num_samples, ...)


def sample_posterior(key: jax.Array, grammar: Grammar, leaf_log_likelihood,
                     num_samples: int = 1) -> Data:
    """Exact draws of whole trees from ``p(tree | observation)`` (DESIGN.md §3).

    This is exact backward diffusion from the observation's time in one shot.

    Args:
      key: a PRNG key.
      grammar: the rules.
      leaf_log_likelihood: ``(n, d, v)``.
      num_samples: independent draws per datum (static).

    Returns:
      :class:`Data` with a sample axis after the batch axis: ``tokens`` ``(n, S, d)``,
      ``classes`` ``(n, S)``, ``latents[l]`` ``(n, S, s**l)``, ``digits`` ``(n, S, 1+N)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 3)
      >>> draw = sample_posterior(jax.random.key(2), g, jnp.zeros((3, 8, 8)), num_samples=5)
      >>> draw.tokens.shape
      (3, 5, 8)
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples = {num_samples!r} must be a positive integer")
    loglik = _check_leaf_log_likelihood(grammar, leaf_log_likelihood)
    return _sample_posterior(key, grammar, loglik, num_samples)
