"""``rhm-jax phase``: the phase transition of exact denoising, end to end (the main job).

Writes into ``--out``: ``results.jsonl`` (one tidy row per config × process × noise level
× level), ``finite_size.json`` (the class threshold per depth and its extrapolation next
to the mean-field ``ε*``, :func:`rhm_jax.theory.class_thresholds`), ``meta.json``
(configuration, versions, devices, seed, wall time, ``"complete": true``) and PNG figures.
The theory is in ``docs/theory/phase_transition.md`` and ``docs/theory/mean_field.md``.
"""

from __future__ import annotations

import time

import numpy as np

from rhm_jax.cli.flags import (TIMES_HELP, TimeGrid, add_alias, add_out_arg, add_rhm_args,
                               add_sweep_args, even_times, integer_flag, make_config,
                               rounded_times, times_flag)
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run"]

DEFAULT_DEPTHS = (3, 5, 7)
QUICK_DEPTHS = (2, 3)
DEFAULT_PROCESSES = "epsilon,masking,uniform,gaussian"


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "phase", help="forward-backward phase transition with exact BP (the main job)",
        description="Noise RHM data, reconstruct them with exact BP, and measure how each "
                    "level survives: P_l against noise, per depth and noise process.")
    add_rhm_args(parser)
    add_sweep_args(parser, depths=DEFAULT_DEPTHS, quick_depths=QUICK_DEPTHS,
                   processes=DEFAULT_PROCESSES)
    parser.add_argument("--all-depths-for-all-processes", action="store_true",
                        help="run every process at every depth (default: the ε-process at "
                             "every depth, the others at the largest)")
    parser.add_argument("--times", type=times_flag, default=None,
                        help=f"{TIMES_HELP} (default: 0:1:21; quick 0:1:6)")
    parser.add_argument("--n-data", type=integer_flag("--n-data", 1), default=None,
                        help="data per grammar and noise level (default: 512; quick 64)")
    parser.add_argument("--n-grammars", type=integer_flag("--n-grammars", 1), default=1,
                        help="independent grammars averaged over")
    add_alias(parser, "--grammars", "--n-grammars", type=integer_flag("--n-grammars", 1))
    parser.add_argument("--max-batch", type=integer_flag("--max-batch", 1), default=2048,
                        help="bound on grammars x times x chunk per compiled call")
    add_out_arg(parser, "runs/phase")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    add_runtime_args(parser)
    parser.set_defaults(func=run)
    return parser


def _call_bytes(cfg, rows: int) -> int:
    """Memory of one compiled call of the sweep: ``rows`` data × noise levels of float
    leaf log-likelihoods ``(d, v)``, about twice over (evidence and BP's messages)."""
    return 2 * rows * cfg.d * cfg.v * np.dtype(np.float32).itemsize


