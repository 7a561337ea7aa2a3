"""Training a denoiser on RHM data: config, data, jitted steps, evaluation, checkpoints.

One :class:`TrainConfig` describes an experiment completely (grammar, noise process and
loss, network, data regime, optimiser, seeds); :func:`train` runs it into a run folder:

``config.json``
    the configuration (and the version of everything, in ``meta.json``);
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

Steps run ``steps_per_call`` at a time inside one compiled ``jax.lax.scan`` (the Python
overhead of one call is larger than a small model's step on CPU); the model is
``nnx.split`` once and ``nnx.merge`` d inside the compiled function (the functional NNX
pattern, stable across Flax versions). The batch is sharded over a ``"data"`` mesh.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from functools import lru_cache, partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rhm_jax.validation import check_bool, check_int
from rhm_jax.config import RHMConfig
from rhm_jax.denoise.models import ModelConfig, build_model
from rhm_jax.denoise.objectives import OBJECTIVES, make_objective
from rhm_jax.grammar import Grammar, grammar_from_rules, sample_grammar
from rhm_jax.stats import mean_se
from rhm_jax.sampling import sample_data_unchecked, sample_disjoint_data

__all__ = ["TrainConfig", "TrainState", "Run", "train", "load_run", "init_state",
           "make_train_steps"]

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored as ``config.json``).

    Args:
      v, m, s, L, n_classes: the RHM (see :class:`~rhm_jax.config.RHMConfig`).
      grammar_seed: seed of the grammar's rules.
      loss: one of :data:`~rhm_jax.denoise.objectives.OBJECTIVES` (it fixes the noise
        process: ``masked_elbo`` masking, ``d3pm`` uniform substitution, ``gaussian_*``
        Gaussian).
      ce_weight: λ of the D3PM auxiliary cross-entropy.
      train_size: ``P``, the number of distinct training data (drawn without replacement,
        disjoint from the test set); ``None`` for online training (fresh data every step).
      test_size: held-out data for evaluation.
      model: the network (:class:`~rhm_jax.denoise.models.ModelConfig`).
      batch_size, steps: optimisation length.
      learning_rate, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up and
        cosine decay to 0, global-norm clipping (``0`` turns clipping off).
      ema_decay: decay of the parameters' exponential moving average (``0`` = no EMA).
      seed: seed of initialisation, data order and noise.
      steps_per_call: optimisation steps per compiled call.
      log_every, eval_every, checkpoint_every: intervals in steps (multiples of
        ``steps_per_call``).
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
        ints = {"grammar_seed": 0, "test_size": 1, "batch_size": 1, "steps": 1,
                "warmup_steps": 0, "seed": 0, "steps_per_call": 1, "log_every": 1,
                "eval_every": 1, "checkpoint_every": 1, "eval_repeats": 1}
        for name, minimum in ints.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
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
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) % self.steps_per_call:
                raise ValueError(f"{name} = {getattr(self, name)} must be a multiple of "
                                 f"steps_per_call = {self.steps_per_call} (steps run in "
                                 "compiled groups of that size)")
        if self.model.time_conditioning is None:  # masking's optimum does not depend on t
            object.__setattr__(self, "model", dataclasses.replace(
                self.model, time_conditioning=self.loss != "masked_elbo"))

    @property
    def rhm_config(self) -> RHMConfig:
        return RHMConfig(v=self.v, m=self.m, s=self.s, L=self.L, n_classes=self.n_classes)

    def objective(self):
        return make_objective(self.loss, self.rhm_config, ce_weight=self.ce_weight)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training configuration fields: {sorted(unknown)}")
        return cls(**d)


class TrainState(NamedTuple):
    """The whole state of a run (a pytree; what a checkpoint stores, with the grammar)."""

    params: nnx.State
    opt_state: optax.OptState
    ema: nnx.State | None
    step: jax.Array


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


def _batch(config: TrainConfig, grammar, train_tokens, data_key, step):
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
    steps = _train_steps(config, graphdef, mesh)

    def run(state, train_tokens, num_steps):
        return steps(state, train_tokens, grammar, num_steps)

    return run


@lru_cache(maxsize=8)
def _train_steps(config: TrainConfig, graphdef, mesh):
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
            x0 = _batch(config, grammar, train_tokens, data_key, step)
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
            metrics = {"loss": loss, "grad_norm": _global_norm(grads),
                       "lr": schedule(step)}
            return TrainState(params, opt_state, ema, step + 1), metrics

        return jax.lax.scan(one_step, state, None, length=num_steps)

    return run


@lru_cache(maxsize=8)
def make_eval(config: TrainConfig, graphdef):
    """``evaluate(params, x0, key) -> (n,)`` per-sequence loss (nats), jitted (one program
    per ``config`` and ``graphdef`` in a process)."""
    objective = config.objective()

    @jax.jit
    def evaluate(params, x0, key):
        return objective.loss(nnx.merge(graphdef, params), key, x0)[0]

    return evaluate


def _eval_keys(config):
    return [jax.random.fold_in(jax.random.key(config.seed), 1000 + r)
            for r in range(config.eval_repeats)]


#: Test data per evaluation call. Fixed, so that the held-out noise (one key per chunk,
#: and ``t`` stratified within a chunk) depends only on the test set, ``seed`` and
#: ``eval_repeats``: runs that differ in their batch size are scored on the same masks.
EVAL_CHUNK = 512


def _evaluate(evaluate, params, test_tokens, config) -> tuple[float, float]:
    """Mean held-out loss (nats per sequence) and its standard error, fixed noise keys."""
    per_datum = _per_datum_loss(evaluate, params, test_tokens, config)
    return mean_se(per_datum)


def _per_datum_loss(evaluate, params, test_tokens, config) -> np.ndarray:
    """Held-out loss of every test datum (nats), averaged over the ``eval_repeats`` fixed
    noise draws."""
    chunk = min(config.test_size, EVAL_CHUNK)
    per_datum = []
    for r, key in enumerate(_eval_keys(config)):
        rows = []
        for start in range(0, test_tokens.shape[0], chunk):
            x0 = test_tokens[start:start + chunk]
            size = x0.shape[0]
            if size < chunk:  # pad the tail to the compiled shape (no second compile)
                x0 = jnp.concatenate([x0, jnp.broadcast_to(x0[:1], (chunk - size,) + x0.shape[1:])])
            rows.append(np.asarray(evaluate(params, x0, jax.random.fold_in(key, start)),
                                   np.float64)[:size])
        per_datum.append(np.concatenate(rows))
    return np.mean(per_datum, axis=0)  # average the repeats per datum first


def bp_floor(config: TrainConfig, grammar, test_tokens) -> tuple[float, float]:
    """The held-out loss with exact BP in the network's place (same data and noise keys)."""
    return mean_se(_bp_per_datum(config, grammar, test_tokens))


