"""Correlated changes: the spin statistics, the RHM experiment and the Gaussian-random-field
control (the estimator of :mod:`rhm_jax.correlations`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import bp
from rhm_jax.validation import check_bool, check_fits, check_int, check_key
from rhm_jax.experiments import (Denoiser, bp_reconstruction, call_denoiser, check_data_count,
                                 check_sweep_args, observe_batch)
from rhm_jax.sampling import sample_data_unchecked
from rhm_jax.sharding import DATA_AXIS, auto_axes, batch_sharding, data_mesh, pad_to_multiple, put_global


_DATA = jax.sharding.PartitionSpec(DATA_AXIS)
_REPLICATED = jax.sharding.PartitionSpec()


class SpinStatistics(NamedTuple):
    """Per-start sums of the connected correlations of one set of spins (one noise level).

    Attributes:
      changed: ``Σ_i <σ_i> / d``, the mean changed fraction.
      tree: ``(levels + 1,)`` ``S_h = Σ_{h(i,j) <= h} C_ij``; ``tree[0] = Σ_i C_ii``,
        ``tree[-1] = Σ_ij C_ij`` (when ``d = s**levels``).
      position: ``(d,)`` ``Σ_{|i-j| = r} C_ij`` over ordered pairs, ``r = 0 .. d-1``.
      matrix: ``(d, d)`` ``C_ij`` when asked for, else ``None``.
    """

    changed: jax.Array
    tree: jax.Array
    position: jax.Array
    matrix: jax.Array | None


def _autocorrelation(x: jax.Array) -> jax.Array:
    """``a[..., r] = Σ_i x_i x_{i+r}`` (no wrap-around) for ``r = 0 .. d-1``, by FFT."""
    d = x.shape[-1]
    f = jnp.fft.rfft(x, n=2 * d)
    return jnp.fft.irfft(f * jnp.conj(f), n=2 * d)[..., :d]


def spin_statistics(spins: jax.Array, s: int, with_matrix: bool = False) -> SpinStatistics:
    """Connected correlations of ``(n, d)`` spins over their ``n`` rows (trajectories).

    The ``1/n`` moments are used, so ``C_ii = <σ_i>(1 - <σ_i>)`` exactly. ``d`` must be a
    power of ``s`` for the tree sums (a ragged last subtree is not handled).
    """
    n, d = spins.shape
    sigma = spins.astype(jnp.float32)
    mean = jnp.mean(sigma, axis=0)
    levels = round(math.log(d, s))
    tree = []
    for h in range(levels + 1):
        block = sigma.reshape(n, d // s**h, s**h).sum(-1)
        centred = block - jnp.mean(block, 0)  # centred first: no float32 cancellation
        tree.append(jnp.sum(jnp.mean(centred**2, 0)))
    auto = jnp.mean(_autocorrelation(sigma), axis=0) - _autocorrelation(mean)
    position = auto * jnp.where(jnp.arange(d) == 0, 1.0, 2.0)  # ordered pairs: i<j and j<i
    matrix = None
    if with_matrix:
        centred = sigma - mean
        matrix = jnp.matmul(centred.T, centred, precision="highest") / n
    return SpinStatistics(jnp.mean(mean), jnp.stack(tree), position, matrix)


class ChangeCorrelations(NamedTuple):
    """Correlated changes per noise level (averaged over starts).

    Attributes:
      times: ``(T,)`` noise levels.
      changed: ``(T,)`` mean fraction of changed tokens, ``changed_se`` its error over starts.
      chi: ``(T,)`` susceptibility ``Σ_ij C_ij / Σ_i C_ii`` (ratio of start means; NaN where
        nothing changes), ``chi_se`` its delta-method error over starts.
      tree_distance: ``(T, levels + 1)`` mean ``C`` over pairs at tree distance ``h``.
      tree_pairs: ``(levels + 1,)`` ordered pairs at each tree distance.
      position: ``(T, d)`` mean ``C(r)`` over pairs at position distance ``r``.
      position_pairs: ``(d,)`` ordered pairs at each distance.
      xi: ``(T,)`` second-moment correlation length in positions (see the module doc).
      depth: ``(T,)`` mean tree depth ``h̄`` of the correlated chunk.
      class_kept: ``(T,)`` ``P_0`` (marginal form) over the same trajectories; ``None``
        for a denoiser or the Gaussian field.
      matrix: ``(T, d, d)`` mean ``C_ij`` over starts when asked for, else ``None``.
      per_start: ``(n_starts, T, 2)`` ``(Σ_ij C_ij, Σ_i C_ii)`` per start (the error bars).
      n_starts, n_trajectories: the sample sizes.
    """

    times: np.ndarray
    changed: np.ndarray
    changed_se: np.ndarray
    chi: np.ndarray
    chi_se: np.ndarray
    tree_distance: np.ndarray
    tree_pairs: np.ndarray
    position: np.ndarray
    position_pairs: np.ndarray
    xi: np.ndarray
    depth: np.ndarray
    class_kept: np.ndarray | None
    matrix: np.ndarray | None
    per_start: np.ndarray
    n_starts: int
    n_trajectories: int


def summarise_statistics(times, stats: dict, s: int, n_trajectories: int, class_kept=None):
    """Host side: start averages, ``χ`` with its ratio-estimator error, ``C(r)``, ``ξ``."""
    tree = np.asarray(stats["tree"], np.float64)          # (N, T, H+1)
    position = np.asarray(stats["position"], np.float64)  # (N, T, d)
    changed = np.asarray(stats["changed"], np.float64)    # (N, T)
    n, d = tree.shape[0], position.shape[-1]
    levels = tree.shape[-1] - 1
    total, diag = tree[..., -1], tree[..., 0]
    a, b = total.mean(0), diag.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = a / b
        resid = total - chi * diag
        chi_se = np.sqrt(np.sum(resid**2, 0) / max(n * (n - 1), 1)) / b
    tree_pairs = np.array([d] + [d * (s**h - s ** (h - 1)) for h in range(1, levels + 1)],
                          np.float64)
    tree_sums = np.diff(tree.mean(0), axis=-1, prepend=0.0)
    r = np.arange(d)
    position_pairs = np.where(r == 0, d, 2 * (d - r)).astype(np.float64)
    position_sums = position.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xi = np.sqrt(np.sum(r**2 * position_sums, -1) / (2 * np.sum(position_sums, -1)))
        depth = np.sum(np.arange(levels + 1) * tree_sums, -1) / np.sum(tree_sums, -1)
    matrix = None if stats.get("matrix") is None else np.asarray(stats["matrix"], np.float64).mean(0)
    return ChangeCorrelations(
        np.asarray(times), changed.mean(0), changed.std(0, ddof=1) / np.sqrt(n) if n > 1
        else np.full(changed.shape[1:], np.nan), chi, chi_se, tree_sums / tree_pairs,
        tree_pairs, position_sums / position_pairs, position_pairs, xi, depth,
        None if class_kept is None else np.asarray(class_kept, np.float64).mean(0), matrix,
        np.stack([total, diag], -1), n, n_trajectories)


# ---- the RHM experiment --------------------------------------------------------------------
def _one_start(key, grammar, process, times, n_trajectories, params, denoiser, with_matrix):
    """Every statistic of one start: ``n_trajectories`` trajectories at every noise level.

    The ``(trajectory, level)`` rows go through the reconstruction in cache-sized chunks
    (:func:`rhm_jax.bp.map_chunks`), so memory is ``O(n_trajectories · T · d)`` spins.
    """
    cfg = grammar.config
    num_times = times.shape[0]
    data_key, traj_key = jax.random.split(key)
    data = sample_data_unchecked(data_key, grammar, 1, None, True)
    x0 = data.tokens[0]
    latents = [x[0] for x in data.latents]
    traj_keys = jax.vmap(partial(jax.random.fold_in, traj_key))(
        jnp.arange(n_trajectories, dtype=jnp.uint32))
    split = jax.vmap(jax.random.split)(traj_keys)
    noise_keys, post_keys = split[:, 0], split[:, 1]
    rows = n_trajectories * num_times

    def per_rows(batch):  # rows of (trajectory, level), trajectory-major
        noise, post, t = batch
        c = t.shape[0]
        tokens = jnp.broadcast_to(x0, (c, cfg.d))
        # observe_batch corrupts a batch at one time: here one row per call.
        observed = jax.vmap(observe_batch, in_axes=(0, 0, None, 0, None))(
            noise[:, None], tokens[:, None], process, t, denoiser is None)[:, 0]
        if denoiser is None:
            rows_latents = [jnp.broadcast_to(x, (c, x.shape[0])) for x in latents]
            x_hat, marginal = bp_reconstruction(grammar, post, observed, rows_latents)
            class_prob = marginal[:, 0]
        else:
            x_hat = call_denoiser(denoiser, params, post[0], observed, t, cfg)
            class_prob = jnp.zeros((c,), t.dtype)
        return x_hat != x0, class_prob

    repeat = lambda x: jnp.repeat(x, num_times, axis=0)
    batch = (repeat(noise_keys), repeat(post_keys), jnp.tile(times, n_trajectories))
    chunk = bp.default_chunk_size(cfg, rows)
    spins, class_prob = bp.map_chunks(per_rows, batch, chunk, interleave=False)
    spins = spins.reshape(n_trajectories, num_times, cfg.d).swapaxes(0, 1)
    stats = jax.vmap(partial(spin_statistics, s=cfg.s, with_matrix=with_matrix))(spins)
    out = {"changed": stats.changed, "tree": stats.tree, "position": stats.position,
           "class_kept": class_prob.reshape(n_trajectories, num_times).mean(0)}
    if with_matrix:
        out["matrix"] = stats.matrix
    return out


@partial(jax.jit, static_argnames=("process", "n_trajectories", "mesh", "denoiser",
                                   "with_matrix"))
def _starts_chunk(keys, grammar, process, times, n_trajectories, params, mesh, denoiser,
                  with_matrix):
    """Per-start statistics of a chunk of starts, each device a block (``jax.shard_map``);
    starts run one after the other (``lax.map``) so memory is one start's spins."""
    def block(keys, grammar, times, params):
        return jax.lax.map(lambda k: _one_start(k, grammar, process, times, n_trajectories,
                                                params, denoiser, with_matrix), keys)

    return jax.shard_map(block, mesh=mesh, in_specs=(_DATA, _REPLICATED, _REPLICATED,
                                                     _REPLICATED),
                         out_specs=_DATA, check_vma=False)(keys, grammar, times, params)


