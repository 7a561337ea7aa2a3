"""The posterior of the empirical distribution of a training set.

A network trained on ``P`` data can at best learn the optimum of its loss on that set: the
exact posterior of the empirical distribution, ``p_emp(x0 | x_t) ∝ Σ_μ q(x_t | x^μ)
[x0 = x^μ]`` (``docs/theory/denoisers.md``). :func:`empirical_marginals` computes its
per-token marginals; :func:`empirical_target` turns marginals into what a loss targets.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.denoise.objectives import D3PMBound
from rhm_jax.noise import safe_log
from rhm_jax.validation import check_int

__all__ = ["empirical_marginals", "empirical_marginals_traced", "empirical_target"]


def empirical_marginals_traced(train_tokens, loglik, chunk: int):
    """Traceable :func:`empirical_marginals`, without its checks (for use inside ``jit``).

    An online log-sum-exp over chunks of the training set (running max, running
    normaliser, running weighted one-hot sum).

    Args:
      train_tokens: ``(P, d)`` integer training data (``P >= 1``).
      loglik: ``(n, d, v)`` leaf log-likelihoods of the observations.
      chunk: training data per scan step (static).

    Returns:
      ``(marginals, log_evidence)`` as :func:`empirical_marginals` returns them.
    """
    n, d, v = loglik.shape
    P = train_tokens.shape[0]
    steps = -(-P // chunk)
    pad = steps * chunk - P
    rows = jnp.concatenate([train_tokens, jnp.zeros((pad, d), train_tokens.dtype)])
    real = jnp.arange(steps * chunk) < P
    positions = jnp.arange(d)[None, :]

    def body(carry, inputs):
        run_max, total, acc = carry
        block, ok = inputs  # (c, d), (c,)
        # log q(x_t | x^μ) up to a constant in μ: Σ_i log lik_i(x^μ_i)
        scores = jnp.sum(loglik[:, positions, block], axis=-1)  # (n, c)
        scores = jnp.where(ok[None], scores, -jnp.inf)
        new_max = jnp.maximum(run_max, jnp.max(scores, axis=-1))
        scale = jnp.exp(run_max - new_max)  # 0 on the first block (run_max = -inf)
        weights = jnp.exp(scores - new_max[:, None])
        onehot = jax.nn.one_hot(block, v, dtype=loglik.dtype)
        acc = acc * scale[:, None, None] + jnp.einsum(
            "nc,cdv->ndv", weights, onehot, precision=jax.lax.Precision.HIGHEST)
        return (new_max, total * scale + jnp.sum(weights, axis=-1), acc), None

    init = (jnp.full((n,), -jnp.inf, loglik.dtype), jnp.zeros((n,), loglik.dtype),
            jnp.zeros((n, d, v), loglik.dtype))
    (run_max, total, acc), _ = jax.lax.scan(
        body, init, (rows.reshape(steps, chunk, d), real.reshape(steps, chunk)))
    return acc / total[:, None, None], run_max + jnp.log(total) - math.log(P)


@partial(jax.jit, static_argnames=("chunk",))
def _empirical_jit(train_tokens, loglik, chunk):
    return empirical_marginals_traced(train_tokens, loglik, chunk)


def empirical_marginals(train_tokens, leaf_log_likelihood, *, chunk_size: int = 512):
    """Per-token marginals of the posterior of the empirical distribution (``docs/theory/denoisers.md``).

    ``p_emp(x0 | x_t) ∝ Σ_μ q(x_t | x^μ) [x0 = x^μ]`` over the ``P`` training data: the
    optimum of any denoising loss on that training set (a network that memorises tracks
    it). Exact: ``log q(x_t | x^μ) = Σ_i log lik_i(x^μ_i)`` for every datum, normalised by a
    log-sum-exp over the training set, ``chunk_size`` data at a time.

    Args:
      train_tokens: ``(P, d)`` integer training data.
      leaf_log_likelihood: ``(n, d, v)`` ``log lik_i(a)`` of the observations (a per-token
        constant does not matter), e.g. ``process.leaf_log_likelihood(x_t, t)``.
      chunk_size: training data per step.

    Returns:
      ``(marginals, log_evidence)``: ``(n, d, v)`` per-token posterior marginals and
      ``(n,)`` ``log((1/P) Σ_μ q(x_t | x^μ))`` (with the leaf log-likelihoods' constants).
      With every datum of the RHM as the training set they are BP's leaf marginals and
      log-evidence. An observation that no training datum explains (e.g. a masked
      sequence none of them agrees with) has ``log_evidence`` about ``LOG_FLOOR`` or less;
      its marginals then come from the training data with the fewest contradictions.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> train = jnp.array([[0, 1], [0, 2], [1, 1]])
      >>> loglik = jnp.log(jnp.array([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]) + 1e-30)
      >>> mu, _ = empirical_marginals(train, loglik)  # x0_0 = 0 observed, x0_1 unknown
      >>> mu[0, 1].round(3).tolist()
      [0.0, 0.5, 0.5]
    """
    loglik = jnp.asarray(leaf_log_likelihood)
    if loglik.ndim != 3:
        raise ValueError(f"leaf_log_likelihood has shape {loglik.shape}, but must be (n, d, v)")
    train = np.asarray(train_tokens)
    if train.ndim != 2 or train.shape[1] != loglik.shape[1] or train.shape[0] == 0:
        raise ValueError(f"train_tokens has shape {train.shape}, but must be (P, d) with "
                         f"P >= 1 and d = {loglik.shape[1]}")
    if not np.issubdtype(train.dtype, np.integer) or train.min() < 0 or \
            train.max() >= loglik.shape[2]:
        raise ValueError(f"train_tokens must hold integer tokens in [0, v={loglik.shape[2]})")
    chunk_size = check_int("chunk_size", chunk_size, 1)
    return _empirical_jit(jnp.asarray(train, jnp.int32), loglik, min(chunk_size, len(train)))


def empirical_target(objective, marginals, loglik):
    """The loss's target computed from posterior marginals (traceable).

    Args:
      objective: the loss.
      marginals: ``(n, d, v)`` posterior marginals ``μ``, e.g. of the empirical posterior.
      loglik: ``(n, d, v)`` the observations' leaf log-likelihoods.

    Returns:
      ``(n, d, v)``: the marginals themselves, or for D3PM the message ``∝ μ / lik`` (what
      BP's downward message is for BP's marginals).
    """
    if isinstance(objective, D3PMBound):
        return jax.nn.softmax(safe_log(marginals) - loglik, axis=-1)
    return marginals
