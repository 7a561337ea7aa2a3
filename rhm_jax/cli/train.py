"""``rhm-jax train``: train a Flax denoiser on RHM data into a run folder.

An experiment is a :class:`~rhm_jax.denoise.TrainConfig`: its values come from the built-in
recipe (:data:`RECIPE`, the best measured one: tree U-Net of width 64 without MLPs on the
leaves, AdamW at 2e-3, EMA 0.999, masking on ``(16, 4, 2, 4)`` with online data), then a
``--config`` TOML file (one file per experiment in ``configs/``), then ``--quick``'s small
sizes, then the flags given on the command line — each later source wins.

The run folder holds ``config.json``, ``meta.json``, ``metrics.jsonl``, ``loss_curve.png``
and orbax ``checkpoints/``; ``--resume`` continues an interrupted run from its last
checkpoint (bit-identical to an uninterrupted run). Every value is checked before any work:
a bad one is a one-line error naming the flag (or the file's key). Theory:
``docs/theory/denoisers.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from rhm_jax.cli.flags import MAX_SEED, add_rhm_args, float_flag, integer_flag
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run", "config_from_args", "read_config_file", "RECIPE", "QUICK"]

#: The built-in recipe (``TrainConfig`` field names; ``model.*`` the network's). A bare
#: ``rhm-jax train`` trains it; ``mlp_levels`` absent means "every level but the leaves"
#: (``mlp_levels = L``).
RECIPE = {"v": 16, "m": 4, "s": 2, "L": 4, "loss": "masked_elbo", "test_size": 1024,
          "batch_size": 256, "steps": 30000, "learning_rate": 2e-3, "warmup_steps": 100,
          "ema_decay": 0.999, "steps_per_call": 25, "log_every": 500, "eval_every": 2000,
          "checkpoint_every": 6000, "model.architecture": "unet", "model.width": 64}

#: The other settings' values: TrainConfig's and ModelConfig's own defaults (shown in the
#: help; a test keeps them equal to the dataclasses').
LIBRARY_DEFAULTS = {"grammar_seed": 0, "ce_weight": 0.0, "train_size": "online",
                    "weight_decay": 0.0, "grad_clip": 1.0, "model.block_depth": 1,
                    "model.norm": "layer", "model.num_layers": 4, "model.num_heads": 4,
                    "model.positions": "rotary", "model.time_conditioning": "auto"}

#: What ``--quick`` sets (a tiny run for CI and smoke tests; given flags still win).
QUICK = {"steps": 40, "batch_size": 32, "model.width": 32, "model.num_layers": 2,
         "test_size": 128, "steps_per_call": 10, "log_every": 10, "eval_every": 20,
         "checkpoint_every": 20}

#: Key of :func:`read_config_file`'s result: the file is a run's complete ``config.json``.
RUN_CONFIG = "__run_config__"

#: Loss flag values per process: ``--process gaussian --loss eps`` trains the ε-MSE.
LOSS_NAMES = {"masking": {"nelbo": "masked_elbo"}, "uniform": {"d3pm": "d3pm"},
              "gaussian": {"x0": "gaussian_x0", "eps": "gaussian_eps"}}

#: flag -> (field, type). A field under ``model.`` is the network's (ModelConfig).
FLAGS = {
    "--grammar-seed": ("grammar_seed", integer_flag("--grammar-seed", 0, MAX_SEED)),
    "--ce-weight": ("ce_weight", float_flag("--ce-weight", 0.0)),
    "--train-size": ("train_size", integer_flag("--train-size", 1)),
    "--test-size": ("test_size", integer_flag("--test-size", 2)),
    "--arch": ("model.architecture", str),
    "--width": ("model.width", integer_flag("--width", 1)),
    "--block-depth": ("model.block_depth", integer_flag("--block-depth", 0)),
    "--mlp-levels": ("model.mlp_levels", lambda text: "all" if text.strip() == "all"
                     else integer_flag("--mlp-levels", 0)(text)),
    "--norm": ("model.norm", str),
    "--num-layers": ("model.num_layers", integer_flag("--num-layers", 1)),
    "--num-heads": ("model.num_heads", integer_flag("--num-heads", 1)),
    "--positions": ("model.positions", str),
    "--time-conditioning": ("model.time_conditioning", str),
    "--batch-size": ("batch_size", integer_flag("--batch-size", 1)),
    "--steps": ("steps", integer_flag("--steps", 1)),
    "--lr": ("learning_rate", float_flag("--lr", 0.0, open_below=True)),
    "--warmup-steps": ("warmup_steps", integer_flag("--warmup-steps", 0)),
    "--weight-decay": ("weight_decay", float_flag("--weight-decay", 0.0)),
    "--grad-clip": ("grad_clip", float_flag("--grad-clip", 0.0)),
    "--ema": ("ema_decay", float_flag("--ema", 0.0, 1.0)),
    "--steps-per-call": ("steps_per_call", integer_flag("--steps-per-call", 1)),
    "--log-every": ("log_every", integer_flag("--log-every", 1)),
    "--eval-every": ("eval_every", integer_flag("--eval-every", 1)),
    "--checkpoint-every": ("checkpoint_every", integer_flag("--checkpoint-every", 1)),
}
HELP = {
    "--grammar-seed": "seed of the grammar's rules", "--ce-weight": "uniform (D3PM) only: "
    "weight λ of the auxiliary cross-entropy", "--train-size": "P, a fixed training set of "
    "distinct data (online: fresh data every step)",
    "--test-size": "held-out data", "--arch": "network: unet or transformer",
    "--width": "channels (U-Net) or model dimension (transformer)",
    "--block-depth": "U-Net: residual MLPs per block", "--mlp-levels": "U-Net: MLPs only on "
    "levels l < N, the root being level 0, or all", "--norm": "layer, rms or none",
    "--num-layers": "transformer blocks", "--num-heads": "transformer attention heads",
    "--positions": "transformer positions: rotary or learned",
    "--time-conditioning": "auto (off for masking, whose optimum does not depend on t), on "
    "or off", "--batch-size": "data per step", "--steps": "optimisation steps",
    "--lr": "peak learning rate (AdamW, linear warm-up, cosine decay to 0)",
    "--warmup-steps": "learning-rate warm-up steps", "--weight-decay": "AdamW weight decay",
    "--grad-clip": "global-norm gradient clipping (0: off)", "--ema": "EMA decay of the "
    "parameters (0: off)", "--steps-per-call": "optimisation steps per compiled call",
    "--log-every": "steps between training rows", "--eval-every": "steps between held-out "
    "evaluations", "--checkpoint-every": "steps between checkpoints",
}
CHOICES = {"--arch": ["unet", "transformer"], "--norm": ["layer", "rms", "none"],
           "--positions": ["rotary", "learned"], "--time-conditioning": ["auto", "on", "off"]}


def _process_flag(text: str) -> str:
    if text == "gaussian-eps":
        raise argparse.ArgumentTypeError("--process = 'gaussian-eps' is now written "
                                         "--process gaussian --loss eps")
    if text not in LOSS_NAMES:
        raise argparse.ArgumentTypeError(f"--process = {text!r} must be one of "
                                         f"{', '.join(LOSS_NAMES)} (processes with a "
                                         "training loss)")
    return text


def _defaults_text() -> dict:
    """Each flag's value in the recipe, for its help."""
    values = {**LIBRARY_DEFAULTS, **RECIPE}
    return {flag: values.get(field) for flag, (field, _) in FLAGS.items()}