class CorrelationBytes(NamedTuple):
    """Memory of a correlated-changes run: ``device`` (one compiled call) and ``host``
    (the per-start statistics of every start), in bytes."""

    device: int
    host: int


def _statistics_bytes(n_starts: int, num_times: int, d: int, levels: int,
                      with_matrix: bool) -> int:
    """Host bytes of the per-start statistics: float32 parts, their concatenation and
    the float64 summary, 16 bytes per value (``T·(d + levels + 3)`` values a start, plus
    ``T·d²`` with the matrix)."""
    per_start = num_times * (d + levels + 3) + (num_times * d * d if with_matrix else 0)
    return 16 * n_starts * per_start


def change_correlations_bytes(config, n_starts: int, n_trajectories: int, num_times: int, *,
                              with_matrix: bool = False, chunk_size: int = 8,
                              platform: str | None = None) -> CorrelationBytes:
    """Memory :func:`change_correlations` needs, estimated before any work.

    With ``R = n_trajectories · T`` rows of one start, ``N = (s**(L+1) - 1)/(s - 1)``
    nodes and ``c = bp.default_chunk_size(config, R)`` rows per BP step:

    * device: ``24·R·d`` (one start's spins, as bytes, float32 and their ``2d``-point
      FFTs) + ``4·v·(d + 3N)·c`` (one BP step: leaf log-likelihoods, then upward
      messages, downward messages and marginals at every node) + ``20·R`` (keys, times,
      class beliefs of the rows) + ``4·chunk_size·T·(d + L + 3)`` (the outputs of one
      call of ``chunk_size`` starts); with the matrix ``8·T·d²`` a start and
      ``4·chunk_size·T·d²`` more;
    * host: ``16·n_starts·T·(d + L + 3)`` (``+ T·d²`` a start with the matrix), see
      :func:`_statistics_bytes`.

    Examples:
      >>> from rhm_jax import RHMConfig
      >>> change_correlations_bytes(RHMConfig(v=8, m=2, s=2, L=3), 4, 8, 2, platform="cpu")
      CorrelationBytes(device=31424, host=1792)
    """
    from rhm_jax import bp

    d, rows = config.d, n_trajectories * num_times
    nodes = (config.s ** (config.L + 1) - 1) // (config.s - 1)
    chunk_rows = bp.default_chunk_size(config, rows, platform=platform)
    device = (24 * rows * d + 4 * config.v * (d + 3 * nodes) * chunk_rows + 20 * rows
              + 4 * chunk_size * num_times * (d + config.L + 3))
    if with_matrix:
        device += 8 * num_times * d * d + 4 * chunk_size * num_times * d * d
    return CorrelationBytes(
        int(device), _statistics_bytes(n_starts, num_times, d, config.L, with_matrix))


