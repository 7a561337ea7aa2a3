"""``rhm-jax train``: train a Flax denoiser on RHM data into a run folder (DESIGN.md §7).

The run folder holds ``config.json``, ``meta.json``, ``metrics.jsonl``, ``loss_curve.png``
and orbax ``checkpoints/``; ``--resume`` continues an interrupted run from its last
checkpoint (bit-identical to an uninterrupted run). Every argument is checked before any
work: a bad one is a one-line error naming the flag.
"""

from __future__ import annotations

import json
import os

LOSSES = {"masking": "masked_elbo", "uniform": "d3pm", "gaussian": "gaussian_x0",
          "gaussian-eps": "gaussian_eps"}

#: Defaults of the flags that ``--quick`` shrinks (an explicit flag always wins).
DEFAULTS = dict(steps=2000, batch_size=128, width=128, num_layers=4, test_size=1024,
                steps_per_call=10, log_every=50, eval_every=500, checkpoint_every=500)
QUICK = dict(steps=40, batch_size=32, width=32, num_layers=2, test_size=128, steps_per_call=10,
             log_every=10, eval_every=20, checkpoint_every=20)


def add_parser(subparsers, add_config_args):
    p = subparsers.add_parser(
        "train", help="train a Flax denoiser (tree U-Net or transformer) on RHM data",
        description="Train a denoiser on RHM data with the loss of one noise process; "
                    "writes config, checkpoints, metrics.jsonl and loss_curve.png.")
    add_config_args(p, v=16, m=4, s=2)
    p.add_argument("--L", type=int, default=4, help="depth (default %(default)s)")
    p.add_argument("--grammar-seed", type=int, default=0, help="seed of the rules (default %(default)s)")
    p.add_argument("--process", default="masking", choices=sorted(LOSSES),
                   help="noise process and its loss: masking (MD4/MDLM NELBO), uniform (D3PM "
                        "bound), gaussian (x0 cross-entropy), gaussian-eps (ε MSE)")
    p.add_argument("--ce-weight", type=float, default=0.0, help="D3PM auxiliary CE weight λ")
    p.add_argument("--train-size", type=int, default=None,
                   help="P, a fixed training set of distinct data (default: online, fresh data)")
    p.add_argument("--test-size", type=int, default=None, help="held-out data (default 1024; quick 128)")
    p.add_argument("--arch", default="unet", choices=["unet", "transformer"])
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--block-depth", type=int, default=1, help="U-Net MLPs per block")
    p.add_argument("--mlp-levels", type=int, default=None,
                   help="U-Net: MLPs only on levels l < N, the root being level 0 "
                        "(default: every level)")
    p.add_argument("--norm", default="layer", choices=["layer", "rms", "none"])
    p.add_argument("--num-layers", type=int, default=None, help="transformer blocks")
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--positions", default="rotary", choices=["rotary", "learned"])
    p.add_argument("--time-conditioning", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay (0 = off)")
    p.add_argument("--steps-per-call", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--out", default="runs/train", help="run folder (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def config_from_args(args):
    """The :class:`~rhm_jax.denoise.train.TrainConfig` of the parsed flags (validated)."""
    from rhm_jax.denoise.models import ModelConfig
    from rhm_jax.denoise.train import TrainConfig

    defaults = QUICK if args.quick else DEFAULTS
    values = {name: defaults[name] if getattr(args, name) is None else getattr(args, name)
              for name in DEFAULTS}
    tc = {"auto": None, "on": True, "off": False}[args.time_conditioning]
    flags = {"width": "--width", "block_depth": "--block-depth", "mlp_levels": "--mlp-levels",
             "num_layers": "--num-layers",
             "num_heads": "--num-heads", "steps": "--steps", "batch_size": "--batch-size",
             "test_size": "--test-size", "train_size": "--train-size", "learning_rate": "--lr",
             "warmup_steps": "--warmup-steps", "weight_decay": "--weight-decay",
             "grad_clip": "--grad-clip", "ema_decay": "--ema", "steps_per_call": "--steps-per-call",
             "log_every": "--log-every", "eval_every": "--eval-every",
             "checkpoint_every": "--checkpoint-every", "ce_weight": "--ce-weight",
             "grammar_seed": "--grammar-seed", "seed": "--seed", "v": "--v", "m": "--m",
             "s": "--s", "L": "--L", "n_classes": "--n-classes"}
    try:
        model = ModelConfig(architecture=args.arch, width=values["width"],
                            block_depth=args.block_depth, mlp_levels=args.mlp_levels,
                            norm=args.norm,
                            num_layers=values["num_layers"], num_heads=args.num_heads,
                            positions=args.positions, time_conditioning=tc)
        return TrainConfig(
            v=args.v, m=args.m, s=args.s, L=args.L, n_classes=args.n_classes,
            grammar_seed=args.grammar_seed, loss=LOSSES[args.process], ce_weight=args.ce_weight,
            train_size=args.train_size, test_size=values["test_size"], model=model,
            batch_size=values["batch_size"], steps=values["steps"], learning_rate=args.lr,
            warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
            grad_clip=args.grad_clip, ema_decay=args.ema, seed=args.seed,
            steps_per_call=values["steps_per_call"], log_every=values["log_every"],
            eval_every=values["eval_every"], checkpoint_every=values["checkpoint_every"])
    except (TypeError, ValueError) as err:
        text = str(err)
        for field, flag in flags.items():  # name the flag, not the field
            if text.startswith(f"{field} ") or text.startswith(f"{field}:"):
                text = flag + text[len(field):]
                break
        raise ValueError(text) from None


def _check_out(path: str, resume: bool, overwrite: bool):
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out = {path!r} exists and is not a folder")
    if resume:
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"--resume: --out = {path!r} holds no run (no config.json)")
    elif os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise ValueError(f"--out = {path!r} is not empty: add --resume to continue that "
                             "run or --overwrite to replace it")
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ValueError(f"--out = {path!r} is not empty and is not a training run "
                             "folder (no config.json): --overwrite refuses to delete it")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"--out = {path!r} cannot be created: {parent!r} is not a writable folder")


def run(args) -> int:
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    config = config_from_args(args)
    _check_out(args.out, args.resume, args.overwrite)
    if args.resume:
        from rhm_jax.denoise.train import TrainConfig

        stored = TrainConfig.from_dict(json.load(open(os.path.join(args.out, "config.json"))))
        if stored != config:  # resuming continues the stored run's configuration
            print(f"--resume: continuing the configuration stored in {args.out}/config.json "
                  "(configuration flags are ignored)")
            config = stored
    from rhm_jax.denoise.train import train

    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress)
    from rhm_jax.denoise.train import loss_unit
    from rhm_jax.io import read_jsonl

    last = [r for r in read_jsonl(os.path.join(args.out, "metrics.jsonl")) if r["split"] == "test"][-1]
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


__all__ = ["add_parser", "run", "config_from_args"]
