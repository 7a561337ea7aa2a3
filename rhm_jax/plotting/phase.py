"""Figures of the phase transition: class and level curves against the noise."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rhm_jax.plotting.style import save_figure


def _select(rows, **where):
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def plot_class_vs_noise(rows, mean_field, path, *, process="epsilon"):
    """``P_0`` against ε for every depth, with mean-field ``q_0`` and ``ε*`` marked."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    depths = sorted({r["L"] for r in rows if r["process"] == process})
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
    for color, L in zip(colors, depths):
        sel = _select(rows, process=process, L=L, level=0)
        t = np.array([r["t"] for r in sel])
        p = np.array([r["P_marginal"] for r in sel])
        se = np.array([r["P_marginal_se"] for r in sel])
        ax.errorbar(t, p, yerr=se, marker="o", ms=3, lw=1.2, color=color, label=f"BP, L={L}")
        if mean_field is not None:
            grid = np.linspace(0, 1, 401)
            ax.plot(grid, mean_field.level_curves(grid, L).q[0], "--", color=color, lw=0.9)
    if mean_field is not None and np.isfinite(mean_field.eps_star):
        ax.axvline(mean_field.eps_star, color="k", ls=":", lw=1)
        ax.text(mean_field.eps_star, 0.97, r" $\varepsilon^*$", va="top")
    chance = rows[0]["chance"] if rows else 0
    ax.axhline(chance, color="gray", lw=0.8)
    ax.set_xlabel(r"noise $\varepsilon$")
    ax.set_ylabel(r"class reconstruction $P_0$")
    ax.set_title("Exact BP (markers) vs mean field (dashed)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_levels(rows, path, *, process, L, mean_field=None, xlabel="t"):
    """``P_l`` of every level at depth ``L``: sharp class drop vs smooth token decay."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, L + 1))
    for level in range(L + 1):
        sel = _select(rows, process=process, L=L, level=level)
        if not sel:
            continue
        t = np.array([r["t"] for r in sel])
        ax.errorbar(t, [r["P_marginal"] for r in sel], yerr=[r["P_marginal_se"] for r in sel],
                    color=colors[level], marker="o", ms=2.5, lw=1.1,
                    label="class (l=0)" if level == 0 else ("tokens" if level == L else f"l={level}"))
        if mean_field is not None:
            grid = np.linspace(0, 1, 401)
            ax.plot(grid, mean_field.level_curves(grid, L).q[level], "--", color=colors[level], lw=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(r"$P_l$: level $l$ of $x_0$ kept by $\hat x_0$")
    ax.set_title(f"{process}, L={L}")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_processes(rows, path, *, L):
    """One panel per noise process: ``P_l(t)`` for all levels at depth ``L``."""
    processes = [p for p in dict.fromkeys(r["process"] for r in rows) if _select(rows, process=p, L=L)]
    fig, axes = plt.subplots(1, len(processes), figsize=(4.2 * len(processes), 3.6), squeeze=False)
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, L + 1))
    for ax, process in zip(axes[0], processes):
        for level in range(L + 1):
            sel = _select(rows, process=process, L=L, level=level)
            ax.plot([r["t"] for r in sel], [r["P_marginal"] for r in sel], marker="o", ms=2,
                    color=colors[level], lw=1, label=f"l={level}")
        ax.set_title(process)
        ax.set_xlabel(r"$\varepsilon$" if process == "epsilon" else "t")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(r"$P_l$")
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)
