"""What every measure of the comparison shares: the host loop over fixed-size chunks, the
times a comparison is taken at, and the reverse steps of a chain.

Examples:
  >>> import numpy as np
  >>> host_chunks(lambda c, x: x * 10, 5, 2, np.arange(5)).tolist()
  [0, 10, 20, 30, 40]
  >>> sampler_name(None), sampler_name(32)
  ('first_hit', 'grid')
"""

from __future__ import annotations

import jax
import numpy as np

from rhm_jax.noise import Masking

__all__ = ["host_chunks", "snap_times", "default_num_steps", "sampler_name"]


def host_chunks(fn, n: int, chunk: int, *arrays):
    """Runs ``fn`` over ``[0, n)`` in fixed-size chunks and gathers the outputs on the host.

    Every call gets ``chunk`` rows (the last chunk is padded by repeating the final row), so
    a jitted ``fn`` compiles once; the padding is dropped from the outputs.

    Args:
      fn: ``fn(index, *chunk_arrays) -> pytree`` of arrays with a leading chunk axis;
        ``index`` numbers the chunks ``0, 1, ...`` (for folding into a key).
      n: number of rows.
      chunk: rows per call (clipped to ``[1, n]``).
      *arrays: arrays indexed along their first axis.

    Returns:
      The outputs' pytree, each leaf the NumPy concatenation of ``n`` rows.
    """
    chunk = max(1, min(chunk, n))
    outs = []
    for number, start in enumerate(range(0, n, chunk)):
        index = np.minimum(np.arange(start, start + chunk), n - 1)
        out = fn(number, *(a[index] for a in arrays))
        keep = min(chunk, n - start)
        outs.append(jax.tree.map(lambda y: np.asarray(y)[:keep], out))
    return jax.tree.map(lambda *ys: np.concatenate(ys), *outs)


def _as_times(times) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-d array, got shape {times.shape}")
    if not np.all(np.isfinite(times)) or times.min() <= 0 or times.max() > 1:
        raise ValueError(f"times must lie in (0, 1], got values in [{times.min()}, "
                         f"{times.max()}] (at t = 0 nothing is noised)")
    return times


def snap_times(objective, times) -> np.ndarray:
    """Times on the objective's training grid, each at most once.

    The discrete-time losses (D3PM, Gaussian) never see other times than ``k/T``
    (``k >= 1``): their times are snapped to that grid; masking's are kept as given.

    Args:
      objective: the loss (its ``num_steps`` is ``T``; masking has none).
      times: ``(n,)`` times in ``(0, 1]``.

    Returns:
      ``(n,)`` float64 times, in the given order.

    Raises:
      ValueError: a time out of ``(0, 1]``, or two times that are (or snap to) the same
        time — each would write the same rows twice.

    Examples:
      >>> from rhm_jax import RHMConfig
      >>> from rhm_jax.denoise import make_objective
      >>> d3pm = make_objective("d3pm", RHMConfig(v=4, m=2, s=2, L=3))  # T = 200
      >>> snap_times(d3pm, [1e-9, 0.5]).tolist()
      [0.005, 0.5]
      >>> snap_times(d3pm, [1e-9, 1e-3])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: times = [1e-09, 0.001] hold t = 0.005 more than once ... -> 0.005; ...
    """
    given = _as_times(times)
    T = getattr(objective, "num_steps", None)
    snapped = given if T is None else np.maximum(np.round(given * T), 1) / T
    values, counts = np.unique(snapped, return_counts=True)
    if np.any(counts > 1):
        listed = ", ".join(f"{t:g}" for t in given)
        if T is None:
            repeated = ", ".join(f"{t:g}" for t in values[counts > 1])
            raise ValueError(f"times = [{listed}] hold t = {repeated} more than once; give "
                             "each time once")
        groups = "; ".join(", ".join(f"{t:g}" for t in given[snapped == value])
                           + f" -> {value:g}" for value in values[counts > 1])
        repeated = ", ".join(f"{t:g}" for t in values[counts > 1])
        raise ValueError(f"times = [{listed}] hold t = {repeated} more than once on the "
                         f"training grid k/T (T = {T}): {groups}; give times at least 1/T "
                         "apart")
    return snapped


def default_num_steps(objective, d: int) -> int | None:
    """Reverse steps of a chain: ``None`` for masking, which then unmasks one token at a
    time (:func:`~rhm_jax.denoise.sampling.first_hit_chain`: ``d`` steps, exact with exact
    marginals); the schedule's ``T`` for the discrete-time losses (the chain from ``t = 1``
    then walks the training grid); ``16·d`` otherwise. On a uniform grid every step draws
    the tokens it changes independently from their marginals — with exact BP marginals at
    ``(16, 4, 2, 4)`` the masking chain's samples are fully valid 49% of the time at ``d``
    steps, 81% at ``4d``, 96.5% at ``16d``
    (:func:`~rhm_jax.denoise.compare.bp_chain_samples` measures it)."""
    if isinstance(objective.process, Masking):
        return None
    T = getattr(objective, "num_steps", None)
    return int(T) if T is not None else 16 * d


def sampler_name(num_steps) -> str:
    """``"first_hit"`` (one token at a time) for ``num_steps=None``, else ``"grid"``."""
    return "first_hit" if num_steps is None else "grid"
