"""Forward–backward experiments: the phase transition of denoising
(``docs/theory/phase_transition.md``, ``docs/theory/denoisers.md``).

Take ``x0`` from the RHM, noise it to time ``t``, reconstruct ``x̂0`` and measure per level
``l``

* ``P_l(t)`` in *sampled* form: the fraction of nodes where ``x̂0``'s latent symbol equals
  ``x0``'s. The latents of ``x̂0`` come from the bottom-up parse (:func:`rhm_jax.parse`);
  an invalid node (no parse) counts as changed;
* the fraction of valid nodes of ``x̂0`` per level (1 for exact BP, whose draws are trees
  of the grammar);
* for exact BP only, ``P_l(t)`` in *marginal* form: the mean over data and nodes of
  ``μ_{l,j}(true symbol)`` (same expectation as the sampled form, lower variance: the two
  must agree).

``x̂0`` comes from exact BP posterior sampling (the default: ``x̂0 ~ p(x0 | x_t)``) or from
any :data:`Denoiser` ``denoise(params, key, x_t, t) -> x̂0`` (e.g. a trained network's
reverse chain); both go through the same code: the same data, noise, estimators, standard
errors, chunking and sharding.

Design. Per-datum PRNG keys (so results do not depend on chunking or on the number of
devices, except through a random denoiser's one key per block). Each data chunk goes
through two compiled calls: one samples the data of every grammar and their observations
at every noise level (``vmap`` over the levels; the only call that depends on the noise
process) — leaf log-likelihoods for BP, ``x_t`` for a denoiser —, the other reconstructs
and scores, with the noise levels folded into the batch, one grammar after another. The
BP call is shared by every noise process of a config, so a sweep over processes compiles
it once. Sums and sums of squares are reduced inside the call, so memory is bounded by
the chunk size whatever ``n_data`` is. The chunk's batch axis is sharded over a
``"data"`` device mesh.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import bp
from rhm_jax.stats import json_float
from rhm_jax.validation import check_fits, check_int, check_key
from rhm_jax.grammar import Grammar, check_grammar, sample_grammar, with_inverse_tables
from rhm_jax.noise import EpsilonProcess, Gaussian
from rhm_jax.parsing import parse_unchecked
from rhm_jax.sampling import sample_data_unchecked
from rhm_jax.sharding import (DATA_AXIS, auto_axes, batch_sharding, data_mesh, pad_to_multiple,
                              put_global, replicated)

#: ``denoise(params, key, x_t, t) -> x_hat0``: a pure, traceable function. ``params`` is
#: any pytree (replicated over the mesh), ``key`` one typed PRNG key for a block of ``c``
#: observations, ``x_t`` the block's observations (``(c, d)`` int for the discrete processes,
#: ``(c, d, v)`` float for the Gaussian one), ``t`` their ``(c,)`` float times; it returns
#: ``(c, d)`` integer tokens. Tokens outside ``[0, v)`` are allowed (they are invalid leaves).
Denoiser = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]

_ESTIMATORS = ("marginal", "sampled", "per_level_validity")


class ForwardBackwardResult(NamedTuple):
    """``P_l(t)`` for K grammars, T noise levels and L+1 levels (level 0 = class).

    Attributes:
      times: ``(T,)`` noise levels (ε for the ε-process, t for the others).
      marginal: ``(K, T, L+1)`` per-grammar mean of the marginal estimator; ``None`` for a
        denoiser other than exact BP (it needs the exact posterior marginals).
      marginal_se: ``(K, T, L+1)`` its standard error over data (``None`` with it; NaN
        for one datum, which has no spread).
      sampled: ``(K, T, L+1)`` per-grammar mean of the sampled estimator (an invalid node
        of ``x̂0`` counts as changed).
      sampled_se: ``(K, T, L+1)`` its standard error over data (NaN for one datum).
      n_data: data per grammar and noise level.
      per_level_validity: ``(K, T, L+1)`` mean fraction of the nodes of ``x̂0`` that are
        valid (their subtree is produced by the rules); 1 for exact BP.
      per_level_validity_se: ``(K, T, L+1)`` its standard error over data (NaN for one
        datum).
    """

    times: np.ndarray
    marginal: np.ndarray | None
    marginal_se: np.ndarray | None
    sampled: np.ndarray
    sampled_se: np.ndarray
    n_data: int
    per_level_validity: np.ndarray
    per_level_validity_se: np.ndarray

    @property
    def changed_tokens(self) -> np.ndarray:
        """``(K, T)`` fraction of tokens that the sampled reconstruction changed."""
        return 1.0 - self.sampled[..., -1]

    def over_grammars(self, estimator: str = "marginal"):
        """Mean over grammars with two error bars, each ``(T, L+1)``.

        Args:
          estimator: ``"marginal"``, ``"sampled"`` or ``"per_level_validity"``.

        Returns:
          ``(mean, se_data, se_total)``: ``se_data`` combines the per-grammar standard
          errors over data; ``se_total`` is the standard error of the mean over grammars
          (data noise plus grammar-to-grammar variation; NaN for a single grammar).
        """
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator = {estimator!r} must be one of "
                             f"{', '.join(map(repr, _ESTIMATORS))}")
        mean = getattr(self, estimator)
        if mean is None:
            raise ValueError(f"estimator = {estimator!r} is not available: the marginal "
                             "estimator needs exact BP (this result used another denoiser)")
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


def observe_batch(noise_keys, tokens, process, t, leaf_likelihood):
    """Corrupt every datum to time ``t`` with its own key. Returns the ``(n, d, v)`` leaf
    log-likelihoods (for BP) or the observations ``x_t`` themselves (for a denoiser)."""
    corrupt = jax.vmap(lambda key, x: process.corrupt(key, x[None], t)[0])
    x_t = corrupt(noise_keys, tokens)
    return process.leaf_log_likelihood(x_t, t) if leaf_likelihood else x_t


def _observe(keys, grammars, times, process, leaf_likelihood):
    """Data of every grammar and their observations at every noise level.

    Returns ``(latents, evidence, post_keys)``: ``latents[l]`` is ``(K, n, s**l)``,
    ``evidence`` is ``(K, n, T, d, v)`` leaf log-likelihoods (``leaf_likelihood``) or
    ``(K, n, T, ...)`` observations ``x_t`` (datum-major, so the noise levels fold into the
    batch without a transpose), ``post_keys`` ``(n,)`` (the same for every grammar). The
    only part of a sweep that depends on the noise process.
    """
    split = jax.vmap(jax.random.split, in_axes=(0, None))(keys, 3)  # (n, 3)
    data_keys, noise_keys, post_keys = split[:, 0], split[:, 1], split[:, 2]
    over_times = jax.vmap(observe_batch, in_axes=(None, None, None, 0, None), out_axes=1)

    def one_grammar(grammar):
        data = jax.vmap(lambda key: sample_data_unchecked(key, grammar, 1, None, True))(data_keys)
        data = jax.tree.map(lambda x: x[:, 0], data)
        return data.latents, over_times(noise_keys, data.tokens, process, times, leaf_likelihood)

    latents, evidence = jax.vmap(one_grammar)(grammars)
    return latents, evidence, post_keys


def bp_reconstruction(grammar, keys, loglik, latents):
    """Exact BP: one posterior draw of ``x̂0`` per row and the marginal estimator.

    Returns ``(tokens (rows, d), marginal (rows, L+1))``.
    """
    s = grammar.config.s
    marginals, messages, _, _ = bp.marginals_and_messages(grammar, loglik)
    # BP's internal node order is digit-reversed; the sampler returns natural order.
    marginal = jnp.stack([_true_symbol_probability(mu, bp.reverse_digits(x, s, axis=1))
                          for mu, x in zip(marginals, latents)], axis=-1)
    drawn = bp.sample_tree(keys, grammar, messages, marginals[0][:, :, 0])
    return drawn.tokens, marginal


def call_denoiser(denoiser, params, key, x_t, t, config):
    """``denoiser(params, key, x_t, t)``, its output checked (at trace time) and int32.

    Tokens outside ``[0, v)`` are invalid leaves; a value that int32 cannot hold (from a
    wider integer dtype, e.g. int64 with ``jax_enable_x64``) becomes ``-1``, invalid
    too, rather than wrapping to a token (``2**32 + 3`` is not ``3``).
    """
    x_hat = denoiser(params, key, x_t, t)
    shape, dtype = jnp.shape(x_hat), jnp.result_type(x_hat)
    want = (x_t.shape[0], config.d)
    if shape != want or dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"denoiser returned a {dtype} array of shape {shape}; it must return "
                         f"integer tokens of shape (c, d) = {want} for x_t of shape "
                         f"{tuple(x_t.shape)}")
    info = jnp.iinfo(dtype)
    if info.min < -(2**31) or info.max >= 2**31:  # traced: values cannot be checked here
        fits = (x_hat < 2**31) if info.min >= 0 else (x_hat >= -(2**31)) & (x_hat < 2**31)
        x_hat = jnp.where(fits, x_hat, -1)
    return x_hat.astype(jnp.int32)


def kept_and_valid(grammar, tokens, latents):
    """Per row and level: the fraction of nodes whose parsed symbol equals the true one
    (invalid nodes count as changed) and the fraction of valid nodes, each ``(rows, L+1)``."""
    tree = parse_unchecked(grammar, tokens)
    kept = jnp.stack([jnp.mean(ok & (x_hat == x), axis=-1)
                      for ok, x_hat, x in zip(tree.valid, tree.latents, latents)], axis=-1)
    valid = jnp.stack([jnp.mean(ok, axis=-1) for ok in tree.valid], axis=-1)
    return kept, valid


def _chunk_sums(weights, grammar, latents, evidence, post_keys, times, params, denoiser):
    """Sums and sums of squares over a data chunk of the per-datum estimators.

    The noise levels are folded into the batch (datum ``i`` at level ``j`` is row
    ``i*T + j`` of a step): reconstruction is per datum, so one batched call serves every
    level. Steps take whole data with all their levels, about the library's cache-sized
    chunk of rows. ``denoiser`` ``None`` is exact BP (``evidence`` = leaf log-likelihoods),
    otherwise ``evidence`` is ``x_t``. Returns ``(T, 3, 2, L+1)``: [noise level][estimator
    (marginal, sampled, validity)][sum, sum of squares][level]; the marginal slot is zero
    for a denoiser.
    """
    n, num_times = evidence.shape[:2]
    cfg = grammar.config

    def per_data(batch):
        evidence, keys, latents = batch  # (c, T, ...), (c,), [(c, s**l)]
        c = evidence.shape[0]
        rows = c * num_times
        keys = jnp.broadcast_to(keys[:, None], (c, num_times)).reshape(rows)
        latents = [jnp.repeat(x, num_times, axis=0) for x in latents]
        evidence = evidence.reshape(rows, *evidence.shape[2:])
        if denoiser is None:
            tokens, marginal = bp_reconstruction(grammar, keys, evidence, latents)
        else:
            # One key per block: the first datum's (distinct data, distinct blocks).
            tokens = call_denoiser(denoiser, params, keys[0], evidence, jnp.tile(times, c), cfg)
            marginal = jnp.zeros((rows, cfg.L + 1), times.dtype)
        kept, valid = kept_and_valid(grammar, tokens, latents)
        stats = jnp.stack([marginal, kept.astype(marginal.dtype), valid.astype(marginal.dtype)],
                          axis=1)
        return stats.reshape(c, num_times, *stats.shape[1:])

    chunk = max(1, bp.default_chunk_size(cfg, n * num_times) // num_times)
    stats = bp.map_chunks(per_data, (evidence, post_keys, latents), chunk, interleave=False)
    w = weights[:, None, None, None].astype(stats.dtype)  # stats: (n, T, 3, L+1)
    return jnp.stack([jnp.sum(w * stats, 0), jnp.sum(w * stats * stats, 0)], axis=2)


def _estimate(weights, grammars, latents, evidence, post_keys, times, params, denoiser):
    """Reconstruction and the estimators for every grammar and noise level:
    ``(K, T, 3, 2, L+1)``, summed over the whole mesh.

    Grammars run one after the other (``lax.map``): each already has a batch of ``n * T``
    data, so vmapping over grammars adds no parallelism, while BP with one grammar's rules
    gathers from plain tables where a vmapped stack needs batched gathers, which trace and
    run slower. To measure it, time ``python benchmarks/bench_phase.py --quick`` (several
    grammars a call) with ``jax.lax.map`` here replaced by ``jax.vmap``.
    """
    def one_grammar(inputs):
        grammar, latents, evidence = inputs
        return _chunk_sums(weights, grammar, latents, evidence, post_keys, times, params,
                           denoiser)

    return jax.lax.psum(jax.lax.map(one_grammar, (grammars, latents, evidence)), DATA_AXIS)


_DATA = jax.sharding.PartitionSpec(DATA_AXIS)
_BY_DATUM = jax.sharding.PartitionSpec(None, DATA_AXIS)  # (K, n, ...) arrays
_REPLICATED = jax.sharding.PartitionSpec()


@partial(jax.jit, static_argnames=("process", "mesh", "leaf_likelihood"))
def _observe_chunk(keys, grammars, process, times, mesh, leaf_likelihood):
    """:func:`_observe` on every device's block of the chunk (``jax.shard_map``)."""
    return jax.shard_map(partial(_observe, process=process, leaf_likelihood=leaf_likelihood),
                         mesh=mesh, in_specs=(_DATA, _REPLICATED, _REPLICATED),
                         out_specs=(_BY_DATUM, _BY_DATUM, _DATA),
                         check_vma=False)(keys, grammars, times)