def _levels(num_times: int) -> str:
    return f"{num_times} noise level" + ("" if num_times == 1 else "s")


def _check_correlation_bytes(what: str, estimate: CorrelationBytes, advice: str) -> None:
    """Refuse a run whose call or whose statistics cannot fit (device, then host)."""
    check_fits(f"{what}: one compiled call", estimate.device, advice=advice)
    check_fits(f"{what}: the statistics of every start", estimate.host, host=True,
               advice=advice)


def change_correlations(key: jax.Array, grammar, process, times, n_starts: int,
                        n_trajectories: int, *, denoiser: Denoiser | None = None,
                        denoiser_params: Any = None, chunk_size: int | None = None,
                        with_matrix: bool = False, mesh: jax.sharding.Mesh | None = None,
                        progress: bool = False) -> ChangeCorrelations:
    """Correlated changes ``C_ij``, ``C(r)``, ``χ(t)`` and ``ξ(t)``
    (``docs/theory/correlations.md``).

    Args:
      key: PRNG key; start ``i`` uses ``fold_in(key, i)`` (its data, and trajectory ``j``'s
        forward noise and reconstruction from ``fold_in(., j)``), the same at every noise
        level: results do not depend on ``chunk_size`` or the device count.
      grammar: one grammar (not a stack).
      process: a noise process of :mod:`rhm_jax.noise` for ``grammar.config``.
      times: ``(T,)`` noise levels in ``[0, 1]``.
      n_starts: number of starts ``x0``, in ``[2, 2**32]`` (the error bars are over
        starts: one start has none).
      n_trajectories: trajectories per start (independent forward noise and draw each),
        at least 2.
      denoiser, denoiser_params: as in :func:`rhm_jax.experiments.forward_backward`
        (default exact BP).
      chunk_size: starts per compiled call (default one per device, at least 8).
      with_matrix: also return the full mean ``C_ij`` (``T·d²`` floats per start: small
        ``d`` only — checks and tests).
      mesh: device mesh with a ``"data"`` axis (default: all devices).
      progress: progress bar over chunks of starts.

    A run that cannot fit in memory (:func:`change_correlations_bytes`: one start's
    ``n_trajectories · T · d`` spins and a BP step on the device, ``n_starts · T · d``
    statistics on the host) is refused before any work, with its size.

    Returns:
      :class:`ChangeCorrelations`.

    Examples:
      >>> import jax
      >>> from rhm_jax import RHMConfig, Masking, sample_grammar
      >>> cfg = RHMConfig(v=8, m=2, s=2, L=3)
      >>> g = sample_grammar(jax.random.key(0), cfg)
      >>> res = change_correlations(jax.random.key(1), g, Masking(cfg), [0.0, 0.5], 4, 8)
      >>> res.chi.shape, float(res.changed[0]), res.tree_distance.shape
      ((2,), 0.0, (2, 4))
    """
    n_starts = check_data_count("n_starts", n_starts, minimum=2)
    key, times, n_starts, chunk_size, _ = check_sweep_args(
        key, grammar, process, times, n_starts, chunk_size, 1, denoiser, denoiser_params)
    n_trajectories = check_int("n_trajectories", n_trajectories, minimum=2)
    with_matrix = check_bool("with_matrix", with_matrix)
    if grammar.rules[0].ndim == 4:
        raise ValueError("grammar is a stack of grammars; change_correlations takes one "
                         "(loop over the stack for the quenched average)")
    mesh = data_mesh() if mesh is None else auto_axes(mesh)
    num_devices = mesh.devices.size
    chunk_size = pad_to_multiple(min(chunk_size or max(8, num_devices),
                                     pad_to_multiple(n_starts, num_devices)), num_devices)
    cfg = grammar.config
    _check_correlation_bytes(
        f"change_correlations(n_starts={n_starts}, n_trajectories={n_trajectories}) with "
        f"{_levels(len(times))} at d = {cfg.s}**{cfg.L}",
        change_correlations_bytes(cfg, n_starts, n_trajectories, len(times),
                                  with_matrix=with_matrix, chunk_size=chunk_size // num_devices),
        advice="lower n_trajectories, the number of noise levels, n_starts or L")
    times_arr = jnp.asarray(times, jnp.zeros(()).dtype)
    sharding = batch_sharding(mesh)
    if denoiser_params is not None:
        from rhm_jax.sharding import replicated
        denoiser_params = put_global(denoiser_params, replicated(mesh))
    chunks = range(math.ceil(n_starts / chunk_size))
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc=f"chi {type(process).__name__} L={grammar.config.L}",
                      leave=False, unit="chunk")
    parts = []
    for chunk in chunks:
        index = chunk * chunk_size + np.arange(chunk_size)
        keys = jax.vmap(partial(jax.random.fold_in, key))(jnp.asarray(index, jnp.uint32))
        out = _starts_chunk(put_global(keys, sharding), grammar, process, times_arr,
                            n_trajectories, denoiser_params, mesh, denoiser, with_matrix)
        parts.append(jax.tree.map(np.asarray, out))
    stats = jax.tree.map(lambda *x: np.concatenate(x)[:n_starts], *parts)
    class_kept = stats.pop("class_kept")
    class_kept = class_kept if denoiser is None else None
    return summarise_statistics(times, stats, grammar.config.s, n_trajectories, class_kept)


