"""Flax (NNX) denoisers trained on RHM data, the neural counterpart of exact BP
(``docs/theory/denoisers.md``).

* :mod:`~rhm_jax.denoise.models` — the tree-shaped U-Net and a small transformer;
* :mod:`~rhm_jax.denoise.objectives` — one loss per noise process, each with the BP
  quantity its optimum equals (and BP plugged in, the loss's floor);
* :mod:`~rhm_jax.denoise.config` — :class:`TrainConfig`, one object per experiment;
* :mod:`~rhm_jax.denoise.train` — the RHM training task (data of step ``k``, jitted steps,
  the BP floor, evaluation rows) run by the generic loop of :mod:`rhm_jax.training`;
  :func:`train` and :func:`load_run`;
* :mod:`~rhm_jax.denoise.sampling` — reverse diffusion with a trained network, called like
  the exact samplers of :mod:`rhm_jax.exact`;
* :mod:`~rhm_jax.denoise.compare` — the network against exact BP: per-``t`` agreement,
  losses against their floors, generated samples, ``P_l(t)``, hidden representations.
"""

from rhm_jax.denoise.models import ModelConfig, Transformer, TreeUNet, build_model
from rhm_jax.denoise.objectives import (OBJECTIVES, D3PMBound, GaussianEps, GaussianX0,
                                        MaskedELBO, make_objective)
from rhm_jax.denoise.sampling import (Denoiser, experiment_denoiser, generate, predict_x0,
                                      reverse_sample)
from rhm_jax.denoise.train import Run, TrainConfig, load_run, train

__all__ = [
    "ModelConfig", "TreeUNet", "Transformer", "build_model",
    "OBJECTIVES", "MaskedELBO", "D3PMBound", "GaussianX0", "GaussianEps", "make_objective",
    "Denoiser", "reverse_sample", "generate", "predict_x0", "experiment_denoiser",
    "TrainConfig", "Run", "train", "load_run",
]
