"""Training the image U-Net and the probe classifier: pure pieces and a minimal driver.

The pieces are pure and reusable by any training loop:

* :func:`epoch_batch_indices` — the batch of step ``k``: slice ``k`` of per-epoch
  permutations drawn from ``fold_in(data_key, epoch)`` (the data state is the step);
* :class:`UNetLoss`, :class:`ProbeLoss` — ``loss(params, key, batch)`` of each model;
* :func:`ema_update` — the parameters' exponential moving average;
* :func:`unet_task`, :func:`probe_task` — a :class:`TrainTask`: the state at step 0, the
  ``n``-step function (one compiled step; step ``k`` draws everything from
  ``fold_in(seed, k)``), the evaluation row and the configuration to store.

:func:`fit` is a deliberately small driver of a :class:`TrainTask` (progress bar, metrics
rows, orbax checkpoints of the whole state, bit-exact resume), kept apart so that the
project's shared training loop can replace it. :func:`train_unet` and :func:`train_probe`
run it into a run folder:

``config.json``  the task's configuration (with a hash of the data);
``checkpoints/<step>/``  orbax checkpoints of ``{params, opt_state, ema, step}``;
``metrics.jsonl``  training-loss rows and evaluation rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rhm_jax.images.data import ImageData, fingerprint
from rhm_jax.images.diffusion import RespacedSchedule, ddpm_loss
from rhm_jax.images.probe import ProbeCNN, ProbeConfig, build_probe
from rhm_jax.images.unet import ImageUNet, UNetConfig, UNetEps, build_unet
from rhm_jax.validation import check_bool, check_int

__all__ = ["OptimConfig", "UNetTrainConfig", "ProbeTrainConfig", "TrainState", "TrainTask",
           "epoch_batch_indices", "UNetLoss", "ProbeLoss", "ema_update", "unet_task",
           "probe_task", "fit", "train_unet", "train_probe", "TrainedUNet", "TrainedProbe"]


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
        ``steps_per_call``).
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
class TrainState(NamedTuple):
    """The whole state of a run, a pytree of arrays (parameters as pure dicts)."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array


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


class TrainTask(NamedTuple):
    """What a training loop needs to run one model.

    Attributes:
      name: label of the progress bar.
      config: the JSON configuration stored with the run (a resume must match it).
      optim: steps and intervals.
      init_state: ``() -> TrainState`` at step 0 (also the template of a restore).
      run_steps: ``(state, num_steps) -> (state, metrics)``; ``metrics`` holds per-step
        arrays (``loss`` …).
      evaluate: ``state -> dict`` the evaluation row's fields.
      graphdef: the NNX graph of the model (``nnx.merge(graphdef, state.params)``).
    """

    name: str
    config: dict
    optim: OptimConfig
    init_state: Callable[[], TrainState]
    run_steps: Callable[[TrainState, int], tuple]
    evaluate: Callable[[TrainState], dict]
    graphdef: Any = None


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


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


def unet_task(config: UNetTrainConfig, data: ImageData) -> TrainTask:
    """The U-Net's :class:`TrainTask` on ``data``'s training images (evaluated on its test
    images: per-image DDPM loss, averaged over ``eval_repeats`` fixed noise draws, with its
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
                row[f"{prefix}loss"], row[f"{prefix}loss_se"] = _mean_se(losses(params, test_images))
        return row

    stored = {"task": "unet", **_to_dict(config), "data": fingerprint(data)}
    return TrainTask("unet", stored, config.optim, lambda: jax.tree.map(jnp.copy, state0),
                     lambda state, n: steps(state, train_arrays, n), evaluate, graphdef)


@lru_cache(maxsize=16)
def _probe_scores(graphdef):
    """``scores(params, images, labels) -> (correct, cross-entropy)`` per image, jitted."""
    @jax.jit
    def scores(params, images, labels):
        logits = nnx.merge(graphdef, params)(images)
        return (jnp.argmax(logits, -1) == labels,
                optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    return scores


def probe_task(config: ProbeTrainConfig, data: ImageData) -> TrainTask:
    """The probe classifier's :class:`TrainTask` (evaluation: test accuracy and loss)."""
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
        accuracy, accuracy_se = _mean_se(correct)
        loss, loss_se = _mean_se(losses)
        return {"accuracy": accuracy, "accuracy_se": accuracy_se, "loss": loss,
                "loss_se": loss_se}

    stored = {"task": "probe", **_to_dict(config), "data": fingerprint(data)}
    return TrainTask("probe", stored, config.optim, lambda: jax.tree.map(jnp.copy, state0),
                     lambda state, n: steps(state, train_arrays, n), evaluate, graphdef)


# ---- the minimal driver ---------------------------------------------------------------------
def _manager(run_dir: Path):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def _save(manager, state: TrainState):
    import orbax.checkpoint as ocp

    manager.save(int(state.step), args=ocp.args.StandardSave(state))
    manager.wait_until_finished()