@partial(jax.jit, static_argnames=("mesh", "denoiser"))
def _estimate_chunk(weights, grammars, latents, evidence, post_keys, times, params, mesh,
                    denoiser):
    """:func:`_estimate` per device, the sums reduced over the mesh (replicated result).

    With exact BP it is independent of the noise process, so one compiled program serves
    every process of a config (compiling it is most of a small sweep's time).
    """
    # check_vma off: loop carries start replicated and become per-device.
    return jax.shard_map(partial(_estimate, denoiser=denoiser), mesh=mesh,
                         in_specs=(_DATA, _REPLICATED, _BY_DATUM, _BY_DATUM, _DATA,
                                   _REPLICATED, _REPLICATED),
                         out_specs=_REPLICATED,
                         check_vma=False)(weights, grammars, latents, evidence, post_keys,
                                          times, params)


def _sweep_chunk(keys, weights, grammars, process, times, params, mesh, denoiser):
    """Sums of one data chunk for every grammar and noise level: ``(K, T, 3, 2, L+1)``.

    Each device works on its own block of the chunk with no communication but the final
    sum: the programs compile for one device's shapes, however many devices there are.
    """
    latents, evidence, post_keys = _observe_chunk(keys, grammars, process, times, mesh,
                                                  denoiser is None)
    return _estimate_chunk(weights, grammars, latents, evidence, post_keys, times, params,
                           mesh, denoiser)


