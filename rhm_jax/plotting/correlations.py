"""Figures of correlated changes: ``χ(t)`` per process, ``C`` by tree distance, the control."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rhm_jax.plotting.style import save_figure

__all__ = ["plot_chi", "plot_tree_correlations", "plot_control"]


def plot_chi(results: dict, summaries: dict, path) -> None:
    """``χ(t)`` per process (one panel each), one curve per depth, the ``P_0`` midpoint
    dotted. ``results`` and ``summaries`` are keyed by ``(L, process)``."""
    processes = sorted({name for _, name in results})
    fig, axes = plt.subplots(1, len(processes), figsize=(5 * len(processes), 3.8),
                             squeeze=False)
    depths = sorted({L for L, _ in results})
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
    for ax, name in zip(axes[0], processes):
        for color, L in zip(colors, depths):
            res = results[(L, name)]
            ax.errorbar(res.times, res.chi, yerr=res.chi_se, marker="o", ms=3, color=color,
                        label=f"L={L}")
            midpoint = summaries[(L, name)]["P0_midpoint_t"]
            if midpoint is not None:
                ax.axvline(midpoint, color=color, ls=":", lw=1)
        ax.set(xlabel="noise t (ε for the ε-process)", ylabel=r"$\chi(t)$",
               title=f"{name} (dotted: $P_0$ midpoint)")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_tree_correlations(result, path, *, title: str) -> None:
    """``C(h)`` by tree distance ``h`` at up to four noise levels of one run."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    n = len(result.times)
    pick = [i for i in np.linspace(1, n - 1, min(4, n - 1)).round().astype(int)]
    for i in sorted(set(pick)):
        ax.plot(np.arange(result.tree_distance.shape[1]), result.tree_distance[i], marker="o",
                label=f"t = {result.times[i]:.3g}")
    ax.set(xlabel="tree distance h (levels to the common ancestor)", ylabel="C(h)", title=title)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_control(control, path) -> None:
    """``χ(t)`` of the Gaussian-random-field control (sign changes)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(control.times, control.chi, yerr=control.chi_se, marker="o", ms=3)
    ax.set(xlabel="t (ᾱ = 1 - t)", ylabel=r"$\chi(t)$",
           title="control: 1-D Gaussian random field (sign changes)")
    save_figure(fig, path)
