"""``rhm-jax chi``: correlated changes and the susceptibility ``χ(t)``.

Writes into ``--out``: ``results.jsonl`` (one row per depth × process × noise level, from
:func:`rhm_jax.correlations.to_rows`; plus the Gaussian-random-field control as process
``"grf"``), ``summary.json`` (per depth and process, :func:`~rhm_jax.correlations.peak_summary`;
the mean-field ``ν`` and, with two or more depths of the ε-process, the fitted ``ν`` of
:func:`~rhm_jax.correlations.nu_fits`), ``meta.json`` and the figures ``chi.png``,
``correlations.png`` and ``control.png``. Without ``--times`` (and ``--quick``) each depth and
process gets its own grid around its class transition
(:func:`~rhm_jax.correlations.transition_times`). Theory: ``docs/theory/correlations.md``.
"""

from __future__ import annotations

import time

import numpy as np

from rhm_jax.cli.flags import (TIMES_HELP, TimeGrid, add_alias, add_out_arg, add_rhm_args,
                               add_sweep_args, even_times, float_flag, integer_flag,
                               make_config, times_flag)
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run"]

DEFAULT_DEPTHS = (5, 7, 9)
QUICK_DEPTHS = (3, 4)
#: Entries of ``C(r)`` by position written per row (the rest are in the tree sums).
MAX_POSITIONS = 512


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "chi", help="correlated changes: C_ij, C(r), susceptibility chi(t), the GRF control",
        description="From each start x0, many forward-backward trajectories (own noise, exact "
                    "BP draw): the connected correlations of the changed tokens and their "
                    "susceptibility against noise, per depth and process.")
    add_rhm_args(parser)
    add_sweep_args(parser, depths=DEFAULT_DEPTHS, quick_depths=QUICK_DEPTHS,
                   processes="epsilon,masking")
    parser.add_argument("--times", type=times_flag, default=None,
                        help=f"{TIMES_HELP}; the same for every run (default: per depth and "
                             "process, 15 around the P_0 drop found by a pilot run; quick "
                             "0:1:5)")
    parser.add_argument("--n-starts", type=integer_flag("--n-starts", 2), default=None,
                        help="starts x0 per depth and process (default: 64; quick 8)")
    add_alias(parser, "--starts", "--n-starts", type=integer_flag("--n-starts", 2))
    parser.add_argument("--n-trajectories", type=integer_flag("--n-trajectories", 2),
                        default=None, help="trajectories per start (default: 64; quick 8)")
    add_alias(parser, "--trajectories", "--n-trajectories",
              type=integer_flag("--n-trajectories", 2))
    parser.add_argument("--grf-exponent", type=float_flag("--grf-exponent", 0.0), default=2.0,
                        help="control: power spectrum exponent a of P_k ~ k**-a")
    parser.add_argument("--grf-d", type=integer_flag("--grf-d", 2), default=None,
                        help="control: field length, a power of 2 (default: 256; quick 64)")
    add_out_arg(parser, "runs/chi")
    parser.add_argument("--quick", action="store_true", help="tiny run for CI and smoke tests")
    add_runtime_args(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    from rhm_jax.io import RunFolder, check_output_folder
    from rhm_jax.noise import make_process

    depths = args.L or list(QUICK_DEPTHS if args.quick else DEFAULT_DEPTHS)
    grid_points = 5 if args.quick else 15
    times_grid = args.times or TimeGrid(even_times(0.0, 1.0, grid_points), None)
    auto_grid = args.times is None and not args.quick  # --quick: even, no pilot runs
    starts = args.n_starts or (8 if args.quick else 64)
    trajectories = args.n_trajectories or (8 if args.quick else 64)
    grf_d = args.grf_d or (64 if args.quick else 256)
    if grf_d & (grf_d - 1):
        raise ValueError(f"--grf-d = {grf_d} must be a power of 2")
    configs = [make_config(args, L) for L in depths]
    for name in args.process:
        make_process(name, configs[0])
    check_output_folder(args.out, command="chi", overwrite=args.overwrite)
    folder = RunFolder(args.out, command="chi", overwrite=args.overwrite)
    try:
        return _sweep(args, folder, configs, times_grid, starts, trajectories, grf_d,
                      grid_points if auto_grid else None)
    except BaseException:
        folder.discard()
        raise


def _sweep(args, folder, configs, times_grid, starts, trajectories, grf_d, grid_points) -> int:
    import jax

    from rhm_jax import sample_grammar, theory
    from rhm_jax.correlations import (change_correlations, grf_change_correlations, nu_fits,
                                      peak_summary, to_rows, transition_times)
    from rhm_jax.io import environment, write_json, write_jsonl
    from rhm_jax.noise import make_process
    from rhm_jax.plotting.correlations import plot_chi, plot_control, plot_tree_correlations
    from rhm_jax.sharding import data_mesh

    start = time.time()
    times = np.asarray(times_grid.values, np.float64)
    tasks = [(cfg, name) for cfg in configs for name in args.process]
    if not args.no_progress:
        from tqdm.auto import tqdm
        tasks = tqdm(tasks, desc="chi", unit="run")
    rows, summary, summaries, results = [], {}, {}, {}
    mesh, root = data_mesh(), jax.random.key(args.seed)
    for cfg, name in tasks:
        grammar_key, data_key = jax.random.split(jax.random.fold_in(root, cfg.L))
        grammar = sample_grammar(grammar_key, cfg)
        process = make_process(name, cfg)
        run_times = times if grid_points is None else transition_times(
            jax.random.fold_in(data_key, 1), grammar, process, grid_points, mesh)
        res = change_correlations(data_key, grammar, process, run_times, starts,
                                  trajectories, mesh=mesh, progress=not args.no_progress)
        results[(cfg.L, name)] = res
        rows.extend(to_rows(res, MAX_POSITIONS, v=cfg.v, m=cfg.m, s=cfg.s, L=cfg.L,
                            process=name, seed=args.seed))
        summaries[(cfg.L, name)] = summary[f"{name} L={cfg.L}"] = peak_summary(res,
                                                                              cfg.n_classes)
    control = grf_change_correlations(jax.random.fold_in(root, 10**6), grf_d, args.grf_exponent,
                                      times, starts, trajectories)
    rows.extend(to_rows(control, MAX_POSITIONS, process="grf", d=grf_d,
                        exponent=args.grf_exponent, seed=args.seed))
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
    summary["nu_fit"] = nu_fits(results, summaries, cfg0.s, cfg0.n_classes,
                                None if mean_field is None else mean_field["nu"])
    write_jsonl(folder.file("results.jsonl"), rows)
    write_json(folder.file("summary.json"), summary)
    plot_chi(results, summaries, folder.file("chi.png"))
    L, name = max(c.L for c in configs), sorted(args.process)[0]
    plot_tree_correlations(results[(L, name)], folder.file("correlations.png"),
                           title=f"{name}, L={L}")
    plot_control(control, folder.file("control.png"))
    wall = time.time() - start
    out = folder.commit({
        "config": {"v": cfg0.v, "m": cfg0.m, "s": cfg0.s, "n_classes": cfg0.n_classes,
                   "L": [c.L for c in configs], "processes": args.process,
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
