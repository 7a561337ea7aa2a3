"""Correlated changes under forward–backward denoising (``docs/theory/correlations.md``).

For a start ``x0`` and a noise level ``t``, one *trajectory* is: fresh forward noise
``x_t ~ q(x_t | x0)`` and one reconstruction ``x̂0`` (an exact BP posterior draw
``x̂0 ~ p(x0 | x_t)``, or a :data:`~rhm_jax.experiments.Denoiser`). Convention (that of
Sclocchi, Favero, Wyart et al.): every trajectory of a start has its **own forward noise**
and its own reconstruction key, both shared across noise levels (common random numbers).
The ε-process samples no noise (its evidence is a deterministic function of ``x0``), so
there the trajectories of a start differ by the posterior draw only.

Spins ``σ_i = [x̂0_i ≠ x0_i]``. Per start, over its ``n_trajectories`` trajectories,
``C_ij = <σ_i σ_j> - <σ_i><σ_j>`` (the ``1/n`` moment, so ``C_ii = <σ_i>(1 - <σ_i>)``
exactly); everything below is then averaged over starts. Nothing of size ``(d, d)`` is
formed (unless asked for on small ``d``), thanks to three identities per start:

* ``Σ_ij C_ij = Var(Σ_i σ_i)`` — the numerator of ``χ = Σ_ij C_ij / Σ_i C_ii``;
* tree distance: with ``h(i, j)`` the number of levels up to the lowest common ancestor
  (``0`` for ``i = j``; positions ``i, j`` share their ancestor ``h`` levels up iff
  ``i // s**h == j // s**h``), ``S_h = Σ_{h(i,j) <= h} C_ij`` is the sum over the
  ``d / s**h`` subtrees of size ``s**h`` of the variance of the subtree's sum of spins;
  pairs at exactly ``h`` sum to ``S_h - S_{h-1}`` and there are ``d (s**h - s**(h-1))``
  ordered ones;
* position distance: ``Σ_{|i-j| = r} C_ij`` is the mean over trajectories of the
  autocorrelation of ``σ`` minus that of ``<σ>``, both by FFT (``O(d log d)``).

Correlation length (stated estimator): the second moment of the position correlations,
``ξ² = Σ_r r² N(r) C(r) / (2 Σ_r N(r) C(r))`` with ``N(r)`` the ordered pairs at distance
``r`` (for ``C(r) ∝ exp(-r/ξ)`` on a long line this gives ``ξ``), and in tree levels the
mean depth of the correlated chunk ``h̄ = Σ_h h D_h / Σ_h D_h`` with ``D_h = S_h - S_{h-1}``.

The Gaussian-random-field control (no hierarchy) is :func:`grf_change_correlations`.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import bp
from rhm_jax.validation import check_bool, check_fits, check_int, check_key, describe
from rhm_jax.experiments import (Denoiser, bp_reconstruction, call_denoiser, check_data_count,
                                 check_sweep_args, _observation)
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


def _summarise(times, stats: dict, s: int, n_trajectories: int, class_kept=None):
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
        # _observation corrupts a batch at one time: here one row per call.
        observed = jax.vmap(_observation, in_axes=(0, 0, None, 0, None))(
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
    return _summarise(times, stats, grammar.config.s, n_trajectories, class_kept)


# ---- the exponent ν from a finite-size data collapse ----------------------------------------
class CollapseFit(NamedTuple):
    """Result of :func:`collapse_exponent`.

    Attributes:
      nu: fitted ``ν = ln s / ln b``; ``nu_se`` its parametric-bootstrap standard error.
      growth: fitted ``b`` (the transition narrows by ``b`` per level); ``growth_se``.
      cost: collapse cost ``S`` at the optimum (≈ 1 for a collapse within the errors).
      log_growth: the coarse grid of ``ln b``; ``costs``: ``S`` on it.
      n_points: points compared.
      reason: ``None`` when every value is determined; otherwise why ``nu`` and ``growth``
        (or only their errors) are NaN.
    """

    nu: float
    nu_se: float
    growth: float
    growth_se: float
    cost: float
    log_growth: np.ndarray
    costs: np.ndarray
    n_points: int
    reason: str | None = None


def _collapse_cost(curves, log_b: float) -> tuple[float, int]:
    """Houdayer–Hartmann-style cost: every point against the linear interpolation of every
    other curve at the same scaled abscissa, in units of the combined standard error."""
    scaled = [((t - c) * math.exp(L * log_b), y, e) for L, t, y, e, c in curves]
    total, count = 0.0, 0
    for i, (x, y, e) in enumerate(scaled):
        for j, (xo, yo, eo) in enumerate(scaled):
            if i == j:
                continue
            inside = (x >= xo[0]) & (x <= xo[-1])
            if not inside.any():
                continue
            yi = np.interp(x[inside], xo, yo)
            ei = np.interp(x[inside], xo, eo)
            total += float(np.sum((y[inside] - yi) ** 2 / (e[inside] ** 2 + ei**2)))
            count += int(inside.sum())
    return (total / count if count else math.inf), count


def _peak_height(t: np.ndarray, y: np.ndarray) -> float:
    """Height of a sampled peak: the vertex of the parabola through the largest point and
    its two neighbours (less tied to where the grid falls than the largest point alone).
    Not positive when the curve never rises above zero (no peak)."""
    i = int(np.argmax(y))
    top = float(y[i])
    if 0 < i < len(y) - 1:
        a, b, c = np.polyfit(t[i - 1:i + 2] - t[i], y[i - 1:i + 2], 2)
        if a < 0:
            top = max(top, float(c - b * b / (4 * a)))
    return top


def _finite_real(name: str, value) -> float:
    """A finite real number (a bool is not one), as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number, got {describe(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value} must be finite")
    return float(value)


def _check_depths(depths) -> list[int]:
    """Depths as Python ints ``>= 1`` (a fractional depth is refused, not truncated)."""
    if isinstance(depths, (str, bytes)) or not hasattr(depths, "__len__"):
        raise TypeError(f"depths must be a sequence of integers, got {describe(depths)}")
    depths = [check_int(f"depths[{i}]", L, minimum=1) for i, L in enumerate(depths)]
    if len(set(depths)) < 2:
        raise ValueError(f"depths = {depths} must hold at least 2 distinct depths")
    return depths


#: Default coarse grid of ``ln b`` scanned by :func:`collapse_exponent`.
COLLAPSE_GRID = np.linspace(0.02, 2.5, 125)
COLLAPSE_GRID.setflags(write=False)


def collapse_exponent(depths, times, values, errors, centres, s: int, *, baseline: float = 0.0,
                      log_growth=None, n_boot: int = 200, seed: int = 0) -> CollapseFit:
    """The exponent ``ν`` from a finite-size data collapse of a peaked observable.

    Pure NumPy on measured curves (``docs/theory/mean_field.md``,
    ``docs/theory/correlations.md``). Near the transition of a depth-``L`` tree
    (``d = s**L`` tokens), the ansatz is
    ``(y_L(t) - baseline) ≈ A_L · f((t - t_L) · b**L)``: the curve is a fixed shape whose
    width shrinks by ``b = F'(p*)`` per level around the depth's centre ``t_L`` (the
    ``P_0`` midpoint, say), with an amplitude ``A_L`` free per depth. Each curve is
    divided by its peak height above the baseline (the vertex of a parabola through the
    largest point and its neighbours), so ``A_L`` drops out; ``b``
    minimises the collapse cost ``S`` (mean squared distance of every point from the linear
    interpolation of every other depth's curve at the same scaled abscissa, in units of the
    combined error) over a grid of ``ln b``. Since ``ξ = s**(levels)`` and the width is
    ``∝ b**(-L) = d**(-1/ν)``, ``ν = ln s / ln b``. Its error is the standard deviation of
    ``ν`` over ``n_boot`` parametric bootstrap replicas (each point redrawn from
    ``N(y, error)``, the whole fit repeated), inflated by ``sqrt(S)`` when the optimum's
    cost ``S`` exceeds 1 (as a reduced chi-square would be).

    Rules. Bad input raises (``ValueError``, or ``TypeError`` for a wrong type): depths
    that are not integers ``>= 1`` or fewer than 2 distinct ones; entries that do not
    match the depths; non-finite centres or baseline; per depth, ``times``, ``values`` and
    ``errors`` of different shapes, a negative finite error, or fewer than 3 finite
    points; a ``log_growth`` grid that is not 1-D, finite, positive (``b > 1``: the
    transition narrows with depth) and strictly increasing with at least 3 points;
    ``n_boot`` other than 0 or an integer ``>= 2``; ``seed`` not an integer ``>= 0``.
    A fit without meaning is *undetermined*: ``nu``, ``nu_se``, ``growth`` and
    ``growth_se`` are NaN and ``reason`` says why — when a depth's curve has no peak above
    the baseline (nothing to scale), when no two depths overlap at any ``b`` of the grid,
    or when the coarse optimum lies at either end of the grid (the minimum is outside the
    range scanned, or the cost is flat: curves that collapse at every ``b``, e.g. flat
    ones, fix no ``b``). When only some bootstrap replicas have their optimum at an end of
    the grid, ``nu`` stands but ``nu_se`` and ``growth_se`` are NaN (the grid would cut
    off their spread), with the count in ``reason``.

    Args:
      depths: ``(K,)`` depths ``L`` (at least 2 distinct).
      times: ``K`` arrays of noise levels (increasing), one per depth.
      values, errors: ``K`` arrays of the observable and its standard error (non-finite
        points are dropped).
      centres: ``(K,)`` the centre ``t_L`` of each depth's transition.
      s: branching factor.
      baseline: value of the observable away from the transition (``1`` for ``χ``).
      log_growth: coarse grid of ``ln b`` to scan (default :data:`COLLAPSE_GRID`, 125
        points in ``[0.02, 2.5]``); the optimum is refined on 41 points between its
        neighbours.
      n_boot: bootstrap replicas (0: no error bar, ``nu_se`` NaN).
      seed: NumPy seed of the bootstrap.

    Returns:
      :class:`CollapseFit`.
    """
    depths = _check_depths(depths)
    if not (len(times) == len(values) == len(errors) == len(centres) == len(depths)):
        raise ValueError("depths, times, values, errors and centres must have one entry per "
                         f"depth; got lengths {len(depths)}, {len(times)}, {len(values)}, "
                         f"{len(errors)}, {len(centres)}")
    if not np.all(np.isfinite(np.asarray(centres, np.float64))):
        raise ValueError(f"centres = {list(centres)} must be finite")
    s = check_int("s", s, minimum=2)
    baseline = _finite_real("baseline", baseline)
    n_boot = check_int("n_boot", n_boot, minimum=0)
    if n_boot == 1:
        raise ValueError("n_boot = 1 must be 0 (no error bar) or >= 2 (a standard deviation "
                         "needs two replicas)")
    seed = check_int("seed", seed, minimum=0)
    grid = COLLAPSE_GRID if log_growth is None else np.asarray(log_growth, np.float64)
    if grid.ndim != 1 or grid.size < 3 or not np.all(np.isfinite(grid)) or grid[0] <= 0 \
            or np.any(np.diff(grid) <= 0):
        raise ValueError(f"log_growth = {np.asarray(log_growth).tolist()} must be a strictly "
                         "increasing 1-d grid of at least 3 finite values > 0 (ln b > 0: the "
                         "transition narrows with depth)")
    raw = []
    for k, (L, t, y, e, c) in enumerate(zip(depths, times, values, errors, centres)):
        t, y, e = (np.asarray(a, np.float64) for a in (t, y, e))
        if not t.ndim == 1 or t.shape != y.shape or t.shape != e.shape:
            raise ValueError(f"depth L = {L}: times, values and errors must be 1-d of the same "
                             f"length, got shapes {t.shape}, {y.shape}, {e.shape}")
        if np.any(e < 0):
            i = int(np.flatnonzero(e < 0)[0])
            raise ValueError(f"errors[{k}][{i}] = {e[i]} (depth L = {L}) must be >= 0: a "
                             "standard error")
        keep = np.isfinite(t) & np.isfinite(y) & np.isfinite(e)
        if keep.sum() < 3:
            raise ValueError(f"depth L = {L} has {int(keep.sum())} finite points; need >= 3")
        order = np.argsort(t[keep])
        raw.append((L, t[keep][order], y[keep][order] - baseline, e[keep][order], float(c)))

    def fit(curves):
        normed = []
        for L, t, y, e, c in curves:
            top = _peak_height(t, y)
            top = top if top > 0 else 1.0  # a replica's noise may sink a peak: kept unscaled
            # An error floor: 1% of the peak keeps S finite where a point has zero error.
            normed.append((L, t, y / top, np.maximum(e / top, 1e-2), c))
        costs = np.array([_collapse_cost(normed, lb)[0] for lb in grid])
        best = int(np.argmin(costs))
        # Refine between the neighbours of the coarse optimum.
        fine = np.linspace(grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)], 41)
        fine_costs = np.array([_collapse_cost(normed, lb)[0] for lb in fine])
        return fine[int(np.argmin(fine_costs))], costs, best

    def undetermined(why, costs=None, cost=math.nan, count=0):
        costs = np.full(grid.shape, math.nan) if costs is None else costs
        return CollapseFit(math.nan, math.nan, math.nan, math.nan, cost, grid, costs, count, why)

    flat = [L for L, t, y, e, c in raw if not _peak_height(t, y) > 0]
    if flat:
        return undetermined(f"no peak above the baseline {baseline} at depth L = {flat[0]}: "
                            "there is no width to scale")
    best, costs, index = fit(raw)
    normed_cost = float(np.min(costs))
    if not math.isfinite(normed_cost):
        return undetermined("no two depths overlap at any b of the grid: nothing to compare",
                            costs)
    npts = _collapse_cost([(L, t, y, np.ones_like(y), c) for L, t, y, e, c in raw], best)[1]
    if index in (0, len(grid) - 1):
        side = "lower" if index == 0 else "upper"
        return undetermined(
            f"the collapse cost is lowest at the {side} end of the grid (ln b = "
            f"{grid[index]:.4g}): b lies outside the range scanned, or the cost is flat and "
            "fixes no b", costs, normed_cost, npts)
    rng = np.random.default_rng(seed)
    boot, at_edge = [], 0
    for _ in range(n_boot):
        drawn = [(L, t, y + e * rng.standard_normal(y.shape), e, c) for L, t, y, e, c in raw]
        b_fit, _, b_index = fit(drawn)
        boot.append(b_fit)
        at_edge += b_index in (0, len(grid) - 1)
    boot = np.asarray(boot)
    nu = math.log(s) / best
    inflate = math.sqrt(max(normed_cost, 1.0))
    reason = None
    if at_edge:
        reason = (f"{at_edge} of {n_boot} bootstrap replicas have their optimum at an end of "
                  "the grid: the grid would cut off their spread, so the errors are NaN")
    elif boot.size == 0:
        reason = "n_boot = 0: no bootstrap, so no errors"
    spread = boot.size > 1 and not at_edge
    return CollapseFit(
        nu, inflate * float(np.std(math.log(s) / boot, ddof=1)) if spread else math.nan,
        math.exp(best),
        inflate * float(np.std(np.exp(boot), ddof=1)) if spread else math.nan,
        normed_cost, grid, costs, npts, reason)