# ---- control without hierarchy: a 1-D Gaussian random field ---------------------------------
def _grf_spectrum(d: int, exponent: float) -> jax.Array:
    """``P_k ∝ k**(-a)`` on the ``d//2 + 1`` real-FFT modes, ``P_0 = 0`` (zero-mean field),
    normalised so the field has unit variance per site."""
    k = jnp.arange(d // 2 + 1, dtype=jnp.float32)
    power = jnp.where(k > 0, jnp.maximum(k, 1.0) ** (-exponent), 0.0)
    # Per-site variance of irfft(sqrt(P) * rfft(w, ortho), ortho) is Σ_modes P / d,
    # with the modes 0 < k < d/2 counted twice (±k).
    weight = jnp.where((k == 0) | (k == d // 2), 1.0, 2.0)
    return power * d / jnp.sum(weight * power)


def _grf_filter(white: jax.Array, gain: jax.Array) -> jax.Array:
    """A field whose covariance is circulant with eigenvalues ``gain**2``."""
    d = white.shape[-1]
    return jnp.fft.irfft(gain * jnp.fft.rfft(white, norm="ortho"), n=d, norm="ortho")


@partial(jax.jit, static_argnames=("d", "n_trajectories"))
def _grf_start(key, d, exponent, times, n_trajectories):
    """One start of the control: spins ``[sign(x̂0_i) != sign(x0_i)]`` per level."""
    power = _grf_spectrum(d, exponent)
    field_key, traj_key = jax.random.split(key)
    x0 = _grf_filter(jax.random.normal(field_key, (d,)), jnp.sqrt(power))
    keys = jax.random.split(traj_key, n_trajectories)

    def trajectory(key, t):
        noise_key, post_key = jax.random.split(key)
        alpha_bar = 1.0 - t
        x_t = jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1 - alpha_bar) * jax.random.normal(noise_key, (d,))
        # Mode by mode (the prior is diagonal in Fourier space): posterior of a N(0, P)
        # amplitude seen through y = sqrt(ab) x + sqrt(1-ab) η.
        denom = alpha_bar * power + (1 - alpha_bar)
        gain = jnp.where(denom > 0, jnp.sqrt(alpha_bar) * power / denom, 0.0)
        std = jnp.sqrt(jnp.where(denom > 0, power * (1 - alpha_bar) / denom, 0.0))
        mean = jnp.fft.irfft(gain * jnp.fft.rfft(x_t, norm="ortho"), n=d, norm="ortho")
        x_hat = mean + _grf_filter(jax.random.normal(post_key, (d,)), std)
        return jnp.sign(x_hat) != jnp.sign(x0)

    spins = jax.vmap(jax.vmap(trajectory, in_axes=(None, 0)), in_axes=(0, None))(keys, times)
    stats = jax.vmap(partial(spin_statistics, s=2))(spins.swapaxes(0, 1))
    return {"changed": stats.changed, "tree": stats.tree, "position": stats.position}


def grf_change_correlations_bytes(d: int, n_starts: int, n_trajectories: int,
                                  num_times: int) -> CorrelationBytes:
    """Memory :func:`grf_change_correlations` needs, estimated before any work.

    Every start, trajectory and noise level is computed at once (``vmap``), so the device
    holds ``40·n_starts·n_trajectories·T·d`` bytes: per site the noisy field, the
    posterior mean, noise and draw (float32), their half-length complex spectra and the
    spins with their ``2d``-point FFT. The host holds ``16·n_starts·T·(d + log2 d + 3)``
    (:func:`_statistics_bytes`).

    Examples:
      >>> grf_change_correlations_bytes(128, 24, 24, 3)
      CorrelationBytes(device=8847360, host=158976)
    """
    levels = max(d.bit_length() - 1, 0)
    return CorrelationBytes(40 * n_starts * n_trajectories * num_times * d,
                            _statistics_bytes(n_starts, num_times, d, levels, False))


#: Largest ``d`` of the Gaussian-field control: positions are int32, and ``d`` a power of 2.
GRF_MAX_D = 2**30


def grf_change_correlations(key: jax.Array, d: int, exponent: float, times, n_starts: int,
                            n_trajectories: int) -> ChangeCorrelations:
    """The control without hierarchy (``docs/theory/correlations.md``): a periodic 1-D
    Gaussian random field.

    ``x0`` has power spectrum ``P_k ∝ k**(-exponent)`` (``P_0 = 0``, unit variance per
    site); Gaussian diffusion ``x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) η`` with ``ᾱ = 1 - t``; the
    exact posterior ``p(x0 | x_t)`` is Gaussian and diagonal in Fourier space, sampled
    mode by mode. Spins are sign changes ``σ_i = [sign(x̂0_i) ≠ sign(x0_i)]``. Trajectories
    follow the RHM convention (own forward noise and draw each, shared across levels).
    ``d`` must be a power of 2 up to ``2**30`` (the tree sums use ``s = 2`` blocks, for
    comparison only). ``key`` is a PRNG key (typed or legacy), ``n_starts`` and
    ``n_trajectories`` at least 2. A run that cannot fit in memory
    (:func:`grf_change_correlations_bytes`) is refused before any work, with its size.
    """
    key = check_key("key", key)
    d = check_int("d", d, minimum=2)
    if d & (d - 1):
        raise ValueError(f"d = {d} must be a power of 2")
    n_starts = check_int("n_starts", n_starts, minimum=2)
    n_trajectories = check_int("n_trajectories", n_trajectories, minimum=2)
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or times.size == 0 or np.any(~np.isfinite(times)) or (
            times.min() < 0 or times.max() > 1):
        raise ValueError(f"times must be a non-empty 1-d array in [0, 1], got {times}")
    exponent = float(exponent)
    if not math.isfinite(exponent) or exponent < 0:
        raise ValueError(f"exponent = {exponent} must be a finite number >= 0")
    _check_correlation_bytes(
        f"grf_change_correlations(d={d}, n_starts={n_starts}, "
        f"n_trajectories={n_trajectories}) with {_levels(times.size)}",
        grf_change_correlations_bytes(d, n_starts, n_trajectories, times.size),
        advice="lower d, n_starts, n_trajectories or the number of noise levels")
    if d > GRF_MAX_D:
        raise ValueError(f"d = {d} must be <= 2**30 (token positions are int32)")
    keys = jax.random.split(key, n_starts)
    run = jax.vmap(_grf_start, in_axes=(0, None, None, None, None))
    stats = jax.tree.map(np.asarray, run(keys, d, exponent, jnp.asarray(times, jnp.float32),
                                         n_trajectories))
    return summarise_statistics(times, stats, 2, n_trajectories)


