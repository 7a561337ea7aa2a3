"""The paper's real-image forward–backward experiment, in miniature (docs/theory/images.md).

A class-unconditional DDPM on small images (scikit-learn's 8×8 digits by default), a probe
classifier with whitened layer activations, and the forward–backward experiment — noise a
held-out image to step ``k``, denoise it back, ask the probe what survived — run through
one code path for a trained U-Net and for two exact denoisers of the training set.

* :mod:`~rhm_jax.images.data` — digits (the ``[images]`` extra: scikit-learn) or any
  labelled arrays, in ``[-1, 1]`` with a seeded train/test split;
* :mod:`~rhm_jax.images.diffusion` — DDPM's schedule respaced to ``K`` steps, ``q_sample``,
  the ε loss, the ancestral chain;
* :mod:`~rhm_jax.images.unet` — the ε-prediction U-Net;
* :mod:`~rhm_jax.images.references` — the memorising and class-conditional Gaussian
  Bayes denoisers;
* :mod:`~rhm_jax.images.probe` — probe classifiers and their whitening;
* :mod:`~rhm_jax.images.train` — the U-Net and the probe as tasks of the shared training loop;
* :mod:`~rhm_jax.images.experiment` — the forward–backward metrics;
* :mod:`~rhm_jax.images.miniature` — all of it end to end;
* :mod:`~rhm_jax.images.compare` — the RHM next to the images on one DDPM schedule: panels,
  the class drop's width in log-SNR, the low level at its midpoint (``rhm-jax images``).
"""

from rhm_jax.images.data import ImageData, from_arrays, load_digits
from rhm_jax.images.diffusion import (EpsPredictor, RespacedSchedule, ddpm_loss, q_sample,
                                      reverse_chain)
from rhm_jax.images.experiment import (ImageForwardBackwardResult, forward_backward, grid_steps,
                                       noised_starts, to_rows)
from rhm_jax.images.miniature import MiniatureConfig, MiniatureResult, run_miniature
from rhm_jax.images.probe import (Probe, ProbeCNN, ProbeConfig, classifier_probe,
                                  nearest_neighbour_probe)
from rhm_jax.images.references import (gaussian_denoiser, memorising_denoiser,
                                       memorising_log_weights)
from rhm_jax.images.train import (OptimConfig, ProbeTrainConfig, UNetTrainConfig, train_probe,
                                  train_unet)
from rhm_jax.images.unet import ImageUNet, UNetConfig, build_unet, unet_predictor

__all__ = [
    "ImageData", "load_digits", "from_arrays",
    "RespacedSchedule", "EpsPredictor", "q_sample", "ddpm_loss", "reverse_chain",
    "UNetConfig", "ImageUNet", "build_unet", "unet_predictor",
    "memorising_denoiser", "gaussian_denoiser", "memorising_log_weights",
    "ProbeConfig", "ProbeCNN", "Probe", "classifier_probe", "nearest_neighbour_probe",
    "OptimConfig", "UNetTrainConfig", "ProbeTrainConfig", "train_unet", "train_probe",
    "ImageForwardBackwardResult", "forward_backward", "noised_starts", "grid_steps", "to_rows",
    "MiniatureConfig", "MiniatureResult", "run_miniature",
]