class WidthFit(tuple):
    """``(nu, nu_se)`` of :func:`width_exponent`: unpacks as a pair, and ``reason`` says
    why ``nu`` (or only ``nu_se``) is NaN (``None`` when both are determined)."""

    def __new__(cls, nu: float, nu_se: float, reason: str | None = None):
        fit = super().__new__(cls, (float(nu), float(nu_se)))
        fit.reason = reason
        return fit

    @property
    def nu(self) -> float:
        return self[0]

    @property
    def nu_se(self) -> float:
        return self[1]

    def __repr__(self) -> str:
        return f"WidthFit(nu={self[0]!r}, nu_se={self[1]!r}, reason={self.reason!r})"


#: Fitted relative shrink of the widths over the depths below which they count as flat
#: (``ln w`` changing by less than this is rounding, not a trend).
_FLAT_WIDTHS = 1e-9


def width_exponent(depths, widths, s: int) -> WidthFit:
    """``ν`` from the finite-size scaling of the transition width, ``w_L ∝ b**(-L)``.

    Least squares of ``ln w_L`` on ``L`` gives ``ln b`` (minus the slope) and its standard
    error from the residuals (``N - 2`` degrees of freedom; NaN with two depths);
    ``ν = ln s / ln b`` (``docs/theory/correlations.md``) and its error by the delta
    method. Pure NumPy.

    Rules. Bad input raises: depths that are not integers ``>= 1`` (a NaN or fractional
    depth is refused), fewer than 2 distinct depths, ``widths`` of another length or not
    finite and ``> 0``, ``s`` not an integer ``>= 2``. ``ν`` exists only when the widths
    shrink with ``L`` (``b > 1``); it is *undetermined* (``nu`` and ``nu_se`` NaN, with a
    ``reason``) when the fitted widths do not shrink — ``ln b · (L_max - L_min) <= 1e-9``,
    which includes equal widths (whose rounding would otherwise give ``ν ~ 1e15``) and
    growing ones — or, with 3 or more depths, when ``ln b`` is within two standard errors
    of 0 (the data cannot tell the widths from constant, and ``ν = ln s / ln b`` is then
    unbounded above).

    Returns:
      :class:`WidthFit` ``(nu, nu_se)`` (unpacks as a pair), with ``reason``.

    Examples:
      >>> nu, nu_se = width_exponent([5, 7, 9], [0.1 * 2.0**-L for L in (5, 7, 9)], 2)
      >>> round(nu, 12), round(nu_se, 12)
      (1.0, 0.0)
      >>> fit = width_exponent([3, 5, 7], [0.1, 0.1, 0.1], 2)  # equal widths: no ν
      >>> fit.nu, fit.reason.split(" (")[0]
      (nan, 'the widths do not shrink with L')
    """
    depths = np.asarray(_check_depths(depths), np.float64)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__"):
        raise TypeError(f"widths must be a sequence of numbers, got {describe(widths)}")
    widths = np.asarray(widths, np.float64)
    if widths.shape != depths.shape:
        raise ValueError(f"widths = {widths.tolist()} must have one entry per depth, "
                         f"{len(depths)}")
    if not np.all(np.isfinite(widths) & (widths > 0)):
        raise ValueError(f"widths = {widths.tolist()} must be finite and > 0")
    s = check_int("s", s, minimum=2)
    slope, intercept = np.polyfit(depths, np.log(widths), 1)
    log_b = -slope
    n = len(depths)
    if n > 2:
        resid = np.log(widths) - (slope * depths + intercept)
        slope_se = math.sqrt(np.sum(resid**2) / (n - 2) / np.sum((depths - depths.mean())**2))
    else:
        slope_se = math.nan
    if log_b * (depths.max() - depths.min()) <= _FLAT_WIDTHS:
        return WidthFit(math.nan, math.nan,
                        f"the widths do not shrink with L (fitted ln b = {log_b:.3g}): "
                        "nu = ln s / ln b needs b > 1")
    if log_b <= 2 * slope_se:
        return WidthFit(math.nan, math.nan,
                        f"the fitted ln b = {log_b:.3g} is within two standard errors "
                        f"({slope_se:.3g}) of 0: the widths are not shown to shrink, and "
                        "nu = ln s / ln b is unbounded above")
    nu = math.log(s) / log_b
    return WidthFit(nu, abs(nu / log_b) * slope_se,
                    "two depths: no residuals, so no error" if n == 2 else None)


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
    return _summarise(times, stats, 2, n_trajectories)


