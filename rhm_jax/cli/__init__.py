"""Command line: ``rhm-jax <command>`` (also ``python -m rhm_jax``).

Each command is one module of this package with ``add_parser(subparsers)`` and ``run(args)``
(flags plus orchestration; what it computes lives in the library). The dispatcher imports
its commands; no command imports another. Shared flag types are in
:mod:`rhm_jax.cli.flags`, the devices and compilation cache in :mod:`rhm_jax.cli.runtime`.

Every bad flag is refused before any computation with one line naming the flag, its value
and the rule (``rhm-jax phase: error: --times = 0 must be ...``), exit code 2, no
traceback. Output folders follow one rule (:func:`rhm_jax.io.check_output_folder`): a new or
empty folder is written; an earlier run of the same command is replaced, whole and only
when the new run completes, with ``--overwrite``; anything else is refused.
"""

from __future__ import annotations

import sys

from rhm_jax.cli import chi, compare, flags, images, phase, runtime, sample, train

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands, in the order ``rhm-jax --help`` lists them.
COMMANDS = (sample, phase, chi, train, compare, images)


def build_parser() -> flags.Parser:
    """The ``rhm-jax`` parser with every command's subparser."""
    from rhm_jax import __version__

    parser = flags.Parser(
        prog="rhm-jax",
        description="Random Hierarchy Model: sampling, noising, exact BP, the phase "
                    "transition, correlated changes, and trained denoisers against BP.")
    parser.add_argument("--version", action="version", version=f"rhm-jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Runs ``rhm-jax`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    devices = getattr(args, "devices", None)
    if devices is None:  # an experiment file may name its device count
        devices = (getattr(args, "config", None) or {}).get("devices")
    runtime.set_devices(devices)
    runtime.enable_compile_cache(runtime.compile_cache_dir(args.no_compile_cache))
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:  # configuration errors: a clean message
        parser.exit(2, f"rhm-jax {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
