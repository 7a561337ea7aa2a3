"""Training the image U-Net and the probe classifier as tasks of :mod:`rhm_jax.training`.

The pieces are pure and reusable:

* :func:`epoch_batch_indices` — the batch of step ``k``: slice ``k`` of per-epoch
  permutations drawn from ``fold_in(data_key, epoch)`` (the data state is the step);
* :class:`UNetLoss`, :class:`ProbeLoss` — ``loss(params, key, batch)`` of each model;
* :func:`ema_update` — the parameters' exponential moving average;
* :class:`ImageTask` (:func:`unet_task`, :func:`probe_task`) — a
  :class:`~rhm_jax.training.TrainTask`: the state at step 0, the ``n``-step function (a
  Python loop over one compiled step; step ``k`` draws everything from ``fold_in(seed,
  k)``), the rows and the checkpoint items.

:func:`train_unet` and :func:`train_probe` run them through the project's training loop
(:func:`rhm_jax.training.fit`: run-folder lock, verified checkpoints with fallback, no
non-finite row, clean Ctrl-C, bit-exact resume) into a run folder:

``config.json``  the task's configuration with a hash of the data (:class:`ImageRunConfig`);
``meta.json``  the command, versions, the number of parameters;
``checkpoints/<step>/``  orbax checkpoints of ``{params, opt_state, ema, step}``;
``metrics.jsonl``  training-loss rows and evaluation rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rhm_jax.images.data import ImageData, fingerprint
from rhm_jax.images.diffusion import RespacedSchedule, ddpm_loss
from rhm_jax.images.probe import ProbeCNN, ProbeConfig, build_probe
from rhm_jax.images.unet import ImageUNet, UNetConfig, UNetEps, build_unet
from rhm_jax.stats import mean_se
from rhm_jax.training.state import TrainState, count_parameters
from rhm_jax.validation import check_bool, check_int

__all__ = ["OptimConfig", "UNetTrainConfig", "ProbeTrainConfig", "ImageRunConfig", "TrainState",
           "ImageTask", "epoch_batch_indices", "UNetLoss", "ProbeLoss", "ema_update",
           "unet_task", "probe_task", "train_unet", "train_probe", "has_run", "TrainedUNet",
           "TrainedProbe", "COMMAND"]

#: The command stored in the runs' ``meta.json`` (an overwrite replaces only such runs).
COMMAND = "images-train"


# ---- configuration --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation and bookkeeping of one training run.

    Args:
      batch_size: images per step (at most the training set's size).
      steps: optimisation steps.
      learning_rate: AdamW's peak rate (linear warm-up, then cosine decay to 0).
      warmup_steps: warm-up length.
      weight_decay: AdamW's decoupled weight decay.
      grad_clip: global-norm clipping (0 turns it off).
      ema_decay: decay of the parameters' moving average (0: none).
      seed: seed of initialisation, data order and noise.
      steps_per_call: steps per compiled call.
      log_every, eval_every, checkpoint_every: intervals in steps (multiples of
        ``steps_per_call``; ``checkpoint_every`` a multiple of ``log_every`` unless it is
        at least ``steps``).
    """

    batch_size: int = 128
    steps: int = 2000
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    steps_per_call: int = 50
    log_every: int = 100
    eval_every: int = 500
    checkpoint_every: int = 500

    def __post_init__(self):
        for name, minimum in (("batch_size", 1), ("steps", 1), ("warmup_steps", 0), ("seed", 0),
                              ("steps_per_call", 1), ("log_every", 1), ("eval_every", 1),
                              ("checkpoint_every", 1)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        for name in ("learning_rate", "weight_decay", "grad_clip", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} = {value!r} must be a finite number >= 0")
            object.__setattr__(self, name, float(value))
        if self.learning_rate == 0:
            raise ValueError("learning_rate = 0.0 must be > 0")
        if self.ema_decay >= 1:
            raise ValueError(f"ema_decay = {self.ema_decay} must be in [0, 1)")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) % self.steps_per_call:
                raise ValueError(f"{name} = {getattr(self, name)} must be a multiple of "
                                 f"steps_per_call = {self.steps_per_call}")
        if self.checkpoint_every < self.steps and self.checkpoint_every % self.log_every:
            raise ValueError(f"checkpoint_every = {self.checkpoint_every} must be a multiple "
                             f"of log_every = {self.log_every} (a resumed run logs the rows "
                             "of an uninterrupted one)")