def _bp_per_datum(config: TrainConfig, grammar, test_tokens) -> np.ndarray:
    objective = config.objective()
    evaluate = jax.jit(lambda x0, key: objective.loss(objective.bp_predictor(grammar), key, x0)[0])
    return _per_datum_loss(lambda params, x0, key: evaluate(x0, key), None, test_tokens, config)


# ---- run folders and checkpoints ----------------------------------------------------------
class Run(NamedTuple):
    """A loaded run: configuration, grammar, the network (and its EMA twin) and the step."""

    config: TrainConfig
    grammar: Grammar
    model: nnx.Module
    ema_model: nnx.Module | None
    step: int
    objective: object


def _checkpoint_manager(run_dir: Path, config: TrainConfig | None = None, create=True):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=create,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=options)


def _save(manager, state: TrainState, grammar: Grammar, config: TrainConfig):
    import orbax.checkpoint as ocp

    step = int(state.step)
    items = {"state": state._replace(params=nnx.to_pure_dict(state.params),
                                     ema=None if state.ema is None else nnx.to_pure_dict(state.ema)),
             "rules": {f"level_{l}": np.asarray(r) for l, r in enumerate(grammar.rules)}}
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(items["state"]),
        rules=ocp.args.StandardSave(items["rules"]),
        config=ocp.args.JsonSave(config.to_dict())))
    manager.wait_until_finished()


