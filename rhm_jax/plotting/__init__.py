"""Every figure rhm_jax draws, in one style (:mod:`rhm_jax.plotting.style`).

* :mod:`~rhm_jax.plotting.phase` — the phase transition: ``P_0`` against the noise per
  depth with the mean field, every level at one depth, the noise processes side by side;
* :mod:`~rhm_jax.plotting.training` — a training run's loss curve.
"""

from rhm_jax.plotting.phase import plot_class_vs_noise, plot_levels, plot_processes
from rhm_jax.plotting.style import DPI, save_figure
from rhm_jax.plotting.training import plot_loss_curve

__all__ = ["DPI", "save_figure", "plot_class_vs_noise", "plot_levels", "plot_processes",
           "plot_loss_curve"]