# ---- a χ sweep: noise grids around the transition, rows and summaries ----------------------
#: Pilot run of :func:`transition_times`: noise levels on [0, 1], data, and the half-span
#: of the grid in units of the class curve's 10–90% width.
PILOT_LEVELS, PILOT_DATA, GRID_HALF_SPAN = 41, 64, 2.5


def transition_times(key, grammar, process, num: int, mesh=None) -> np.ndarray:
    """``num`` noise levels around the class transition of ``process``.

    A pilot :func:`rhm_jax.experiments.forward_backward` run (``PILOT_DATA`` data on
    ``PILOT_LEVELS`` even levels, marginal ``P_0``) finds the ``P_0`` midpoint ``t½`` and
    the 10–90% width ``w``; the grid is ``num`` even levels on
    ``[t½ - GRID_HALF_SPAN·w, t½ + GRID_HALF_SPAN·w] ∩ [0, 1]`` (``w`` at least two pilot
    steps, which is what the pilot resolves), or an even grid on ``[0, 1]`` when the pilot
    curve does not cross its midpoint.
    """
    from rhm_jax import theory
    from rhm_jax.experiments import forward_backward

    def even(start, stop):
        return np.asarray([float(f"{x:.12g}") for x in np.linspace(start, stop, num)], np.float64)

    pilot_times = np.linspace(0.0, 1.0, PILOT_LEVELS)
    pilot = forward_backward(key, grammar, process, pilot_times, PILOT_DATA, mesh=mesh)
    p0 = np.asarray(pilot.marginal[0, :, 0], np.float64)
    low = 1.0 / grammar.config.n_classes
    mid = theory.midpoint_crossing(pilot_times, p0, low, 1.0)
    width = theory.curve_width(pilot_times, p0, low, 1.0)
    if not (np.isfinite(mid) and np.isfinite(width) and width > 0):
        return even(0.0, 1.0)
    half = GRID_HALF_SPAN * max(width, 2.0 / (PILOT_LEVELS - 1))
    return even(max(mid - half, 0.0), min(mid + half, 1.0))