def _nested(cls, value, name):
    if isinstance(value, dict):
        value = cls(**value)
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class UNetTrainConfig:
    """The diffusion model's training: network, schedule, optimisation.

    Args:
      unet: the network.
      num_steps: ``K`` of the respaced DDPM schedule (the loss draws ``k`` uniformly in
        ``1 … K``; the network sees ``s_k / T``).
      optim: optimisation (an EMA is usual for diffusion models; at 2,000 steps a decay
        of 0.999 still lags the parameters' held-out loss, 0.995 does not).
      eval_repeats: noise draws per test image in each evaluation.
    """

    unet: UNetConfig = UNetConfig()
    num_steps: int = 250
    optim: OptimConfig = OptimConfig(ema_decay=0.995)
    eval_repeats: int = 4

    def __post_init__(self):
        object.__setattr__(self, "unet", _nested(UNetConfig, self.unet, "unet"))
        object.__setattr__(self, "optim", _nested(OptimConfig, self.optim, "optim"))
        object.__setattr__(self, "eval_repeats", check_int("eval_repeats", self.eval_repeats, 1))
        self.schedule  # validates num_steps

    @property
    def schedule(self) -> RespacedSchedule:
        return RespacedSchedule(self.num_steps)


@dataclasses.dataclass(frozen=True)
class ProbeTrainConfig:
    """The probe classifier's training (cross-entropy on clean training images)."""

    probe: ProbeConfig = ProbeConfig()
    optim: OptimConfig = OptimConfig(steps=600, learning_rate=3e-3, warmup_steps=50,
                                     eval_every=300, checkpoint_every=300)

    def __post_init__(self):
        object.__setattr__(self, "probe", _nested(ProbeConfig, self.probe, "probe"))
        object.__setattr__(self, "optim", _nested(OptimConfig, self.optim, "optim"))


def _to_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ---- pure pieces ----------------------------------------------------------------------------
def epoch_batch_indices(data_key: jax.Array, step, batch_size: int, num_train: int):
    """``(batch_size,)`` indices of the training images of ``step``.

    Position ``p = step · batch_size + i`` of the stream is image ``perm_e[p mod N]`` of
    the permutation ``perm_e`` of epoch ``e = p // N``, drawn from ``fold_in(data_key, e)``:
    every epoch visits each image once, and the batch depends on the step alone.

    Examples:
      >>> key = jax.random.key(0)
      >>> first = [epoch_batch_indices(key, s, 2, 4) for s in (0, 1)]
      >>> sorted(np.concatenate(first).tolist())  # one epoch: each image once
      [0, 1, 2, 3]
    """
    position = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(batch_size)
    epoch = position // num_train
    first = epoch[0]
    touched = (batch_size - 1) // num_train + 2  # epochs one batch can reach
    orders = jnp.stack([jax.random.permutation(jax.random.fold_in(data_key, first + i), num_train)
                        for i in range(touched)])
    return orders[epoch - first, position % num_train]


def ema_update(ema, params, decay: float):
    """``decay · ema + (1 - decay) · params``, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


@dataclasses.dataclass(frozen=True)
class UNetLoss:
    """``loss(params, key, batch)``: mean DDPM loss of a batch ``(images,)`` for the U-Net
    of ``graphdef`` (hashable, so compiled programs are shared between runs)."""

    graphdef: Any
    schedule: RespacedSchedule

    def __call__(self, params, key, batch) -> jax.Array:
        eps_hat = partial(UNetEps(self.graphdef, self.schedule), params)
        return jnp.mean(ddpm_loss(eps_hat, key, batch[0], self.schedule))


@dataclasses.dataclass(frozen=True)
class ProbeLoss:
    """``loss(params, key, batch)``: mean cross-entropy of a batch ``(images, labels)`` for
    the classifier of ``graphdef`` (``key`` unused)."""

    graphdef: Any

    def __call__(self, params, key, batch) -> jax.Array:
        images, labels = batch
        logits = nnx.merge(self.graphdef, params)(images)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _optimizer(optim: OptimConfig):
    """AdamW with warm-up and cosine decay, and its learning-rate schedule: the tree
    denoisers' optimiser (:class:`OptimConfig` has the fields it reads)."""
    from rhm_jax.denoise.train import learning_rate_schedule, make_optimizer

    return make_optimizer(optim), learning_rate_schedule(optim)


def _initial_state(model, optim: OptimConfig):
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx, _ = _optimizer(optim)
    ema = jax.tree.map(jnp.copy, params) if optim.ema_decay > 0 else None
    return graphdef, TrainState(params, tx.init(params), ema, jnp.zeros((), jnp.int32))


