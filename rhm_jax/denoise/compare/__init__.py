"""A trained denoiser against the exact BP denoiser (``docs/theory/denoisers.md``).

Each measure puts the network and BP through the same code, on the same data and noise
(common random numbers), so their difference is the network's error alone:

* :func:`agreement` — per time ``t``, on held-out noisy data, the quantity the network's
  loss targets against BP's value of it (:meth:`Objective.bp_target`): ``KL(BP ‖ network)``
  per token and top-1 agreement, with standard errors. For a finite training set also
  ``KL(empirical ‖ network)``, against the exact posterior of the training set
  (:func:`empirical_marginals`): the network memorises when it tracks that one.
* :func:`compare_losses` — the held-out loss of the network next to the same loss with BP
  in the network's place (its floor) and ``log P_max / d``.
* :func:`sample_stats` — generated sequences: fraction valid per level (parser), class
  histogram, fraction copying a training datum (:func:`copy_fraction`).
* :func:`forward_backward_pair` — ``P_l(t)`` of the network's reverse chain and of exact
  BP through :func:`rhm_jax.experiments.forward_backward`, the same data and noise.
* :func:`representation_similarity` — per level of the tree U-Net's down path (per layer
  of the transformer), the cosine similarity of the activations on ``x0`` and on
  ``x̂0(t)`` (both fed clean, at ``t = 0``), next to ``P_l(t)`` of the same ``x̂0``.
* :func:`compare_run` runs them all on a run folder; :func:`sweep_table` tabulates several
  runs against the number of training data ``P`` in units of ``v·m**(L+1)``.

Modules, one per seam (every name below is re-exported here):

* :mod:`~rhm_jax.denoise.compare.agreement` — the predictors (network and BP through one
  code path), per-token statistics, per-``t`` agreement, the loss comparison, and what is
  compared for each objective;
* :mod:`~rhm_jax.denoise.compare.empirical` — the empirical posterior of a training set;
* :mod:`~rhm_jax.denoise.compare.generation` — generated samples and their statistics,
  copies of the training set, the forward–backward pair;
* :mod:`~rhm_jax.denoise.compare.representation` — hidden representations;
* :mod:`~rhm_jax.denoise.compare.run` — one run compared (:func:`compare_run`), its rows,
  the sweep table;
* :mod:`~rhm_jax.denoise.compare.common` — the host loop over chunks, the time grid, the
  reverse steps.
"""

from rhm_jax.denoise.compare.agreement import (CLEAR_MARGIN, EPS_MEAN_FLOOR, TIE_TOLERANCE,
                                               Agreement, LossComparison, agreement,
                                               bp_predictor, compare_losses,
                                               network_predictor, token_stats)
from rhm_jax.denoise.compare.common import default_num_steps, sampler_name, snap_times
from rhm_jax.denoise.compare.empirical import empirical_marginals
from rhm_jax.denoise.compare.generation import (SampleStats, bp_chain_samples, copy_flags,
                                                copy_fraction, forward_backward_pair,
                                                network_samples, sample_stats)
from rhm_jax.denoise.compare.representation import (Representation, layer_activations,
                                                    representation_similarity)
from rhm_jax.denoise.compare.run import (P_unit, RunComparison, check_config_json,
                                         compare_run, sweep_table)

__all__ = ["Agreement", "LossComparison", "SampleStats", "Representation", "RunComparison",
           "TIE_TOLERANCE", "CLEAR_MARGIN", "EPS_MEAN_FLOOR", "network_predictor",
           "bp_predictor", "token_stats", "empirical_marginals", "agreement",
           "compare_losses", "copy_flags", "copy_fraction", "sample_stats", "network_samples",
           "bp_chain_samples", "forward_backward_pair", "layer_activations",
           "representation_similarity", "default_num_steps", "sampler_name", "snap_times",
           "P_unit", "check_config_json", "compare_run", "sweep_table"]
