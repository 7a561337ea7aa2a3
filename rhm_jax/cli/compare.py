"""``rhm-jax compare``: trained denoisers against exact BP (theory: ``docs/theory/denoisers.md``).

``rhm-jax compare RUN_DIR [RUN_DIR ...]`` loads each training run's latest checkpoint
(``rhm-jax train``'s folders) and runs :func:`rhm_jax.denoise.compare.compare_run` on it:
per-t agreement with BP (and with the training set's empirical posterior), the held-out
loss next to its floors, generated samples (validity per level, classes, copies of the
training set), ``P_l(t)`` of the network's reverse chain next to exact BP's, and the
hidden-representation similarity per level. Writes into ``--out``:

``results.jsonl``
    tidy rows, one per run × measure × time × level (column ``measure``), each with the
    run's configuration;
``sweep.jsonl``
    one summary row per run, sorted by the number of training data ``P`` (online last);
``meta.json``
    the command's arguments, each run's configuration and step, versions and devices;
``forward_backward.png``, ``agreement.png``, ``generation.png``, ``representation.png``
    and, with several runs, ``sweep.png``.

The folder is replaced whole when the run completes (:class:`rhm_jax.io.RunFolder`).
Every argument — each run folder, ``--out``, the numbers — is checked before any work.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


from rhm_jax.cli.flags import (MAX_SEED, TIMES_HELP, add_alias, add_out_arg, integer_flag,
                               times_flag)
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run"]

#: ``--quick`` sizes (an explicit flag wins).
QUICK = dict(n_data=32, n_samples=32, times=[0.25, 0.5, 0.75, 1.0], max_steps=32)
DEFAULTS = dict(n_data=256, n_samples=256)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "compare", help="compare trained denoisers (rhm-jax train runs) with exact BP",
        description="Per-t agreement with BP, losses, generated samples, P_l(t) of the "
                    "network next to BP's and hidden representations, for one or more "
                    "training runs (several runs: a sweep over the training-set size).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="training run folders (written by rhm-jax train)")
    p.add_argument("--times", type=times_flag, default=None,
                   help=f"{TIMES_HELP}; every time in (0, 1] (default: 10; quick 4)")
    p.add_argument("--n-data", type=integer_flag("--n-data", 1), default=None,
                   help="held-out data per time, from the run's test set (default: 256; "
                        "quick 32)")
    p.add_argument("--n-fb-data", type=integer_flag("--n-fb-data", 1), default=None,
                   help="data per time of the forward-backward experiment P_l(t), sampled "
                        "fresh from the grammar (default: --n-data)")
    add_alias(p, "--fb-data", "--n-fb-data", type=integer_flag("--n-fb-data", 1))
    p.add_argument("--n-samples", type=integer_flag("--n-samples", 1), default=None,
                   help="sequences generated from pure noise (default: 256; quick 32)")
    p.add_argument("--num-steps", type=integer_flag("--num-steps", 1), default=None,
                   help="reverse steps on a uniform time grid (default: for masking, one "
                        "token at a time, exact with exact marginals; the schedule's T for "
                        "uniform; quick at most 32)")
    p.add_argument("--repeats", type=integer_flag("--repeats", 1), default=1,
                   help="noise draws per held-out datum")
    p.add_argument("--ema", action="store_true", help="use the runs' EMA parameters")
    p.add_argument("--no-bp-chain", action="store_true",
                   help="skip generation with BP in the network's sampler")
    p.add_argument("--seed", type=integer_flag("--seed", 0, MAX_SEED), default=0,
                   help="PRNG seed in [0, 2**32 - 1]")
    add_out_arg(p, "runs/compare")
    p.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    add_runtime_args(p)
    p.set_defaults(func=run)
    return p


def _check_run_dir(path: str):
    """The run's :class:`TrainConfig`, or a one-line error naming the folder."""
    from rhm_jax.denoise.train import TrainConfig

    if not os.path.isdir(path):
        raise ValueError(f"RUN_DIR = {path!r} is not a folder")
    config_path = os.path.join(path, "config.json")
    checkpoints = os.path.join(path, "checkpoints")
    if not os.path.isfile(config_path) or not os.path.isdir(checkpoints):
        raise ValueError(f"RUN_DIR = {path!r} is not a training run (no config.json and "
                         "checkpoints/; make one with rhm-jax train)")
    if not any(name.isdigit() for name in os.listdir(checkpoints)):
        raise ValueError(f"RUN_DIR = {path!r} has no checkpoint yet")
    try:
        return TrainConfig.from_dict(json.loads(Path(config_path).read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"RUN_DIR = {path!r}: its config.json is not a valid training "
                         f"configuration ({err})") from None


def _check_out_vs_runs(out: str, runs):
    """``--out`` is replaced whole: it must not be, contain or lie inside a run folder."""
    target = Path(out).absolute().resolve()
    for path in runs:
        run = Path(path).absolute().resolve()
        if target == run or run in target.parents or target in run.parents:
            raise ValueError(f"--out = {out!r} overlaps RUN_DIR = {path!r}: the output folder "
                             "is replaced whole, so it must be separate from the runs")


def run(args) -> int:
    from rhm_jax.io import RunFolder, check_output_folder

    # every argument is checked before any work
    if len(set(os.path.realpath(r) for r in args.runs)) != len(args.runs):
        raise ValueError(f"RUN_DIR: the same run is given twice ({' '.join(args.runs)})")
    configs = [_check_run_dir(r) for r in args.runs]
    for path, config in zip(args.runs, configs):
        if args.ema and config.ema_decay == 0:
            raise ValueError(f"--ema: RUN_DIR = {path!r} was trained without an EMA "
                             "(ema_decay = 0); drop --ema for it")
    times = args.times.values if args.times else (
        QUICK["times"] if args.quick else [round(0.1 * k, 12) for k in range(1, 11)])
    if min(times) <= 0:
        raise ValueError(f"--times = {args.times.given!r} must be > 0 (at t = 0 nothing is "
                         "noised)")
    sizes = QUICK if args.quick else DEFAULTS
    n_data = args.n_data or sizes["n_data"]
    n_samples = args.n_samples or sizes["n_samples"]
    _check_out_vs_runs(args.out, args.runs)
    check_output_folder(args.out, command="compare", overwrite=args.overwrite)
    with RunFolder(args.out, command="compare", overwrite=args.overwrite) as folder:
        return _compare(args, folder, configs, times, n_data, n_samples)


def _num_steps(args, config):
    from rhm_jax.denoise.compare import default_num_steps

    if args.num_steps is not None:
        return args.num_steps
    steps = default_num_steps(config.objective(), config.rhm_config.d)
    if steps is None:  # masking: one token at a time, d steps
        return None
    return min(steps, QUICK["max_steps"]) if args.quick else steps


def _compare(args, folder, configs, times, n_data, n_samples) -> int:
    import jax

    from rhm_jax.denoise.compare import compare_run, sampler_name, sweep_table
    from rhm_jax.io import environment, write_jsonl

    start = time.time()
    progress = not args.no_progress
    runs = args.runs
    if progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc="compare", unit="run")
    results, rows = [], []
    for index, (run_dir, config) in enumerate(zip(runs, configs)):
        result = compare_run(run_dir, key=jax.random.fold_in(jax.random.key(args.seed), index),
                             times=times, n_data=n_data, n_samples=n_samples,
                             num_steps=_num_steps(args, config), repeats=args.repeats,
                             fb_data=args.n_fb_data,
                             ema=args.ema, bp_chain=not args.no_bp_chain, progress=progress)
        results.append(result)
        rows.extend({**row, "seed": args.seed} for row in result.rows())
    table = sweep_table(results)
    write_jsonl(folder.file("results.jsonl"), rows)
    write_jsonl(folder.file("sweep.jsonl"), table)
    from rhm_jax.plotting.comparison import (plot_agreement, plot_forward_backward,
                                             plot_generation, plot_representation, plot_sweep)

    plot_forward_backward(results, folder.file("forward_backward.png"))
    plot_agreement(results, folder.file("agreement.png"))
    plot_generation(results, folder.file("generation.png"))
    plot_representation(results, folder.file("representation.png"))
    if len(results) > 1:
        plot_sweep(table, folder.file("sweep.png"))
    wall = time.time() - start
    out = folder.commit({
        "config": {"runs": [str(r) for r in args.runs], "times": [float(t) for t in times],
                   "times_given": args.times.given if args.times else None,
                   "n_data": n_data, "fb_data": args.n_fb_data or n_data,
                   "n_samples": n_samples, "num_steps": args.num_steps,
                   "repeats": args.repeats, "ema": bool(args.ema),
                   "bp_chain": not args.no_bp_chain, "seed": args.seed,
                   "quick": bool(args.quick)},
        "runs": [{"run": str(r.run_dir), "step": r.step, "num_steps": r.num_steps,
                  "sampler": sampler_name(r.num_steps), "n_data_used": r.n_data,
                  "fb_data_used": r.fb_data, "ema_used": r.ema,
                  "train_config": r.config.to_dict()} for r in results],
        "wall_seconds": round(wall, 3), "environment": environment()})
    print(f"wrote {len(rows)} rows, {len(table)} summary rows and figures to {out}/ in "
          f"{wall:.1f} s")
    for row in table:
        P = "online" if row["online"] else f"P = {row['train_size']}"
        print(f"  {row['run']} ({row['process']}, {P}): top-1 at t = {row['t_half']:g} "
              f"{row['top1_at_t_half']:.3f} (clear tokens {_fmt(row['top1_clear_at_t_half'])}), "
              f"mean KL {row['kl_mean']:.4f} nats/token, "
              f"max |P_0 gap| {row['P0_gap_max']:.3f} +- {_fmt(row['P0_gap_max_se'])}, "
              f"generated fully valid {row['network_fully_valid']:.3f} (BP chain "
              f"{row.get('bp_chain_fully_valid', float('nan')):.3f}), copies "
              f"{'-' if row['network_copy'] is None else format(row['network_copy'], '.3f')}")
    return 0


def _fmt(x) -> str:
    return "-" if x is None else format(x, ".3f")