@lru_cache(maxsize=16)
def _compiled_steps(loss, optim: OptimConfig):
    """``run(state, train_arrays, num_steps) -> (state, metrics)``: ``num_steps`` steps of
    ``loss(params, key, batch)`` (hashable; one compiled step per loss and optimisation in
    a process).

    The steps run as a Python loop of one jitted step, not as a ``lax.scan``: XLA on CPU
    runs the gradients of convolutions inside a loop about 50 times slower than the same
    step on its own (6 s against 0.12 s of CPU time per step of the default U-Net), while
    the dispatch of a step costs well under a millisecond against its 0.1 s.
    """
    tx, schedule = _optimizer(optim)
    base = jax.random.key(optim.seed)
    data_key, noise_key = jax.random.fold_in(base, 2), jax.random.fold_in(base, 3)

    @partial(jax.jit, donate_argnums=(0,))
    def one_step(state: TrainState, train_arrays):
        num_train = train_arrays[0].shape[0]
        index = epoch_batch_indices(data_key, state.step, optim.batch_size, num_train)
        batch = tuple(a[index] for a in train_arrays)
        value, grads = jax.value_and_grad(loss)(state.params,
                                                jax.random.fold_in(noise_key, state.step), batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = None if state.ema is None else ema_update(state.ema, params, optim.ema_decay)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return TrainState(params, opt_state, ema, state.step + 1), metrics

    def run(state: TrainState, train_arrays, num_steps: int):
        history = []
        for _ in range(num_steps):
            state, metrics = one_step(state, train_arrays)
            history.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)

    return run


def _check_data(data, batch_size: int):
    if not isinstance(data, ImageData):
        raise TypeError(f"data must be an ImageData (from load_digits or from_arrays), got "
                        f"{type(data).__name__}")
    if batch_size > len(data.train_images):
        raise ValueError(f"batch_size = {batch_size} exceeds the {len(data.train_images)} "
                         "training images")


#: Test images per evaluation call (fixed, so the held-out noise depends only on the seed).
EVAL_CHUNK = 512


@lru_cache(maxsize=16)
def _eval_unet(graphdef, config: UNetTrainConfig):
    """``losses(params, test_images) -> (n,)`` per-image held-out losses (one compiled
    program per network and configuration in a process)."""
    schedule = config.schedule
    keys = [jax.random.fold_in(jax.random.key(config.optim.seed), 1000 + r)
            for r in range(config.eval_repeats)]

    apply = UNetEps(graphdef, schedule)

    @jax.jit
    def per_image(params, key, images):
        return ddpm_loss(partial(apply, params), key, images, schedule)

    def losses(params, images):
        out = np.zeros(len(images))
        for r, key in enumerate(keys):
            for start in range(0, len(images), EVAL_CHUNK):
                chunk = images[start:start + EVAL_CHUNK]
                size = len(chunk)
                padded = np.concatenate([chunk, np.repeat(chunk[:1], EVAL_CHUNK - size, 0)]) \
                    if size < EVAL_CHUNK and len(images) > EVAL_CHUNK else chunk
                out[start:start + size] += np.asarray(
                    per_image(params, jax.random.fold_in(key, start), padded))[:size]
        return out / len(keys)

    return losses


# ---- the tasks the training loop runs ------------------------------------------------------
_TRAIN_CONFIGS = {"unet": UNetTrainConfig, "probe": ProbeTrainConfig}