#: Data (or starts) are told apart by ``fold_in(key, i)`` with a uint32 ``i``: beyond
#: ``2**32`` they would repeat.
MAX_DATA = 2**32


def check_data_count(name: str, value, minimum: int) -> int:
    """A number of data (or starts) ``>= minimum`` and at most :data:`MAX_DATA`."""
    value = check_int(name, value, minimum=minimum)
    if value > MAX_DATA:
        raise ValueError(f"{name} = {value} must be <= 2**32: each is told apart by a uint32 "
                         "index (fold_in), so more would repeat")
    return value


def check_sweep_args(key, grammar, process, times, n_data, chunk_size, max_batch, denoiser,
                     denoiser_params):
    """The checks shared by :func:`forward_backward` and
    :func:`rhm_jax.correlations.change_correlations`, before any work: returns ``(key
    (typed), times (float64), n_data, chunk_size, max_batch)``."""
    key = check_key("key", key)
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a legacy raw key: same draws, typed
    cfg = check_grammar(grammar, stacked=None).config
    if getattr(process, "config", None) != cfg:
        raise ValueError(f"process.config = {getattr(process, 'config', None)} differs from "
                         f"grammar.config = {cfg}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}")
    if np.any(~np.isfinite(times)) or times.min() < 0 or times.max() > 1:
        raise ValueError(f"times must lie in [0, 1], got values in [{times.min()}, {times.max()}]")
    n_data = check_data_count("n_data", n_data, minimum=1)
    max_batch = check_int("max_batch", max_batch, minimum=1)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if denoiser is None:
        if denoiser_params is not None:
            raise ValueError("denoiser_params is given but denoiser is None: exact BP "
                             "(the default denoiser) takes no parameters")
    else:
        if not callable(denoiser):
            raise TypeError(f"denoiser must be a function denoise(params, key, x_t, t), got "
                            f"{type(denoiser).__name__}")
        try:
            hash(denoiser)
        except TypeError:
            raise TypeError(f"denoiser must be hashable (it is a static argument of jax.jit), "
                            f"got an unhashable {type(denoiser).__name__}") from None
        if isinstance(process, EpsilonProcess):
            raise ValueError("process is an EpsilonProcess, which samples no observation x_t "
                             "(its noise is in the evidence only): a denoiser needs a sampled "
                             "process (Masking, UniformSubstitution, Gaussian)")
    return key, times, n_data, chunk_size, max_batch


