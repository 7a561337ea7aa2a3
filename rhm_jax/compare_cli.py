"""``rhm-jax compare``: trained denoisers against exact BP (DESIGN.md §7, issue 13).

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

import numpy as np

#: ``--quick`` sizes (an explicit flag wins).
QUICK = dict(n_data=32, n_samples=32, times=[0.25, 0.5, 0.75, 1.0], max_steps=32)
DEFAULTS = dict(n_data=256, n_samples=256)


def add_parser(subparsers, add_config_args):
    from rhm_jax.cli import MAX_SEED, integer_flag
    from rhm_jax.phase_cli import times_flag

    p = subparsers.add_parser(
        "compare", help="compare trained denoisers (rhm-jax train runs) with exact BP",
        description="Per-t agreement with BP, losses, generated samples, P_l(t) of the "
                    "network next to BP's and hidden representations, for one or more "
                    "training runs (several runs: a sweep over the training-set size).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="training run folders (written by rhm-jax train)")
    p.add_argument("--times", type=times_flag, default=None,
                   help="times in (0, 1]: a count N (N evenly spaced in (0, 1]), a grid "
                        "START:STOP:N or a comma list (default 0.1,0.2,...,1.0; quick "
                        "0.25,0.5,0.75,1)")
    p.add_argument("--n-data", type=integer_flag("--n-data", 1), default=None,
                   help="held-out data per time, from the run's test set (default 256; quick 32)")
    p.add_argument("--fb-data", type=integer_flag("--fb-data", 1), default=None,
                   help="data per time of the forward-backward experiment P_l(t), sampled "
                        "fresh from the grammar (default: --n-data)")
    p.add_argument("--n-samples", type=integer_flag("--n-samples", 1), default=None,
                   help="sequences generated from pure noise (default 256; quick 32)")
    p.add_argument("--num-steps", type=integer_flag("--num-steps", 1), default=None,
                   help="reverse steps on a uniform time grid (default: for masking, one "
                        "token at a time, exact with exact marginals; the schedule's T for "
                        "uniform; quick at most 32)")
    p.add_argument("--repeats", type=integer_flag("--repeats", 1), default=1,
                   help="noise draws per held-out datum (default %(default)s)")
    p.add_argument("--ema", action="store_true", help="use the runs' EMA parameters")
    p.add_argument("--no-bp-chain", action="store_true",
                   help="skip generation with BP in the network's sampler")
    p.add_argument("--seed", type=integer_flag("--seed", 0, MAX_SEED), default=0,
                   help="PRNG seed (default %(default)s)")
    p.add_argument("--out", default="runs/compare",
                   help="output folder, replaced whole when the run completes (default "
                        "%(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    times = args.times.values if args.times else (
        QUICK["times"] if args.quick else [round(0.1 * k, 12) for k in range(1, 11)])
    if args.times and args.times.given and not any(c in args.times.given for c in ",:.eE"):
        times = [round(k / len(times), 12) for k in range(1, len(times) + 1)]  # a count: (0, 1]
    if min(times) <= 0:
        raise ValueError(f"--times = {args.times.given!r} must be > 0 (at t = 0 nothing is "
                         "noised)")
    sizes = QUICK if args.quick else DEFAULTS
    n_data = args.n_data or sizes["n_data"]
    n_samples = args.n_samples or sizes["n_samples"]
    _check_out_vs_runs(args.out, args.runs)
    check_output_folder(args.out)
    with RunFolder(args.out, command="compare") as folder:
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
                             fb_data=args.fb_data,
                             ema=args.ema, bp_chain=not args.no_bp_chain, progress=progress)
        results.append(result)
        rows.extend({**row, "seed": args.seed} for row in result.rows())
    table = sweep_table(results)
    write_jsonl(folder.file("results.jsonl"), rows)
    write_jsonl(folder.file("sweep.jsonl"), table)
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
                   "n_data": n_data, "fb_data": args.fb_data or n_data,
                   "n_samples": n_samples, "num_steps": args.num_steps,
                   "repeats": args.repeats, "ema": bool(args.ema),
                   "bp_chain": not args.no_bp_chain, "seed": args.seed,
                   "quick": bool(args.quick)},
        "runs": [{"run": str(r.run_dir), "step": r.step, "num_steps": r.num_steps,
                  "sampler": sampler_name(r.num_steps),
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


# ---- figures ------------------------------------------------------------------------------
def _label(result) -> str:
    config = result.config
    P = "online" if config.train_size is None else f"P={config.train_size}"
    return f"{Path(result.run_dir).name}: {config.loss}, {P}"


def _save(fig, path):
    from rhm_jax.plotting import save_figure as save

    save(fig, path)


def plot_forward_backward(results, path):
    """``P_l(t)`` of each run's network (solid) next to exact BP's (dashed), one panel per
    run (so one per process when the runs differ by process)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.4 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        L = result.config.L
        colors = plt.cm.plasma(np.linspace(0.05, 0.85, L + 1))
        for source, style, fb in (("network", "-", result.network_fb), ("BP", "--", result.bp_fb)):
            for level in range(L + 1):
                ax.errorbar(fb.times, fb.sampled[0, :, level], yerr=fb.sampled_se[0, :, level],
                            color=colors[level], ls=style, marker="o" if style == "-" else None,
                            ms=2.5, lw=1.1, label=f"l={level}" if source == "network" else None)
        ax.set_title(_label(result), fontsize=8)
        ax.set_xlabel("t")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(r"$P_l(t)$: network (solid), exact BP (dashed)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_agreement(results, path):
    """KL(BP ‖ network) and top-1 agreement against t (dashed: top-1 on BP's clear tokens,
    :data:`~rhm_jax.denoise.compare.CLEAR_MARGIN`; dotted: against the empirical posterior
    of the training set)."""
    import matplotlib.pyplot as plt

    fig, (kl_ax, top_ax) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for i, result in enumerate(results):
        a, color = result.agreement, f"C{i % 10}"
        kl_ax.errorbar(a.times, a.kl, yerr=a.kl_se, color=color, marker="o", ms=3,
                       label=_label(result))
        top_ax.errorbar(a.times, a.top1, yerr=a.top1_se, color=color, marker="o", ms=3,
                        label="all compared tokens" if i == 0 else None)
        top_ax.errorbar(a.times, a.top1_clear, yerr=a.top1_clear_se, color=color, ls="--",
                        label="clear tokens" if i == 0 else None)
        if a.kl_emp is not None:
            kl_ax.errorbar(a.times, a.kl_emp, yerr=a.kl_emp_se, color=color, ls=":", ms=3,
                           label="  vs empirical posterior")
            top_ax.errorbar(a.times, a.top1_emp, yerr=a.top1_emp_se, color=color, ls=":")
    kl_ax.set_yscale("symlog", linthresh=1e-3)
    kl_ax.set_xlabel("t")
    kl_ax.set_ylabel("KL(BP ‖ network), nats per token")
    top_ax.set_xlabel("t")
    top_ax.set_ylabel("top-1 agreement with BP")
    top_ax.set_ylim(-0.02, 1.02)
    kl_ax.legend(fontsize=7)
    top_ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_generation(results, path):
    """Fraction of valid nodes per level of generated samples: network, BP in the
    network's sampler, exact BP samples."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, result in zip(axes[0], results):
        sources = list(result.samples)
        width = 0.8 / len(sources)
        for k, source in enumerate(sources):
            stats = result.samples[source]
            levels = np.arange(len(stats.valid))
            ax.bar(levels + (k - (len(sources) - 1) / 2) * width, stats.valid, width,
                   yerr=stats.valid_se, label=source, color=f"C{k}")
        lowest = min(float(np.min(stats.valid)) for stats in result.samples.values())
        ax.set_xticks(levels)
        ax.set_xlabel("level l (0 = class)")
        ax.set_ylim(max(0.0, lowest - 0.1), 1.01)
        ax.set_title(_label(result), fontsize=8)
    axes[0][0].set_ylabel("fraction of valid nodes")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    _save(fig, path)


def plot_representation(results, path):
    """Cosine similarity of activations on ``x0`` and ``x̂0(t)`` per level (solid) next to
    ``P_l(t)`` of the same ``x̂0`` (dashed)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.4 * len(results), 3.8), squeeze=False)
    for ax, result in zip(axes[0], results):
        r = result.representation
        K = r.similarity.shape[1]
        colors = plt.cm.plasma(np.linspace(0.05, 0.85, K))
        for k in range(K):
            name = f"l={k}" if r.kind == "level" else f"layer {k}"
            ax.errorbar(r.times, r.similarity[:, k], yerr=r.similarity_se[:, k], color=colors[k],
                        marker="o", ms=2.5, lw=1.1, label=name)
            ax.axhline(r.chance[k], color=colors[k], lw=0.6, ls=":")
            if r.kind == "level":
                ax.plot(r.times, r.P_sampled[:, k], color=colors[k], ls="--", lw=0.9)
        ax.set_title(_label(result), fontsize=8)
        ax.set_xlabel("t")
    axes[0][0].set_ylabel(r"cos sim. of activations (solid), $P_l(t)$ (dashed)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_sweep(table, path):
    """Each measure against the training-set size ``P`` (in units of ``v·m**(L+1)``);
    online runs at the right edge."""
    import matplotlib
    import matplotlib.pyplot as plt

    finite = [r for r in table if not r["online"]]
    online = [r for r in table if r["online"]]
    right = 2 * max([r["P_units"] for r in finite], default=1.0)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    panels = [("kl_mean", "mean KL(BP ‖ net)"), ("top1_mean", "mean top-1 with BP"),
              ("network_fully_valid", "generated: fully valid"), ("network_copy", "copies")]
    for ax, (key, title) in zip(axes, panels):
        xs = [r["P_units"] for r in finite]
        ax.plot(xs, [np.nan if r[key] is None else r[key] for r in finite], "o-", label="network")
        if key == "kl_mean":
            ax.plot(xs, [np.nan if r["kl_emp_mean"] is None else r["kl_emp_mean"] for r in finite],
                    "s:", label="KL(emp ‖ net)")
        if key == "network_copy":
            ax.plot(xs, [r["copy_perfect"] for r in finite], "k--", lw=1,
                    label="perfect generaliser P/P_max")
        if key == "network_fully_valid" and finite:
            ax.plot(xs, [r.get("bp_chain_fully_valid", np.nan) for r in finite], "k--", lw=1,
                    label="BP in the sampler")
        for r in online:
            if r[key] is not None:
                ax.plot([right], [r[key]], "D", color="C3", label="online")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(r"$P / (v\,m^{L+1})$" + (" (online: right)" if online else ""))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


__all__ = ["add_parser", "run", "plot_forward_backward", "plot_agreement", "plot_generation",
           "plot_representation", "plot_sweep"]