def _restore(manager, step: int, graphdef, template: TrainState, config: TrainConfig):
    import orbax.checkpoint as ocp

    pure = template._replace(params=nnx.to_pure_dict(template.params),
                             ema=None if template.ema is None else nnx.to_pure_dict(template.ema))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, pure)
    rules_template = {f"level_{l}": np.zeros((config.rhm_config.num_symbols(l), config.m, config.s),
                                              np.int32) for l in range(config.L)}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        rules=ocp.args.StandardRestore(rules_template)))
    state = restored["state"]
    params = template.params
    nnx.replace_by_pure_dict(params, state.params)
    ema = template.ema
    if ema is not None:
        nnx.replace_by_pure_dict(ema, state.ema)
    rules = [np.asarray(restored["rules"][f"level_{l}"]) for l in range(config.L)]
    grammar = grammar_from_rules(rules, config.rhm_config)
    return TrainState(params, state.opt_state, ema, jnp.asarray(state.step, jnp.int32)), grammar


def load_run(run_dir, step: int | None = None) -> Run:
    """Rebuilds a run from its folder: the latest checkpoint (or ``step``)."""
    import orbax.checkpoint as ocp

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(f"run_dir = {str(run_dir)!r} has no checkpoints/ folder "
                                "(is it a folder written by rhm-jax train?)")
    manager = _checkpoint_manager(run_dir, create=False)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"run_dir = {str(run_dir)!r} has no checkpoint yet")
    config = TrainConfig.from_dict(manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))["config"])
    graphdef, template = init_state(config)
    state, grammar = _restore(manager, step, graphdef, template, config)
    model = nnx.merge(graphdef, state.params)
    ema = None if state.ema is None else nnx.merge(graphdef, state.ema)
    return Run(config, grammar, model, ema, int(state.step), config.objective())


# ---- the loop -----------------------------------------------------------------------------
def _truncate_metrics(path: Path, step: int):
    """Drop rows logged after ``step`` (a run that died after its last checkpoint)."""
    if not path.exists():
        return
    from rhm_jax.io import atomic_write

    rows = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    with atomic_write(path) as handle:
        handle.write("".join(r + "\n" for r in rows))


def _append(path: Path, row: dict):
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()


