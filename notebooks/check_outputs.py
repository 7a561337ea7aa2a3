"""Runs the tutorial notebooks through a Jupyter kernel: checks that their committed outputs
are not stale, or refreshes them.

Each notebook is a pair of files: ``NN_name.py``, the source (jupytext's percent format: a
``# %%`` line opens a code cell, ``# %% [markdown]`` a markdown cell), and ``NN_name.ipynb``,
the same cells with the outputs of a full-size run. This script executes the cells of the
``.py`` — combined with the ``.ipynb`` by jupytext, which keeps the notebook's metadata and
cell ids — in a fresh kernel started with the Python that runs this script, from the
notebooks' folder, with ``CI`` and ``RHM_JAX_SMOKE`` removed from the kernel's environment
and the repository root first on its ``PYTHONPATH`` (so the kernel imports this checkout's
``rhm_jax``). Figures are rendered by the kernel's inline backend, as in a user's Jupyter.

Every notebook prints its key numbers as lines

    RESULT <name> = <value> ± <standard error>

(``report(...)`` in its parameter cell; ``± 0`` means exact up to float rounding). Without
``--write`` the script compares the RESULT lines of the fresh run with those in the
committed ``.ipynb``: two values agree when

    |fresh - committed| <= SIGMAS * sqrt(se_fresh**2 + se_committed**2) + 1e-4 * |committed| + 1e-6.

A name present in one run and not in the other is a mismatch, and so is a ``.ipynb`` whose
cells differ from its ``.py``. It exits with status 1 on any mismatch or error, and keeps
the executed copy for inspection.

``--write`` refreshes instead: it writes each executed notebook over the committed
``.ipynb`` (run it after changing a notebook or the library, then commit both files). Not
part of CI: at full size it takes minutes per notebook. It needs ``jupytext``, ``nbclient``
and ``ipykernel`` in the environment that runs it.

Usage (from the repository root)::

    python notebooks/check_outputs.py                      # every notebook
    python notebooks/check_outputs.py notebooks/01_quickstart.py   # .py or .ipynb: the pair
    python notebooks/check_outputs.py --write              # refresh the committed outputs
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import re
import sys
import tempfile
import time

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = NOTEBOOK_DIR.parent
PAIRED_FORMATS = "ipynb,py:percent"
SOURCE_FORMAT = "py:percent"
RESULT_LINE = re.compile(
    r"^RESULT (?P<name>\S+) = (?P<value>[-+0-9.eEinfaINF]+) ± (?P<se>[-+0-9.eEinfaINF]+)\s*$")
SMOKE_VARIABLES = ("CI", "RHM_JAX_SMOKE")


def notebook_paths() -> list[pathlib.Path]:
    """The committed notebooks: every ``notebooks/*.ipynb``."""
    return sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def source_path(notebook_path: pathlib.Path) -> pathlib.Path:
    """The ``.py`` paired with a notebook (the file to edit)."""
    return notebook_path.with_suffix(".py")


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
    """Everything the code cells of a notebook (nbformat 4) printed to stdout."""
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


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell["cell_type"], cell["source"] if isinstance(cell["source"], str)
             else "".join(cell["source"])) for cell in notebook["cells"]]


def pairing_problems(notebook_path: pathlib.Path) -> list[str]:
    """How the cells of a ``.ipynb`` differ from jupytext's reading of its ``.py`` (types
    and sources, cell by cell); empty when the pair is in sync."""
    import jupytext
    import nbformat

    source = source_path(notebook_path)
    if not source.is_file():
        return [f"{source.name} is missing: every notebook is paired with a percent-format .py"]
    expected = _cells(jupytext.read(source, fmt=SOURCE_FORMAT))
    committed = _cells(nbformat.read(notebook_path, as_version=4))
    problems = []
    if len(expected) != len(committed):
        problems.append(f"{source.name} has {len(expected)} cells, {notebook_path.name} "
                        f"{len(committed)}")
    for index, (want, have) in enumerate(zip(expected, committed)):
        if want != have:
            problems.append(f"cell {index} differs: {source.name} has {want[0]} "
                            f"{want[1][:80]!r}..., {notebook_path.name} has {have[0]} "
                            f"{have[1][:80]!r}...")
            break  # the first difference is enough to locate the drift
    return problems


def load_for_execution(notebook_path: pathlib.Path):
    """The cells of the ``.py`` with the metadata, cell ids and outputs of the ``.ipynb``
    (what ``jupytext --sync`` would write), ready to execute."""
    import jupytext
    import nbformat
    from jupytext.combine import combine_inputs_with_outputs

    inputs = jupytext.read(source_path(notebook_path), fmt=SOURCE_FORMAT)
    outputs = nbformat.read(notebook_path, as_version=4)
    return nbformat.from_dict(combine_inputs_with_outputs(inputs, outputs, fmt=SOURCE_FORMAT))


def kernel_environment(smoke: bool, extra: dict | None = None) -> dict[str, str]:
    """The environment of the kernel: this process's, without the smoke switches (set to
    ``RHM_JAX_SMOKE=1, CI=true`` when ``smoke``) and without ``MPLBACKEND`` (the kernel's
    inline backend draws the figures), with the repository root first on ``PYTHONPATH``."""
    env = {name: value for name, value in os.environ.items()
           if name not in SMOKE_VARIABLES + ("MPLBACKEND",)}
    if smoke:
        env.update(CI="true", RHM_JAX_SMOKE="1")
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                if p and p != str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def execute(notebook, *, timeout: int, smoke: bool, env_extra: dict | None = None,
            cwd: pathlib.Path = NOTEBOOK_DIR):
    """Runs every cell of ``notebook`` (nbformat 4, modified in place) in a fresh kernel of
    this Python, from ``cwd``; returns ``(notebook, error or None, seconds)``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            record_timing=False, resources={"metadata": {"path": str(cwd)}})
    start = time.time()
    try:
        client.execute(env=kernel_environment(smoke, env_extra), cwd=str(cwd))
        error = None
    except CellExecutionError as exc:
        error = exc
    notebook.metadata.pop("widgets", None)
    return notebook, error, time.time() - start


def _keep(notebook, name: str) -> pathlib.Path:
    import nbformat

    kept = pathlib.Path(tempfile.mkdtemp(prefix="rhm_jax_nb_")) / name
    nbformat.write(notebook, kept)
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=pathlib.Path,
                        help="notebooks to run, as .py or .ipynb (default: all of them)")
    parser.add_argument("--write", action="store_true",
                        help="write each executed notebook over the committed .ipynb (refresh)")
    parser.add_argument("--sigmas", type=float, default=4.0,
                        help="tolerance in combined standard errors (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=1800,
                        help="seconds allowed per cell (default %(default)s)")
    parser.add_argument("--smoke", action="store_true",
                        help="execute in smoke mode (a quick run of the machinery; its "
                             "numbers are not comparable with full-size outputs)")
    args = parser.parse_args(argv)
    if args.write and args.smoke:
        parser.error("--write keeps full-size outputs only: drop --smoke")
    paths = [path.resolve().with_suffix(".ipynb") for path in args.notebooks] or notebook_paths()
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    import nbformat

    failed = False
    for path in paths:
        if not source_path(path).is_file() or not path.is_file():
            print(f"FAIL {path.stem}: needs both {path.stem}.py and {path.stem}.ipynb")
            failed = True
            continue
        committed = nbformat.read(path, as_version=4)
        drift = pairing_problems(path)
        executed, error, seconds = execute(load_for_execution(path), timeout=args.timeout,
                                           smoke=args.smoke)
        if error is not None:
            failed = True
            print(f"FAIL {path.name}: execution failed after {seconds:.0f} s "
                  f"(executed copy: {_keep(executed, path.name)})\n{error}")
            continue
        if args.write:
            nbformat.write(executed, path)
            size = path.stat().st_size / 1e3
            print(f"wrote {path.name}: executed in {seconds:.0f} s, {size:.0f} kB, "
                  f"{len(parse_results(stdout_text(executed)))} RESULT lines")
            leftover = pairing_problems(path)
            if leftover:  # cannot happen unless jupytext's reading changed under us
                failed = True
                print(f"FAIL {path.name}: still differs from {source_path(path).name}: "
                      f"{leftover}")
            continue
        problems = drift + compare(parse_results(stdout_text(committed)),
                                   parse_results(stdout_text(executed)), args.sigmas)
        if not parse_results(stdout_text(committed)):
            problems.append("the committed notebook prints no RESULT lines")
        if problems:
            failed = True
            print(f"STALE {path.name} ({seconds:.0f} s; fresh run kept at "
                  f"{_keep(executed, path.name)}):")
            for line in problems:
                print(f"  {line}")
        else:
            count = len(parse_results(stdout_text(executed)))
            print(f"OK {path.name}: {count} RESULT lines agree with the committed outputs "
                  f"({seconds:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
