"""The command line's flag types and shared flags: one vocabulary for every command.

Every flag is checked while the command line is parsed, before any computation: a bad
value ends the command with one line naming the flag, its value and the rule it broke
(``rhm-jax phase: error: --times = '0' must be ...``), exit code 2.

The words are the Python API's: process names are the keys of
:data:`rhm_jax.noise.PROCESSES` in every command; counts of draws are ``--n-data``,
``--n-samples``, ``--n-starts``, ``--n-trajectories``, ``--n-grammars`` (the API's
``n_data``, ``n_samples``, ...); a training run's sets are ``--train-size`` and
``--test-size`` (:class:`~rhm_jax.denoise.TrainConfig`'s fields); ``--L`` takes a comma
list wherever several depths make sense; ``--times`` means the same in every command
(:func:`times_flag`). Older spellings are accepted as hidden aliases (:func:`add_alias`).
"""

from __future__ import annotations

import argparse
import re
from typing import NamedTuple

import numpy as np

__all__ = ["MAX_SEED", "Parser", "HelpFormatter", "integer_flag", "integer_list_flag",
           "float_flag", "TimeGrid", "even_times", "rounded_times", "times_flag",
           "processes_flag", "add_alias", "add_rhm_args", "add_sweep_args", "add_out_arg",
           "make_config"]

#: Seeds are 32-bit: with JAX's default 32-bit integers, larger ones alias smaller ones.
MAX_SEED = 2**32 - 1


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every flag's default (``(default: 3)``) unless its text already
    says it, and keeps descriptions as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or \
                action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) in the ``--flag = value`` style."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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


def float_flag(flag: str, minimum: float | None = None, maximum: float | None = None,
               *, open_below: bool = False):
    """An argparse ``type`` for a finite float in ``[minimum, maximum]`` (``(minimum, ...``
    with ``open_below``)."""
    def parse(text: str) -> float:
        low = "" if minimum is None else (f" > {minimum}" if open_below else f" >= {minimum}")
        high = "" if maximum is None else f" <= {maximum}"
        rule = "a finite number" + (low + (" and" if low and high else "") + high)
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} = {text!r} must be {rule}") from None
        bad_low = minimum is not None and (value <= minimum if open_below else value < minimum)
        if not np.isfinite(value) or bad_low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{flag} = {text.strip()} must be {rule}")
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


# ---- noise levels ---------------------------------------------------------------------------
class TimeGrid(NamedTuple):
    """The noise levels of ``--times`` and the text they were given as."""

    values: list
    given: str | None


def rounded_times(values) -> list:
    """Times rounded to 12 significant digits: ``0.15``, not ``0.15000000000000002``."""
    return [float(f"{x:.12g}") for x in values]


def even_times(start: float, stop: float, num: int) -> list:
    """``num`` evenly spaced times from ``start`` to ``stop``, rounded (:func:`rounded_times`)."""
    return rounded_times(np.linspace(start, stop, num))


TIMES_RULE = ("a count N >= 1 (the N times 1/N, 2/N, ..., 1), a grid START:STOP:N with "
              "0 <= START < STOP <= 1, or a comma list of increasing times in [0, 1]")

#: The help text of ``--times``, the same in every command.
TIMES_HELP = ("noise levels: a count N (the N times 1/N, 2/N, ..., 1), a grid START:STOP:N "
              "(N even points from START to STOP, both included, e.g. 0:1:21 or 0.6:0.8:41) "
              "or a comma list such as 0.1,0.3,0.5")


