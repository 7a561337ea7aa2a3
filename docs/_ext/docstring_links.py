"""Turn references to the theory pages into links, in the rendered docstrings and notebooks.

Docstrings cite the theory by page, e.g. ``docs/theory/belief_propagation.md`` (optionally
with ``#anchor``, or followed by an equation label such as ``(upward)``); in the API
reference those become links to the page. The notebooks link the same pages relative to
``notebooks/`` on disk; in the site they sit in ``docs/notebooks/``.
"""

from __future__ import annotations

import re

_PAGE = re.compile(r"(``)?docs/theory/([a-z_]+)\.md(#[A-Za-z0-9_\-]+)?(``)?")


def rewrite(text: str) -> str:
    """The docstring line ``text`` with its theory references as links."""
    return _PAGE.sub(lambda m: f":doc:`/theory/{m.group(2)}`", text)


def _source_read(app, docname, source):
    if docname.startswith("notebooks/"):
        source[0] = source[0].replace("../docs/theory/", "../theory/")


def _process(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "docs/theory/" in line:
            lines[i] = rewrite(line)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    app.connect("source-read", _source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