def add_parser(subparsers):
    p = subparsers.add_parser(
        "train", help="train a Flax denoiser (tree U-Net or transformer) on RHM data",
        description="Train a denoiser on RHM data with the loss of one noise process; writes "
                    "config, checkpoints, metrics.jsonl and loss_curve.png. Values come from "
                    "the built-in recipe, then --config, then --quick, then the flags.")
    p.add_argument("--config", type=read_config_file, default=None, metavar="FILE",
                   help="experiment file: TOML with TrainConfig's fields, a [model] table and "
                        "optionally devices = N, or a run's config.json; the flags given "
                        "override it (default: none, the built-in recipe)")
    add_rhm_args(p, v=RECIPE["v"], m=RECIPE["m"], s=RECIPE["s"])
    for action in p._actions:  # the recipe's value shows in the help; None marks "not given"
        if action.dest in ("v", "m", "s", "seed"):
            action.help = f"{action.help} (default: {action.default})"
            action.default = None
    p.add_argument("--L", type=integer_flag("--L", 1), default=None,
                   help=f"depth (default: {RECIPE['L']})")
    p.add_argument("--process", type=_process_flag, default=None,
                   help="noise process: masking, uniform or gaussian (default: masking)")
    p.add_argument("--loss", default=None, choices=sorted({k for v in LOSS_NAMES.values()
                                                           for k in v}),
                   help="the process's loss: masking nelbo (MD4/MDLM NELBO); uniform d3pm "
                        "(D3PM bound); gaussian x0 (cross-entropy, default) or eps (ε MSE)")
    defaults = _defaults_text()
    for flag, (field, kind) in FLAGS.items():
        default = defaults[flag]
        shown = "" if default is None else f" (default: {default})"
        if flag == "--mlp-levels":
            shown = " (default: L, no MLPs on the leaves)"
        p.add_argument(flag, dest=field.replace(".", "__"), type=kind, default=None,
                       metavar=None if flag in CHOICES else flag[2:].upper().replace("-", "_"),
                       choices=CHOICES.get(flag), help=HELP[flag] + shown)
    p.add_argument("--out", default="runs/train", help="run folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing training run in --out")
    p.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    add_runtime_args(p)
    p.set_defaults(func=run)
    return p


