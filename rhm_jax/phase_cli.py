"""``rhm-jax phase``: the phase transition of exact denoising, end to end (DESIGN.md §4–5).

Writes into ``--out``: ``results.jsonl`` (one tidy row per config × process × noise level
× level), ``finite_size.json`` (class-threshold per depth and its extrapolation next to the
mean-field ``ε*``), ``meta.json`` (configuration, versions, devices, seed, wall time,
``"complete": true``) and PNG figures. The run writes into a staging folder beside
``--out`` and moves it into place when it completes, replacing an earlier run folder whole
(:class:`rhm_jax.io.RunFolder`): the folder always describes one whole run, and an
interrupted run leaves the previous one untouched. Every flag, the output folder and the
memory one compiled call needs are checked before any computation.
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import numpy as np

from rhm_jax.noise import PROCESSES, make_process
DEFAULT_DEPTHS = (3, 5, 7)
QUICK_DEPTHS = (2, 3)


class TimeGrid(NamedTuple):
    """The noise levels of ``--times`` and the text they were given as."""

    values: list
    given: str | None


def _rounded(values) -> list:
    """Times rounded to 12 significant digits: ``0.15``, not ``0.15000000000000002``."""
    return [float(f"{x:.12g}") for x in values]


def even_times(start: float, stop: float, num: int) -> list:
    """``num`` evenly spaced times from ``start`` to ``stop``, rounded (:func:`_rounded`)."""
    return _rounded(np.linspace(start, stop, num))


_TIMES_RULE = ("a count N >= 1 (N times evenly spaced in [0, 1]), a grid START:STOP:N with "
               "0 <= START < STOP <= 1, or a comma list of increasing times in [0, 1]")


def times_flag(text: str) -> TimeGrid:
    """``--times``: ``21``, ``0.6:0.8:41`` or ``0.1,0.2,0.5`` (see :data:`_TIMES_RULE`)."""
    def fail(rule=_TIMES_RULE):
        raise argparse.ArgumentTypeError(f"--times = {text!r} must be {rule}")

    stripped = text.strip()
    if ":" in stripped:
        parts = stripped.split(":")
        try:
            start, stop, num = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            fail("a grid START:STOP:N such as 0.6:0.8:41 (two times and a count)")
        if len(parts) != 3:
            fail("a grid START:STOP:N such as 0.6:0.8:41 (two times and a count)")
        if not (0 <= start < stop <= 1 and num >= 2) and not (0 <= start == stop <= 1 and num == 1):
            fail("a grid START:STOP:N with 0 <= START < STOP <= 1 and N >= 2")
        return TimeGrid(even_times(start, stop, num), stripped)
    try:
        if not any(c in stripped for c in ",.eE"):
            num = int(stripped)
            if num < 1:
                fail()
            return TimeGrid(even_times(0.0, 1.0, num), stripped)
        values = [float(part) for part in stripped.split(",")]
    except ValueError:
        fail()
    if not all(0 <= t <= 1 for t in values) or any(b <= a for a, b in zip(values, values[1:])):
        fail("a comma list of increasing times in [0, 1]")
    return TimeGrid(values, stripped)


def processes_flag(text: str) -> list:
    """``--processes``: distinct names from :data:`PROCESSES`, comma-separated."""
    names = [part.strip() for part in text.split(",")]
    rule = f"a comma-separated list of distinct processes from {', '.join(PROCESSES)}"
    if not text.strip() or any(name not in PROCESSES for name in names) or (
            len(set(names)) != len(names)):
        unknown = [name for name in names if name not in PROCESSES]
        detail = f" ({unknown[0]!r} is not one)" if unknown and text.strip() else ""
        raise argparse.ArgumentTypeError(f"--processes = {text!r} must be {rule}{detail}")
    return names


def add_parser(subparsers, add_config_args):
    from rhm_jax.cli import integer_flag, integer_list_flag

    parser = subparsers.add_parser(
        "phase", help="forward-backward phase transition with exact BP (the main job)",
        description="Noise RHM data, reconstruct them with exact BP, and measure how each "
                    "level survives: P_l against noise, per depth and noise process.")
    add_config_args(parser)
    parser.add_argument("--L", default=None, type=integer_list_flag("--L", 1, "3,5,7"),
                        help=f"comma-separated depths (default {','.join(map(str, DEFAULT_DEPTHS))})")
    parser.add_argument("--processes", default=",".join(PROCESSES), type=processes_flag,
                        help="comma-separated noise processes (default %(default)s)")
    parser.add_argument("--all-depths-for-all-processes", action="store_true",
                        help="run every process at every depth (default: the ε-process at "
                             "every depth, the others at the largest)")
    parser.add_argument("--times", type=times_flag, default=None,
                        help="noise levels: a count N (N evenly spaced in [0, 1]; default 21, "
                             "quick 6), a grid START:STOP:N such as 0.6:0.8:41, or a comma "
                             "list such as 0.1,0.3,0.5")
    parser.add_argument("--n-data", type=integer_flag("--n-data", 1), default=None,
                        help="data per grammar and noise level (default 512; quick 64)")
    parser.add_argument("--grammars", type=integer_flag("--grammars", 1), default=1,
                        help="independent grammars averaged over (default %(default)s)")
    parser.add_argument("--max-batch", type=integer_flag("--max-batch", 1), default=2048,
                        help="bound on grammars x times x chunk per compiled call")
    parser.add_argument("--out", default="runs/phase",
                        help="output folder, replaced whole when the run completes (an "
                             "existing non-empty folder must be an earlier rhm-jax run; "
                             "default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def _call_bytes(cfg, rows: int) -> int:
    """Memory of one compiled call of the sweep: ``rows`` data × noise levels of float
    leaf log-likelihoods ``(d, v)``, about twice over (evidence and BP's messages)."""
    return 2 * rows * cfg.d * cfg.v * np.dtype(np.float32).itemsize


def run(args) -> int:
    from rhm_jax.cli import make_config
    from rhm_jax.io import RunFolder, check_output_folder

    # Everything is checked before any heavy work (the flags' types checked the rest).
    depths = args.L or list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    processes = args.processes
    times_grid = args.times or TimeGrid(even_times(0.0, 1.0, 6 if args.quick else 21), None)
    times = np.asarray(times_grid.values, dtype=np.float64)
    n_data = args.n_data if args.n_data is not None else (64 if args.quick else 512)
    configs = [make_config(args, L) for L in depths]
    for name in processes:
        make_process(name, configs[0])
    check_output_folder(args.out)

    from rhm_jax.validation import check_fits
    from rhm_jax.sharding import initialize_distributed, is_main_process

    initialize_distributed()
    per_call = args.grammars * len(times)
    rows_per_call = per_call * max(1, args.max_batch // per_call)
    deepest = configs[-1]
    check_fits(f"phase --L {deepest.L}: one compiled call of {rows_per_call} rows "
               f"(--grammars x times x chunk, bounded by --max-batch {args.max_batch}) of "
               f"d x v = {deepest.d} x {deepest.v} log-likelihoods",
               _call_bytes(deepest, rows_per_call),
               advice="lower --max-batch or the largest --L")
    folder = RunFolder(args.out, command="phase") if is_main_process() else None
    try:
        return _sweep(args, folder, configs, depths, processes, times, times_grid, n_data)
    except BaseException:
        if folder is not None:
            folder.discard()
        raise


def _sweep(args, folder, configs, depths, processes, times, times_grid, n_data) -> int:
    import jax

    from rhm_jax import theory
    from rhm_jax.experiments import forward_backward, sample_grammars, to_rows
    from rhm_jax.io import environment, write_json, write_jsonl
    from rhm_jax.plotting import plot_class_vs_noise, plot_levels, plot_processes
    from rhm_jax.sharding import data_mesh, is_main_process

    start = time.time()
    mean_field = None
    if (args.n_classes in (None, args.v)):
        mean_field = theory.MeanField(args.v, args.m, args.s)
    tasks = []
    for cfg in configs:
        for name in processes:
            if name == "epsilon" or args.all_depths_for_all_processes or cfg.L == max(depths):
                tasks.append((cfg, name))
    progress = not args.no_progress and is_main_process()
    if progress:
        from tqdm.auto import tqdm
        task_iter = tqdm(tasks, desc="phase", unit="run")
    else:
        task_iter = tasks
    rows, timings = [], []
    mesh = data_mesh()
    root = jax.random.key(args.seed)
    for cfg, name in task_iter:
        task_start = time.time()
        grammar_key, data_key = jax.random.split(jax.random.fold_in(root, cfg.L))
        grammars = sample_grammars(grammar_key, cfg, args.grammars)
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

    finite_size = _finite_size(rows, depths, mean_field, configs[0])
    wall = time.time() - start
    if folder is not None:
        write_jsonl(folder.file("results.jsonl"), rows)
        write_json(folder.file("finite_size.json"), finite_size)
        if "epsilon" in processes:
            plot_class_vs_noise(rows, mean_field, folder.file("phase_class.png"))
            plot_levels(rows, folder.file("phase_levels.png"), process="epsilon",
                        L=max(depths), mean_field=mean_field, xlabel=r"noise $\varepsilon$")
        plot_processes(rows, folder.file("phase_processes.png"), L=max(depths))
        cfg0 = configs[0]
        out = folder.commit({
            "config": {"v": cfg0.v, "m": cfg0.m, "s": cfg0.s, "n_classes": cfg0.n_classes,
                       "L": depths, "processes": processes, "times": _rounded(times),
                       "times_given": times_grid.given, "n_data": n_data,
                       "grammars": args.grammars, "max_batch": args.max_batch,
                       "seed": args.seed, "quick": bool(args.quick)},
            "mean_field": None if mean_field is None else {
                "eps_star": mean_field.eps_star, "p_star": mean_field.p_star,
                "F_prime_p_star": mean_field.slope_at_p_star, "nu": mean_field.nu},
            "wall_seconds": round(wall, 3), "task_seconds": timings,
            "environment": environment()})
        print(f"wrote {len(rows)} rows and figures to {out}/ in {wall:.1f} s")
        if finite_size.get("eps_half"):
            print("class threshold (P_0 midpoint) per L:", finite_size["eps_half"],
                  "| extrapolated:", finite_size.get("eps_half_extrapolated"),
                  "| mean-field eps*:", finite_size.get("eps_star_mean_field"))
    return 0


def _finite_size(rows, depths, mean_field, cfg):
    """ε where ``P_0`` crosses the midpoint between 1 and chance, per L, and extrapolated."""
    from rhm_jax import theory

    out = {"definition": "eps where the epsilon-process class curve P_0 crosses (1 + 1/n_c)/2",
           "eps_half": {}}
    for L in depths:
        sel = [r for r in rows if r["process"] == "epsilon" and r["L"] == L and r["level"] == 0]
        if len(sel) < 2:
            continue
        eps = np.array([r["t"] for r in sel])
        p0 = np.array([r["P_marginal"] for r in sel])
        crossing = theory.midpoint_crossing(eps, p0, 1.0 / cfg.n_classes, 1.0)
        out["eps_half"][str(L)] = None if np.isnan(crossing) else float(crossing)
    if mean_field is not None:
        out["eps_star_mean_field"] = float(mean_field.eps_star)
        known = [(int(L), e) for L, e in out["eps_half"].items() if e is not None]
        if len(known) >= 2 and np.isfinite(mean_field.slope_at_p_star):
            Ls, es = zip(*known)
            out["eps_half_extrapolated"] = float(theory.extrapolate_threshold(
                np.array(Ls), np.array(es), mean_field.slope_at_p_star))
            out["mean_field_eps_half"] = {
                str(L): float(mean_field.eps_at_class_belief(0.5 * (1 + 1 / cfg.v), L))
                for L in depths}
    return out
