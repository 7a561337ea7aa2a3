"""Forward–backward experiments: the phase transition of exact denoising (DESIGN.md §4).

Take ``x0`` from the RHM, noise it to time ``t``, reconstruct ``x̂0 ~ p(x0 | x_t)`` with
exact BP, and measure per level ``l``

* ``P_l(t)`` in *marginal* form: the mean over data and nodes of ``μ_{l,j}(true symbol)``;
* ``P_l(t)`` in *sampled* form: the fraction of nodes where one posterior draw of the whole
  tree keeps the true symbol (same expectation, higher variance: the two must agree);
* the fraction of changed tokens, ``1 - P_L`` (sampled).

Design. Per-datum PRNG keys (so results do not depend on chunking or on the number of
devices). Each data chunk goes through two compiled calls: one samples the data of every
grammar and computes their leaf log-likelihoods at every noise level (``vmap`` over the
levels; the only call that depends on the noise process), the other runs exact BP and both
estimators with the noise levels folded into BP's batch, one grammar after another. The BP
call is shared by every noise process of a config, so a sweep over processes compiles it
once. Sums and sums of squares are reduced inside the call, so memory is bounded by the
chunk size whatever ``n_data`` is. The chunk's batch axis is sharded over a ``"data"``
device mesh.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import bp
from rhm_jax.grammar import Grammar, sample_grammar, with_inverse_tables
from rhm_jax.sampling import _sample_data
from rhm_jax.sharding import (DATA_AXIS, auto_axes, batch_sharding, data_mesh, pad_to_multiple,
                              put_global)


class ForwardBackwardResult(NamedTuple):
    """``P_l(t)`` for K grammars, T noise levels and L+1 levels (level 0 = class).

    Attributes:
      times: ``(T,)`` noise levels (ε for the ε-process, t for the others).
      marginal: ``(K, T, L+1)`` per-grammar mean of the marginal estimator.
      marginal_se: ``(K, T, L+1)`` its standard error over data.
      sampled: ``(K, T, L+1)`` per-grammar mean of the sampled estimator.
      sampled_se: ``(K, T, L+1)`` its standard error over data.
      n_data: data per grammar and noise level.
    """

    times: np.ndarray
    marginal: np.ndarray
    marginal_se: np.ndarray
    sampled: np.ndarray
    sampled_se: np.ndarray
    n_data: int

    @property
    def changed_tokens(self) -> np.ndarray:
        """``(K, T)`` fraction of tokens that the sampled reconstruction changed."""
        return 1.0 - self.sampled[..., -1]

    def over_grammars(self, estimator: str = "marginal"):
        """Mean over grammars with two error bars, each ``(T, L+1)``.

        Returns:
          ``(mean, se_data, se_total)``: ``se_data`` combines the per-grammar standard
          errors over data; ``se_total`` is the standard error of the mean over grammars
          (data noise plus grammar-to-grammar variation; NaN for a single grammar).
        """
        mean = getattr(self, estimator)
        se = getattr(self, f"{estimator}_se")
        k = mean.shape[0]
        se_data = np.sqrt(np.sum(se**2, axis=0)) / k
        se_total = (np.std(mean, axis=0, ddof=1) / np.sqrt(k) if k > 1
                    else np.full(mean.shape[1:], np.nan))
        return mean.mean(axis=0), se_data, se_total


def _true_symbol_probability(marginal, symbols):
    """Mean over nodes of ``μ_{l,j}(true symbol)``: ``(n, n_l, nodes), (n, nodes) -> (n,)``."""
    picked = jnp.take_along_axis(marginal, symbols[:, None, :], axis=1, mode="clip")[:, 0]
    return jnp.mean(picked, axis=-1)


def _leaf_evidence(noise_keys, tokens, process, t):
    """Corrupt every datum to time ``t`` with its own key: ``(n, d, v)`` leaf log-likelihoods."""
    corrupt = jax.vmap(lambda key, x: process.corrupt(key, x[None], t)[0])
    return process.leaf_log_likelihood(corrupt(noise_keys, tokens), t)


def _observe(keys, grammars, times, process):
    """Data of every grammar and their leaf log-likelihoods at every noise level.

    Returns ``(latents, loglik, post_keys)``: ``latents[l]`` is ``(K, n, s**l)``, ``loglik``
    is ``(K, n, T, d, v)`` (datum-major, so the noise levels fold into the batch without a
    transpose), ``post_keys`` ``(n,)`` (the same for every grammar). The only part of a
    sweep that depends on the noise process.
    """
    split = jax.vmap(jax.random.split, in_axes=(0, None))(keys, 3)  # (n, 3)
    data_keys, noise_keys, post_keys = split[:, 0], split[:, 1], split[:, 2]
    over_times = jax.vmap(_leaf_evidence, in_axes=(None, None, None, 0), out_axes=1)

    def one_grammar(grammar):
        data = jax.vmap(lambda key: _sample_data(key, grammar, 1, None, True))(data_keys)
        data = jax.tree.map(lambda x: x[:, 0], data)
        return data.latents, over_times(noise_keys, data.tokens, process, times)

    latents, loglik = jax.vmap(one_grammar)(grammars)
    return latents, loglik, post_keys


def _chunk_sums(weights, grammar, latents, loglik, post_keys):
    """Sums and sums of squares over a data chunk of the per-datum P_l, both estimators.

    The noise levels are folded into BP's batch (datum ``i`` at level ``j`` is row
    ``i*T + j`` of a step): BP is per datum, so one batched BP serves every level. Steps
    take whole data with all their levels, about the library's cache-sized chunk of rows.
    Returns ``(T, 2, 2, L+1)``: [noise level][estimator (marginal, sampled)][sum, sum of
    squares][level].
    """
    n, num_times = loglik.shape[:2]
    s = grammar.config.s

    def per_data(batch):
        loglik, keys, latents = batch  # (c, T, d, v), (c,), [(c, s**l)]
        c = loglik.shape[0]
        rows = c * num_times
        keys = jnp.broadcast_to(keys[:, None], (c, num_times)).reshape(rows)
        latents = [jnp.repeat(x, num_times, axis=0) for x in latents]
        marginals, messages, _, _ = bp._marginals_internal(
            grammar, loglik.reshape(rows, *loglik.shape[2:]))
        # BP's internal node order is digit-reversed; the sampler returns natural order.
        marginal = jnp.stack([_true_symbol_probability(mu, bp.reverse_digits(x, s, axis=1))
                              for mu, x in zip(marginals, latents)], axis=-1)
        drawn = bp._sample_tree(keys, grammar, messages, marginals[0][:, :, 0]).latents
        sampled = jnp.stack([jnp.mean(d == x, axis=-1) for d, x in zip(drawn, latents)], axis=-1)
        stats = jnp.stack([marginal, sampled.astype(marginal.dtype)], axis=1)
        return stats.reshape(c, num_times, *stats.shape[1:])

    chunk = max(1, bp.default_chunk_size(grammar.config, n * num_times) // num_times)
    stats = bp._map_chunks(per_data, (loglik, post_keys, latents), chunk, interleave=False)
    w = weights[:, None, None, None].astype(stats.dtype)  # stats: (n, T, 2, L+1)
    return jnp.stack([jnp.sum(w * stats, 0), jnp.sum(w * stats * stats, 0)], axis=2)


def _estimate(weights, grammars, latents, loglik, post_keys):
    """BP and both estimators for every grammar and noise level: ``(K, T, 2, 2, L+1)``,
    summed over the whole mesh.

    Grammars run one after the other (``lax.map``): each already has a batch of ``n * T``
    data, and BP with one grammar's rules traces and runs faster than BP vmapped over a
    stack of rules (measured 1.3x per chunk on CPU, 2x faster tracing).
    """
    def one_grammar(inputs):
        grammar, latents, loglik = inputs
        return _chunk_sums(weights, grammar, latents, loglik, post_keys)

    return jax.lax.psum(jax.lax.map(one_grammar, (grammars, latents, loglik)), DATA_AXIS)


_DATA = jax.sharding.PartitionSpec(DATA_AXIS)
_BY_DATUM = jax.sharding.PartitionSpec(None, DATA_AXIS)  # (K, n, ...) arrays
_REPLICATED = jax.sharding.PartitionSpec()


@partial(jax.jit, static_argnames=("process", "mesh"))
def _observe_chunk(keys, grammars, process, times, mesh):
    """:func:`_observe` on every device's block of the chunk (``jax.shard_map``)."""
    return jax.shard_map(partial(_observe, process=process), mesh=mesh,
                         in_specs=(_DATA, _REPLICATED, _REPLICATED),
                         out_specs=(_BY_DATUM, _BY_DATUM, _DATA),
                         check_vma=False)(keys, grammars, times)