def to_rows(result: ChangeCorrelations, max_positions: int = 512, **columns) -> list[dict]:
    """Tidy JSON rows of a :class:`ChangeCorrelations`, one per noise level: ``χ`` and its
    error, the changed fraction, ``P_0``, ``ξ``, the mean tree depth, ``C`` by tree distance
    and by position distance (the first ``max_positions`` entries), plus ``columns``.
    Non-finite numbers are ``None``."""
    def num(x):
        x = float(x)
        return None if not np.isfinite(x) else x

    return [{**columns, "t": float(result.times[ti]), "chi": num(result.chi[ti]),
             "chi_se": num(result.chi_se[ti]), "changed": num(result.changed[ti]),
             "changed_se": num(result.changed_se[ti]),
             "P_0": None if result.class_kept is None else num(result.class_kept[ti]),
             "xi": num(result.xi[ti]), "depth": num(result.depth[ti]),
             "C_tree": [num(x) for x in result.tree_distance[ti]],
             "C_position": [num(x) for x in result.position[ti, :max_positions]],
             "n_starts": result.n_starts, "n_trajectories": result.n_trajectories}
            for ti in range(len(result.times))]


def peak_summary(result: ChangeCorrelations, n_classes: int) -> dict:
    """Where ``χ`` peaks (and whether inside the grid) and where ``P_0`` crosses its
    midpoint between 1 and chance; ``None`` where undetermined."""
    from rhm_jax import theory

    finite = np.isfinite(result.chi)
    peak = int(np.flatnonzero(finite)[np.argmax(result.chi[finite])]) if finite.any() else None
    crossing = theory.midpoint_crossing(result.times, result.class_kept, 1.0 / n_classes, 1.0)
    step = float(np.median(np.diff(result.times))) if len(result.times) > 1 else None
    return {"chi_max": None if peak is None else float(result.chi[peak]),
            "chi_argmax_t": None if peak is None else float(result.times[peak]),
            "interior_peak": peak is not None and 0 < peak < len(result.times) - 1,
            "P0_midpoint_t": None if np.isnan(crossing) else float(crossing),
            "grid_step": step}


