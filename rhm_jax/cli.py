"""Command line: ``rhm-jax <command>`` (also ``python -m rhm_jax``).

Every bad flag is refused before any computation with one line naming the flag, its value
and the rule (``rhm-jax phase: error: --times = 0 must be ...``), exit code 2, no
traceback. Flag types for the commands live here (:func:`integer_flag`, ...); output
folders are :class:`rhm_jax.io.RunFolder` s, checked before any work and replaced whole
when a run completes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

#: Seeds are 32-bit: with JAX's default 32-bit integers, larger ones alias smaller ones.
MAX_SEED = 2**32 - 1


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) in the ``--flag = value`` style."""

    def error(self, message):
        # "argument --L: --L = ',,,' must be ..." -> "--L = ',,,' must be ..."
        message = re.sub(r"^argument [^:]+: (?=--)", "", message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer_flag(flag: str, minimum: int | None = None, maximum: int | None = None):
    """An argparse ``type`` for an integer flag in ``[minimum, maximum]``."""
    def parse(text: str) -> int:
        rule = ("an integer" + (f" >= {minimum}" if minimum is not None and maximum is None else "")
                + (f" in [{minimum}, {maximum}]" if None not in (minimum, maximum) else ""))
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r} must be {rule}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{flag} = {value} must be {rule}")
        return value

    parse.__name__ = flag
    return parse


def integer_list_flag(flag: str, minimum: int = 1, example: str = "3,5,7"):
    """An argparse ``type`` for comma-separated distinct integers ``>= minimum``, sorted."""
    def parse(text: str) -> list[int]:
        parts = [part.strip() for part in text.split(",")]
        rule = f"a comma-separated list of distinct integers >= {minimum}, e.g. {example}"
        try:
            values = [int(part) for part in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r} must be {rule}") from None
        if any(v < minimum for v in values) or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{flag} = {text!r} must be {rule}")
        return sorted(values)

    parse.__name__ = flag
    return parse


def _add_config_args(parser, *, L_default: int | str = 3, v=32, m=8, s=2):
    parser.add_argument("--v", type=integer_flag("--v", 2), default=v,
                        help="vocabulary size (default %(default)s)")
    parser.add_argument("--m", type=integer_flag("--m", 1), default=m,
                        help="rules per symbol (default %(default)s)")
    parser.add_argument("--s", type=integer_flag("--s", 2), default=s,
                        help="branching factor (default %(default)s)")
    parser.add_argument("--n-classes", type=integer_flag("--n-classes", 1), default=None,
                        help="number of classes (default v)")
    parser.add_argument("--seed", type=integer_flag("--seed", 0, MAX_SEED), default=0,
                        help="PRNG seed in [0, 2**32 - 1] (default %(default)s)")
    parser.add_argument("--devices", type=integer_flag("--devices", 1), default=None,
                        help="emulate N CPU devices (sets XLA_FLAGS before JAX starts)")


def make_config(args, L: int):
    """The :class:`~rhm_jax.config.RHMConfig` of the flags, its error naming them."""
    from rhm_jax import RHMConfig

    try:
        return RHMConfig(v=args.v, m=args.m, s=args.s, L=L, n_classes=args.n_classes)
    except ValueError as err:
        classes = "" if args.n_classes is None else f" --n-classes {args.n_classes}"
        raise ValueError(f"--v {args.v} --m {args.m} --s {args.s} --L {L}{classes}: {err}") from None


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


#: Environment variable for the CLI's persistent compilation cache: a folder, or ``0`` /
#: ``off`` to turn the cache off (the ``--no-compile-cache`` flag does the same).
CACHE_ENV = "RHM_JAX_COMPILE_CACHE"


def compile_cache_dir(disabled: bool = False) -> str | None:
    """The folder of the CLI's persistent XLA compilation cache, or ``None`` for no cache.

    Every command compiles the same programs on every run (one BP program per depth for
    ``phase``), so the CLI keeps XLA's compiled programs across runs in a user-level folder:
    ``$RHM_JAX_COMPILE_CACHE`` if set (``0``/``off``/``false``/``no`` turn it off), else
    ``$XDG_CACHE_HOME/rhm_jax/jax`` (``~/.cache/rhm_jax/jax``). A cache folder already
    configured (``JAX_COMPILATION_CACHE_DIR``, or ``jax_compilation_cache_dir`` set by the
    calling program) is kept. Results do not
    depend on the cache: a cached program is the same compiled program.
    """
    if disabled:
        return None
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        if value.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        return os.path.abspath(os.path.expanduser(value))
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rhm_jax", "jax")


def _enable_compile_cache(folder: str | None) -> None:
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:  # a read-only home must not stop the job: run uncached
        print(f"rhm-jax: compilation cache off ({folder}: {err.strerror}); set "
              f"{CACHE_ENV} to a writable folder", file=sys.stderr)
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # already configured (by the user or a caller)
        return
    jax.config.update("jax_compilation_cache_dir", folder)


