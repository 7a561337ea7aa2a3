"""``rhm-jax chi``: correlated changes and the susceptibility ``χ(t)`` (DESIGN.md §6).

Writes into ``--out``: ``results.jsonl`` (one row per depth × process × noise level: ``χ``
and its error, the changed fraction, ``P_0``, ``ξ``, the mean tree depth, ``C`` by tree
distance and by position distance; plus the Gaussian-random-field control as process
``"grf"``), ``summary.json`` (per depth and process: the noise of the ``χ`` peak and where
``P_0`` crosses its midpoint; the mean-field ``ν``), ``meta.json`` and the figures
``chi.png`` (``χ(t)`` per process, the ``P_0`` midpoint marked), ``correlations.png``
(``C`` by tree distance at a few noise levels) and ``control.png``. Flags and the output
folder are checked before any computation; the folder is replaced whole at the end
(:class:`rhm_jax.io.RunFolder`).

Noise grid: without ``--times`` (and ``--quick``), each depth and process gets its own grid around its class
transition: a pilot :func:`rhm_jax.experiments.forward_backward` run (``PILOT_DATA`` data
on ``PILOT_LEVELS`` even levels, marginal ``P_0``) finds the ``P_0`` midpoint ``t½`` and
10–90% width ``w``, and the grid is ``GRID_POINTS`` even levels on
``[t½ - GRID_HALF_SPAN·w, t½ + GRID_HALF_SPAN·w] ∩ [0, 1]`` (an even grid on ``[0, 1]`` if
the pilot curve does not cross). With at least two depths of the ε-process, ``summary.json``
also holds the exponent ``ν`` from a data collapse of ``χ`` over the depths
(:func:`rhm_jax.correlations.collapse_exponent`, centres at the ``P_0`` midpoints, baseline
``χ = 1``) and from the 10–90% widths of ``P_0`` against depth
(:func:`rhm_jax.correlations.width_exponent`), next to the mean-field ``ν``.
"""

from __future__ import annotations

import time

import numpy as np

from rhm_jax.phase_cli import TimeGrid, even_times, make_process, processes_flag, times_flag

DEFAULT_DEPTHS = (5, 7, 9)
QUICK_DEPTHS = (3, 4)
#: Entries of ``C(r)`` by position written per row (the rest are in the tree sums).
MAX_POSITIONS = 512
#: Pilot and per-run noise grid (module doc).
PILOT_LEVELS, PILOT_DATA, GRID_HALF_SPAN = 41, 64, 2.5


def add_parser(subparsers, add_config_args):
    from rhm_jax.cli import integer_flag, integer_list_flag

    parser = subparsers.add_parser(
        "chi", help="correlated changes: C_ij, C(r), susceptibility chi(t), the GRF control",
        description="From each start x0, many forward-backward trajectories (own noise, exact "
                    "BP draw): the connected correlations of the changed tokens and their "
                    "susceptibility against noise, per depth and process.")
    add_config_args(parser)
    parser.add_argument("--L", default=None, type=integer_list_flag("--L", 1, "5,7,9"),
                        help=f"depths (default {','.join(map(str, DEFAULT_DEPTHS))})")
    parser.add_argument("--processes", default="epsilon,masking", type=processes_flag,
                        help="comma-separated noise processes (default %(default)s)")
    parser.add_argument("--times", type=times_flag, default=None,
                        help="noise levels as for `phase`, the same for every run (default: "
                             "per depth and process, 15 around the P_0 drop found by a "
                             "pilot run; quick 5 even in [0, 1])")
    parser.add_argument("--starts", type=integer_flag("--starts", 2), default=None,
                        help="starts x0 per depth and process (default 64; quick 8)")
    parser.add_argument("--trajectories", type=integer_flag("--trajectories", 2), default=None,
                        help="trajectories per start (default 64; quick 8)")
    parser.add_argument("--grf-exponent", type=float, default=2.0,
                        help="control: power spectrum exponent a of P_k ~ k**-a (default 2)")
    parser.add_argument("--grf-d", type=integer_flag("--grf-d", 2), default=None,
                        help="control: field length, a power of 2 (default 256; quick 64)")
    parser.add_argument("--out", default="runs/chi",
                        help="output folder, replaced whole when the run completes")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from rhm_jax.cli import make_config
    from rhm_jax.io import RunFolder, check_output_folder

    depths = args.L or list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    grid_points = 5 if args.quick else 15
    times_grid = args.times or TimeGrid(even_times(0.0, 1.0, grid_points), None)
    times = np.asarray(times_grid.values, np.float64)
    auto_grid = args.times is None and not args.quick  # --quick: even, no pilot runs
    starts = args.starts or (8 if args.quick else 64)
    trajectories = args.trajectories or (8 if args.quick else 64)
    grf_d = args.grf_d or (64 if args.quick else 256)
    if grf_d & (grf_d - 1):
        raise ValueError(f"--grf-d = {grf_d} must be a power of 2")
    if not np.isfinite(args.grf_exponent) or args.grf_exponent < 0:
        raise ValueError(f"--grf-exponent = {args.grf_exponent} must be a finite number >= 0")
    configs = [make_config(args, L) for L in depths]
    for name in args.processes:
        make_process(name, configs[0])
    check_output_folder(args.out)
    folder = RunFolder(args.out, command="chi")
    try:
        return _sweep(args, folder, configs, times, times_grid, starts, trajectories, grf_d,
                      grid_points if auto_grid else None)
    except BaseException:
        folder.discard()
        raise