def run(args) -> int:
    from rhm_jax.io import RunFolder, check_output_folder
    from rhm_jax.noise import make_process
    from rhm_jax.sharding import initialize_distributed, is_main_process
    from rhm_jax.validation import check_fits

    # Everything is checked before any heavy work (the flags' types checked the rest).
    depths = args.L or list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    times_grid = args.times or TimeGrid(even_times(0.0, 1.0, 6 if args.quick else 21), None)
    n_data = args.n_data if args.n_data is not None else (64 if args.quick else 512)
    configs = [make_config(args, L) for L in depths]
    for name in args.process:
        make_process(name, configs[0])
    check_output_folder(args.out, command="phase", overwrite=args.overwrite)

    initialize_distributed()
    per_call = args.n_grammars * len(times_grid.values)
    rows_per_call = per_call * max(1, args.max_batch // per_call)
    deepest = configs[-1]
    check_fits(f"phase --L {deepest.L}: one compiled call of {rows_per_call} rows "
               f"(--n-grammars x times x chunk, bounded by --max-batch {args.max_batch}) of "
               f"d x v = {deepest.d} x {deepest.v} log-likelihoods",
               _call_bytes(deepest, rows_per_call),
               advice="lower --max-batch or the largest --L")
    folder = RunFolder(args.out, command="phase", overwrite=args.overwrite) \
        if is_main_process() else None
    try:
        return _sweep(args, folder, configs, depths, times_grid, n_data)
    except BaseException:
        if folder is not None:
            folder.discard()
        raise


def _tasks(configs, processes, every_depth: bool):
    """The (config, process) pairs: the ε-process at every depth, the others at the largest
    (or every depth)."""
    deepest = max(cfg.L for cfg in configs)
    return [(cfg, name) for cfg in configs for name in processes
            if name == "epsilon" or every_depth or cfg.L == deepest]


def _sweep(args, folder, configs, depths, times_grid, n_data) -> int:
    import jax

    from rhm_jax import theory
    from rhm_jax.experiments import forward_backward, sample_grammars, to_rows
    from rhm_jax.io import environment, write_json, write_jsonl
    from rhm_jax.noise import make_process
    from rhm_jax.plotting import plot_class_vs_noise, plot_levels, plot_processes
    from rhm_jax.sharding import data_mesh, is_main_process

    start = time.time()
    times = np.asarray(times_grid.values, dtype=np.float64)
    mean_field = theory.MeanField(args.v, args.m, args.s) \
        if args.n_classes in (None, args.v) else None
    tasks = _tasks(configs, args.process, args.all_depths_for_all_processes)
    progress = not args.no_progress and is_main_process()
    if progress:
        from tqdm.auto import tqdm
        tasks = tqdm(tasks, desc="phase", unit="run")
    rows, timings = [], []
    mesh = data_mesh()
    root = jax.random.key(args.seed)
    for cfg, name in tasks:
        task_start = time.time()
        grammar_key, data_key = jax.random.split(jax.random.fold_in(root, cfg.L))
        grammars = sample_grammars(grammar_key, cfg, args.n_grammars)
        result = forward_backward(data_key, grammars, make_process(name, cfg), times, n_data,
                                  max_batch=args.max_batch, mesh=mesh, progress=progress)
        new_rows = to_rows(result, cfg, name, seed=args.seed)
        if name == "epsilon" and mean_field is not None:
            curves = mean_field.level_curves(times, cfg.L)
            for row in new_rows:
                ti = int(np.argmin(np.abs(times - row["t"])))
                row["q_mean_field"] = float(curves.q[row["level"], ti])
                row["p_mean_field"] = float(curves.p[row["level"], ti])
        rows.extend(new_rows)
        timings.append({"L": cfg.L, "process": name, "seconds": round(time.time() - task_start, 3)})

    class_curves = {L: [r["P_marginal"] for r in rows if r["process"] == "epsilon"
                        and r["L"] == L and r["level"] == 0] for L in depths}
    finite_size = theory.class_thresholds(times, class_curves, configs[0].n_classes, mean_field)
    wall = time.time() - start
    if folder is not None:
        write_jsonl(folder.file("results.jsonl"), rows)
        write_json(folder.file("finite_size.json"), finite_size)
        if "epsilon" in args.process:
            plot_class_vs_noise(rows, mean_field, folder.file("phase_class.png"))
            plot_levels(rows, folder.file("phase_levels.png"), process="epsilon",
                        L=max(depths), mean_field=mean_field, xlabel=r"noise $\varepsilon$")
        plot_processes(rows, folder.file("phase_processes.png"), L=max(depths))
        cfg0 = configs[0]
        out = folder.commit({
            "config": {"v": cfg0.v, "m": cfg0.m, "s": cfg0.s, "n_classes": cfg0.n_classes,
                       "L": depths, "processes": args.process, "times": rounded_times(times),
                       "times_given": times_grid.given, "n_data": n_data,
                       "grammars": args.n_grammars, "max_batch": args.max_batch,
                       "seed": args.seed, "quick": bool(args.quick)},
            "mean_field": None if mean_field is None else _mean_field_meta(mean_field),
            "wall_seconds": round(wall, 3), "task_seconds": timings,
            "environment": environment()})
        print(f"wrote {len(rows)} rows and figures to {out}/ in {wall:.1f} s")
        if finite_size.get("eps_half"):
            print("class threshold (P_0 midpoint) per L:", finite_size["eps_half"],
                  "| extrapolated:", finite_size.get("eps_half_extrapolated"),
                  "| mean-field eps*:", finite_size.get("eps_star_mean_field"))
    return 0


def _mean_field_meta(mean_field) -> dict:
    """The mean field's numbers for ``meta.json`` (``null`` where there is no transition)."""
    from rhm_jax.stats import json_float

    return {"eps_star": json_float(mean_field.eps_star), "p_star": json_float(mean_field.p_star),
            "F_prime_p_star": json_float(mean_field.slope_at_p_star),
            "nu": json_float(mean_field.nu)}
