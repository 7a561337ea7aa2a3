"""Checks that the committed outputs of the notebooks are not stale (and refreshes them).

Every notebook prints its key numbers as lines

    RESULT <name> = <value> ± <standard error>

(``report(...)`` in its parameter cell; ``± 0`` means exact up to float rounding). This
script re-executes each notebook at full size — in a temporary copy, with ``CI`` and
``RHM_JAX_SMOKE`` removed from the environment — and compares the RESULT lines of the fresh
run with those in the committed outputs: two values agree when

    |fresh - committed| <= SIGMAS * sqrt(se_fresh**2 + se_committed**2) + 1e-4 * |committed| + 1e-6.

A name present in one run and not in the other is a mismatch too. It exits with status 1 on
any mismatch or error, and keeps the executed copy for inspection.

``--write`` refreshes instead: it writes each executed notebook over the committed one (run
it after changing a notebook or the library, then commit the notebooks). Not part of CI:
at full size it takes minutes. It needs ``nbclient`` and ``ipykernel`` in the environment
that runs it (``pip install nbclient ipykernel``).

Usage (from the repository root)::

    python notebooks/check_outputs.py                      # all notebooks/*.ipynb
    python notebooks/check_outputs.py notebooks/01_quickstart.ipynb
    python notebooks/check_outputs.py --write              # refresh the committed outputs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import sys
import tempfile
import time

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
RESULT_LINE = re.compile(
    r"^RESULT (?P<name>\S+) = (?P<value>[-+0-9.eEinfaINF]+) ± (?P<se>[-+0-9.eEinfaINF]+)\s*$")
SMOKE_VARIABLES = ("CI", "RHM_JAX_SMOKE")


def parse_results(text: str) -> dict[str, tuple[float, float]]:
    """``{name: (value, se)}`` from the RESULT lines in ``text``; a repeated name is an error.

    Examples:
      >>> parse_results("x\\nRESULT eps_half_L3 = 0.6575 ± 0.0011\\nRESULT p = 1 ± 0\\n")
      {'eps_half_L3': (0.6575, 0.0011), 'p': (1.0, 0.0)}
    """
    results = {}
    for line in text.splitlines():
        if not line.startswith("RESULT"):
            continue
        match = RESULT_LINE.match(line)
        if match is None:
            raise ValueError(f"malformed RESULT line {line!r}: expected 'RESULT name = value ± se'")
        name = match["name"]
        if name in results:
            raise ValueError(f"RESULT {name} is printed twice")
        results[name] = (float(match["value"]), float(match["se"]))
    return results


def stdout_text(notebook: dict) -> str:
    """Everything the code cells of a notebook (nbformat 4 JSON) printed to stdout."""
    parts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text = output["text"]
                parts.append(text if isinstance(text, str) else "".join(text))
    return "".join(parts)


def compare(committed: dict, fresh: dict, sigmas: float) -> list[str]:
    """Lines describing every disagreement between two ``parse_results`` dicts."""
    problems = []
    for name in sorted(committed.keys() | fresh.keys()):
        if name not in fresh:
            problems.append(f"{name}: in the committed outputs but not printed by the fresh run")
            continue
        if name not in committed:
            problems.append(f"{name}: printed by the fresh run but not in the committed outputs")
            continue
        (old, old_se), (new, new_se) = committed[name], fresh[name]
        tolerance = sigmas * math.hypot(old_se, new_se) + 1e-4 * abs(old) + 1e-6
        if not abs(new - old) <= tolerance:
            problems.append(f"{name}: committed {old:.6g} ± {old_se:.2g}, fresh {new:.6g} ± "
                            f"{new_se:.2g} (|difference| {abs(new - old):.3g} > {tolerance:.3g})")
    return problems


def execute(path: pathlib.Path, timeout: int, smoke: bool):
    """Runs a notebook in a fresh kernel (cwd = its folder); returns (notebook, error or None)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    saved = {name: os.environ.pop(name, None) for name in SMOKE_VARIABLES}
    if smoke:
        os.environ["RHM_JAX_SMOKE"] = "1"
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
        error = None
    except CellExecutionError as exc:
        error = exc
    finally:
        os.environ.pop("RHM_JAX_SMOKE", None)
        for name, value in saved.items():
            if value is not None:
                os.environ[name] = value
    notebook.metadata.pop("widgets", None)
    return notebook, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path,
                        help="notebooks to check (default: every notebooks/*.ipynb)")
    parser.add_argument("--write", action="store_true",
                        help="write each executed notebook over the committed one (refresh)")
    parser.add_argument("--sigmas", type=float, default=4.0,
                        help="tolerance in combined standard errors (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds allowed per cell (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="execute in smoke mode (a quick run of the machinery; its "
                             "numbers are not comparable with full-size outputs)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    import nbformat

    failed = False
    for path in paths:
        path = path.resolve()
        committed = json.loads(path.read_text())
        start = time.time()
        executed, error = execute(path, args.timeout, args.smoke)
        seconds = time.time() - start
        if error is not None:
            failed = True
            kept = pathlib.Path(tempfile.mkdtemp(prefix="rhm_jax_nb_")) / path.name
            nbformat.write(executed, kept)
            print(f"FAIL {path.name}: execution failed after {seconds:.0f} s "
                  f"(executed copy: {kept})\n{error}")
            continue
        if args.write:
            nbformat.write(executed, path)
            size = path.stat().st_size / 1e3
            print(f"wrote {path.name}: executed in {seconds:.0f} s, {size:.0f} kB, "
                  f"{len(parse_results(stdout_text(executed)))} RESULT lines")
            continue
        problems = compare(parse_results(stdout_text(committed)),
                           parse_results(stdout_text(executed)), args.sigmas)
        if not parse_results(stdout_text(committed)):
            problems.append("the committed notebook prints no RESULT lines")
        if problems:
            failed = True
            kept = pathlib.Path(tempfile.mkdtemp(prefix="rhm_jax_nb_")) / path.name
            nbformat.write(executed, kept)
            print(f"STALE {path.name} ({seconds:.0f} s; fresh run kept at {kept}):")
            for line in problems:
                print(f"  {line}")
        else:
            count = len(parse_results(stdout_text(executed)))
            print(f"OK {path.name}: {count} RESULT lines agree with the committed outputs "
                  f"({seconds:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