def _row(result, ti, **extra) -> dict:
    def num(x):
        x = float(x)
        return None if not np.isfinite(x) else x

    return {**extra, "t": float(result.times[ti]), "chi": num(result.chi[ti]),
            "chi_se": num(result.chi_se[ti]), "changed": num(result.changed[ti]),
            "changed_se": num(result.changed_se[ti]),
            "P_0": None if result.class_kept is None else num(result.class_kept[ti]),
            "xi": num(result.xi[ti]), "depth": num(result.depth[ti]),
            "C_tree": [num(x) for x in result.tree_distance[ti]],
            "C_position": [num(x) for x in result.position[ti, :MAX_POSITIONS]],
            "n_starts": result.n_starts, "n_trajectories": result.n_trajectories}


def auto_times(key, grammar, process, num: int, mesh=None) -> np.ndarray:
    """``num`` noise levels around the class transition of ``process`` (module doc)."""
    from rhm_jax import theory
    from rhm_jax.experiments import forward_backward

    pilot_times = np.linspace(0.0, 1.0, PILOT_LEVELS)
    pilot = forward_backward(key, grammar, process, pilot_times, PILOT_DATA, mesh=mesh)
    p0 = np.asarray(pilot.marginal[0, :, 0], np.float64)
    low = 1.0 / grammar.config.n_classes
    mid = theory.midpoint_crossing(pilot_times, p0, low, 1.0)
    width = theory.curve_width(pilot_times, p0, low, 1.0)
    if not (np.isfinite(mid) and np.isfinite(width) and width > 0):
        return np.asarray(even_times(0.0, 1.0, num), np.float64)
    # At least two pilot steps wide: the pilot cannot resolve a narrower drop.
    half = GRID_HALF_SPAN * max(width, 2.0 / (PILOT_LEVELS - 1))
    return np.asarray(even_times(max(mid - half, 0.0), min(mid + half, 1.0), num), np.float64)


