"""Figures of a training run: the held-out loss against data seen and wall time."""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker

from rhm_jax.plotting.style import save_figure

__all__ = ["plot_loss_curve"]


def plot_loss_curve(metrics_path, out_path):
    """Held-out loss against data seen and wall time, with its floors.

    The loss is in bits per token, or for the ε-prediction loss (rows with
    ``loss_mse_per_token``) a squared error per token, without the entropy line.
    """
    from rhm_jax.io import read_jsonl

    rows = read_jsonl(metrics_path)
    test = [r for r in rows if r["split"] == "test"]
    train_rows = [r for r in rows if r["split"] == "train"]
    if not test:
        return
    unit = "mse_per_token" if "floor_mse_per_token" in test[-1] else "bits_per_token"
    bits = unit == "bits_per_token"
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, x_key, label in ((axes[0], "data_seen", "training data seen"),
                             (axes[1], "wall_s", "wall time (s)")):
        # data seen on a log axis, which has no place for the untrained network's row
        shown = (lambda r: r[x_key] > 0) if x_key == "data_seen" else (lambda r: True)
        if train_rows:
            ax.plot([r[x_key] for r in train_rows if shown(r)],
                    [r[f"loss_{unit}"] for r in train_rows if shown(r)],
                    color="0.7", lw=1, label="train (batch mean)")
        for prefix, color, name in (("", "C0", "test"), ("ema_", "C1", "test, EMA")):
            pts = [r for r in test if f"{prefix}loss_{unit}" in r and shown(r)]
            if pts:
                ax.errorbar([r[x_key] for r in pts], [r[f"{prefix}loss_{unit}"] for r in pts],
                            yerr=[r[f"{prefix}loss_se"] for r in pts], color=color, marker="o",
                            ms=3, lw=1.2, label=name)
        ax.axhline(test[-1][f"floor_{unit}"], color="k", ls="--", lw=1,
                   label="BP in the network's place (floor)")
        if bits:
            ax.axhline(test[-1]["entropy_bits_per_token"], color="k", ls=":", lw=1,
                       label=r"entropy $\log_2 P_{max}/d$")
        ax.set_xlabel(label)
        if x_key == "data_seen" and any(shown(r) for r in test + train_rows):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_ylabel("loss (bits per token)" if bits else "ε squared error per token")
    lo = test[-1][f"floor_{unit}"]
    if bits:
        lo = min(lo, test[-1]["entropy_bits_per_token"])
    last = [r.get(f"loss_{unit}", lo) for r in test]
    axes[0].set_ylim(lo * 0.95, max(last[min(1, len(last) - 1):] + [lo * 1.2]) * 1.05)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_path)