@dataclasses.dataclass(frozen=True)
class ImageRunConfig:
    """What a run folder of an image model stores: the model's training configuration and
    a content hash of its data (a resume refuses other data).

    It is the :class:`~rhm_jax.training.loop.LoopConfig` of the training loop: the steps
    and intervals are those of ``train.optim``.

    Args:
      task: ``"unet"`` or ``"probe"``.
      train: a :class:`UNetTrainConfig` (``"unet"``) or :class:`ProbeTrainConfig`
        (``"probe"``).
      data: the data's fingerprint (:func:`rhm_jax.images.data.fingerprint`).
    """

    task: str
    train: Any
    data: str

    def __post_init__(self):
        if self.task not in _TRAIN_CONFIGS:
            raise ValueError(f"task = {self.task!r} must be one of {sorted(_TRAIN_CONFIGS)}")
        object.__setattr__(self, "train", _nested(_TRAIN_CONFIGS[self.task], self.train,
                                                  "train"))
        if not isinstance(self.data, str):
            raise TypeError(f"data must be the data's fingerprint (a str), got "
                            f"{type(self.data).__name__}")

    steps = property(lambda self: self.train.optim.steps)
    batch_size = property(lambda self: self.train.optim.batch_size)
    steps_per_call = property(lambda self: self.train.optim.steps_per_call)
    log_every = property(lambda self: self.train.optim.log_every)
    eval_every = property(lambda self: self.train.optim.eval_every)
    checkpoint_every = property(lambda self: self.train.optim.checkpoint_every)

    def to_dict(self) -> dict:
        """``{"task", <the training configuration's fields>, "data"}`` (JSON types)."""
        return {"task": self.task, **_to_dict(self.train), "data": self.data}

    @classmethod
    def from_dict(cls, d: dict) -> ImageRunConfig:
        """The inverse of :meth:`to_dict`; ``ValueError``/``TypeError`` when ``d`` is not
        one."""
        if not isinstance(d, dict) or "task" not in d or "data" not in d:
            raise ValueError("an image run's configuration has the fields 'task' and 'data'")
        fields = {k: v for k, v in d.items() if k not in ("task", "data")}
        task = d["task"]
        if task not in _TRAIN_CONFIGS:
            raise ValueError(f"task = {task!r} must be one of {sorted(_TRAIN_CONFIGS)}")
        return cls(task, _TRAIN_CONFIGS[task](**fields), d["data"])


class ImageTask:
    """An image model as a :class:`~rhm_jax.training.TrainTask` (built by
    :func:`unet_task` or :func:`probe_task`).

    Attributes:
      name: ``"unet"`` or ``"probe"`` (the progress bar's label).
      config: the :class:`ImageRunConfig` stored with the run.
      graphdef: the NNX graph of the model (``nnx.merge(graphdef, state.params)``).
    """

    run_files = ()

    def __init__(self, config: ImageRunConfig, graphdef, state0: TrainState, steps,
                 evaluate):
        self.name, self.config, self.graphdef = config.task, config, graphdef
        self._state0, self._steps, self._evaluate = state0, steps, evaluate

    def init_state(self) -> TrainState:
        return jax.tree.map(jnp.copy, self._state0)

    def checkpoint_items(self, state: TrainState) -> dict:
        return {"state": state}

    def restore(self, template: TrainState, items: dict) -> TrainState:
        params, opt_state, ema, step = items["state"]
        return TrainState(params, opt_state, ema, jnp.asarray(step, jnp.int32))

    def start(self, state: TrainState) -> TrainState:
        return state

    def run_steps(self, state: TrainState, num_steps: int):
        return self._steps(state, num_steps)

    def train_row(self, metrics: dict) -> dict:
        return {"loss": float(metrics["loss"].mean()),
                "grad_norm": float(metrics["grad_norm"].mean()), "lr": float(metrics["lr"][-1])}

    def eval_row(self, state: TrainState) -> dict:
        return self._evaluate(state)

    def meta(self, state: TrainState) -> dict:
        return {"task": self.name, "num_parameters": count_parameters(state.params)}

    def progress_text(self, metrics: dict) -> str:
        return f"loss={float(metrics['loss'][-1]):.4f}"

    def after_eval(self, folder: Path) -> None:
        pass


def unet_task(config: UNetTrainConfig, data: ImageData) -> ImageTask:
    """The U-Net's task on ``data``'s training images (evaluated on its test images:
    per-image DDPM loss, averaged over ``eval_repeats`` fixed noise draws, with its
    standard error over images; for the parameters and their EMA)."""
    if not isinstance(config, UNetTrainConfig):
        raise TypeError(f"config must be a UNetTrainConfig, got {type(config).__name__}")
    _check_data(data, config.optim.batch_size)
    model = build_unet(config.unet, data.image_shape, config.optim.seed)
    graphdef, state0 = _initial_state(model, config.optim)
    steps = _compiled_steps(UNetLoss(graphdef, config.schedule), config.optim)
    train_arrays = (jnp.asarray(data.train_images),)
    test_images = np.asarray(data.test_images)
    losses = _eval_unet(graphdef, config)

    def evaluate(state: TrainState) -> dict:
        row = {}
        for prefix, params in (("", state.params), ("ema_", state.ema)):
            if params is not None:
                row[f"{prefix}loss"], row[f"{prefix}loss_se"] = mean_se(losses(params, test_images))
        return row

    return ImageTask(ImageRunConfig("unet", config, fingerprint(data)), graphdef, state0,
                     lambda state, n: steps(state, train_arrays, n), evaluate)


