"""The paper's real-image forward–backward experiment in miniature, end to end.

:func:`run_miniature` trains (or resumes) a U-Net and a probe classifier on a small image
set (scikit-learn's 8×8 digits by default), then runs the forward–backward experiment on
held-out images with three denoisers through the same code: the U-Net (its EMA
parameters), the memorising Bayes denoiser of the training set and the class-conditional
Gaussian denoiser (docs/theory/images.md). Its run folder:

``unet/``, ``probe/``  the two training runs (resumable);
``forward_backward.jsonl``  tidy rows (:func:`rhm_jax.images.experiment.to_rows`);
``summary.json``  probe accuracy, the U-Net's held-out loss, timings, environment.

:meth:`MiniatureConfig.quick` is sized for a test (seconds of work once compiled); the
default for a CPU (minutes).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from rhm_jax.images.data import ImageData, load_digits
from rhm_jax.images.experiment import ImageForwardBackwardResult, forward_backward, grid_steps, to_rows
from rhm_jax.images.probe import classifier_probe
from rhm_jax.images.references import gaussian_denoiser, memorising_denoiser
from rhm_jax.images.train import (OptimConfig, ProbeTrainConfig, UNetTrainConfig, has_run,
                                  train_probe, train_unet)
from rhm_jax.images.unet import UNetConfig, unet_predictor
from rhm_jax.validation import check_bool, check_int

__all__ = ["MiniatureConfig", "MiniatureResult", "run_miniature", "train_and_compare", "summarise",
           "DENOISERS"]

#: The denoisers compared, in the order they run.
DENOISERS = ("unet", "memorising", "gaussian")


@dataclasses.dataclass(frozen=True)
class MiniatureConfig:
    """The whole miniature experiment.

    Args:
      unet: the U-Net's training (its ``num_steps`` is the ``K`` of every chain).
      probe: the probe classifier's training.
      fractions: the grid of ``t = k/K``.
      num_images: held-out start images (the first ones of the test split; ``None``: all).
      ridge: the Gaussian reference's covariance ridge.
      seed: key of the forward–backward noise.
    """

    unet: UNetTrainConfig = UNetTrainConfig(
        unet=UNetConfig(channels=16, channel_mults=(1, 2)), num_steps=100,
        optim=OptimConfig(batch_size=128, steps=2500, learning_rate=2e-3, warmup_steps=100,
                          ema_decay=0.995, steps_per_call=100, log_every=100,
                          eval_every=500, checkpoint_every=500))
    probe: ProbeTrainConfig = ProbeTrainConfig()
    fractions: tuple = tuple(np.round(np.arange(1, 11) / 10, 1).tolist())
    num_images: int | None = 200
    ridge: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.unet, UNetTrainConfig):
            raise TypeError(f"unet must be a UNetTrainConfig, got {type(self.unet).__name__}")
        if not isinstance(self.probe, ProbeTrainConfig):
            raise TypeError(f"probe must be a ProbeTrainConfig, got {type(self.probe).__name__}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        grid_steps(self.unet.num_steps, self.fractions)  # validates the grid
        if self.num_images is not None:
            object.__setattr__(self, "num_images", check_int("num_images", self.num_images, 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))

    @classmethod
    def quick(cls) -> MiniatureConfig:
        """A run for tests: a tiny U-Net trained for 20 steps, the default probe (a few
        seconds; it reaches the accuracy of the default run), 16 images, K = 20."""
        return cls(
            unet=UNetTrainConfig(
                unet=UNetConfig(channels=4, channel_mults=(1,), groups=2), num_steps=20,
                optim=OptimConfig(batch_size=16, steps=20, warmup_steps=2, ema_decay=0.9,
                                  steps_per_call=5, log_every=5, eval_every=10,
                                  checkpoint_every=10),
                eval_repeats=1),
            fractions=(0.25, 0.5, 1.0), num_images=16)


class MiniatureResult(NamedTuple):
    """What :func:`run_miniature` measured.

    Attributes:
      rows: tidy rows of every denoiser (``denoiser`` in :data:`DENOISERS`).
      results: per denoiser, its :class:`~rhm_jax.images.experiment.ImageForwardBackwardResult`.
      probe_accuracy: the probe's test accuracy.
      unet_test_loss: the U-Net's last evaluation row (held-out DDPM loss, EMA's too).
      timings: seconds: ``unet_training``, ``probe_training`` and
        ``forward_backward_<denoiser>`` (each including its compilation).
    """

    rows: list
    results: dict
    probe_accuracy: float
    unet_test_loss: dict
    timings: dict


def run_miniature(run_dir, config: MiniatureConfig | None = None, *, data: ImageData | None = None,
                  progress: bool = True, mesh=None) -> MiniatureResult:
    """Train or resume the U-Net and the probe, then forward–backward with three denoisers.

    Args:
      run_dir: the run folder (see the module docstring); an existing run with the same
        configuration is resumed (a finished one is only restored).
      config: the experiment (default :class:`MiniatureConfig`).
      data: the images (default :func:`~rhm_jax.images.data.load_digits`).
      progress: show progress bars.
      mesh: device mesh with a ``"data"`` axis for the forward–backward (default: all
        devices).

    Returns:
      :class:`MiniatureResult`.
    """
    from rhm_jax.io import environment, write_json, write_jsonl

    run_dir = Path(run_dir)
    result = train_and_compare(config, run_dir / "unet", run_dir / "probe", data=data,
                               progress=progress, mesh=mesh)
    config = MiniatureConfig() if config is None else config
    write_jsonl(run_dir / "forward_backward.jsonl", result.rows)
    summary = {"probe_accuracy": result.probe_accuracy, "unet_test_loss": result.unet_test_loss,
               "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
               "num_images": result.results["unet"].n_images, "K": config.unet.num_steps,
               "config": dataclasses.asdict(config), "environment": environment()}
    write_json(run_dir / "summary.json", summary)
    return result


def train_and_compare(config: MiniatureConfig | None, unet_dir, probe_dir, *,
                      data: ImageData | None = None, progress: bool = True,
                      mesh=None) -> MiniatureResult:
    """:func:`run_miniature`'s work without its files: train or resume the U-Net in
    ``unet_dir`` and the probe in ``probe_dir`` (each resumed when it holds a run), then
    forward–backward with the three denoisers.

    Args:
      config: the experiment (default :class:`MiniatureConfig`).
      unet_dir, probe_dir: the two training runs' folders
        (:func:`rhm_jax.images.train.train_unet`).
      data: the images (default :func:`~rhm_jax.images.data.load_digits`).
      progress: show progress bars.
      mesh: device mesh with a ``"data"`` axis for the forward–backward.

    Returns:
      :class:`MiniatureResult`.
    """
    config = MiniatureConfig() if config is None else config
    if not isinstance(config, MiniatureConfig):
        raise TypeError(f"config must be a MiniatureConfig, got {type(config).__name__}")
    progress = check_bool("progress", progress)
    data = load_digits() if data is None else data
    if not isinstance(data, ImageData):
        raise TypeError(f"data must be an ImageData, got {type(data).__name__}")
    timings = {}

    start = time.perf_counter()
    unet = train_unet(config.unet, data, unet_dir, resume=has_run(unet_dir), progress=progress)
    timings["unet_training"] = time.perf_counter() - start
    start = time.perf_counter()
    probe_run = train_probe(config.probe, data, probe_dir, resume=has_run(probe_dir),
                            progress=progress)
    timings["probe_training"] = time.perf_counter() - start

    schedule = config.unet.schedule
    probe = classifier_probe(probe_run.model, data.train_images)
    starts = data.test_images[:config.num_images]
    steps = grid_steps(schedule.num_steps, config.fractions)
    denoisers = {
        "unet": unet_predictor(unet.ema_model if unet.ema_model is not None else unet.model,
                               schedule),
        "memorising": memorising_denoiser(data.train_images, schedule),
        "gaussian": gaussian_denoiser(data.train_images, data.train_labels, schedule,
                                      ridge=config.ridge),
    }
    key = jax.random.key(config.seed)
    rows, results = [], {}
    for name in DENOISERS:
        start = time.perf_counter()
        result = forward_backward(key, denoisers[name], starts, steps, schedule, probe,
                                  mesh=mesh, progress=progress)
        timings[f"forward_backward_{name}"] = time.perf_counter() - start
        results[name] = result
        rows += to_rows(result, name)
    return MiniatureResult(rows, results, probe_run.test_accuracy, unet.test_loss, timings)


def summarise(result: ImageForwardBackwardResult) -> dict:
    """``{t: class kept}`` and the ``t`` where the class-kept curve crosses one half
    (linear interpolation; ``None`` if it does not)."""
    kept = dict(zip(np.round(result.times, 3).tolist(), np.round(result.class_kept, 3).tolist()))
    below = np.nonzero(result.class_kept < 0.5)[0]
    crossing = None
    if below.size and below[0] > 0:
        i = below[0]
        t0, t1 = result.times[i - 1], result.times[i]
        y0, y1 = result.class_kept[i - 1], result.class_kept[i]
        crossing = float(t0 + (y0 - 0.5) * (t1 - t0) / (y0 - y1))
    return {"class_kept": kept, "t_half": crossing}
