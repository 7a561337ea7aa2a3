"""The tutorial notebooks: each runs top to bottom in smoke mode through a Jupyter kernel,
follows the conventions, and its ``.ipynb`` matches the ``.py`` it is paired with.

Every ``notebooks/*.ipynb`` is picked up, so a new notebook is tested by adding its pair of
files. A notebook's cells are those of its ``.py`` (jupytext percent format, the file one
edits); they run as a user's Jupyter runs them — one fresh IPython kernel per notebook
(``notebooks/check_outputs.py`` starts it with this Python, the repository root first on its
``PYTHONPATH``), from the notebooks' folder, with ``CI`` and ``RHM_JAX_SMOKE`` set in the
kernel's environment, figures drawn by the inline backend. The notebook's assertions are
the claims it makes, checked at smoke size. The committed ``.ipynb`` must carry the outputs
of a full-size run (``notebooks/check_outputs.py --write``) and the cells of its ``.py``.
"""

import functools
import importlib.util
import json
import os
import pathlib
import re

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
REPO_ROOT = NOTEBOOK_DIR.parent
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MAX_BYTES = 1_000_000
# Outputs a cell leaves when its last line is a matplotlib call (end it with `;`).
STRAY_REPR = re.compile(r"^\[?(<matplotlib\.|Text\(|<Figure size|<mpl_toolkits)")
# Where a notebook must not send its reader, nor leak from the machine that ran it.
FORBIDDEN_TEXT = re.compile(r"DESIGN\.md|/tmp/|/home/|/work/|/Users/")


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


def _outputs(notebook):
    return [output for cell in _code_cells(notebook) for output in cell.get("outputs", [])]


def _output_text(output) -> str:
    text = output.get("text", output.get("data", {}).get("text/plain", ""))
    return text if isinstance(text, str) else "".join(text)


def _kernel_jax_settings() -> dict:
    """Environment for the kernel's JAX: the unoptimised XLA backend (smoke runs are
    dominated by compiling small programs; it compiles them 2-3x faster and the claims do
    not depend on it), and the persistent compilation cache of this test session
    (tests/conftest.py) when there is one."""
    import jax

    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        flags = (flags + " --xla_backend_optimization_level=0").strip()
    settings = {"XLA_FLAGS": flags}
    if jax.config.jax_compilation_cache_dir:
        settings.update(
            JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return settings


def _require_notebook_tools():
    missing = [name for name in ("jupytext", "nbclient", "ipykernel")
               if importlib.util.find_spec(name) is None]
    assert not missing, (f"the notebook tests need {', '.join(missing)} installed "
                         "(pip install jupytext nbclient ipykernel)")


@functools.lru_cache(maxsize=None)
def _smoke_run(path: pathlib.Path):
    """The notebook (cells from its .py) executed in smoke mode: (notebook, error or None)."""
    _require_notebook_tools()
    notebook = check_outputs.load_for_execution(path)
    executed, error, _ = check_outputs.execute(notebook, timeout=600, smoke=True,
                                               env_extra=_kernel_jax_settings())
    return executed, error


def test_the_tutorial_notebooks_exist():
    names = [path.name for path in NOTEBOOKS]
    assert "01_quickstart.ipynb" in names and "02_phase_transition.ipynb" in names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path):
    executed, error = _smoke_run(path)
    assert error is None, f"{path.name} failed in smoke mode:\n{str(error)[-6000:]}"
    stdout = check_outputs.stdout_text(executed)
    assert "SMOKE = True" in stdout, "the kernel did not switch the notebook to smoke mode"
    results = check_outputs.parse_results(stdout)
    assert results, f"{path.name} printed no RESULT lines in smoke mode"
    for name, (value, se) in results.items():
        assert value == value and se >= 0, f"{name}: value {value}, se {se}"
    outputs = _outputs(executed)
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure drawn"
    stray = [_output_text(o) for o in outputs if o["output_type"] == "execute_result"
             and STRAY_REPR.match(_output_text(o))]
    assert not stray, f"a cell's last line leaves a matplotlib object's repr: {stray}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_paired_with_its_py_and_in_sync(path):
    _require_notebook_tools()
    source = check_outputs.source_path(path)
    assert source.is_file(), f"{path.name} has no paired {source.name}"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    formats = notebook["metadata"].get("jupytext", {}).get("formats")
    assert formats == check_outputs.PAIRED_FORMATS, f"{path.name}: jupytext formats {formats!r}"
    header = source.read_text(encoding="utf-8").split("# ---", 2)[1]
    assert f"formats: {check_outputs.PAIRED_FORMATS}" in header, \
        f"{source.name}: the header must pair it ({check_outputs.PAIRED_FORMATS})"
    problems = check_outputs.pairing_problems(path)
    assert not problems, (f"{path.name} and {source.name} differ (edit the .py, then "
                          f"`jupytext --sync {source.relative_to(REPO_ROOT)}` or "
                          f"`check_outputs.py --write`): {problems}")


def test_every_notebook_source_has_its_notebook():
    sources = {path.stem for path in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py")}
    assert sources == {path.stem for path in NOTEBOOKS}, "every NN_name.py has a .ipynb"


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
    first = json.loads(NOTEBOOKS[0].read_text(encoding="utf-8"))
    assert install == _source(_code_cells(first)[0]), \
        f"the install cell is that of {NOTEBOOKS[0].name}, unchanged"
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
    for cell in cells:
        match = FORBIDDEN_TEXT.search(_source(cell))
        assert match is None, f"{match and match.group(0)!r} in a cell:\n{_source(cell)[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_links_resolve(path):
    """Relative links of the prose point at files of the repository (the theory pages under
    docs/theory/ once they exist in this checkout)."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", _source(cell)):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (NOTEBOOK_DIR / target).resolve()
            if resolved.parent == REPO_ROOT / "docs" / "theory" and not resolved.parent.is_dir():
                continue  # the theory pages are not in this checkout yet
            assert resolved.is_file(), f"{path.name} links to {target}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_full_size_outputs(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in notebook.get("metadata", {}), "no widget state"
    outputs = _outputs(notebook)
    for cell in _code_cells(notebook):
        assert cell.get("execution_count") is not None, \
            f"a code cell was not executed:\n{_source(cell)[:200]}"
    assert not [o for o in outputs if o["output_type"] == "error"], "an error is committed"
    for output in outputs:
        mimetypes = output.get("data", {})
        assert not any("widget" in mimetype for mimetype in mimetypes), "no widget outputs"
        text = _output_text(output)
        assert not (output["output_type"] == "execute_result" and STRAY_REPR.match(text)), \
            f"a cell's last line leaves {text!r} (end it with `;`)"
        match = FORBIDDEN_TEXT.search(text)
        assert match is None, f"an output mentions {match and match.group(0)!r}: {text[:200]!r}"
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


def test_the_pairing_check_sees_a_drifted_cell(tmp_path):
    """pairing_problems reports a .py edited without syncing its .ipynb."""
    _require_notebook_tools()
    for suffix in (".py", ".ipynb"):
        (tmp_path / f"nb{suffix}").write_text(
            check_outputs.source_path(NOTEBOOKS[0]).with_suffix(suffix).read_text("utf-8"),
            encoding="utf-8")
    assert check_outputs.pairing_problems(tmp_path / "nb.ipynb") == []
    source = tmp_path / "nb.py"
    source.write_text(source.read_text("utf-8").replace("import time\n", "import time  # x\n", 1),
                      encoding="utf-8")
    problems = check_outputs.pairing_problems(tmp_path / "nb.ipynb")
    assert len(problems) == 1 and problems[0].startswith("cell "), problems