def _sweep(args, folder, configs, times, times_grid, starts, trajectories, grf_d,
           grid_points) -> int:
    import jax

    from rhm_jax import sample_grammar, theory
    from rhm_jax.correlations import change_correlations, grf_change_correlations
    from rhm_jax.io import environment, write_json, write_jsonl
    from rhm_jax.sharding import data_mesh

    start = time.time()
    progress = not args.no_progress
    tasks = [(cfg, name) for cfg in configs for name in args.processes]
    if progress:
        from tqdm.auto import tqdm
        tasks = tqdm(tasks, desc="chi", unit="run")
    rows, summary, summaries, results = [], {}, {}, {}
    mesh, root = data_mesh(), jax.random.key(args.seed)
    for cfg, name in tasks:
        grammar_key, data_key = jax.random.split(jax.random.fold_in(root, cfg.L))
        grammar = sample_grammar(grammar_key, cfg)
        process = make_process(name, cfg)
        run_times = times if grid_points is None else auto_times(
            jax.random.fold_in(data_key, 1), grammar, process, grid_points, mesh)
        res = change_correlations(data_key, grammar, process, run_times, starts,
                                  trajectories, mesh=mesh, progress=progress)
        results[(cfg.L, name)] = res
        base = {"v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L, "process": name,
                "seed": args.seed}
        rows.extend(_row(res, ti, **base) for ti in range(len(run_times)))
        summaries[(cfg.L, name)] = summary[f"{name} L={cfg.L}"] = _peak_summary(res, cfg)
    control = grf_change_correlations(jax.random.fold_in(root, 10**6), grf_d, args.grf_exponent,
                                      times, starts, trajectories)
    rows.extend(_row(control, ti, process="grf", d=grf_d, exponent=args.grf_exponent,
                     seed=args.seed) for ti in range(len(times)))
    finite = np.isfinite(control.chi)
    summary["grf"] = {"chi_argmax_t": float(times[finite][np.argmax(control.chi[finite])])
                      if finite.any() else None,
                      "interior_peak": bool(finite.any() and 0 < np.argmax(control.chi[finite])
                                            < finite.sum() - 1)}
    cfg0 = configs[0]
    mean_field = None
    if cfg0.n_classes == cfg0.v:
        mf = theory.MeanField(cfg0.v, cfg0.m, cfg0.s)
        mean_field = {"eps_star": mf.eps_star, "nu": mf.nu} if mf.has_transition else None
    summary["mean_field"] = mean_field
    summary["nu_fit"] = _nu_fit(results, summaries, cfg0, mean_field)
    write_jsonl(folder.file("results.jsonl"), rows)
    write_json(folder.file("summary.json"), summary)
    _plot(results, summaries, control, times, folder)
    wall = time.time() - start
    out = folder.commit({
        "config": {"v": cfg0.v, "m": cfg0.m, "s": cfg0.s, "n_classes": cfg0.n_classes,
                   "L": [c.L for c in configs], "processes": args.processes,
                   "times": [float(t) for t in times] if grid_points is None else
                   {f"{name} L={L}": [float(t) for t in res.times]
                    for (L, name), res in results.items()},
                   "times_given": times_grid.given if grid_points is None else
                   f"auto: {grid_points} around the P_0 drop per depth and process",
                   "starts": starts, "trajectories": trajectories, "grf_d": grf_d,
                   "grf_exponent": args.grf_exponent, "seed": args.seed,
                   "quick": bool(args.quick),
                   "trajectory_convention": "independent forward noise and posterior draw per "
                                            "trajectory from the same x0 (none sampled for the "
                                            "epsilon-process)",
                   "grf_spins": "sign changes [sign(x_hat0_i) != sign(x0_i)]"},
        "wall_seconds": round(wall, 3), "environment": environment()})
    print(f"wrote {len(rows)} rows and figures to {out}/ in {wall:.1f} s")
    return 0