@partial(jax.jit, static_argnames=("mesh",))
def _estimate_chunk(weights, grammars, latents, loglik, post_keys, mesh):
    """:func:`_estimate` per device, the sums reduced over the mesh (replicated result).

    Independent of the noise process, so one compiled program serves every process of a
    config (compiling it is most of a small sweep's time).
    """
    # check_vma off: loop carries start replicated and become per-device.
    return jax.shard_map(_estimate, mesh=mesh,
                         in_specs=(_DATA, _REPLICATED, _BY_DATUM, _BY_DATUM, _DATA),
                         out_specs=_REPLICATED,
                         check_vma=False)(weights, grammars, latents, loglik, post_keys)


def _sweep_chunk(keys, weights, grammars, process, times, mesh):
    """Sums of one data chunk for every grammar and noise level: ``(K, T, 2, 2, L+1)``.

    Each device works on its own block of the chunk with no communication but the final
    sum: the programs compile for one device's shapes, however many devices there are.
    """
    latents, loglik, post_keys = _observe_chunk(keys, grammars, process, times, mesh)
    return _estimate_chunk(weights, grammars, latents, loglik, post_keys, mesh)


def _check_args(grammar, process, times, n_data, chunk_size):
    if not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must be a Grammar, got {type(grammar).__name__}")
    cfg = grammar.config
    if getattr(process, "config", None) != cfg:
        raise ValueError(f"process.config = {getattr(process, 'config', None)} differs from "
                         f"grammar.config = {cfg}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}")
    if np.any(~np.isfinite(times)) or times.min() < 0 or times.max() > 1:
        raise ValueError(f"times must lie in [0, 1], got values in [{times.min()}, {times.max()}]")
    for name, value in (("n_data", n_data), ("chunk_size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or value < 1):
            raise ValueError(f"{name} = {value!r} must be a positive integer")
    ranks = {r.ndim for r in grammar.rules}
    if ranks not in ({3}, {4}):
        raise ValueError("grammar.rules must all be (n_l, m, s) or all stacked (K, n_l, m, s)")
    return times


def forward_backward(key: jax.Array, grammar: Grammar, process, times, n_data: int, *,
                     chunk_size: int | None = None, max_batch: int = 2048,
                     mesh: jax.sharding.Mesh | None = None, progress: bool = False
                     ) -> ForwardBackwardResult:
    """Exact forward–backward experiment: ``P_l(t)`` for every level and noise level.

    Args:
      key: PRNG key; the data, noise and reconstructions of datum ``i`` use
        ``fold_in(key, i)``, the same for every noise level (common random numbers), so
        results do not depend on ``chunk_size`` or on the device count.
      grammar: one grammar, or a stack of K grammars of the same shape (from
        ``jax.vmap(sample_grammar, (0, None))``) for the quenched average over rules.
      process: a noise process of :mod:`rhm_jax.noise` built for ``grammar.config``.
      times: ``(T,)`` noise levels in ``[0, 1]`` (ε for the ε-process).
      n_data: data per grammar and noise level.
      chunk_size: data per compiled call; default ``max_batch // (K * T)`` (at least one
        per device), rounded up to a multiple of the device count.
      max_batch: bound on ``K * T * chunk_size``, which sets the memory of one call.
      mesh: device mesh with a ``"data"`` axis (default: all devices); explicit axes
        (``jax.make_mesh``'s default) are used as auto ones.
      progress: show a progress bar over chunks.

    Returns:
      :class:`ForwardBackwardResult`.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, EpsilonProcess, sample_grammar
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> g = sample_grammar(jax.random.key(0), cfg)
      >>> res = forward_backward(jax.random.key(1), g, EpsilonProcess(cfg), [0.0, 1.0], 64)
      >>> res.marginal.shape, float(res.marginal[0, 0, 0])
      ((1, 2, 4), 1.0)
    """
    times = _check_args(grammar, process, times, n_data, chunk_size)
    stacked = grammar.rules[0].ndim == 4
    grammars = grammar if stacked else jax.tree.map(lambda r: r[None], grammar)
    num_grammars = grammars.rules[0].shape[0]
    mesh = data_mesh() if mesh is None else auto_axes(mesh)
    num_devices = mesh.devices.size
    if chunk_size is None:
        chunk_size = max(1, max_batch // (num_grammars * len(times)))
    chunk_size = pad_to_multiple(min(chunk_size, pad_to_multiple(n_data, num_devices)), num_devices)
    num_chunks = math.ceil(n_data / chunk_size)
    dtype = jnp.zeros(()).dtype
    times_arr = jnp.asarray(times, dtype)
    sharding = batch_sharding(mesh)
    totals = np.zeros((num_grammars, len(times), 2, 2, grammar.config.L + 1), np.float64)
    chunks = range(num_chunks)
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc=f"{type(process).__name__} L={grammar.config.L}",
                      leave=False, unit="chunk")
    for chunk in chunks:
        index = chunk * chunk_size + np.arange(chunk_size)
        keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.asarray(index, jnp.uint32))
        weights = jnp.asarray(index < n_data, dtype)
        keys, weights = put_global((keys, weights), sharding)
        sums = _sweep_chunk(keys, weights, grammars, process, times_arr, mesh)
        totals += np.asarray(sums, np.float64)
    mean = totals[..., 0, :] / n_data
    var = np.maximum(totals[..., 1, :] / n_data - mean**2, 0.0)
    se = np.sqrt(var / max(n_data - 1, 1))
    return ForwardBackwardResult(times, mean[:, :, 0], se[:, :, 0], mean[:, :, 1], se[:, :, 1],
                                 int(n_data))


def sample_grammars(key: jax.Array, config, num_grammars: int) -> Grammar:
    """A stack of ``num_grammars`` independent grammars (leading axis K on every rule array)."""
    if isinstance(num_grammars, bool) or not isinstance(num_grammars, int) or num_grammars < 1:
        raise ValueError(f"num_grammars = {num_grammars!r} must be a positive integer")
    stack = jax.vmap(sample_grammar, in_axes=(0, None))(jax.random.split(key, num_grammars), config)
    return with_inverse_tables(stack)


def to_rows(result: ForwardBackwardResult, config, process_name: str, **extra) -> list[dict]:
    """Tidy rows: one per noise level × level, averaged over grammars, with error bars."""
    rows = []
    marg, marg_se, marg_se_total = result.over_grammars("marginal")
    samp, samp_se, samp_se_total = result.over_grammars("sampled")
    k = result.marginal.shape[0]
    for ti, t in enumerate(result.times):
        for level in range(config.L + 1):
            rows.append({
                "v": config.v, "m": config.m, "s": config.s, "L": config.L,
                "n_classes": config.n_classes, "process": process_name, "t": float(t),
                "level": level, "P_marginal": float(marg[ti, level]),
                "P_marginal_se": float(marg_se[ti, level]),
                "P_marginal_se_grammars": _nan_to_none(marg_se_total[ti, level]),
                "P_sampled": float(samp[ti, level]), "P_sampled_se": float(samp_se[ti, level]),
                "P_sampled_se_grammars": _nan_to_none(samp_se_total[ti, level]),
                "chance": 1.0 / (config.n_classes if level == 0 else config.v),
                "changed_tokens": float(1.0 - samp[ti, -1]),
                "n_data": result.n_data, "n_grammars": k, **extra})
    return rows


def _nan_to_none(x):
    x = float(x)
    return None if math.isnan(x) else x
