"""A χ sweep: noise grids around the class transition, tidy rows and summaries."""

from __future__ import annotations

import numpy as np

from rhm_jax.correlations.estimator import ChangeCorrelations
from rhm_jax.correlations.fits import collapse_exponent, width_exponent


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
