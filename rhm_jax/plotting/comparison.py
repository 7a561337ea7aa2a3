"""Figures of trained denoisers against exact BP (one panel per run; :mod:`rhm_jax.denoise.compare`).

* :func:`plot_forward_backward` — ``P_l(t)`` of the network next to BP's;
* :func:`plot_agreement` — KL and top-1 agreement with BP against ``t``;
* :func:`plot_generation` — validity per level of generated samples;
* :func:`plot_representation` — hidden representations per level;
* :func:`plot_sweep` — each measure against the training-set size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import matplotlib.pyplot as plt
import numpy as np

from rhm_jax.plotting.style import save_figure

__all__ = ["plot_forward_backward", "plot_agreement", "plot_generation", "plot_representation",
           "plot_sweep"]


def _label(result) -> str:
    config = result.config
    P = "online" if config.train_size is None else f"P={config.train_size}"
    return f"{Path(result.run_dir).name}: {config.loss}, {P}"


def plot_forward_backward(results, path):
    """``P_l(t)`` of each run's network (solid) next to exact BP's (dashed), one panel per
    run (so one per process when the runs differ by process)."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.4 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        L = result.config.L
        colors = plt.cm.plasma(np.linspace(0.05, 0.85, L + 1))
        for source, style, fb in (("network", "-", result.network_fb), ("BP", "--", result.bp_fb)):
            for level in range(L + 1):
                ax.errorbar(fb.times, fb.sampled[0, :, level], yerr=fb.sampled_se[0, :, level],
                            color=colors[level], ls=style, marker="o" if style == "-" else None,
                            ms=2.5, lw=1.1, label=f"l={level}" if source == "network" else None)
        ax.set_title(_label(result), fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(r"$P_l(t)$: network (solid), exact BP (dashed)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_agreement(results, path):
    """KL(BP ‖ network) and top-1 agreement against t (dashed: top-1 on BP's clear tokens,
    :data:`~rhm_jax.denoise.compare.CLEAR_MARGIN`; dotted: against the empirical posterior
    of the training set)."""
    fig, (kl_ax, top_ax) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for i, result in enumerate(results):
        a, color = result.agreement, f"C{i % 10}"
        kl_ax.errorbar(a.times, a.kl, yerr=a.kl_se, color=color, marker="o", ms=3,
                       label=_label(result))
        top_ax.errorbar(a.times, a.top1, yerr=a.top1_se, color=color, marker="o", ms=3,
                        label="all compared tokens" if i == 0 else None)
        top_ax.errorbar(a.times, a.top1_clear, yerr=a.top1_clear_se, color=color, ls="--",
                        label="clear tokens" if i == 0 else None)
        if a.kl_emp is not None:
            kl_ax.errorbar(a.times, a.kl_emp, yerr=a.kl_emp_se, color=color, ls=":", ms=3,
                           label="  vs empirical posterior")
            top_ax.errorbar(a.times, a.top1_emp, yerr=a.top1_emp_se, color=color, ls=":")
    kl_ax.set_yscale("symlog", linthresh=1e-3)
    kl_ax.set_xlabel("t")
    kl_ax.set_ylabel("KL(BP ‖ network), nats per token")
    top_ax.set_xlabel("t")
    top_ax.set_ylabel("top-1 agreement with BP")
    top_ax.set_ylim(-0.02, 1.02)
    kl_ax.legend(fontsize=7)
    top_ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_generation(results, path):
    """Fraction of valid nodes per level of generated samples: network, BP in the
    network's sampler, exact BP samples."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results):
        sources = list(result.samples)
        width = 0.8 / len(sources)
        for k, source in enumerate(sources):
            stats = result.samples[source]
            levels = np.arange(len(stats.valid))
            ax.bar(levels + (k - (len(sources) - 1) / 2) * width, stats.valid, width,
                   yerr=stats.valid_se, label=source, color=f"C{k}")
        lowest = min(float(np.min(stats.valid)) for stats in result.samples.values())
        ax.set_xticks(levels)
        ax.set_xlabel("level l (0 = class)")
        ax.set_ylim(max(0.0, lowest - 0.1), 1.01)
        ax.set_title(_label(result), fontsize=8)
    axes[0][0].set_ylabel("fraction of valid nodes")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def plot_representation(results, path):
    """Cosine similarity of activations on ``x0`` and ``x̂0(t)`` per level (solid) next to
    ``P_l(t)`` of the same ``x̂0`` (dashed)."""
    fig, axes = plt.subplots(1, len(results), figsize=(4.4 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        r = result.representation
        K = r.similarity.shape[1]
        colors = plt.cm.plasma(np.linspace(0.05, 0.85, K))
        for k in range(K):
            name = f"l={k}" if r.kind == "level" else f"layer {k}"
            ax.errorbar(r.times, r.similarity[:, k], yerr=r.similarity_se[:, k], color=colors[k],
                        marker="o", ms=2.5, lw=1.1, label=name)
            ax.axhline(r.chance[k], color=colors[k], lw=0.6, ls=":")
            if r.kind == "level":
                ax.plot(r.times, r.P_sampled[:, k], color=colors[k], ls="--", lw=0.9)
        ax.set_title(_label(result), fontsize=8)
        ax.set_xlabel("t")
    axes[0][0].set_ylabel(r"cos sim. of activations (solid), $P_l(t)$ (dashed)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_sweep(table, path):
    """Each measure against the training-set size ``P`` (in units of ``v·m**(L+1)``);
    online runs at the right edge."""
    finite = [r for r in table if not r["online"]]
    online = [r for r in table if r["online"]]
    right = 2 * max([r["P_units"] for r in finite], default=1.0)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    panels = [("kl_mean", "mean KL(BP ‖ net)"), ("top1_mean", "mean top-1 with BP"),
              ("network_fully_valid", "generated: fully valid"), ("network_copy", "copies")]
    for ax, (key, title) in zip(axes, panels):
        xs = [r["P_units"] for r in finite]
        ax.plot(xs, [np.nan if r[key] is None else r[key] for r in finite], "o-", label="network")
        if key == "kl_mean":
            ax.plot(xs, [np.nan if r["kl_emp_mean"] is None else r["kl_emp_mean"] for r in finite],
                    "s:", label="KL(emp ‖ net)")
        if key == "network_copy":
            ax.plot(xs, [r["copy_perfect"] for r in finite], "k--", lw=1,
                    label="perfect generaliser P/P_max")
        if key == "network_fully_valid" and finite:
            ax.plot(xs, [r.get("bp_chain_fully_valid", np.nan) for r in finite], "k--", lw=1,
                    label="BP in the sampler")
        for r in online:
            if r[key] is not None:
                ax.plot([right], [r[key]], "D", color="C3", label="online")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(r"$P / (v\,m^{L+1})$" + (" (online: right)" if online else ""))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
