"""Training a denoiser on RHM data: the task the generic loop runs, and its run folders.

:class:`TrainConfig` (:mod:`rhm_jax.denoise.config`) describes an experiment completely;
:func:`train` runs it into a run folder through :func:`rhm_jax.training.fit`:

``config.json``, ``meta.json``
    the configuration, the versions of everything, the number of parameters;
``checkpoints/<step>/``
    orbax checkpoints of the whole train state — parameters, optimiser state, EMA, step —
    plus the grammar's rules and the configuration, so a checkpoint alone rebuilds the
    model and its data (:func:`load_run`);
``metrics.jsonl``
    one row per log interval (training loss) and per evaluation (held-out loss next to its
    exact floor, the same loss with BP in the network's place);
``loss_curve.png``
    held-out loss against data seen and against wall time.

Determinism. Every random number of step ``k`` comes from ``fold_in(key, k)``: the batch
(fresh data in the online regime; the ``k``-th batch of a per-epoch permutation of the
``P`` training data otherwise), the noise times and the noise. The data state is therefore
the step number, and a run resumed from a checkpoint ends with bit-identical parameters to
an uninterrupted one.

The model is ``nnx.split`` once and ``nnx.merge`` d inside the compiled function (the
functional NNX pattern, stable across Flax versions); ``steps_per_call`` steps run inside
one ``jax.lax.scan``. The batch is sharded over a ``"data"`` mesh.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rhm_jax.denoise.config import TrainConfig
from rhm_jax.denoise.evaluation import bp_floor, bp_per_datum, make_eval, per_datum_loss
from rhm_jax.denoise.models import build_model
from rhm_jax.grammar import Grammar, grammar_from_rules, sample_grammar
from rhm_jax.sampling import sample_data_unchecked, sample_disjoint_data
from rhm_jax.stats import mean_se
from rhm_jax.training.state import TrainState, count_parameters, from_pure, global_norm, to_pure
from rhm_jax.validation import check_bool, check_int

__all__ = ["TrainConfig", "Run", "RHMTask", "train", "load_run", "init_state",
           "loss_unit",
           "make_train_steps", "datasets", "make_eval", "bp_floor", "train_batch",
           "compiled_train_steps", "make_grammar", "make_optimizer", "learning_rate_schedule"]

LN2 = math.log(2.0)


def loss_unit(config: TrainConfig) -> tuple[str, float]:
    """``(suffix, scale)`` of the loss in ``metrics.jsonl``: rows hold ``loss_<suffix>``
    = per-sequence loss × ``scale``.

    Losses in nats (masking, D3PM, Gaussian x0 cross-entropy) are reported in bits per
    token (``"bits_per_token"``, ``1 / (d ln 2)``); the ε-prediction loss is a squared
    error, reported per token (``"mse_per_token"``, ``1 / d``).
    """
    d = config.rhm_config.d
    if config.loss == "gaussian_eps":
        return "mse_per_token", 1.0 / d
    return "bits_per_token", 1.0 / (d * LN2)


def learning_rate_schedule(config: TrainConfig):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, config.steps - 1) if config.steps > 1 else 0,
        decay_steps=config.steps, end_value=0.0)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay))
    return optax.chain(*parts)


def make_grammar(config: TrainConfig) -> Grammar:
    return sample_grammar(jax.random.key(config.grammar_seed), config.rhm_config)


def init_state(config: TrainConfig):
    """``(graphdef, TrainState)`` at step 0."""
    objective = config.objective()
    model = build_model(config.rhm_config, config.model, objective.num_input_states, config.seed)
    graphdef, params = nnx.split(model)
    opt_state = make_optimizer(config).init(params)
    ema = jax.tree.map(jnp.copy, params) if config.ema_decay > 0 else None  # own buffers
    return graphdef, TrainState(params, opt_state, ema, jnp.zeros((), jnp.int32))


def datasets(config: TrainConfig, grammar: Grammar):
    """``(train_tokens or None, test_tokens)``, disjoint, without replacement."""
    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    sizes = ([config.train_size] if config.train_size else []) + [config.test_size]
    sets = sample_disjoint_data(key, grammar, sizes)
    train = sets[0].tokens if config.train_size else None
    return train, sets[-1].tokens


def train_batch(config: TrainConfig, grammar, train_tokens, data_key, step):
    """The batch of ``step``: fresh data (online) or the step's slice of an epoch order."""
    B = config.batch_size
    if train_tokens is None:
        return sample_data_unchecked(jax.random.fold_in(data_key, step), grammar, B, None, False).tokens
    P = train_tokens.shape[0]
    position = step.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * B \
        + jnp.arange(B)
    epoch = position // P
    first_epoch = epoch[0]
    orders = [jax.random.permutation(jax.random.fold_in(data_key, first_epoch + i), P)
              for i in range((B - 1) // P + 2)]
    orders = jnp.stack(orders)  # the epochs this batch can touch
    index = orders[epoch - first_epoch, position % P]
    return train_tokens[index]


def make_train_steps(config: TrainConfig, graphdef, grammar, mesh=None):
    """``run(state, train_tokens, num_steps) -> (state, metrics)``: ``num_steps`` jitted steps.

    ``metrics`` holds per-step ``loss`` (nats per sequence), ``grad_norm`` and ``lr``. The
    compiled program is shared by every call with the same ``config``, ``graphdef`` and
    ``mesh`` in a process (the grammar is an argument of it, not a constant): a resumed or
    repeated run does not compile again.
    """
    steps = compiled_train_steps(config, graphdef, mesh)

    def run(state, train_tokens, num_steps):
        return steps(state, train_tokens, grammar, num_steps)

    return run


@lru_cache(maxsize=8)
def compiled_train_steps(config: TrainConfig, graphdef, mesh):
    """The jitted ``run(state, train_tokens, grammar, num_steps)`` of one configuration."""
    objective = config.objective()
    tx = make_optimizer(config)
    schedule = learning_rate_schedule(config)
    base = jax.random.key(config.seed)
    data_key, noise_key = jax.random.fold_in(base, 2), jax.random.fold_in(base, 3)
    sharding = None
    if mesh is not None:
        from rhm_jax.sharding import batch_sharding

        sharding = batch_sharding(mesh, ndim=2)

    def loss_fn(params, key, x0):
        model = nnx.merge(graphdef, params)
        per_sequence, _ = objective.loss(model, key, x0)
        return jnp.mean(per_sequence)

    @partial(jax.jit, static_argnames=("num_steps",), donate_argnums=(0,))
    def run(state, train_tokens, grammar, num_steps):
        def one_step(state: TrainState, _):
            step = state.step
            x0 = train_batch(config, grammar, train_tokens, data_key, step)
            if sharding is not None:
                x0 = jax.lax.with_sharding_constraint(x0, sharding)
            loss, grads = jax.value_and_grad(loss_fn)(
                state.params, jax.random.fold_in(noise_key, step), x0)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = state.ema
            if ema is not None:
                decay = config.ema_decay
                ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
            metrics = {"loss": loss, "grad_norm": global_norm(grads),
                       "lr": schedule(step)}
            return TrainState(params, opt_state, ema, step + 1), metrics

        return jax.lax.scan(one_step, state, None, length=num_steps)

    return run


# ---- the task the training loop runs ------------------------------------------------------
class Run(NamedTuple):
    """A loaded run: configuration, grammar, the network (and its EMA twin) and the step."""

    config: TrainConfig
    grammar: Grammar
    model: nnx.Module
    ema_model: nnx.Module | None
    step: int
    objective: object


class RHMTask:
    """A denoiser on RHM data as a :class:`~rhm_jax.training.TrainTask`.

    Args:
      config: the experiment.
      mesh: device mesh with a ``"data"`` axis for the batch (``None``: one device).
      plot: redraw ``loss_curve.png`` after every evaluation.
    """

    run_files = ("loss_curve.png",)

    def __init__(self, config: TrainConfig, mesh=None, *, plot: bool = False):
        self.config, self.mesh, self.plot = config, mesh, plot
        self.grammar = make_grammar(config)
        self.graphdef = None
        self.unit, self.scale = loss_unit(config)  # per-sequence loss -> the rows' unit

    def init_state(self) -> TrainState:
        self.graphdef, state = init_state(self.config)
        return state

    def checkpoint_items(self, state: TrainState) -> dict:
        return {"state": to_pure(state),
                "rules": {f"level_{l}": np.asarray(r) for l, r in enumerate(self.grammar.rules)}}

    def restore(self, template: TrainState, items: dict) -> TrainState:
        rules = [np.asarray(items["rules"][f"level_{l}"]) for l in range(self.config.L)]
        grammar = grammar_from_rules(rules, self.config.rhm_config)  # checks the rules
        state = from_pure(template, items["state"])
        self.grammar = grammar
        return state

    def start(self, state: TrainState) -> TrainState:
        from rhm_jax.sharding import replicated

        config = self.config
        self.train_tokens, self.test_tokens = datasets(config, self.grammar)
        # the state and the training set live on every device of the mesh; batches are split
        state, self.train_tokens = jax.device_put((state, self.train_tokens),
                                                  replicated(self.mesh))
        self.steps = make_train_steps(config, self.graphdef, self.grammar, self.mesh)
        self.evaluate = make_eval(config, self.graphdef)
        self.floor_per_datum = bp_per_datum(config, self.grammar, self.test_tokens)
        self.floor, self.floor_se = mean_se(self.floor_per_datum)
        return state

    def run_steps(self, state: TrainState, num_steps: int):
        return self.steps(state, self.train_tokens, num_steps)

    def train_row(self, metrics: dict) -> dict:
        return {f"loss_{self.unit}": float(metrics["loss"].mean()) * self.scale,
                "grad_norm": float(metrics["grad_norm"].mean()), "lr": float(metrics["lr"][-1])}

    def eval_row(self, state: TrainState) -> dict:
        unit, scale = self.unit, self.scale
        row = {f"floor_{unit}": self.floor * scale, "floor_se": self.floor_se * scale,
               "entropy_bits_per_token": self.config.rhm_config.log_P_max * (
                   1.0 / (self.config.rhm_config.d * LN2))}
        for name, params in (("", state.params), ("ema_", state.ema)):
            if params is None:
                continue
            per_datum = per_datum_loss(self.evaluate, params, self.test_tokens, self.config)
            mean, se = mean_se(per_datum)
            row[f"{name}loss_{unit}"] = mean * scale
            row[f"{name}loss_se"] = se * scale
            # The network's excess over BP on the same data and noise: the paired
            # difference has a far smaller error than either loss, and its expectation
            # is exactly the network's expected loss minus the floor (the entropy, for
            # masking).
            excess, excess_se = mean_se(per_datum - self.floor_per_datum)
            row[f"{name}excess_{unit}"] = excess * scale
            row[f"{name}excess_se"] = excess_se * scale
        return row

    def meta(self, state: TrainState) -> dict:
        return {"num_parameters": count_parameters(state.params),
                "log_P_max": self.config.rhm_config.log_P_max}

    def progress_text(self, metrics: dict) -> str:
        text = "bits/token" if self.unit == "bits_per_token" else "squared error/token"
        return f"loss={float(metrics['loss'][-1]) * self.scale:.3f} {text}"

    def after_eval(self, folder: Path) -> None:
        if self.plot:
            from rhm_jax.plotting.training import plot_loss_curve

            plot_loss_curve(folder / "metrics.jsonl", folder / "loss_curve.png")

    def result(self, state: TrainState) -> Run:
        """The :class:`Run` of ``state``."""
        model = nnx.merge(self.graphdef, state.params)
        ema = None if state.ema is None else nnx.merge(self.graphdef, state.ema)
        return Run(self.config, self.grammar, model, ema, int(state.step), self.config.objective())


def load_run(run_dir, step: int | None = None) -> Run:
    """Rebuilds a run from its folder: its newest checkpoint that restores, or ``step``.

    Safe on a run that is being written: orbax commits a checkpoint by renaming it
    complete into place, so the newest one listed is whole, and one that the writer deletes
    meanwhile is passed over. A checkpoint that fails verification (its CRCs, finite
    values, shapes) is skipped with a notice, and an older one is read.

    Raises:
      FileNotFoundError: ``run_dir`` holds no checkpoint.
      CheckpointError: no checkpoint (or not ``step``) restores.
    """
    from rhm_jax.training.checkpoints import Checkpointer
    from rhm_jax.training.errors import CheckpointError
    from rhm_jax.training.lock import lock_holder, notice

    if step is not None:
        step = check_int("step", step, minimum=0)
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"run_dir = {str(run_dir)!r} has no checkpoints/ folder "
                                "(is it a folder written by rhm-jax train?)")
    checkpoints = Checkpointer(run_dir / "checkpoints", writer=False)
    steps = checkpoints.steps()
    if not steps:
        raise FileNotFoundError(f"run_dir = {str(run_dir)!r} has no checkpoint yet")

    def build(step):
        task = RHMTask(TrainConfig.from_dict(checkpoints.restore_config(step)))
        template = task.init_state()
        items = checkpoints.restore(step, task.checkpoint_items(template))
        return task.result(task.restore(template, items))

    holder = lock_holder(run_dir)
    if step is None:
        step, run = checkpoints.restore_latest(build, what=str(run_dir))
    elif step not in steps:
        raise CheckpointError(f"{run_dir} has no checkpoint at step = {step} (it has "
                              f"{', '.join(map(str, sorted(steps)))})")
    else:
        try:
            run = build(step)
        except Exception as err:  # noqa: BLE001 - the reason goes into one line
            raise CheckpointError(f"{run_dir}: checkpoint {step} does not restore "
                                  f"({type(err).__name__}: {str(err)[:160]})") from None
    if holder is not None:
        notice(f"{run_dir} is being written by process {holder.get('pid')}: read its "
               f"checkpoint at step {step}")
    return run


def train(config: TrainConfig, run_dir, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, mesh=None, stop_after: int | None = None,
          plot: bool = True) -> Run:
    """Trains ``config`` into ``run_dir``; returns the final :class:`Run`.

    Every argument, and the memory a step needs, is checked before the run folder is
    touched. The run folder is locked while training (a second writer gets
    :class:`~rhm_jax.training.RunLocked`); a new run appears in ``run_dir`` at its first
    checkpoint, so a run that fails or is stopped before then leaves ``run_dir`` as it
    was.

    Args:
      config: the experiment.
      run_dir: the run folder (created; see the module docstring for its contents).
      resume: continue from the newest checkpoint in ``run_dir`` that restores (its
        ``config.json`` and the checkpoint's configuration must equal ``config``).
      overwrite: replace an earlier training run in ``run_dir`` (at the new run's first
        checkpoint); a folder that is not provably a training run is never replaced.
      progress: show a progress bar.
      mesh: device mesh with a ``"data"`` axis for the batch (default: all devices when the
        batch divides evenly, else one device).
      stop_after: stop (after checkpointing) once this step is reached — for tests and
        time-boxed runs; the run can be resumed later. A multiple of ``log_every``.
      plot: write ``loss_curve.png`` at every evaluation.

    Raises:
      TrainingDiverged: a NaN or ±inf loss, evaluation or state (nothing non-finite is
        written; the run resumes from its last checkpoint).
      TrainingInterrupted: SIGINT (Ctrl-C); its ``step`` is the step to resume from.
      RunLocked: another live process trains into ``run_dir``.
      CheckpointError: ``resume`` found no checkpoint that restores.
    """
    from rhm_jax.sharding import data_mesh
    from rhm_jax.training.loop import check_stop_after, fit
    from rhm_jax.validation import check_fits

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    resume, overwrite = check_bool("resume", resume), check_bool("overwrite", overwrite)
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True exclude each other")
    check_stop_after(stop_after, config)
    if mesh is None:
        n_dev = jax.device_count()
        mesh = data_mesh(n_dev if config.batch_size % n_dev == 0 else 1)
    elif config.batch_size % mesh.shape["data"]:
        raise ValueError(f"batch_size = {config.batch_size} must be a multiple of the mesh's "
                         f"data axis ({mesh.shape['data']} devices)")
    device = mesh.devices.flat[0]
    shares = 1 if device.platform == "cpu" else mesh.shape["data"]  # CPU devices share RAM
    check_fits(f"training with batch_size = {config.batch_size}",
               config.memory_estimate(shares), device, advice="reduce batch_size")
    task = RHMTask(config, mesh, plot=plot)
    state = fit(task, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                stop_after=stop_after)
    return task.result(state)
