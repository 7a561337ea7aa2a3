"""``rhm-jax sample``: RHM data to ``data.npz`` (tokens, classes, latents, rules) and
``data.jsonl`` (one datum per row)."""

from __future__ import annotations

import json
import sys

from rhm_jax.cli.flags import add_alias, add_out_arg, add_rhm_args, integer_flag, make_config
from rhm_jax.cli.runtime import add_runtime_args

__all__ = ["add_parser", "run"]


def add_parser(subparsers):
    p = subparsers.add_parser("sample", help="sample RHM data to .npz and .jsonl",
                              description="Sample a grammar and data from it.")
    add_rhm_args(p)
    p.add_argument("--L", type=integer_flag("--L", 1), default=3, help="depth")
    p.add_argument("--n-data", type=integer_flag("--n-data", 1), default=1000,
                   help="number of data")
    add_alias(p, "--n", "--n-data", type=integer_flag("--n-data", 1))
    add_out_arg(p, "runs/sample")
    add_runtime_args(p, progress=False)
    p.set_defaults(func=run)
    return p


def host_bytes(cfg, n: int) -> int:
    """Host memory of ``sample``'s files: NumPy copies of everything
    :func:`~rhm_jax.sampling.sample_data` returns, and per token one list slot (8 bytes)
    and about 3 characters of JSON."""
    from rhm_jax.sampling import sample_data_bytes

    return sample_data_bytes(cfg, n) + 11 * n * cfg.d


def run(args) -> int:
    from rhm_jax.io import RunFolder, atomic_write, check_output_folder, environment
    from rhm_jax.sampling import sample_data_bytes
    from rhm_jax.validation import check_fits, format_bytes

    cfg = make_config(args, args.L)  # everything is checked before any work
    n = args.n_data
    check_output_folder(args.out, command="sample", overwrite=args.overwrite)
    device_bytes, host = sample_data_bytes(cfg, n), host_bytes(cfg, n)
    import jax
    import numpy as np

    on_cpu = jax.default_backend() == "cpu"  # device and host share one memory
    what = f"sample --n-data {n} --L {args.L} (d = {cfg.s}**{cfg.L} tokens per datum)"
    advice = "lower --n-data or --L"
    check_fits(what, device_bytes + host if on_cpu else host, host=True, advice=advice)
    if not on_cpu:
        check_fits(what, device_bytes, advice=advice)
    if device_bytes + host > 10**9:
        print(f"rhm-jax sample: about {format_bytes(device_bytes + host)} of memory for "
              f"{n} data of d = {cfg.d} tokens", file=sys.stderr)
    with RunFolder(args.out, command="sample", overwrite=args.overwrite) as folder:
        from rhm_jax import sample_data, sample_grammar

        grammar_key, data_key = jax.random.split(jax.random.key(args.seed))
        grammar = sample_grammar(grammar_key, cfg)
        data = sample_data(data_key, grammar, n, return_latents=True)
        config = {"v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L, "n_classes": cfg.n_classes,
                  "seed": args.seed}
        with atomic_write(folder.file("data.npz"), "wb") as handle:
            arrays = {f"rules_{l}": np.asarray(r) for l, r in enumerate(grammar.rules)}
            arrays.update({f"latents_{l}": np.asarray(x) for l, x in enumerate(data.latents)})
            np.savez_compressed(handle, tokens=np.asarray(data.tokens),
                                classes=np.asarray(data.classes), **arrays)
        with atomic_write(folder.file("data.jsonl")) as handle:
            tokens, classes = np.asarray(data.tokens), np.asarray(data.classes)
            for row, label in zip(tokens, classes.tolist()):  # one row at a time
                handle.write(json.dumps({**config, "class": label, "tokens": row.tolist()}) + "\n")
        out = folder.commit({"config": config, "n": n, "P_max": str(cfg.P_max),
                             "log_P_max": cfg.log_P_max, "environment": environment()})
    print(f"wrote {n} data of {cfg} to {out}/data.npz and {out}/data.jsonl")
    return 0
