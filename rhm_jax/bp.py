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

Layout. Results are one array per level, ``(n, s**l, n_l)``. Internally messages are
``(n, n_l, s**l)``: symbols before nodes, so the gathers ``u[:, rules[a, psi, k]]`` copy
whole contiguous rows of nodes and fuse with the products and sums around them (the
measurements that chose this layout are in ``benchmarks/README.md``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.grammar import Grammar, InverseTable, inverse_table, max_slots_per_child
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


def _normalise(x: jax.Array, axis: int = 1):
    """Normalise ``axis``; all-zero slices become uniform. Returns (x, log of the sum)."""
    total = jnp.sum(x, axis=axis, keepdims=True)
    ok = total > 0
    normed = jnp.where(ok, x / jnp.where(ok, total, 1), 1 / x.shape[axis])
    return normed, jnp.log(jnp.squeeze(total, axis))


def _leaf_messages(leaf_log_likelihood: jax.Array):
    """Scaled leaf messages ``u_L`` ``(n, v, d)`` and per-token log-normalisers ``(n, d)``."""
    loglik = jnp.swapaxes(leaf_log_likelihood, 1, 2)
    peak = jnp.max(loglik, axis=1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0)  # an all -inf row: impossible token
    scaled, log_total = _normalise(jnp.exp(loglik - peak))
    return jax.lax.optimization_barrier(scaled), log_total + peak[:, 0]


def _rows(x: jax.Array, index) -> jax.Array:
    """``x[:, index]``: whole rows of the symbol axis (contiguous over nodes).

    mode="clip": indices are in range by construction, and the default "fill" mode makes
    XLA's compile time grow steeply with the tree size.
    """
    return jnp.take(x, index, axis=1, mode="clip")


UNROLL = 4


def _accumulate(body, count: int, init):
    """``Σ_i body(i)`` as a ``fori_loop`` unrolled ``UNROLL`` times.

    Unrolling lets XLA fuse a few gathers with their products and sum into one pass over
    memory; the loop keeps the program (hence compile time) small for large ``m``.
    """
    return jax.lax.fori_loop(0, count, body, init, unroll=min(UNROLL, count))


def _upward_step(rules: jax.Array, child: jax.Array):
    """``u_{l,j}(a) ∝ Σ_psi Π_k u_{l+1, j*s+k}(R_l[a, psi, k])`` (DESIGN.md §3).

    Layout ``(n, symbols, nodes)``. The sum over ``psi`` is unrolled so that XLA fuses the
    row gathers, products and sum into one pass that never materialises the
    ``(n, n_l, m, nodes)`` tensor (13x faster on CPU than gathering all slots at once).

    Returns the normalised message and ``log(normaliser) - log m`` per node (the ``1/m``
    is the uniform rule prior).
    """
    n_l, m, s = rules.shape
    n, v, width = child.shape
    groups = child.reshape(n, v, width // s, s)
    def add_rule(psi, total):
        product = _rows(groups[..., 0], rules[:, psi, 0])
        for k in range(1, s):
            product = product * _rows(groups[..., k], rules[:, psi, k])
        return total + product

    total = _accumulate(add_rule, m, jnp.zeros((n, n_l, width // s), child.dtype))
    # Barriers materialise the sum before its normalisation and the message before the
    # next level: otherwise XLA fuses the gathers into every consumer and recomputes them
    # (measured 15x slower at (32, 8, 2, 9), and compile time exponential in L).
    message, log_total = _normalise(jax.lax.optimization_barrier(total))
    message = jax.lax.optimization_barrier(message)
    return message, log_total - jnp.log(m)


def _upward(grammar: Grammar, leaf_log_likelihood: jax.Array):
    """Upward pass in the internal layout: (messages over levels, class posterior, log p)."""
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
    return tuple(messages), messages[0][:, :, 0], log_evidence


def _inverse_tables(grammar: Grammar) -> tuple:
    if grammar.inverse is not None:
        return grammar.inverse
    cfg = grammar.config  # traced rules: tables padded to the safe bound
    return tuple(inverse_table(r, v=cfg.v, num_slots=max_slots_per_child(cfg, level))
                 for level, r in enumerate(grammar.rules))


def _downward_step(table: InverseTable, parent: jax.Array, child_upward: jax.Array):
    """``w_{l+1, j*s+k}(b) ∝ Σ_{(a,psi): R[a,psi,k]=b} w_{l,j}(a) Π_{k'≠k} u_{k'}(R[a,psi,k'])``.

    The sum over slots with ``R[a, psi, k] = b`` runs over the inverse table's ``C``
    columns, each a fused row gather (a padded slot points at an all-zero parent row), so
    there is no scatter-add: on CPU this is 4-6x faster than a scatter or a one-hot matmul.
    """
    s, v, num_slots = table.parent.shape
    n, n_l, nodes = parent.shape
    padded = jnp.concatenate([parent, jnp.zeros((n, 1, nodes), parent.dtype)], axis=1)
    groups = child_upward.reshape(n, v, nodes, s)
    children = []
    for k in range(s):
        def add_slot(c, total, k=k):
            term = _rows(padded, table.parent[k, :, c])
            for other in range(s):
                if other != k:
                    term = term * _rows(groups[..., other], table.tuples[k, :, c, other])
            return total + term

        total = _accumulate(add_slot, num_slots, jnp.zeros((n, v, nodes), parent.dtype))
        children.append(jax.lax.optimization_barrier(total))
    stacked = jnp.stack(children, axis=-1).reshape(n, v, nodes * s)
    return jax.lax.optimization_barrier(_normalise(stacked)[0])  # see _upward_step


def _to_public(x: jax.Array) -> jax.Array:
    """Internal ``(n, symbols, nodes)`` → public ``(n, nodes, symbols)``."""
    return jnp.swapaxes(x, 1, 2)


def _marginals_internal(grammar: Grammar, leaf_log_likelihood: jax.Array):
    cfg = grammar.config
    messages, _, log_evidence = _upward(grammar, leaf_log_likelihood)
    n = leaf_log_likelihood.shape[0]
    dtype = messages[0].dtype
    downward = [jnp.full((n, cfg.n_classes, 1), 1 / cfg.n_classes, dtype)]
    for level, table in enumerate(_inverse_tables(grammar)):
        downward.append(_downward_step(table, downward[-1], messages[level + 1]))
    marginals = tuple(_normalise(u * w)[0] for u, w in zip(messages, downward))
    return marginals, messages, tuple(downward), log_evidence


def _marginals(grammar: Grammar, leaf_log_likelihood: jax.Array) -> BPResult:
    marginals, messages, downward, log_evidence = _marginals_internal(grammar, leaf_log_likelihood)
    return BPResult(*(tuple(map(_to_public, x)) for x in (marginals, messages, downward)),
                    log_evidence)


def _upward_public(grammar: Grammar, leaf_log_likelihood: jax.Array) -> Upward:
    messages, class_posterior, log_evidence = _upward(grammar, leaf_log_likelihood)
    return Upward(tuple(map(_to_public, messages)), class_posterior, log_evidence)


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


_upward_jit = jax.jit(_upward_public)
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
    ``messages`` are the upward messages in the internal ``(n, symbols, nodes)`` layout.
    """
    cfg = grammar.config
    n = class_posterior.shape[0]
    # All Gumbel noise in one draw (Gumbel-max = categorical): one RNG call compiles far
    # faster than L+1 categorical calls, and the barrier keeps it from being re-fused.
    sizes = [cfg.n_classes] + [cfg.m * cfg.s**level for level in range(cfg.L)]
    offsets = np.cumsum([0] + sizes)
    gumbel = jax.lax.optimization_barrier(
        jax.random.gumbel(key, (n, int(offsets[-1])), class_posterior.dtype))
    symbols = jnp.argmax(jnp.log(class_posterior) + gumbel[:, :offsets[1]], axis=-1)
    symbols = symbols[:, None].astype(jnp.int32)
    latents, psis = [symbols], []
    for level in range(cfg.L):
        nodes = symbols.shape[1]
        # (n, m, nodes, s): the m candidate tuples of each node's sampled symbol
        chosen = jnp.moveaxis(jnp.take(grammar.rules[level], symbols, axis=0, mode="clip"), 2, 1)
        groups = messages[level + 1].reshape(n, cfg.v, nodes, cfg.s)
        weight = 1
        for k in range(cfg.s):
            weight = weight * jnp.take_along_axis(groups[..., k], chosen[..., k], axis=1,
                                                  mode="clip")
        noise = gumbel[:, offsets[level + 1]:offsets[level + 2]].reshape(n, cfg.m, nodes)
        psi = jnp.argmax(jnp.log(weight) + noise, axis=1).astype(jnp.int32)
        children = jnp.take_along_axis(chosen, psi[:, None, :, None], axis=1, mode="clip")[:, 0]
        symbols = children.reshape(n, nodes * cfg.s)
        latents.append(symbols)
        psis.append(psi)
    digits = jnp.concatenate([latents[0]] + psis, axis=1)
    return Data(latents[-1], latents[0][:, 0], tuple(latents), digits)


@partial(jax.jit, static_argnames="num_samples")
def _sample_posterior(key, grammar, leaf_log_likelihood, num_samples):
    messages, class_posterior, _ = _upward(grammar, leaf_log_likelihood)
    draws = jax.vmap(lambda k: _sample_tree(k, grammar, messages, class_posterior))(
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