def forward_backward_bytes(config, num_grammars: int, num_times: int, chunk_size: int, *,
                           exact: bool = True, gaussian: bool = False,
                           platform: str | None = None) -> int:
    """Bytes one compiled call of :func:`forward_backward` needs on a device, estimated
    before any work.

    With ``K`` grammars, ``T`` noise levels, ``c = chunk_size`` data on the device,
    ``N = (s**(L+1) - 1)/(s - 1)`` nodes and ``r = T·max(1, bp.default_chunk_size(config,
    c·T) // T)`` rows per reconstruction step:
    ``4·K·c·T·e`` (the observations: ``e = d·v`` leaf log-likelihoods for exact BP or
    Gaussian ``x_t``, ``e = d`` tokens otherwise) ``+ 4·K·c·N`` (the data's latents)
    ``+ r·4·v·(d + 3N)`` (one BP step: leaf log-likelihoods, then upward messages,
    downward messages and marginals at every node; ``r·12·N`` for a denoiser, whose own
    memory is not known here: the parse of its output).

    Examples:
      >>> from rhm_jax import RHMConfig
      >>> forward_backward_bytes(RHMConfig(v=8, m=2, s=2, L=3), 1, 2, 64, platform="cpu")
      253696
    """
    from rhm_jax.bp import default_chunk_size

    d, v = config.d, config.v
    nodes = (config.s ** (config.L + 1) - 1) // (config.s - 1)
    per_observation = d * v if exact or gaussian else d
    rows = num_times * max(1, default_chunk_size(config, chunk_size * num_times,
                                                 platform=platform) // num_times)
    step = rows * (4 * v * (d + 3 * nodes) if exact else 12 * nodes)
    return int(4 * num_grammars * chunk_size * (num_times * per_observation + nodes) + step)


def forward_backward(key: jax.Array, grammar: Grammar, process, times, n_data: int, *,
                     denoiser: Denoiser | None = None, denoiser_params: Any = None,
                     chunk_size: int | None = None, max_batch: int = 2048,
                     mesh: jax.sharding.Mesh | None = None, progress: bool = False
                     ) -> ForwardBackwardResult:
    """Forward–backward experiment: ``P_l(t)`` for every level and noise level.

    ``x̂0`` is an exact BP posterior draw (default) or the output of ``denoiser``; the
    latents of ``x̂0`` come from :func:`rhm_jax.parse` in both cases
    (``docs/theory/phase_transition.md``, ``docs/theory/denoisers.md``).

    Args:
      key: PRNG key; the data, noise and reconstructions of datum ``i`` use
        ``fold_in(key, i)``, the same for every noise level (common random numbers), so
        results do not depend on ``chunk_size`` or on the device count. A denoiser gets
        one key per block (that of the block's first datum): a random denoiser's draws
        then depend on the blocks, i.e. on ``chunk_size`` and the device count.
      grammar: one grammar, or a stack of K grammars of the same shape (from
        :func:`sample_grammars`) for the quenched average over rules.
      process: a noise process of :mod:`rhm_jax.noise` built for ``grammar.config``.
      times: ``(T,)`` noise levels in ``[0, 1]`` (ε for the ε-process).
      n_data: data per grammar and noise level, in ``[1, 2**32]`` (one datum has no
        standard error: NaN).
      denoiser: ``None`` for exact BP posterior sampling, or a :data:`Denoiser`
        ``denoise(params, key, x_t, t) -> x̂0`` (static: pass the same function object
        to reuse the compiled program). Needs a sampled process (not the ε-process).
        The marginal estimator is then unavailable (``None`` in the result).
      denoiser_params: the pytree passed as ``params`` (replicated over the mesh).
      chunk_size: data per compiled call; default ``max_batch // (K * T)`` (at least one
        per device), rounded up to a multiple of the device count.
      max_batch: bound on ``K * T * chunk_size``, which sets the memory of one call (a
        call that cannot fit, by :func:`forward_backward_bytes`, is refused before any
        work, with its size).
      mesh: device mesh with a ``"data"`` axis (default: all devices); explicit axes
        (``jax.make_mesh``'s default) are used as auto ones.
      progress: show a progress bar over chunks.

    Returns:
      :class:`ForwardBackwardResult`.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, EpsilonProcess, UniformSubstitution, sample_grammar
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> g = sample_grammar(jax.random.key(0), cfg)
      >>> res = forward_backward(jax.random.key(1), g, EpsilonProcess(cfg), [0.0, 1.0], 64)
      >>> res.marginal.shape, float(res.marginal[0, 0, 0]), float(res.per_level_validity.min())
      ((1, 2, 4), 1.0, 1.0)
      >>> def keep_noisy_tokens(params, key, x_t, t):  # x̂0 = x_t
      ...     return x_t
      >>> res = forward_backward(jax.random.key(1), g, UniformSubstitution(cfg), [0.0], 64,
      ...                        denoiser=keep_noisy_tokens)
      >>> res.marginal is None, float(res.sampled[0, 0, 0])
      (True, 1.0)
    """
    key, times, n_data, chunk_size, max_batch = check_sweep_args(
        key, grammar, process, times, n_data, chunk_size, max_batch, denoiser, denoiser_params)
    stacked = grammar.rules[0].ndim == 4
    grammars = grammar if stacked else jax.tree.map(lambda r: r[None], grammar)
    num_grammars = grammars.rules[0].shape[0]
    mesh = data_mesh() if mesh is None else auto_axes(mesh)
    num_devices = mesh.devices.size
    if chunk_size is None:
        chunk_size = max(1, max_batch // (num_grammars * len(times)))
    chunk_size = pad_to_multiple(min(chunk_size, pad_to_multiple(n_data, num_devices)), num_devices)
    cfg = grammar.config
    check_fits(f"forward_backward: one compiled call of {chunk_size} data x {len(times)} noise "
               f"levels x {num_grammars} grammars at d = {cfg.s}**{cfg.L}",
               forward_backward_bytes(cfg, num_grammars, len(times), chunk_size // num_devices,
                                      exact=denoiser is None,
                                      gaussian=isinstance(process, Gaussian)),
               advice="lower max_batch (or chunk_size), or L")
    num_chunks = math.ceil(n_data / chunk_size)
    dtype = jnp.zeros(()).dtype
    times_arr = jnp.asarray(times, dtype)
    sharding = batch_sharding(mesh)
    if denoiser_params is not None:
        denoiser_params = put_global(denoiser_params, replicated(mesh))
    totals = np.zeros((num_grammars, len(times), len(_ESTIMATORS), 2, grammar.config.L + 1),
                      np.float64)
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
        sums = _sweep_chunk(keys, weights, grammars, process, times_arr, denoiser_params, mesh,
                            denoiser)
        totals += np.asarray(sums, np.float64)
    mean = totals[..., 0, :] / n_data
    var = np.maximum(totals[..., 1, :] / n_data - mean**2, 0.0)
    # One datum has no spread: its error is undetermined (NaN), not 0.
    se = np.sqrt(var / (n_data - 1)) if n_data > 1 else np.full(mean.shape, np.nan)
    exact = denoiser is None
    return ForwardBackwardResult(
        times, mean[:, :, 0] if exact else None, se[:, :, 0] if exact else None,
        mean[:, :, 1], se[:, :, 1], n_data, mean[:, :, 2], se[:, :, 2])


def sample_grammars(key: jax.Array, config, num_grammars: int) -> Grammar:
    """A stack of ``num_grammars`` independent grammars (leading axis K on every rule array)."""
    num_grammars = check_int("num_grammars", num_grammars, minimum=1)
    stack = jax.vmap(sample_grammar, in_axes=(0, None))(jax.random.split(key, num_grammars), config)
    return with_inverse_tables(stack)


def to_rows(result: ForwardBackwardResult, config, process_name: str, **extra) -> list[dict]:
    """Tidy rows: one per noise level × level, averaged over grammars, with error bars.

    ``P_marginal*`` are ``None`` when the result has no marginal estimator (a denoiser
    other than exact BP); ``valid`` is the fraction of valid nodes of ``x̂0``. Every float
    goes through :func:`rhm_jax.stats.json_float`: a value that is NaN (an error from one
    datum or one grammar) is ``None``, never a bare NaN in a JSON row.
    """
    rows = []
    empty = np.full((len(result.times), config.L + 1), np.nan)
    marg, marg_se, marg_se_total = (result.over_grammars("marginal")
                                    if result.marginal is not None else (empty,) * 3)
    samp, samp_se, samp_se_total = result.over_grammars("sampled")
    valid, valid_se, valid_se_total = result.over_grammars("per_level_validity")
    k = result.sampled.shape[0]
    for ti, t in enumerate(result.times):
        for level in range(config.L + 1):
            rows.append({
                "v": config.v, "m": config.m, "s": config.s, "L": config.L,
                "n_classes": config.n_classes, "process": process_name, "t": float(t),
                "level": level, "P_marginal": json_float(marg[ti, level]),
                "P_marginal_se": json_float(marg_se[ti, level]),
                "P_marginal_se_grammars": json_float(marg_se_total[ti, level]),
                "P_sampled": json_float(samp[ti, level]),
                "P_sampled_se": json_float(samp_se[ti, level]),
                "P_sampled_se_grammars": json_float(samp_se_total[ti, level]),
                "valid": json_float(valid[ti, level]),
                "valid_se": json_float(valid_se[ti, level]),
                "valid_se_grammars": json_float(valid_se_total[ti, level]),
                "chance": 1.0 / (config.n_classes if level == 0 else config.v),
                "changed_tokens": json_float(1.0 - samp[ti, -1]),
                "n_data": result.n_data, "n_grammars": k, **extra})
    return rows

