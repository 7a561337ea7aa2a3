"""The RHM next to real images: the same DDPM schedule, the same noise grid, one summary.

Three panels share the noise axis ``t/T`` of DDPM's linear-β schedule (docs/theory/images.md):

* ``"rhm_bp"`` — an RHM under Gaussian noise (:class:`rhm_jax.noise.Gaussian`) reconstructed by
  exact BP: ``P_0`` (the class) and ``P_l`` per level (:func:`rhm_forward_backward`);
* ``"rhm_denoiser"`` — the same grammar with a trained tree denoiser (the ``gaussian_x0``
  loss, :func:`tree_denoiser_config`) in BP's place;
* ``"digits"`` — images through the trained U-Net: the probe's class kept and each probe
  layer's whitened cosine similarity (:mod:`rhm_jax.images.experiment`).

:func:`rhm_times` maps the images' respaced steps to the RHM's ``t`` with the same ``ᾱ``.
:func:`class_drop` quantifies a panel: the width of the class drop in log-SNR
``log(ᾱ/(1-ᾱ))``, from 25% to 75% of the way from 1 to chance, and the low-level
similarity (leaves' ``P_L``; the pixels' cosine) where the class is half-way.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from rhm_jax.images.diffusion import RespacedSchedule
from rhm_jax.images.experiment import ImageForwardBackwardResult
from rhm_jax.validation import check_int

__all__ = ["Panel", "rhm_times", "log_snr", "tree_denoiser_config", "rhm_forward_backward",
           "rhm_panel", "image_panel", "class_drop", "summarise_panels"]


class Panel(NamedTuple):
    """One panel's curves against the shared noise axis.

    Attributes:
      name: the panel's key (``"rhm_bp"``, ``"rhm_denoiser"``, ``"digits"``, …).
      label: its title.
      times: ``(T,)`` ``t/T`` of the base DDPM schedule.
      log_snr: ``(T,)`` ``log(ᾱ/(1-ᾱ))`` at ``times``.
      class_kept: ``(T,)`` probability that the class is kept.
      class_kept_se: ``(T,)`` its standard error.
      chance: the class-kept value of an unrelated sample (``1 / classes``).
      levels: names of the lower levels, from the class's neighbour to the lowest.
      level_values: ``(T, len(levels))`` their similarity (``P_l``; whitened cosine).
      level_se: ``(T, len(levels))`` standard errors.
    """

    name: str
    label: str
    times: np.ndarray
    log_snr: np.ndarray
    class_kept: np.ndarray
    class_kept_se: np.ndarray
    chance: float
    levels: tuple
    level_values: np.ndarray
    level_se: np.ndarray


def log_snr(alpha_bar) -> np.ndarray:
    """``log(ᾱ / (1 - ᾱ))``, elementwise (``+inf`` at ``ᾱ = 1``)."""
    alpha_bar = np.asarray(alpha_bar, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(alpha_bar) - np.log1p(-alpha_bar)


def rhm_times(schedule: RespacedSchedule, steps) -> np.ndarray:
    """``t = s_k / T``: the base schedule's time of each respaced step ``k``, so that
    :class:`~rhm_jax.schedules.LinearBeta`'s ``alpha_bar(t)`` is the images' ``ᾱ_k``.

    Examples:
      >>> rhm_times(RespacedSchedule(4), [1, 4]).tolist()
      [0.001, 1.0]
    """
    if not isinstance(schedule, RespacedSchedule):
        raise TypeError(f"schedule must be a RespacedSchedule, got {type(schedule).__name__}")
    steps = np.asarray(steps)
    if steps.ndim != 1 or steps.size == 0 or not np.issubdtype(steps.dtype, np.integer) \
            or steps.min() < 1 or steps.max() > schedule.num_steps:
        raise ValueError(f"steps = {steps.tolist()} must be a non-empty list of integer steps "
                         f"in [1, K = {schedule.num_steps}]")
    return schedule.kept_steps()[steps - 1] / schedule.base.T


def tree_denoiser_config(v: int = 8, m: int = 2, s: int = 2, L: int = 4, *, quick: bool = False,
                         seed: int = 0):
    """The tree denoiser of the ``"rhm_denoiser"`` panel: a small tree U-Net trained online
    with the ``gaussian_x0`` loss on the grammar of ``grammar_seed = seed``.

    The default trains 1,500 steps of batch 128 (about a minute and a half on two CPU
    cores); ``quick`` 20 steps of batch 32.
    """
    from rhm_jax.denoise.config import TrainConfig
    from rhm_jax.denoise.models import ModelConfig

    if quick:
        return TrainConfig(v=v, m=m, s=s, L=L, grammar_seed=seed, seed=seed, loss="gaussian_x0",
                           model=ModelConfig(width=16), batch_size=32, steps=20,
                           warmup_steps=2, steps_per_call=10, log_every=10, eval_every=20,
                           checkpoint_every=20, test_size=32, eval_repeats=1)
    return TrainConfig(v=v, m=m, s=s, L=L, grammar_seed=seed, seed=seed, loss="gaussian_x0",
                       model=ModelConfig(width=64), batch_size=128, steps=1500,
                       learning_rate=2e-3, steps_per_call=50, log_every=250, eval_every=750,
                       checkpoint_every=750, test_size=256, eval_repeats=1)


def rhm_forward_backward(key, grammar, times, n_data: int, *, denoiser=None,
                         num_steps: int = 100, progress: bool = False):
    """The RHM's forward–backward under Gaussian noise with DDPM's linear β
    (:func:`rhm_jax.experiments.forward_backward`): exact BP, or ``denoiser`` (a
    :class:`~rhm_jax.denoise.Denoiser`, run through
    :func:`~rhm_jax.denoise.experiment_denoiser` with ``num_steps`` reverse steps)."""
    from rhm_jax.experiments import forward_backward
    from rhm_jax.noise import Gaussian
    from rhm_jax.schedules import LinearBeta

    n_data = check_int("n_data", n_data, 2)
    process = Gaussian(grammar.config, LinearBeta())
    if denoiser is None:
        return forward_backward(key, grammar, process, times, n_data, progress=progress)
    from rhm_jax.denoise import experiment_denoiser

    denoise, params = experiment_denoiser(denoiser, check_int("num_steps", num_steps, 1))
    return forward_backward(key, grammar, process, times, n_data, denoiser=denoise,
                            denoiser_params=params, progress=progress)


def rhm_panel(name: str, label: str, result, config) -> Panel:
    """A :class:`Panel` of an RHM forward–backward result (its first grammar; the marginal
    estimator for exact BP, the sampled one for a denoiser)."""
    from rhm_jax.schedules import LinearBeta

    exact = result.marginal is not None
    mean = (result.marginal if exact else result.sampled)[0]
    se = (result.marginal_se if exact else result.sampled_se)[0]
    times = np.asarray(result.times, np.float64)
    return Panel(name, label, times, log_snr(LinearBeta().alpha_bar(times)), mean[:, 0], se[:, 0],
                 1.0 / config.n_classes, tuple(f"l={l}" for l in range(1, config.L + 1)),
                 mean[:, 1:], se[:, 1:])


def image_panel(name: str, label: str, result: ImageForwardBackwardResult,
                schedule: RespacedSchedule, num_classes: int) -> Panel:
    """A :class:`Panel` of an image forward–backward result: the class kept and the
    whitened cosine of every layer below the logits, from the logits' neighbour down to
    the pixels."""
    steps = np.asarray(result.steps)
    layers = tuple(result.layers[:-1][::-1])  # without the logits, deepest first
    index = [result.layers.index(layer) for layer in layers]
    return Panel(name, label, rhm_times(schedule, steps),
                 log_snr(schedule.alpha_bars()[steps]), np.asarray(result.class_kept),
                 np.asarray(result.class_kept_se), 1.0 / num_classes, layers,
                 np.asarray(result.cosine)[:, index], np.asarray(result.cosine_se)[:, index])


def _crossing(x, y, se, level):
    """Where ``y`` (falling along the grid) first crosses ``level``: ``(x, its delta-method
    error, segment index, weight)`` or ``None``."""
    below = np.nonzero(y < level)[0]
    if not below.size or below[0] == 0:
        return None
    i = below[0]
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    w = (y0 - level) / (y0 - y1)
    where = x0 + w * (x1 - x0)
    slope = (y1 - y0) / (x1 - x0)
    err = math.hypot((1 - w) * se[i - 1], w * se[i]) / abs(slope)
    return float(where), float(err), i, float(w)


def _finite(value):
    return None if value is None or not math.isfinite(value) else float(value)


def class_drop(panel: Panel) -> dict:
    """The class drop of ``panel`` in log-SNR and the low-level similarity at its midpoint.

    With ``q(f) = 1 - f (1 - chance)`` the class-kept value ``f`` of the way from 1 to
    chance, the drop's width is ``λ(q(0.25)) - λ(q(0.75))`` in log-SNR ``λ`` (linear
    interpolation between grid points), and the midpoint is ``λ(q(0.5))``. Errors: the
    delta method on the interpolated standard errors (the two ends taken as independent);
    the low level's error is its own, interpolated, without the midpoint's.

    Returns:
      ``{"width_log_snr", "width_se", "midpoint_log_snr", "midpoint_se", "midpoint_t",
      "low_level", "low_level_at_midpoint", "low_level_se"}`` (``None`` where the curve
      does not cross).
    """
    x, y, se = panel.log_snr, panel.class_kept, np.nan_to_num(panel.class_kept_se)
    out = {"width_log_snr": None, "width_se": None, "midpoint_log_snr": None,
           "midpoint_se": None, "midpoint_t": None, "low_level": panel.levels[-1],
           "low_level_at_midpoint": None, "low_level_se": None}
    level = {f: 1 - f * (1 - panel.chance) for f in (0.25, 0.5, 0.75)}
    early, mid, late = (_crossing(x, y, se, level[f]) for f in (0.25, 0.5, 0.75))
    if early and late:
        out["width_log_snr"] = early[0] - late[0]
        out["width_se"] = math.hypot(early[1], late[1])
    if mid:
        where, err, i, w = mid
        out["midpoint_log_snr"], out["midpoint_se"] = where, err
        out["midpoint_t"] = float((1 - w) * panel.times[i - 1] + w * panel.times[i])
        low, low_se = panel.level_values[:, -1], np.nan_to_num(panel.level_se[:, -1])
        out["low_level_at_midpoint"] = float((1 - w) * low[i - 1] + w * low[i])
        out["low_level_se"] = float(math.hypot((1 - w) * low_se[i - 1], w * low_se[i]))
    return {k: _finite(v) if isinstance(v, float) else v for k, v in out.items()}


def summarise_panels(panels, references=()) -> dict:
    """``{panel name: class_drop(panel)}`` for the panels and any reference panels."""
    return {panel.name: {"label": panel.label, **class_drop(panel)}
            for panel in (*panels, *references)}
