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

* :mod:`~rhm_jax.correlations.estimator` — spin statistics, :func:`change_correlations`,
  :func:`grf_change_correlations` and their memory estimates;
* :mod:`~rhm_jax.correlations.fits` — the exponent ``ν``: :func:`collapse_exponent`,
  :func:`width_exponent`;
* :mod:`~rhm_jax.correlations.sweep` — a χ sweep's noise grid (:func:`transition_times`),
  rows (:func:`to_rows`) and summaries (:func:`peak_summary`, :func:`nu_fits`).
"""

from rhm_jax.correlations.estimator import (ChangeCorrelations, CorrelationBytes,
                                            SpinStatistics, change_correlations,
                                            change_correlations_bytes, grf_change_correlations,
                                            grf_change_correlations_bytes, spin_statistics,
                                            summarise_statistics)
from rhm_jax.correlations.fits import (COLLAPSE_GRID, CollapseFit, WidthFit,
                                       collapse_exponent, width_exponent)
from rhm_jax.correlations.sweep import (GRID_HALF_SPAN, PILOT_DATA, PILOT_LEVELS, nu_fits,
                                        peak_summary, to_rows, transition_times)

__all__ = ["SpinStatistics", "spin_statistics", "ChangeCorrelations", "CorrelationBytes",
           "summarise_statistics", "change_correlations", "change_correlations_bytes",
           "grf_change_correlations", "grf_change_correlations_bytes", "CollapseFit",
           "WidthFit", "COLLAPSE_GRID", "collapse_exponent", "width_exponent",
           "transition_times", "to_rows", "peak_summary", "nu_fits", "PILOT_LEVELS",
           "PILOT_DATA", "GRID_HALF_SPAN"]
