"""The documentation: references to the theory pages resolve, and the site builds.

* Every ``docs/theory/<page>.md`` named anywhere in the repository (code, tests, notebooks,
  READMEs, the docs themselves) must be an existing page; a ``#anchor`` after it must be a
  heading, a ``(label)=`` target or an equation label of that page (``#equation-<label>``
  or ``#<label>``); and the citation form ``docs/theory/<page>.md, (<label>)`` must name
  an equation label of that page.
* The Sphinx site builds with warnings as errors (skipped where Sphinx, MyST-NB or Furo
  is not installed: ``pip install -e ".[docs]"``). The build reads the committed notebook
  outputs and executes nothing; it takes about 25 s on a 2-core CPU.
* The user guide's examples run (``sphinx-build -b doctest``): marked slow, about two
  minutes on a 2-core CPU, most of it compiling.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
THEORY = DOCS / "theory"

#: ``docs/theory/<page>.md`` with an optional ``#anchor`` and an optional ``, (label)``.
REFERENCE = re.compile(
    r"docs/theory/(?P<page>[A-Za-z0-9_\-]+)\.md"
    r"(?:#(?P<anchor>[A-Za-z0-9_\-]+))?"
    r"(?:,\s*\((?P<label>[a-z0-9]+(?:-[a-z0-9]+)*)\))?")
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__", "_build", "runs",
             ".ipynb_checkpoints", "generated"}
SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".rst", ".toml", ".cfg", ".cff", ".json", ".sh"}


def _repository_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if path.suffix in SUFFIXES and not path.is_symlink():
                yield path


def _slug(title: str) -> str:
    """The anchor MyST gives a heading (``myst_heading_anchors``): GitHub's rule."""
    title = re.sub(r"[`*_]", "", title.strip().lower())
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def _anchors(page: Path) -> tuple[set[str], set[str]]:
    """(anchors of the page, its equation labels)."""
    anchors, equations = set(), set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            anchors.add(_slug(m.group(1)))
        elif m := re.match(r"^\(([A-Za-z0-9_\-]+)\)=\s*$", line):
            anchors.add(m.group(1))
        elif m := re.match(r"^\$\$\s*\(([A-Za-z0-9_\-]+)\)\s*$", line):
            equations.add(m.group(1))
    anchors |= equations | {f"equation-{label}" for label in equations}
    return anchors, equations


def test_theory_references_resolve():
    pages = {p.stem: _anchors(p) for p in THEORY.glob("*.md")}
    assert {"model", "noise", "belief_propagation", "phase_transition", "mean_field",
            "correlations", "denoisers", "images", "index"} <= set(pages)
    problems, seen = [], 0
    for path in _repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for match in REFERENCE.finditer(text):
            seen += 1
            where = f"{path.relative_to(ROOT)}: {match.group(0)!r}"
            page, anchor, label = match.group("page", "anchor", "label")
            if page not in pages:
                problems.append(f"{where}: no page docs/theory/{page}.md")
                continue
            anchors, equations = pages[page]
            if anchor and anchor not in anchors:
                problems.append(f"{where}: no heading, label or equation #{anchor} there")
            if label and label not in equations:
                problems.append(f"{where}: no equation labelled ({label}) there")
    assert not problems, "broken references to the theory pages:\n" + "\n".join(problems)
    assert seen > 0  # the references table itself names every page


def _have_docs_tools() -> bool:
    return all(importlib.util.find_spec(name) for name in ("sphinx", "myst_nb", "furo"))


needs_sphinx = pytest.mark.skipif(not _have_docs_tools(),
                                  reason='needs pip install -e ".[docs]"')


def _sphinx(builder: str, out: Path, *extra: str, timeout: int):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("JAX_PLATFORMS", "cpu")
    command = [sys.executable, "-m", "sphinx", "-b", builder, *extra,
               "-d", str(out / "doctrees"), str(DOCS), str(out / builder)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@needs_sphinx
def test_sphinx_builds_without_warnings(tmp_path):
    result = _sphinx("html", tmp_path, "-W", "--keep-going", "-q", timeout=900)
    assert result.returncode == 0, result.stderr[-6000:] + result.stdout[-2000:]
    html = tmp_path / "html"
    for page in ("index", "cli", "api", "theory/belief_propagation", "results/index",
                 "notebooks/01_quickstart"):
        assert (html / f"{page}.html").is_file(), page
    cli = (html / "cli.html").read_text(encoding="utf-8")
    for command in ("sample", "phase", "chi", "train", "compare"):
        assert f"rhm-jax {command}" in cli, command
    # What a reader sees names no file outside the repository and no tracker item.
    forbidden = re.compile("DESIGN" + r"\.md|\bissue \d+|\.\./shared|/work/")
    leaks = [f"{page.relative_to(html)}: {match.group(0)!r}"
             for page in html.rglob("*.html")
             for match in forbidden.finditer(page.read_text(encoding="utf-8"))]
    assert not leaks, "\n".join(leaks[:40])


@needs_sphinx
@pytest.mark.slow
def test_user_guide_examples_run(tmp_path):
    result = _sphinx("doctest", tmp_path, "-q", timeout=1800)
    report = (tmp_path / "doctest" / "output.txt")
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    assert result.returncode == 0, text[-6000:] + result.stderr[-3000:]
    assert "0 failures in tests" in text, text[-6000:]