def _restore(manager, template: TrainState) -> TrainState:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))


def _prepare_run_dir(run_dir, config: dict, resume: bool, overwrite: bool) -> Path:
    from rhm_jax.io import write_json

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir = {str(run_dir)!r} exists and is not a folder")
    config_path = run_dir / "config.json"
    if resume and config_path.exists():
        stored = json.loads(config_path.read_text())
        if stored != config:
            diff = [f"{k}: {stored.get(k)!r} -> {config.get(k)!r}"
                    for k in sorted(set(stored) | set(config)) if stored.get(k) != config.get(k)]
            raise ValueError(f"resume: the configuration or data differ from the stored run "
                             f"in {str(run_dir)!r} ({'; '.join(diff)})")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite and not resume:
            raise ValueError(f"run_dir = {str(run_dir)!r} is not empty: pass resume=True to "
                             "continue it or overwrite=True to replace it")
        if not config_path.exists():
            raise ValueError(f"run_dir = {str(run_dir)!r} is not empty and holds no run (no "
                             "config.json): refusing to write into it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(config_path, config)
    return run_dir


def _append(path: Path, row: dict):
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def fit(task: TrainTask, run_dir, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, stop_after: int | None = None) -> tuple[TrainState, list[dict]]:
    """Runs ``task`` into ``run_dir``: steps, metrics rows, checkpoints.

    Args:
      task: the :class:`TrainTask`.
      run_dir: the run folder (see the module docstring).
      resume: continue from the latest checkpoint (the stored configuration must equal the
        task's); a finished run is only restored.
      overwrite: replace an existing run.
      progress: show a progress bar.
      stop_after: stop (after a checkpoint) at this step; the run can be resumed.

    Returns:
      ``(state, rows)``: the final state and every metrics row.
    """
    from rhm_jax.io import atomic_write

    resume, overwrite = check_bool("resume", resume), check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    optim = task.optim
    end = optim.steps if stop_after is None else min(optim.steps, check_int(
        "stop_after", stop_after, 1))
    run_dir = _prepare_run_dir(run_dir, task.config, resume, overwrite)
    metrics_path = run_dir / "metrics.jsonl"
    manager = _manager(run_dir)
    state = task.init_state()
    rows, wall_offset = [], 0.0
    if manager.latest_step() is not None:
        state = _restore(manager, state)
        if metrics_path.exists():
            rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["step"] <= int(state.step)]  # rows after the checkpoint
        with atomic_write(metrics_path) as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
        wall_offset = max([r.get("wall_s", 0.0) for r in rows], default=0.0)
    elif metrics_path.exists():
        metrics_path.unlink()
    step = int(state.step)
    bar = None
    if progress and step < end:
        from tqdm.auto import tqdm

        bar = tqdm(total=optim.steps, initial=step, unit="step", desc=task.name)
    start = time.perf_counter()

    def log(row):
        rows.append(row)
        _append(metrics_path, row)

    if step == 0:
        log({"step": 0, "split": "test", "wall_s": 0.0, **task.evaluate(state)})
    window = []
    while step < end:
        n = min(optim.steps_per_call, end - step)
        state, metrics = task.run_steps(state, n)
        window.append(jax.tree.map(np.asarray, metrics))
        step += n
        wall = round(wall_offset + time.perf_counter() - start, 3)
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{float(window[-1]['loss'][-1]):.4f}")
        if step % optim.log_every == 0 or step == optim.steps:
            joined = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
            log({"step": step, "split": "train", "wall_s": wall,
                 "loss": float(joined["loss"].mean()),
                 "grad_norm": float(joined["grad_norm"].mean()), "lr": float(joined["lr"][-1])})
            window = []
        if step % optim.eval_every == 0 or step == optim.steps:
            log({"step": step, "split": "test", "wall_s": wall, **task.evaluate(state)})
        if step % optim.checkpoint_every == 0 or step == end:
            _save(manager, state)
    if bar is not None:
        bar.close()
    return state, rows


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


def train_unet(config: UNetTrainConfig, data: ImageData, run_dir, **kwargs) -> TrainedUNet:
    """Trains (or resumes, or restores) the U-Net into ``run_dir``; see :func:`fit`."""
    task = unet_task(config, data)
    state, rows = fit(task, run_dir, **kwargs)
    model = nnx.merge(task.graphdef, state.params)
    ema = None if state.ema is None else nnx.merge(task.graphdef, state.ema)
    return TrainedUNet(config, model, ema, int(state.step), rows)


def train_probe(config: ProbeTrainConfig, data: ImageData, run_dir, **kwargs) -> TrainedProbe:
    """Trains (or resumes, or restores) the probe classifier into ``run_dir``."""
    task = probe_task(config, data)
    state, rows = fit(task, run_dir, **kwargs)
    return TrainedProbe(config, nnx.merge(task.graphdef, state.params), int(state.step), rows)
