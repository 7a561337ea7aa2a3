"""The configuration of a denoiser training run: one frozen object per experiment.

A :class:`TrainConfig` fixes everything a run does — grammar, noise process and loss,
network, data regime, optimiser, seeds and intervals — and is stored in the run's
``config.json`` and in every checkpoint, so a checkpoint alone rebuilds its run.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from rhm_jax.config import RHMConfig
from rhm_jax.denoise.models import ModelConfig
from rhm_jax.denoise.objectives import OBJECTIVES, make_objective
from rhm_jax.validation import check_int

__all__ = ["TrainConfig", "MAX_SEED"]

#: Seeds are 32-bit: with JAX's default 32-bit integers, larger ones alias smaller ones.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``config.json``).

    Args:
      v, m, s, L, n_classes: the RHM (see :class:`~rhm_jax.config.RHMConfig`).
      grammar_seed: seed of the grammar's rules, in ``[0, 2**32 - 1]``.
      loss: one of :data:`~rhm_jax.denoise.objectives.OBJECTIVES` (it fixes the noise
        process: ``masked_elbo`` masking, ``d3pm`` uniform substitution, ``gaussian_*``
        Gaussian).
      ce_weight: λ of the D3PM auxiliary cross-entropy (``loss = "d3pm"`` only).
      train_size: ``P``, the number of distinct training data (drawn without replacement,
        disjoint from the test set); ``None`` for online training (fresh data every step).
      test_size: held-out data for evaluation (at least 2, for a standard error).
      model: the network (:class:`~rhm_jax.denoise.models.ModelConfig`).
      batch_size, steps: optimisation length.
      learning_rate, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up and
        cosine decay to 0, global-norm clipping (``0`` turns clipping off).
      ema_decay: decay of the parameters' exponential moving average (``0`` = no EMA).
      seed: seed of initialisation, data order and noise, in ``[0, 2**32 - 1]``.
      steps_per_call: optimisation steps per compiled call.
      log_every, eval_every, checkpoint_every: intervals in steps (multiples of
        ``steps_per_call``; ``checkpoint_every`` a multiple of ``log_every`` unless it is
        at least ``steps``, so that a run resumed from a checkpoint logs the rows of an
        uninterrupted one).
      eval_repeats: noise draws per test datum in each evaluation.
    """

    v: int = 16
    m: int = 4
    s: int = 2
    L: int = 4
    n_classes: int | None = None
    grammar_seed: int = 0
    loss: str = "masked_elbo"
    ce_weight: float = 0.0
    train_size: int | None = None
    test_size: int = 1024
    model: ModelConfig = ModelConfig()
    batch_size: int = 128
    steps: int = 2000
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    steps_per_call: int = 10
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    eval_repeats: int = 4

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig(**self.model))
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        if self.loss not in OBJECTIVES:
            raise ValueError(f"loss = {self.loss!r} must be one of {', '.join(OBJECTIVES)}")
        self.rhm_config  # validates v, m, s, L, n_classes
        ints = {"test_size": 2, "batch_size": 1, "steps": 1, "warmup_steps": 0,
                "steps_per_call": 1, "log_every": 1, "eval_every": 1, "checkpoint_every": 1,
                "eval_repeats": 1}
        for name, minimum in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        for name in ("seed", "grammar_seed"):  # 32-bit: a larger seed would alias a smaller
            object.__setattr__(self, name, check_int(name, getattr(self, name), 0, MAX_SEED))
        if self.test_size > self.rhm_config.P_max:
            raise ValueError(f"test_size = {self.test_size} exceeds P_max = "
                             f"{self.rhm_config.P_max}: the test data are distinct")
        if self.train_size is not None:
            object.__setattr__(self, "train_size", check_int("train_size", self.train_size, 1))
            if self.train_size + self.test_size > self.rhm_config.P_max:
                raise ValueError(
                    f"train_size + test_size = {self.train_size + self.test_size} exceeds "
                    f"P_max = {self.rhm_config.P_max}: the sets are distinct data")
        for name in ("learning_rate", "weight_decay", "grad_clip", "ema_decay", "ce_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} = {value!r} must be a finite number >= 0")
            object.__setattr__(self, name, float(value))
        if self.learning_rate == 0:
            raise ValueError("learning_rate = 0 must be > 0")
        if self.ema_decay >= 1:
            raise ValueError(f"ema_decay = {self.ema_decay} must be in [0, 1)")
        if self.ce_weight and self.loss != "d3pm":
            raise ValueError(f"ce_weight = {self.ce_weight} is used only by loss = 'd3pm', "
                             f"not {self.loss!r}")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) % self.steps_per_call:
                raise ValueError(f"{name} = {getattr(self, name)} must be a multiple of "
                                 f"steps_per_call = {self.steps_per_call} (steps run in "
                                 "compiled groups of that size)")
        if self.checkpoint_every % self.log_every and self.checkpoint_every < self.steps:
            raise ValueError(f"checkpoint_every = {self.checkpoint_every} must be a multiple "
                             f"of log_every = {self.log_every} (a run resumed from a "
                             "checkpoint must log the rows of an uninterrupted one)")
        if self.model.time_conditioning is None:  # masking's optimum does not depend on t
            object.__setattr__(self, "model", dataclasses.replace(
                self.model, time_conditioning=self.loss != "masked_elbo"))

    @property
    def rhm_config(self) -> RHMConfig:
        return RHMConfig(v=self.v, m=self.m, s=self.s, L=self.L, n_classes=self.n_classes)

    def objective(self):
        return make_objective(self.loss, self.rhm_config, ce_weight=self.ce_weight)

    def memory_estimate(self, num_devices: int = 1) -> int:
        """Bytes one device needs for a training step, roughly: the data sets, and the
        activations of the batch share (embeddings, hidden layers, logits and their
        gradients)."""
        d, v, width = self.rhm_config.d, self.v, self.model.width
        data = 4 * d * (self.test_size + (self.train_size or 0))
        batch = -(-self.batch_size // num_devices)
        return data + 4 * batch * d * (2 * (v + 1) + 8 * width)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training configuration fields: {sorted(unknown)}")
        return cls(**d)
