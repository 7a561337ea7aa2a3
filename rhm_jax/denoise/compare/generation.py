"""Generated sequences: the network's samples, BP's in the same sampler, their statistics.

* :func:`network_samples` and :func:`bp_chain_samples` generate from pure noise with the
  network's reverse chain, and with exact BP in the network's place (the sampler's floor);
* :func:`sample_stats` parses sequences: valid fraction per level, class histogram, copies
  of a training set (:func:`copy_flags`, :func:`copy_fraction`);
* :func:`forward_backward_pair` runs the forward–backward experiment ``P_l(t)`` with the
  network's reverse chain and with exact BP, on the same data and noise.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.denoise.compare.common import host_chunks
from rhm_jax.denoise.sampling import (Denoiser, check_num_steps, generate, prior_sample,
                                      reverse_chain)
from rhm_jax.grammar import Grammar, check_grammar, with_inverse_tables
from rhm_jax.parsing import parse
from rhm_jax.stats import mean_se
from rhm_jax.validation import check_int, check_key, check_tokens

__all__ = ["copy_flags", "copy_fraction", "SampleStats", "sample_stats", "network_samples",
           "bp_chain_samples", "forward_backward_pair"]


def _row_keys(tokens) -> list[bytes]:
    tokens = np.ascontiguousarray(np.asarray(tokens, np.int32))
    return [row.tobytes() for row in tokens]


def copy_flags(samples, data) -> np.ndarray:
    """``(n,)`` bool: sample ``i`` equals some row of ``data`` (exact match of all tokens)."""
    samples, data = np.asarray(samples), np.asarray(data)
    if samples.ndim != 2 or data.ndim != 2 or samples.shape[1] != data.shape[1]:
        raise ValueError(f"samples {samples.shape} and data {data.shape} must be (n, d) and "
                         "(P, d) with the same d")
    seen = set(_row_keys(data))
    return np.fromiter((k in seen for k in _row_keys(samples)), bool, count=len(samples))


def copy_fraction(samples, data) -> float:
    """Fraction of ``samples`` that copy a row of ``data``.

    Examples:
      >>> copy_fraction([[0, 1], [1, 1], [2, 2]], [[1, 1], [0, 1], [3, 3]])
      0.6666666666666666
    """
    return float(copy_flags(samples, data).mean())


class SampleStats(NamedTuple):
    """Statistics of a set of sequences (generated, or exact RHM samples).

    Attributes:
      valid, valid_se: ``(L+1,)`` mean fraction of valid nodes per level (the parser's
        validity: the node's whole subtree is produced by the rules) and its standard error.
      fully_valid, fully_valid_se: fraction of sequences valid at the root (every node).
      class_histogram: ``(n_classes,)`` counts of the parsed class of the valid sequences.
      class_tv: total-variation distance of that histogram from uniform (NaN if none).
      copy, copy_se: fraction of sequences that copy a training datum (``None`` without a
        training set).
      copy_perfect: what a perfect generaliser (exact RHM samples) copies, ``P / P_max``.
      distinct: fraction of distinct sequences among the samples.
      n: number of sequences.
    """

    valid: np.ndarray
    valid_se: np.ndarray
    fully_valid: float
    fully_valid_se: float
    class_histogram: np.ndarray
    class_tv: float
    copy: float | None
    copy_se: float | None
    copy_perfect: float | None
    distinct: float
    n: int


def sample_stats(grammar: Grammar, tokens, train_tokens=None) -> SampleStats:
    """Validity per level, class histogram and copying of ``(n, d)`` sequences.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, sample_grammar, sample_data
      >>> g = sample_grammar(jax.random.key(0), RHMConfig(v=8, m=2, s=2, L=3))
      >>> x = sample_data(jax.random.key(1), g, 100).tokens
      >>> stats = sample_stats(g, x, train_tokens=x)
      >>> stats.valid.tolist(), stats.copy
      ([1.0, 1.0, 1.0, 1.0], 1.0)
    """
    cfg = check_grammar(grammar).config
    tokens = np.asarray(check_tokens("tokens", tokens, cfg.d, cfg.v, batched=True))
    n = tokens.shape[0]
    tree = parse(grammar, jnp.asarray(tokens))
    per_level = [np.asarray(v, np.float64).mean(axis=1) for v in tree.valid]
    valid = np.array([x.mean() for x in per_level])
    valid_se = np.array([mean_se(x)[1] for x in per_level])
    root_valid = np.asarray(tree.valid[0][:, 0])
    fully, fully_se = mean_se(root_valid)
    classes = np.asarray(tree.latents[0][:, 0])[root_valid]
    histogram = np.bincount(classes, minlength=cfg.n_classes)
    tv = (0.5 * np.abs(histogram / histogram.sum() - 1.0 / cfg.n_classes).sum()
          if histogram.sum() else math.nan)
    copy = copy_se = perfect = None
    if train_tokens is not None:
        train = np.asarray(check_tokens("train_tokens", train_tokens, cfg.d, cfg.v, batched=True))
        copy, copy_se = mean_se(copy_flags(tokens, train))
        perfect = len({*_row_keys(train)}) / cfg.P_max
    distinct = len(set(_row_keys(tokens))) / n
    return SampleStats(valid, valid_se, fully, fully_se, histogram, float(tv), copy, copy_se,
                       perfect, distinct, n)


def network_samples(key, denoiser: Denoiser, n: int, num_steps: int | None = None, *,
                    chunk_size: int = 256) -> np.ndarray:
    """``(n, d)`` sequences generated by the network from pure noise (``denoise.generate``)."""
    key = check_key("key", key)
    n = check_int("n", n, 1)
    return host_chunks(lambda c, _: generate(jax.random.fold_in(key, c), denoiser,
                                               min(chunk_size, n), num_steps),
                        n, chunk_size, np.zeros(n))


@partial(jax.jit, static_argnames=("objective", "n", "num_steps"))
def _bp_chain(key, objective, grammar, n, num_steps):
    prior_key, chain_key = jax.random.split(key)
    x_1 = prior_sample(prior_key, objective.process, n)
    t = jnp.ones((n,), jnp.result_type(float))
    return reverse_chain(objective.bp_predictor(grammar), objective, chain_key, x_1, t,
                         num_steps)


def bp_chain_samples(key, objective, grammar: Grammar, n: int, num_steps: int | None = None,
                     *, chunk_size: int = 256) -> np.ndarray:
    """``(n, d)`` sequences from the network's sampler with exact BP in the network's place.

    The grid chain draws each step's tokens independently from their marginals, so even
    with exact marginals it is exact only as ``num_steps`` grows: its validity is the floor
    that the network's samples can reach with the same sampler and ``num_steps`` (exact BP
    samples, :func:`rhm_jax.sample_data`, are valid by construction). Masking's
    one-token-at-a-time chain (``num_steps=None``) is exact: every sample valid.
    """
    key = check_key("key", key)
    n = check_int("n", n, 1)
    num_steps = check_num_steps(objective.process, num_steps)
    grammar = with_inverse_tables(grammar)
    size = min(chunk_size, n)
    return host_chunks(lambda c, _: _bp_chain(jax.random.fold_in(key, c), objective, grammar,
                                               size, num_steps), n, chunk_size, np.zeros(n))


# ---- forward–backward ---------------------------------------------------------------------
def forward_backward_pair(key, denoiser: Denoiser, grammar: Grammar, times, n_data: int,
                          num_steps: int | None = None, **kwargs):
    """``(network, bp)`` :class:`~rhm_jax.experiments.ForwardBackwardResult` s: the
    network's reverse chain from ``x_t`` (``num_steps`` as in
    :func:`~rhm_jax.denoise.sampling.reverse_sample`) and exact BP, through the
    one code path of :func:`rhm_jax.experiments.forward_backward` with the same key, so
    the same data and noise. ``kwargs`` go to ``forward_backward`` (``chunk_size``,
    ``max_batch``, ``mesh``, ``progress``)."""
    from rhm_jax.denoise.sampling import experiment_denoiser
    from rhm_jax.experiments import forward_backward

    fn, params = experiment_denoiser(denoiser, num_steps)
    network = forward_backward(key, grammar, denoiser.process, times, n_data, denoiser=fn,
                               denoiser_params=params, **kwargs)
    exact = forward_backward(key, grammar, denoiser.process, times, n_data, **kwargs)
    return network, exact