def _sample_host_bytes(cfg, n: int) -> int:
    """Host memory of ``sample``'s files: NumPy copies of everything :func:`sample_data`
    returns, and per token one list slot (8 bytes) and about 3 characters of JSON."""
    from rhm_jax.sampling import sample_data_bytes

    return sample_data_bytes(cfg, n) + 11 * n * cfg.d


def _cmd_sample(args) -> int:
    from rhm_jax.validation import check_fits, format_bytes
    from rhm_jax.io import RunFolder, environment
    from rhm_jax.sampling import sample_data_bytes

    from rhm_jax.io import check_output_folder

    cfg = make_config(args, args.L)  # everything is checked before any work
    check_output_folder(args.out)
    device_bytes, host_bytes = sample_data_bytes(cfg, args.n), _sample_host_bytes(cfg, args.n)
    import jax
    import numpy as np

    on_cpu = jax.default_backend() == "cpu"  # device and host share one memory
    what = f"sample --n {args.n} --L {args.L} (d = {cfg.s}**{cfg.L} tokens per datum)"
    advice = "lower --n or --L"
    check_fits(what, device_bytes + host_bytes if on_cpu else host_bytes, host=True,
               advice=advice)
    if not on_cpu:
        check_fits(what, device_bytes, advice=advice)
    if device_bytes + host_bytes > 10**9:
        print(f"rhm-jax sample: about {format_bytes(device_bytes + host_bytes)} of memory for "
              f"{args.n} data of d = {cfg.d} tokens", file=sys.stderr)
    with RunFolder(args.out, command="sample") as folder:
        from rhm_jax import sample_data, sample_grammar
        from rhm_jax.io import atomic_write

        grammar_key, data_key = jax.random.split(jax.random.key(args.seed))
        grammar = sample_grammar(grammar_key, cfg)
        data = sample_data(data_key, grammar, args.n, return_latents=True)
        config = {"v": cfg.v, "m": cfg.m, "s": cfg.s, "L": cfg.L, "n_classes": cfg.n_classes,
                  "seed": args.seed}
        with atomic_write(folder.file("data.npz"), "wb") as handle:
            arrays = {f"rules_{l}": np.asarray(r) for l, r in enumerate(grammar.rules)}
            arrays.update({f"latents_{l}": np.asarray(x) for l, x in enumerate(data.latents)})
            np.savez_compressed(handle, tokens=np.asarray(data.tokens),
                                classes=np.asarray(data.classes), **arrays)
        with atomic_write(folder.file("data.jsonl")) as handle:
            import json
            tokens, classes = np.asarray(data.tokens), np.asarray(data.classes)
            for row, label in zip(tokens, classes.tolist()):  # one row at a time
                handle.write(json.dumps({**config, "class": label, "tokens": row.tolist()}) + "\n")
        out = folder.commit({"config": config, "n": args.n, "P_max": str(cfg.P_max),
                             "log_P_max": cfg.log_P_max, "environment": environment()})
    print(f"wrote {args.n} data of {cfg} to {out}/data.npz and {out}/data.jsonl")
    return 0


#: Modules that each add one ``rhm-jax`` command (the command line grows by adding a file).
COMMAND_MODULES = ("phase_cli", "train_cli", "compare_cli", "chi_cli")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rhm-jax",
        description="Random Hierarchy Model: sampling, noising, exact BP and the phase transition.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sample = sub.add_parser("sample", help="sample RHM data to .npz and .jsonl")
    _add_config_args(sample)
    sample.add_argument("--L", type=integer_flag("--L", 1), default=3,
                        help="depth (default %(default)s)")
    sample.add_argument("--n", type=integer_flag("--n", 1), default=1000,
                        help="number of data (default %(default)s)")
    sample.add_argument("--out", default="runs/sample",
                        help="output folder, replaced whole when the run completes "
                             "(default %(default)s)")
    sample.set_defaults(func=_cmd_sample)
    import importlib

    # Each command lives in its own module with an ``add_parser(subparsers, add_config_args)``.
    for name in COMMAND_MODULES:
        importlib.import_module(f"rhm_jax.{name}").add_parser(sub, _add_config_args)
    for command in sub.choices.values():
        command.add_argument(
            "--no-compile-cache", action="store_true",
            help=f"do not keep compiled programs across runs (default: kept in "
                 f"~/.cache/rhm_jax/jax, or ${CACHE_ENV}; {CACHE_ENV}=0 also turns it off)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _set_devices(getattr(args, "devices", None))
    _enable_compile_cache(compile_cache_dir(args.no_compile_cache))
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:  # configuration errors: a clean message
        parser.exit(2, f"rhm-jax {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
