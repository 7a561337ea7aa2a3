"""The RHM next to real images: one row of panels on DDPM's noise axis (docs/theory/images.md)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from rhm_jax.plotting.style import save_figure

__all__ = ["plot_rhm_vs_images"]


def _log_snr_axis(ax):
    """A top axis in log-SNR of DDPM's linear-β schedule, for the ``t/T`` bottom axis."""
    from rhm_jax.images.compare import log_snr
    from rhm_jax.schedules import LinearBeta

    grid = np.linspace(1e-3, 1.0, 2000)
    lam = log_snr(LinearBeta().alpha_bar(grid))  # falls with t

    def forward(t):
        return np.interp(t, grid, lam)

    def inverse(x):
        return np.interp(x, lam[::-1], grid[::-1])

    top = ax.secondary_xaxis("top", functions=(forward, inverse))
    top.set_xticks([6, 3, 0, -3, -6, -9])
    top.set_xlabel("log-SNR  log(ᾱ/(1-ᾱ))", fontsize=8)
    top.tick_params(labelsize=7)


def plot_rhm_vs_images(panels, path, *, references=(), summary=None) -> None:
    """Draw the panels side by side with a shared ``t/T`` axis and save to ``path``.

    Each panel draws its class kept in bold (with error bars) and its lower levels
    shaded from the class's neighbour (dark) to the lowest level (light); ``references``
    (:class:`~rhm_jax.images.compare.Panel` s of exact denoisers) add their class-kept
    curves, dashed, to the last panel.

    Args:
      panels: :class:`~rhm_jax.images.compare.Panel` s, left to right.
      path: the PNG to write.
      references: panels whose class-kept curves go dashed into the last panel.
      summary: :func:`~rhm_jax.images.compare.summarise_panels`' dict: each panel's
        class-drop width is written into its title.
    """
    panels = list(panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), sharex=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        shades = plt.cm.Blues(np.linspace(0.8, 0.3, len(panel.levels)))
        for j, (name, color) in enumerate(zip(panel.levels, shades)):
            ax.plot(panel.times, panel.level_values[:, j], color=color, lw=1.1, label=name)
        ax.errorbar(panel.times, panel.class_kept, yerr=np.nan_to_num(panel.class_kept_se),
                    color="k", lw=2.4, marker="o", ms=3, label="class")
        ax.axhline(panel.chance, color="gray", lw=0.8, ls=":")
        title = panel.label
        drop = (summary or {}).get(panel.name, {})
        if drop.get("width_log_snr") is not None:
            title += f"\nclass drop width {drop['width_log_snr']:.2f} in log-SNR"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("t/T")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.05, 1.05)
        _log_snr_axis(ax)
    last = axes[0][-1]
    for ref, style in zip(references, ("--", "-.", ":")):
        last.plot(ref.times, ref.class_kept, style, color="tab:red", lw=1.4,
                  label=f"class, {ref.label}")
    axes[0][0].set_ylabel("kept: P_l (RHM), cosine (layers), class")
    for ax in axes[0]:
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)
