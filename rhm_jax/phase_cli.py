"""``rhm-jax phase``: the phase transition of exact denoising, end to end (DESIGN.md §4–5).

Writes into ``--out``: ``results.jsonl`` (one tidy row per config × process × noise level
× level), ``finite_size.json`` (class-threshold per depth and its extrapolation next to the
mean-field ``ε*``), ``meta.json`` (configuration, versions, devices, seed, wall time) and
PNG figures. Every file is written atomically, so an interrupted run never leaves a
half-written result.
"""

from __future__ import annotations

import os
import time

import numpy as np

PROCESSES = ("epsilon", "masking", "uniform", "gaussian")
DEFAULT_DEPTHS = (3, 5, 7)
QUICK_DEPTHS = (2, 3)


def make_process(name: str, config):
    """The noise process called ``name`` for ``config`` (see :data:`PROCESSES`)."""
    from rhm_jax import noise

    factories = {"epsilon": noise.EpsilonProcess, "masking": noise.Masking,
                 "uniform": noise.UniformSubstitution, "gaussian": noise.Gaussian}
    if name not in factories:
        raise ValueError(f"process = {name!r} is not one of {', '.join(PROCESSES)}")
    return factories[name](config)


def _parse_list(text: str, kind=int):
    return [kind(x) for x in text.split(",") if x.strip()]


def add_parser(subparsers, add_config_args):
    parser = subparsers.add_parser(
        "phase", help="forward-backward phase transition with exact BP (the main job)",
        description="Noise RHM data, reconstruct them with exact BP, and measure how each "
                    "level survives: P_l against noise, per depth and noise process.")
    add_config_args(parser)
    parser.add_argument("--L", default=None,
                        help=f"comma-separated depths (default {','.join(map(str, DEFAULT_DEPTHS))})")
    parser.add_argument("--processes", default=",".join(PROCESSES),
                        help="comma-separated noise processes (default %(default)s)")
    parser.add_argument("--all-depths-for-all-processes", action="store_true",
                        help="run every process at every depth (default: the ε-process at "
                             "every depth, the others at the largest)")
    parser.add_argument("--times", type=int, default=None,
                        help="number of noise levels in [0, 1] (default 21; quick 6)")
    parser.add_argument("--n-data", type=int, default=None,
                        help="data per grammar and noise level (default 512; quick 64)")
    parser.add_argument("--grammars", type=int, default=1,
                        help="independent grammars averaged over (default %(default)s)")
    parser.add_argument("--max-batch", type=int, default=2048,
                        help="bound on grammars x times x chunk per compiled call")
    parser.add_argument("--out", default="runs/phase", help="output folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from rhm_jax.io import write_json, write_jsonl

    depths = _parse_list(args.L) if args.L else list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    processes = [p.strip() for p in args.processes.split(",") if p.strip()]
    num_times = args.times or (6 if args.quick else 21)
    n_data = args.n_data or (64 if args.quick else 512)
    # Validate everything before any heavy work.
    from rhm_jax import RHMConfig
    configs = [RHMConfig(v=args.v, m=args.m, s=args.s, L=L, n_classes=args.n_classes)
               for L in depths]
    for name in processes:
        make_process(name, configs[0])
    for name, value in (("--times", num_times), ("--n-data", n_data), ("--grammars", args.grammars)):
        if value < 1:
            raise ValueError(f"{name} = {value} must be >= 1")

    import jax

    from rhm_jax import theory
    from rhm_jax.experiments import forward_backward, sample_grammars, to_rows
    from rhm_jax.io import environment
    from rhm_jax.plotting import plot_class_vs_noise, plot_levels, plot_processes
    from rhm_jax.sharding import data_mesh, initialize_distributed, is_main_process

    initialize_distributed()
    start = time.time()
    times = np.linspace(0.0, 1.0, num_times)
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
    if is_main_process():
        out = args.out
        os.makedirs(out, exist_ok=True)
        write_jsonl(os.path.join(out, "results.jsonl"), rows)
        write_json(os.path.join(out, "finite_size.json"), finite_size)
        if "epsilon" in processes:
            plot_class_vs_noise(rows, mean_field, os.path.join(out, "phase_class.png"))
            plot_levels(rows, os.path.join(out, "phase_levels.png"), process="epsilon",
                        L=max(depths), mean_field=mean_field, xlabel=r"noise $\varepsilon$")
        plot_processes(rows, os.path.join(out, "phase_processes.png"), L=max(depths))
        cfg0 = configs[0]
        write_json(os.path.join(out, "meta.json"), {
            "command": "phase",
            "config": {"v": cfg0.v, "m": cfg0.m, "s": cfg0.s, "n_classes": cfg0.n_classes,
                       "L": depths, "processes": processes, "times": times.tolist(),
                       "n_data": n_data, "grammars": args.grammars, "seed": args.seed,
                       "quick": bool(args.quick)},
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
