"""``rhm-jax images``: the RHM next to real images on DDPM's noise axis.

Trains (or resumes) a U-Net and a probe classifier on scikit-learn's 8×8 digits and a tree
denoiser on an RHM, runs the forward–backward experiment for the U-Net, the two exact
image references, exact BP and the tree denoiser, and writes into ``--out``:
``results.jsonl`` (tidy rows, a ``panel`` field each), ``summary.json`` (per panel: the
width of the class drop in log-SNR and the low-level similarity at its midpoint),
``meta.json`` (configuration, versions, timings) and ``images.png``. The training runs are
kept in ``--train-dir``, one folder per configuration, and resumed from there. The theory
is in ``docs/theory/images.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from rhm_jax.cli.flags import MAX_SEED, add_out_arg, integer_flag
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run"]

#: The RHM of the two RHM panels.
RHM = {"v": 8, "m": 2, "s": 2, "L": 4}
DEFAULT_K, QUICK_K = 100, 20


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "images", help="the RHM next to real images (digits) under DDPM noise",
        description="Forward-backward on an RHM (exact BP and a trained tree denoiser) and "
                    "on 8x8 digits (a trained U-Net and two exact references), on the same "
                    "DDPM schedule: how the class and the lower levels survive the noise.")
    add_out_arg(parser, "runs/images")
    parser.add_argument("--train-dir", default=None,
                        help="folder of the training runs (one per configuration), resumed "
                             "when present (default: --out's path with '-train' appended, "
                             "runs/images-train)")
    parser.add_argument("--num-steps", type=integer_flag("--num-steps", 2, 1000), default=None,
                        help=f"K, the respaced DDPM steps of the U-Net and its chains, in "
                             f"[2, 1000] (default: {DEFAULT_K}; quick {QUICK_K})")
    parser.add_argument("--seed", type=integer_flag("--seed", 0, MAX_SEED), default=0,
                        help="seed of every training run, the grammar and the noise, in "
                             "[0, 2**32 - 1]")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for CI and smoke tests (seconds of compute)")
    add_runtime_args(parser)
    parser.set_defaults(func=run)
    return parser


def _config(args):
    from rhm_jax.images import MiniatureConfig

    base = MiniatureConfig.quick() if args.quick else MiniatureConfig()
    K = args.num_steps or (QUICK_K if args.quick else DEFAULT_K)
    fractions = (0.1, 0.2, 0.3, 0.5, 1.0) if args.quick else \
        tuple(np.round(np.arange(1, 21) / 20, 2).tolist())
    unet = dataclasses.replace(base.unet, num_steps=K,
                               optim=dataclasses.replace(base.unet.optim, seed=args.seed))
    probe = dataclasses.replace(base.probe,
                                optim=dataclasses.replace(base.probe.optim, seed=args.seed))
    return dataclasses.replace(base, unet=unet, probe=probe, fractions=fractions, seed=args.seed)


def _run_dir(root: Path, name: str, config: dict) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return root / f"{name}-{digest}"


def run(args) -> int:
    from rhm_jax.io import RunFolder, check_output_folder

    from rhm_jax.images.compare import tree_denoiser_config

    config = _config(args)  # checks the grid against K before any work
    tree_config = tree_denoiser_config(**RHM, quick=args.quick, seed=args.seed)
    train_root = Path(args.train_dir if args.train_dir is not None else f"{args.out}-train")
    if train_root.exists() and not train_root.is_dir():
        raise ValueError(f"--train-dir = {str(train_root)!r} exists and is not a folder")
    if train_root.absolute() == Path(args.out).absolute():
        raise ValueError(f"--train-dir = {str(train_root)!r} must differ from --out (--out is "
                         "replaced whole by each run)")
    check_output_folder(args.out, command="images", overwrite=args.overwrite)
    folder = RunFolder(args.out, command="images", overwrite=args.overwrite)
    try:
        return _experiment(args, folder, config, tree_config, train_root)
    except BaseException:
        folder.discard()
        raise


def _experiment(args, folder, config, tree_config, train_root: Path) -> int:
    import jax

    from rhm_jax.denoise import Denoiser
    from rhm_jax.denoise.train import train
    from rhm_jax.experiments import to_rows as rhm_rows
    from rhm_jax.images import grid_steps, load_digits
    from rhm_jax.images.compare import (image_panel, rhm_forward_backward, rhm_panel, rhm_times,
                                        summarise_panels)
    from rhm_jax.images.miniature import train_and_compare
    from rhm_jax.images.train import has_run
    from rhm_jax.io import environment, write_json, write_jsonl
    from rhm_jax.plotting.images import plot_rhm_vs_images

    progress = not args.no_progress
    data = load_digits()
    unet_dir = _run_dir(train_root, "unet", dataclasses.asdict(config.unet))
    probe_dir = _run_dir(train_root, "probe", dataclasses.asdict(config.probe))
    images = train_and_compare(config, unet_dir, probe_dir, data=data, progress=progress)
    timings = dict(images.timings)

    tree_dir = _run_dir(train_root, "tree", tree_config.to_dict())
    start = time.perf_counter()
    tree = train(tree_config, tree_dir, resume=has_run(tree_dir), progress=progress, plot=False)
    timings["tree_training"] = time.perf_counter() - start

    schedule = config.unet.schedule
    times = rhm_times(schedule, grid_steps(schedule.num_steps, config.fractions))
    n_data = 64 if args.quick else 1024
    key = jax.random.key(args.seed)
    rhm_results = {}
    for name, denoiser in (("rhm_bp", None), ("rhm_denoiser", Denoiser.from_run(tree))):
        start = time.perf_counter()
        rhm_results[name] = rhm_forward_backward(key, tree.grammar, times, n_data,
                                                 denoiser=denoiser,
                                                 num_steps=schedule.num_steps,
                                                 progress=progress)
        timings[f"forward_backward_{name}"] = time.perf_counter() - start

    cfg = tree_config.rhm_config
    panels = [rhm_panel("rhm_bp", f"RHM {_shape(cfg)}, exact BP", rhm_results["rhm_bp"], cfg),
              rhm_panel("rhm_denoiser", "RHM, trained tree denoiser",
                        rhm_results["rhm_denoiser"], cfg),
              image_panel("digits", "digits, trained U-Net", images.results["unet"], schedule,
                          data.num_classes)]
    references = [image_panel(name, f"{name} (exact)", images.results[name], schedule,
                              data.num_classes) for name in ("memorising", "gaussian")]
    summary = summarise_panels(panels, references)
    rows = [{"panel": "digits" if r["denoiser"] == "unet" else r["denoiser"], **r}
            for r in images.rows]
    for name, result in rhm_results.items():
        rows += [{"panel": name, **r} for r in rhm_rows(result, cfg, "gaussian", seed=args.seed)]
    write_jsonl(folder.file("results.jsonl"), rows)
    write_json(folder.file("summary.json"), summary)
    plot_rhm_vs_images(panels, folder.file("images.png"), references=references,
                       summary=summary)
    training = {k: round(v, 2) for k, v in timings.items() if k.endswith("training")}
    fb = {k: round(v, 2) for k, v in timings.items() if k.startswith("forward_backward")}
    out = folder.commit({
        "config": {"quick": bool(args.quick), "seed": args.seed, "K": schedule.num_steps,
                   "fractions": list(config.fractions), "n_images": len(data.test_images[
                       :config.num_images]), "n_data_rhm": n_data, "rhm": RHM,
                   "miniature": dataclasses.asdict(config), "tree": tree_config.to_dict(),
                   "train_dirs": {"unet": str(unet_dir), "probe": str(probe_dir),
                                  "tree": str(tree_dir)}},
        "probe_accuracy": images.probe_accuracy, "unet_test_loss": images.unet_test_loss,
        "timings_s": {"training": training, "forward_backward": fb,
                      "training_total": round(sum(training.values()), 2),
                      "forward_backward_total": round(sum(fb.values()), 2)},
        "environment": environment()})
    print(f"wrote {len(rows)} rows, summary.json and images.png to {out}/ (training "
          f"{sum(training.values()):.1f} s, forward-backward {sum(fb.values()):.1f} s)")
    print(f"probe accuracy {images.probe_accuracy:.3f}")
    for name, s in summary.items():
        print(f"  {s['label']}: {_summary_line(s)}")
    return 0


def _shape(cfg) -> str:
    return f"(v, m, s, L) = ({cfg.v}, {cfg.m}, {cfg.s}, {cfg.L})"


def _pm(value, se) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def _summary_line(s: dict) -> str:
    return (f"class drop width {_pm(s['width_log_snr'], s['width_se'])} in log-SNR, midpoint "
            f"{_pm(s['midpoint_log_snr'], s['midpoint_se'])}; {s['low_level']} at the "
            f"midpoint {_pm(s['low_level_at_midpoint'], s['low_level_se'])}")