def read_config_file(path: str) -> dict:
    """The values of a ``--config`` file, flattened (``model.width``), checked for unknown
    keys; ``devices`` is kept as a run setting.

    A TOML file (an experiment of ``configs/``) or the ``config.json`` of a training run
    (so a stored run is reproduced by pointing at its configuration).
    """
    import json
    import tomllib

    from rhm_jax.denoise.models import ModelConfig
    from rhm_jax.denoise.train import TrainConfig

    kind = "JSON" if path.endswith(".json") else "TOML"
    try:
        with open(path, "rb") as handle:
            data = json.load(handle) if kind == "JSON" else tomllib.load(handle)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"--config = {path!r} cannot be read "
                                         f"({err.strerror or err})") from None
    except (tomllib.TOMLDecodeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"--config = {path!r} is not valid {kind} ({err})") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"--config = {path!r} must hold a table of settings")
    # A run's config.json is complete in the library's terms: what it lacks (a field newer
    # than the run) takes TrainConfig's default, not the recipe's.
    values = {RUN_CONFIG: kind == "JSON"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key, value in data.items():
        if key == "model" and isinstance(value, dict):
            for name, item in value.items():
                if name not in model_fields:
                    raise argparse.ArgumentTypeError(
                        f"--config = {path!r}: [model] {name} is not a network setting (one "
                        f"of {', '.join(sorted(model_fields))})")
                values[f"model.{name}"] = item
        elif key in fields or key == "devices":
            values[key] = value
        else:
            raise argparse.ArgumentTypeError(
                f"--config = {path!r}: {key} is not a training setting (one of "
                f"{', '.join(sorted(fields | {'devices', 'model'}))})")
    return values


def config_from_args(args):
    """The :class:`~rhm_jax.denoise.train.TrainConfig` of the recipe, ``--config``,
    ``--quick`` and the flags (validated; errors name the flag)."""
    from rhm_jax.denoise.models import ModelConfig
    from rhm_jax.denoise.train import TrainConfig

    file = dict(args.config or {})
    base = {} if file.pop(RUN_CONFIG, False) else RECIPE
    values = {**base, **{k: v for k, v in file.items() if k != "devices"}}
    if args.quick:
        values.update(QUICK)
    given = {"v": args.v, "m": args.m, "s": args.s, "L": args.L, "n_classes": args.n_classes,
             "seed": args.seed}
    given.update({field: getattr(args, field.replace(".", "__")) for field, _ in FLAGS.values()})
    values.update({k: v for k, v in given.items() if v is not None})
    if args.process is not None or args.loss is not None:
        process = args.process or "masking"
        names = LOSS_NAMES[process]
        loss = args.loss or next(iter(names))
        if loss not in names:
            raise ValueError(f"--loss = {loss!r} is not a loss of --process {process} (one "
                             f"of {', '.join(names)})")
        values["loss"] = names[loss]
    tc = values.get("model.time_conditioning")
    if isinstance(tc, str):
        values["model.time_conditioning"] = {"auto": None, "on": True, "off": False}[tc]
    if base and values.get("model.architecture", "unet") == "unet":
        values.setdefault("model.mlp_levels", values["L"])
    if values.get("model.mlp_levels") == "all":  # MLPs on every level, leaves included
        values["model.mlp_levels"] = None
    model = {k[len("model."):]: v for k, v in values.items() if k.startswith("model.")}
    flat = {k: v for k, v in values.items() if not k.startswith("model.")}
    flags = {field: flag for flag, (field, _) in FLAGS.items()}
    flags.update({"v": "--v", "m": "--m", "s": "--s", "L": "--L", "n_classes": "--n-classes",
                  "seed": "--seed", "loss": "--loss"})
    try:
        return TrainConfig(**flat, model=ModelConfig(**model))
    except (TypeError, ValueError) as err:
        text = str(err)
        for field, flag in sorted(flags.items(), key=lambda item: -len(item[0])):
            name = field.split(".")[-1]
            if text.startswith(f"{name} ") or text.startswith(f"{name}:"):
                text = flag + text[len(name):]
                break
        raise ValueError(text) from None


def run(args) -> int:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    config = config_from_args(args)
    if not args.resume:
        from rhm_jax.io import check_output_folder

        check_output_folder(args.out, command="train", overwrite=args.overwrite)
    if args.resume:
        import json

        from rhm_jax.denoise.train import TrainConfig

        path = os.path.join(args.out, "config.json")
        if not os.path.exists(path):
            raise ValueError(f"--resume: --out = {args.out!r} holds no run (no config.json)")
        try:
            stored = TrainConfig.from_dict(json.load(open(path)))
        except (ValueError, TypeError) as err:
            raise ValueError(f"--resume: {path} is not a valid training configuration "
                             f"({err})") from None
        if stored != config:  # resuming continues the stored run's configuration
            print(f"--resume: continuing the configuration stored in {path} "
                  "(configuration flags are ignored)", file=sys.stderr)
            config = stored
    from rhm_jax.denoise.train import train

    from rhm_jax.training.errors import TrainingDiverged, TrainingInterrupted

    try:
        result = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    except TrainingDiverged as err:  # nothing non-finite was written: say where it stopped
        print(f"rhm-jax train: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as err:  # Ctrl-C between step groups, never mid-save
        hint = f": rhm-jax train --out {args.out} --resume" if err.step is not None else ""
        print(f"rhm-jax train: {err}{hint}", file=sys.stderr)
        return 130
    from rhm_jax.denoise.train import loss_unit
    from rhm_jax.io import read_jsonl

    last = [r for r in read_jsonl(os.path.join(args.out, "metrics.jsonl"))
            if r["split"] == "test"][-1]
    unit, _ = loss_unit(result.config)
    if unit == "bits_per_token":
        print(f"trained {result.step} steps into {args.out}/: held-out loss "
              f"{last['loss_bits_per_token']:.4f} ± {last['loss_se']:.4f} bits/token "
              f"(BP floor {last['floor_bits_per_token']:.4f}, entropy "
              f"{last['entropy_bits_per_token']:.4f})")
    else:
        print(f"trained {result.step} steps into {args.out}/: held-out ε squared error "
              f"{last[f'loss_{unit}']:.4f} ± {last['loss_se']:.4f} per token "
              f"(BP floor {last[f'floor_{unit}']:.4f})")
    return 0
