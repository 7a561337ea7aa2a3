"""The tutorial notebooks: each runs top to bottom in smoke mode, and follows the conventions.

Every ``notebooks/*.ipynb`` is picked up, so a new notebook is tested by adding its file.
A notebook runs in its own Python process (code cells executed in order with matplotlib's
file backend; no Jupyter kernel needed), with ``CI`` and ``RHM_JAX_SMOKE`` set, from its
own folder. Its assertions are the claims it makes, checked at smoke size. The committed
file must carry the outputs of a full-size run (``notebooks/check_outputs.py --write``).
"""

import functools
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000

# Executes the code cells of the notebook given as argv[1] like a kernel would, in order, in
# one namespace. Figures are closed after each cell (Jupyter's inline backend does the same).
RUNNER = """
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
path = sys.argv[1]
namespace = {"__name__": "__main__"}
for index, cell in enumerate(json.load(open(path, encoding="utf-8"))["cells"]):
    if cell["cell_type"] == "code":
        source = "".join(cell["source"])
        exec(compile(source, f"{path} [cell {index}]", "exec"), namespace)
        plt.close("all")
if namespace.get("SMOKE") is not True:
    sys.exit("the notebook did not switch to smoke mode (SMOKE is not True)")
"""


def _load_check_outputs():
    spec = importlib.util.spec_from_file_location("check_outputs",
                                                  NOTEBOOK_DIR / "check_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_outputs = _load_check_outputs()


def _source(cell) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _code_cells(notebook):
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


@functools.lru_cache(maxsize=None)
def _smoke_run(path: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CI="true", RHM_JAX_SMOKE="1", MPLBACKEND="Agg")
    # Smoke runs are dominated by XLA compiling small programs; the unoptimised backend
    # compiles them 2-3x faster (the notebooks' claims do not depend on it).
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return subprocess.run([sys.executable, "-c", RUNNER, str(path)], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_tutorial_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    assert "01_quickstart.ipynb" in names and "02_phase_transition.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path):
    run = _smoke_run(path)
    assert run.returncode == 0, f"{path.name} failed in smoke mode:\n{run.stderr[-6000:]}"
    results = check_outputs.parse_results(run.stdout)
    assert results, f"{path.name} printed no RESULT lines in smoke mode"
    for name, (value, se) in results.items():
        assert value == value and se >= 0, f"{name}: value {value}, se {se}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_conventions(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    cells = notebook["cells"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# "), \
        "the notebook opens with a title"
    install = _source(_code_cells(notebook)[0])
    assert re.search(r"^try:\n\s+import rhm_jax\nexcept ImportError:", install, re.M), \
        "the first code cell imports rhm_jax and installs it only if that fails"
    assert re.search(r'^REPO_URL = ".*"\s+# @param', install, re.M), "REPO_URL is a form field"
    assert "jax.devices()" in install, "the first code cell says which devices JAX sees"
    assert not re.search(r"pip install[^\n]*\bjax\b", install), "never reinstall jax"
    parameters = [_source(cell) for cell in _code_cells(notebook) if "SMOKE =" in _source(cell)]
    assert parameters and "# @param" in parameters[0] and '"CI"' in parameters[0], \
        "a parameter cell with form fields sets SMOKE from the CI environment variable"
    for before, cell in zip(cells, cells[1:]):
        if cell["cell_type"] == "code":
            assert before["cell_type"] == "markdown", \
                f"prose must precede each code cell, not before:\n{_source(cell)[:200]}"
    for cell in _code_cells(notebook):
        for line in _source(cell).splitlines():
            assert not line.lstrip().startswith(("!", "%")), f"shell or magic line {line!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_full_size_outputs(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in notebook.get("metadata", {}), "no widget state"
    outputs = [output for cell in _code_cells(notebook) for output in cell.get("outputs", [])]
    for cell in _code_cells(notebook):
        assert cell.get("execution_count") is not None, \
            f"a code cell was not executed:\n{_source(cell)[:200]}"
    assert not [o for o in outputs if o["output_type"] == "error"], "an error is committed"
    for output in outputs:
        mimetypes = output.get("data", {})
        assert not any("widget" in mimetype for mimetype in mimetypes), "no widget outputs"
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"
    stdout = check_outputs.stdout_text(notebook)
    assert "SMOKE = False" in stdout, "the committed outputs are not from a full-size run"
    assert check_outputs.parse_results(stdout), "the committed outputs have no RESULT lines"


def test_result_lines_are_parsed_and_compared_within_their_errors():
    text = "RESULT a = 0.5 ± 0.01\nother output\nRESULT b = 2 ± 0\n"
    committed = check_outputs.parse_results(text)
    assert committed == {"a": (0.5, 0.01), "b": (2.0, 0.0)}
    # 0.5 vs 0.53: 3 combined errors of sqrt(0.01**2 + 0.01**2) = 0.0141 is 0.042 -> agree
    assert check_outputs.compare(committed, {"a": (0.53, 0.01), "b": (2.0, 0.0)}, 3.0) == []
    # 0.5 vs 0.56 (4.2 combined errors) and an exact value that moved -> two mismatches
    problems = check_outputs.compare(committed, {"a": (0.56, 0.01), "b": (2.001, 0.0)}, 3.0)
    assert [line.split(":")[0] for line in problems] == ["a", "b"]
    problems = check_outputs.compare(committed, {"a": (0.5, 0.01), "c": (1.0, 0.0)}, 3.0)
    assert [line.split(":")[0] for line in problems] == ["b", "c"]
    with pytest.raises(ValueError, match="malformed"):
        check_outputs.parse_results("RESULT a = 0.5 +- 0.1")
    with pytest.raises(ValueError, match="twice"):
        check_outputs.parse_results("RESULT a = 1 ± 0\nRESULT a = 1 ± 0")
