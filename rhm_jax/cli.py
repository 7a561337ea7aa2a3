"""Command line: ``rhm-jax <command>`` (also ``python -m rhm_jax``)."""

from __future__ import annotations

import argparse
import os
import sys


def _add_config_args(parser, *, L_default: int | str = 3, v=32, m=8, s=2):
    parser.add_argument("--v", type=int, default=v, help="vocabulary size (default %(default)s)")
    parser.add_argument("--m", type=int, default=m, help="rules per symbol (default %(default)s)")
    parser.add_argument("--s", type=int, default=s, help="branching factor (default %(default)s)")
    parser.add_argument("--n-classes", type=int, default=None, help="number of classes (default v)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default %(default)s)")
    parser.add_argument("--devices", type=int, default=None,
                        help="emulate N CPU devices (sets XLA_FLAGS before JAX starts)")


def _set_devices(n):
    if n is None:
        return
    if n < 1:
        raise SystemExit(f"--devices = {n} must be >= 1")
    if "jax" in sys.modules:
        import jax
        jax.config.update("jax_num_cpu_devices", n)
    else:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _cmd_sample(args) -> int:
    import jax
    import numpy as np

    from rhm_jax import RHMConfig, sample_data, sample_grammar
    from rhm_jax.io import atomic_write, environment, write_json

    cfg = RHMConfig(v=args.v, m=args.m, s=args.s, L=args.L, n_classes=args.n_classes)
    grammar_key, data_key = jax.random.split(jax.random.key(args.seed))
    grammar = sample_grammar(grammar_key, cfg)
    data = sample_data(data_key, grammar, args.n, return_latents=True)
    out = args.out
    os.makedirs(out, exist_ok=True)
    config = {"v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L, "n_classes": cfg.n_classes,
              "seed": args.seed}
    with atomic_write(os.path.join(out, "data.npz"), "wb") as handle:
        arrays = {f"rules_{l}": np.asarray(r) for l, r in enumerate(grammar.rules)}
        arrays.update({f"latents_{l}": np.asarray(x) for l, x in enumerate(data.latents)})
        np.savez_compressed(handle, tokens=np.asarray(data.tokens),
                            classes=np.asarray(data.classes), **arrays)
    with atomic_write(os.path.join(out, "data.jsonl")) as handle:
        import json
        for tokens, label in zip(np.asarray(data.tokens).tolist(), np.asarray(data.classes).tolist()):
            handle.write(json.dumps({**config, "class": label, "tokens": tokens}) + "\n")
    write_json(os.path.join(out, "meta.json"),
               {"command": "sample", "config": config, "n": args.n, "P_max": str(cfg.P_max),
                "log_P_max": cfg.log_P_max, "environment": environment()})
    print(f"wrote {args.n} data of {cfg} to {out}/data.npz and {out}/data.jsonl")
    return 0


#: Modules that each add one ``rhm-jax`` command (the command line grows by adding a file).
COMMAND_MODULES = ("phase_cli", "train_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rhm-jax",
        description="Random Hierarchy Model: sampling, noising, exact BP and the phase transition.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sample = sub.add_parser("sample", help="sample RHM data to .npz and .jsonl")
    _add_config_args(sample)
    sample.add_argument("--L", type=int, default=3, help="depth (default %(default)s)")
    sample.add_argument("--n", type=int, default=1000, help="number of data (default %(default)s)")
    sample.add_argument("--out", default="runs/sample", help="output folder (default %(default)s)")
    sample.set_defaults(func=_cmd_sample)
    import importlib

    # Each command lives in its own module with an ``add_parser(subparsers, add_config_args)``.
    for name in COMMAND_MODULES:
        importlib.import_module(f"rhm_jax.{name}").add_parser(sub, _add_config_args)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _set_devices(getattr(args, "devices", None))
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:  # configuration errors: a clean message
        parser.exit(2, f"rhm-jax {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