def train(config: TrainConfig, run_dir, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, mesh=None, stop_after: int | None = None,
          plot: bool = True) -> Run:
    """Trains ``config`` into ``run_dir``; returns the final :class:`Run`.

    Args:
      config: the experiment.
      run_dir: the run folder (created; see the module docstring for its contents).
      resume: continue from the latest checkpoint in ``run_dir`` (its ``config.json`` must
        equal ``config``).
      overwrite: replace an existing ``run_dir`` (otherwise a non-empty folder without
        ``resume`` is an error).
      progress: show a progress bar.
      mesh: device mesh with a ``"data"`` axis for the batch (default: all devices when the
        batch divides evenly, else one device).
      stop_after: stop (after checkpointing) once this step is reached — for tests and
        time-boxed runs; the run can be resumed later.
      plot: write ``loss_curve.png`` at every evaluation.
    """
    from rhm_jax.io import environment, write_json
    from rhm_jax.sharding import data_mesh

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    resume, overwrite = check_bool("resume", resume), check_bool("overwrite", overwrite)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir = {str(run_dir)!r} exists and is not a folder")
    existing = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / "config.json").exists():
            raise ValueError(f"resume: run_dir = {str(run_dir)!r} holds no run to resume "
                             "(no config.json)")
        stored = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
        if stored != config:
            diff = [f"{k}: {a!r} -> {b!r}" for k, a, b in
                    ((f.name, getattr(stored, f.name), getattr(config, f.name))
                     for f in dataclasses.fields(config)) if a != b]
            raise ValueError(f"resume: the configuration differs from the stored run "
                             f"({'; '.join(diff)})")
    elif existing:
        if not overwrite:
            raise ValueError(f"run_dir = {str(run_dir)!r} is not empty: pass resume=True "
                             "(--resume) to continue it or overwrite=True (--overwrite)")
        if not (run_dir / "config.json").exists():  # never delete what we did not write
            raise ValueError(f"run_dir = {str(run_dir)!r} is not empty and is not a training "
                             "run folder (no config.json): refusing to overwrite it")
        shutil.rmtree(run_dir)
    if mesh is None:
        n_dev = jax.device_count()
        mesh = data_mesh(n_dev if config.batch_size % n_dev == 0 else 1)
    elif config.batch_size % mesh.shape["data"]:
        raise ValueError(f"batch_size = {config.batch_size} must be a multiple of the mesh's "
                         f"data axis ({mesh.shape['data']} devices)")

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", config.to_dict())
    metrics_path = run_dir / "metrics.jsonl"
    grammar = make_grammar(config)
    graphdef, state = init_state(config)
    manager = _checkpoint_manager(run_dir)
    wall_offset = 0.0
    if resume and manager.latest_step() is not None:
        state, grammar = _restore(manager, manager.latest_step(), graphdef, state, config)
        _truncate_metrics(metrics_path, int(state.step))
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines()] \
            if metrics_path.exists() else []
        wall_offset = max([r.get("wall_s", 0.0) for r in rows], default=0.0)
    elif metrics_path.exists():
        metrics_path.unlink()
    write_json(run_dir / "meta.json", {"command": "train", "environment": environment(),
                                       "num_parameters": _count(state.params),
                                       "log_P_max": config.rhm_config.log_P_max})

    train_tokens, test_tokens = datasets(config, grammar)
    from rhm_jax.sharding import replicated

    # the state and the training set live on every device of the mesh; batches are split
    state, train_tokens = jax.device_put((state, train_tokens), replicated(mesh))
    run_steps = make_train_steps(config, graphdef, grammar, mesh)
    evaluate = make_eval(config, graphdef)
    floor_per_datum = _bp_per_datum(config, grammar, test_tokens)
    floor, floor_se = mean_se(floor_per_datum)
    d = config.rhm_config.d
    to_bits = 1.0 / (d * LN2)
    entropy_bits = config.rhm_config.log_P_max * to_bits

    def eval_row(step, wall):
        row = {"step": step, "split": "test", "data_seen": step * config.batch_size,
               "wall_s": round(wall, 3), "floor_bits_per_token": floor * to_bits,
               "floor_se": floor_se * to_bits, "entropy_bits_per_token": entropy_bits}
        for name, params in (("", state.params), ("ema_", state.ema)):
            if params is None:
                continue
            per_datum = _per_datum_loss(evaluate, params, test_tokens, config)
            mean, se = mean_se(per_datum)
            row[f"{name}loss_bits_per_token"] = mean * to_bits
            row[f"{name}loss_se"] = se * to_bits
            # The network's excess over BP on the same data and noise: the paired
            # difference has a far smaller error than either loss, and its expectation
            # is exactly the network's expected loss minus the floor (the entropy, for
            # masking).
            excess, excess_se = mean_se(per_datum - floor_per_datum)
            row[f"{name}excess_bits_per_token"] = excess * to_bits
            row[f"{name}excess_se"] = excess_se * to_bits
        return row

    start_step = int(state.step)
    end_step = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, unit="step", desc="train")
    start = time.perf_counter()
    if start_step == 0:
        row = eval_row(0, 0.0)
        _append(metrics_path, row)
    window = []
    step = start_step
    while step < end_step:
        n = min(config.steps_per_call, end_step - step)
        state, metrics = run_steps(state, train_tokens, n)
        metrics = jax.tree.map(np.asarray, metrics)
        window.append(metrics)
        step += n
        wall = wall_offset + time.perf_counter() - start
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{float(metrics['loss'][-1]) * to_bits:.3f} bits/token")
        if step % config.log_every == 0 or step == config.steps:
            joined = {k: np.concatenate([w[k] for w in window]) for k in window[0]}
            _append(metrics_path, {
                "step": step, "split": "train", "data_seen": step * config.batch_size,
                "wall_s": round(wall, 3),
                "loss_bits_per_token": float(joined["loss"].mean()) * to_bits,
                "grad_norm": float(joined["grad_norm"].mean()), "lr": float(joined["lr"][-1])})
            window = []
        if step % config.eval_every == 0 or step == config.steps:
            _append(metrics_path, eval_row(step, wall))
            if plot:
                from rhm_jax.plotting.training import plot_loss_curve

                plot_loss_curve(metrics_path, run_dir / "loss_curve.png")
        if step % config.checkpoint_every == 0 or step == end_step:
            _save(manager, state, grammar, config)
    if bar is not None:
        bar.close()
    model = nnx.merge(graphdef, state.params)
    ema = None if state.ema is None else nnx.merge(graphdef, state.ema)
    return Run(config, grammar, model, ema, int(state.step), config.objective())


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