def nu_fits(results: dict, summaries: dict, s: int, n_classes: int,
            mean_field_nu: float | None) -> dict | None:
    """``ν`` of the ε-process two ways, from runs at two or more depths.

    ``results`` and ``summaries`` are keyed by ``(L, process)`` (:func:`peak_summary`);
    only ``"epsilon"`` runs whose ``P_0`` crosses its midpoint are used. Returns ``None``
    with fewer than two such depths; else the data collapse of ``χ``
    (:func:`collapse_exponent`, centres at the ``P_0`` midpoints, baseline ``χ = 1``) and
    the fit of the 10–90% widths of ``P_0`` against depth (:func:`width_exponent`), next
    to the mean field's ``ν``.
    """
    from rhm_jax import theory

    depths = sorted(L for L, name in results if name == "epsilon"
                    and summaries[(L, name)]["P0_midpoint_t"] is not None)
    if len(depths) < 2:
        return None
    res = [results[(L, "epsilon")] for L in depths]
    try:
        fit = collapse_exponent(depths, [r.times for r in res], [r.chi for r in res],
                                [r.chi_se for r in res],
                                [summaries[(L, "epsilon")]["P0_midpoint_t"] for L in depths],
                                s, baseline=1.0)
    except ValueError as error:  # too few finite points: recorded, not fatal
        return {"error": str(error), "depths": depths}
    widths = [theory.curve_width(r.times, r.class_kept, 1.0 / n_classes, 1.0) for r in res]
    width_reason = None
    try:
        width_fit = width_exponent(depths, widths, s)
        nu_width, nu_width_se = width_fit
        width_reason = width_fit.reason
    except ValueError as error:  # widths that cannot be fitted (a curve without a drop)
        nu_width = nu_width_se = None
        width_reason = str(error)

    def num(x):
        return None if x is None or not np.isfinite(x) else float(x)

    out = {"P0_width_10_90": [num(w) for w in widths], "nu_from_P0_width": num(nu_width),
           "nu_from_P0_width_se": num(nu_width_se)}
    if width_reason is not None:
        out["nu_from_P0_width_reason"] = width_reason
    out.update({"observable": "chi", "method": "data collapse of (chi - 1) / peak over "
                "(eps - eps_half(L)) * b**L; nu = ln s / ln b; bootstrap error",
                "depths": depths, "nu": num(fit.nu), "nu_se": num(fit.nu_se),
                "growth": num(fit.growth), "growth_se": num(fit.growth_se),
                "collapse_cost": num(fit.cost)})
    if fit.reason is not None:
        out["reason"] = fit.reason
    out.update({"mean_field_nu": mean_field_nu,
                "mean_field_growth": None if mean_field_nu is None else float(s ** (1 / mean_field_nu))})
    return out