@lru_cache(maxsize=16)
def _probe_scores(graphdef):
    """``scores(params, images, labels) -> (correct, cross-entropy)`` per image, jitted."""
    @jax.jit
    def scores(params, images, labels):
        logits = nnx.merge(graphdef, params)(images)
        return (jnp.argmax(logits, -1) == labels,
                optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    return scores


def probe_task(config: ProbeTrainConfig, data: ImageData) -> ImageTask:
    """The probe classifier's task (evaluation: test accuracy and loss)."""
    if not isinstance(config, ProbeTrainConfig):
        raise TypeError(f"config must be a ProbeTrainConfig, got {type(config).__name__}")
    _check_data(data, config.optim.batch_size)
    model = build_probe(config.probe, data.image_shape, data.num_classes, config.optim.seed)
    graphdef, state0 = _initial_state(model, config.optim)
    steps = _compiled_steps(ProbeLoss(graphdef), config.optim)
    train_arrays = (jnp.asarray(data.train_images), jnp.asarray(data.train_labels))
    scores = _probe_scores(graphdef)

    def evaluate(state: TrainState) -> dict:
        correct, losses = scores(state.params, data.test_images, data.test_labels)
        accuracy, accuracy_se = mean_se(correct)
        loss, loss_se = mean_se(losses)
        return {"accuracy": accuracy, "accuracy_se": accuracy_se, "loss": loss,
                "loss_se": loss_se}

    return ImageTask(ImageRunConfig("probe", config, fingerprint(data)), graphdef, state0,
                     lambda state, n: steps(state, train_arrays, n), evaluate)


# ---- the two models ---------------------------------------------------------------------
class TrainedUNet(NamedTuple):
    """A trained U-Net: configuration, network, its EMA (or None), step and metrics rows."""

    config: UNetTrainConfig
    model: ImageUNet
    ema_model: ImageUNet | None
    step: int
    rows: list

    @property
    def test_loss(self) -> dict:
        """The last evaluation row."""
        return [r for r in self.rows if r["split"] == "test"][-1]


class TrainedProbe(NamedTuple):
    """A trained probe classifier with its test accuracy."""

    config: ProbeTrainConfig
    model: ProbeCNN
    step: int
    rows: list

    @property
    def test_accuracy(self) -> float:
        return [r for r in self.rows if r["split"] == "test"][-1]["accuracy"]


def has_run(run_dir) -> bool:
    """True when ``run_dir`` holds a run to resume (its ``config.json``)."""
    return (Path(run_dir) / "config.json").is_file()


def _fit(task: ImageTask, run_dir, resume=False, overwrite=False, progress=True,
         stop_after=None) -> tuple[TrainState, list]:
    from rhm_jax.training.loop import fit

    resume, overwrite = check_bool("resume", resume), check_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True exclude each other")
    state = fit(task, run_dir, resume=resume, overwrite=overwrite,
                progress=check_bool("progress", progress), stop_after=stop_after,
                command=COMMAND)
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return state, [json.loads(line) for line in text.splitlines() if line.strip()]


def train_unet(config: UNetTrainConfig, data: ImageData, run_dir, *, resume: bool = False,
               overwrite: bool = False, progress: bool = True,
               stop_after: int | None = None) -> TrainedUNet:
    """Trains (or resumes, or restores) the U-Net into ``run_dir``.

    Args:
      config: the training.
      data: the images.
      run_dir: the run folder (see the module docstring).
      resume: continue from the newest checkpoint that restores (the stored configuration
        and data must equal these); a finished run is only restored.
      overwrite: replace an earlier image run in ``run_dir`` (at the new run's first
        checkpoint).
      progress: show a progress bar.
      stop_after: stop (after checkpointing) at this step, a multiple of ``log_every``.

    Raises:
      TrainingDiverged, TrainingInterrupted, RunLocked, CheckpointError: as
        :func:`rhm_jax.training.fit`.
    """
    task = unet_task(config, data)
    state, rows = _fit(task, run_dir, resume, overwrite, progress, stop_after)
    model = nnx.merge(task.graphdef, state.params)
    ema = None if state.ema is None else nnx.merge(task.graphdef, state.ema)
    return TrainedUNet(config, model, ema, int(state.step), rows)


def train_probe(config: ProbeTrainConfig, data: ImageData, run_dir, *, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                stop_after: int | None = None) -> TrainedProbe:
    """Trains (or resumes, or restores) the probe classifier into ``run_dir`` (arguments
    as :func:`train_unet`)."""
    task = probe_task(config, data)
    state, rows = _fit(task, run_dir, resume, overwrite, progress, stop_after)
    return TrainedProbe(config, nnx.merge(task.graphdef, state.params), int(state.step), rows)