def times_flag(text: str) -> TimeGrid:
    """``--times``: a count ``N`` (``1/N, ..., 1``), a grid ``START:STOP:N`` or a list.

    One meaning in every command: a count never includes ``t = 0`` (nothing noised), a grid
    includes both of its ends, a list is taken as written.

    Examples:
      >>> times_flag("4").values
      [0.25, 0.5, 0.75, 1.0]
      >>> times_flag("0:1:5").values
      [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    def fail(rule=TIMES_RULE):
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
            return TimeGrid(rounded_times(np.arange(1, num + 1) / num), stripped)
        values = [float(part) for part in stripped.split(",")]
    except ValueError:
        fail()
    if not all(0 <= t <= 1 for t in values) or any(b <= a for a, b in zip(values, values[1:])):
        fail("a comma list of increasing times in [0, 1]")
    return TimeGrid(values, stripped)


def processes_flag(text: str) -> list:
    """``--process``: distinct names from :data:`rhm_jax.noise.PROCESSES`, comma-separated."""
    from rhm_jax.noise import PROCESSES

    names = [part.strip() for part in text.split(",")]
    rule = f"a comma-separated list of distinct processes from {', '.join(PROCESSES)}"
    if not text.strip() or any(name not in PROCESSES for name in names) or (
            len(set(names)) != len(names)):
        unknown = [name for name in names if name not in PROCESSES]
        detail = f" ({unknown[0]!r} is not one)" if unknown and text.strip() else ""
        raise argparse.ArgumentTypeError(f"--process = {text!r} must be {rule}{detail}")
    return names


# ---- shared flags ---------------------------------------------------------------------------
def add_alias(parser, old: str, new: str, **kwargs) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same destination, not in ``--help``).

    ``kwargs`` are those of ``new`` (its ``type``, ``action``); the alias never sets a
    default, so the new flag's default stands.
    """
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                        **kwargs)


def add_rhm_args(parser, *, v: int = 32, m: int = 8, s: int = 2) -> None:
    """The model's flags (``--v --m --s --n-classes``) and ``--seed``."""
    parser.add_argument("--v", type=integer_flag("--v", 2), default=v, help="vocabulary size")
    parser.add_argument("--m", type=integer_flag("--m", 1), default=m, help="rules per symbol")
    parser.add_argument("--s", type=integer_flag("--s", 2), default=s, help="branching factor")
    parser.add_argument("--n-classes", type=integer_flag("--n-classes", 1), default=None,
                        help="number of classes (default: v)")
    parser.add_argument("--seed", type=integer_flag("--seed", 0, MAX_SEED), default=0,
                        help="PRNG seed in [0, 2**32 - 1]")


def add_sweep_args(parser, *, depths, quick_depths, processes: str) -> None:
    """``--L`` (a comma list of depths) and ``--process`` (a comma list of noise processes,
    also spelled ``--processes``) of the commands that sweep them."""
    parser.add_argument("--L", default=None,
                        type=integer_list_flag("--L", 1, ",".join(map(str, depths))),
                        help=f"comma-separated depths (default: {','.join(map(str, depths))}; "
                             f"quick {','.join(map(str, quick_depths))})")
    parser.add_argument("--process", default=processes, type=processes_flag,
                        help="comma-separated noise processes (default: %(default)s)")
    add_alias(parser, "--processes", "--process", type=processes_flag)


def add_out_arg(parser, default: str, *, what: str = "output folder") -> None:
    """``--out`` and ``--overwrite``: the one rule of every command's output folder.

    A new or empty folder is written; an existing run folder is replaced only with
    ``--overwrite`` and only by the command that wrote it; anything else is refused.
    """
    parser.add_argument("--out", default=default,
                        help=f"{what}; an existing one is replaced only with --overwrite, "
                             f"when the new run completes (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out written by this command")


def make_config(args, L: int):
    """The :class:`~rhm_jax.config.RHMConfig` of the flags, its error naming them."""
    from rhm_jax import RHMConfig

    try:
        return RHMConfig(v=args.v, m=args.m, s=args.s, L=L, n_classes=args.n_classes)
    except ValueError as err:
        classes = "" if args.n_classes is None else f" --n-classes {args.n_classes}"
        raise ValueError(f"--v {args.v} --m {args.m} --s {args.s} --L {L}{classes}: {err}") from None