def _nu_fit(results, summaries, cfg, mean_field) -> dict | None:
    """``ν`` from a data collapse of ``χ`` over the depths of the ε-process (>= 2 depths)."""
    from rhm_jax import theory
    from rhm_jax.correlations import collapse_exponent, width_exponent

    depths = sorted(L for L, name in results if name == "epsilon"
                    and summaries[(L, name)]["P0_midpoint_t"] is not None)
    if len(depths) < 2:
        return None
    res = [results[(L, "epsilon")] for L in depths]
    try:
        fit = collapse_exponent(depths, [r.times for r in res], [r.chi for r in res],
                                [r.chi_se for r in res],
                                [summaries[(L, "epsilon")]["P0_midpoint_t"] for L in depths],
                                cfg.s, baseline=1.0)
    except ValueError as error:  # too few finite points: recorded, not fatal
        return {"error": str(error), "depths": depths}
    widths = [theory.curve_width(r.times, r.class_kept, 1.0 / cfg.n_classes, 1.0) for r in res]
    try:
        nu_width, nu_width_se = width_exponent(depths, widths, cfg.s)
    except ValueError:
        nu_width = nu_width_se = None
    num = lambda x: None if x is None or not np.isfinite(x) else float(x)
    return {"P0_width_10_90": [num(w) for w in widths], "nu_from_P0_width": num(nu_width),
            "nu_from_P0_width_se": num(nu_width_se),
            "observable": "chi", "method": "data collapse of (chi - 1) / peak over "
            "(eps - eps_half(L)) * b**L; nu = ln s / ln b; bootstrap error",
            "depths": depths, "nu": fit.nu, "nu_se": fit.nu_se, "growth": fit.growth,
            "growth_se": fit.growth_se, "collapse_cost": fit.cost,
            "mean_field_nu": None if mean_field is None else mean_field["nu"],
            "mean_field_growth": None if mean_field is None else float(cfg.s ** (1 / mean_field["nu"]))}


def _peak_summary(res, cfg) -> dict:
    """Where ``χ`` peaks and where ``P_0`` crosses its midpoint between 1 and chance."""
    from rhm_jax import theory

    finite = np.isfinite(res.chi)
    peak = int(np.flatnonzero(finite)[np.argmax(res.chi[finite])]) if finite.any() else None
    crossing = theory.midpoint_crossing(res.times, res.class_kept, 1.0 / cfg.n_classes, 1.0)
    step = float(np.median(np.diff(res.times))) if len(res.times) > 1 else None
    return {"chi_max": None if peak is None else float(res.chi[peak]),
            "chi_argmax_t": None if peak is None else float(res.times[peak]),
            "interior_peak": peak is not None and 0 < peak < len(res.times) - 1,
            "P0_midpoint_t": None if np.isnan(crossing) else float(crossing),
            "grid_step": step}


def _plot(results, summaries, control, times, folder) -> None:
    from rhm_jax import plotting  # noqa: F401  (sets the Agg backend)
    import matplotlib.pyplot as plt
    from rhm_jax.plotting import save_figure as _save

    processes = sorted({name for _, name in results})
    fig, axes = plt.subplots(1, len(processes), figsize=(5 * len(processes), 3.8),
                             squeeze=False)
    depths = sorted({L for L, _ in results})
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(depths)))
    for ax, name in zip(axes[0], processes):
        for color, L in zip(colors, depths):
            res = results[(L, name)]
            ax.errorbar(res.times, res.chi, yerr=res.chi_se, marker="o", ms=3, color=color,
                        label=f"L={L}")
            midpoint = summaries[(L, name)]["P0_midpoint_t"]
            if midpoint is not None:
                ax.axvline(midpoint, color=color, ls=":", lw=1)
        ax.set(xlabel="noise t (ε for the ε-process)", ylabel=r"$\chi(t)$",
               title=f"{name} (dotted: $P_0$ midpoint)")
        ax.legend(fontsize=8)
    _save(fig, folder.file("chi.png"))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    L, name = max(depths), processes[0]
    res = results[(L, name)]
    n = len(res.times)
    pick = [i for i in np.linspace(1, n - 1, min(4, n - 1)).round().astype(int)]
    for i in sorted(set(pick)):
        ax.plot(np.arange(res.tree_distance.shape[1]), res.tree_distance[i], marker="o",
                label=f"t = {res.times[i]:.3g}")
    ax.set(xlabel="tree distance h (levels to the common ancestor)", ylabel="C(h)",
           title=f"{name}, L={L}")
    ax.legend(fontsize=8)
    _save(fig, folder.file("correlations.png"))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar(control.times, control.chi, yerr=control.chi_se, marker="o", ms=3)
    ax.set(xlabel="t (ᾱ = 1 - t)", ylabel=r"$\chi(t)$",
           title="control: 1-D Gaussian random field (sign changes)")
    _save(fig, folder.file("control.png"))
