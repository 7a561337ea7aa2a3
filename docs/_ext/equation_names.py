"""Show labelled equations by their label instead of a running number.

A display equation written ``$$ ... $$ (upward)`` is shown as *(upward)* and every
``{eq}`upward``` reference to it reads *(upward)* too. The code's docstrings cite equations
the same way ("docs/theory/belief_propagation.md, (upward)"), so the name a reader meets
in the code is the name printed next to the equation.
"""

from __future__ import annotations

import re

from docutils import nodes

_NUMBER = re.compile(r"^\(\d+(\.\d+)*\)$")


def _name_equations(app, doctree, docname):
    for block in doctree.findall(nodes.math_block):
        label = block.get("label")
        if label and block.get("number") is not None:
            block["number"] = label
    for ref in doctree.findall(nodes.reference):
        target = ref.get("refuri", "") or ""
        target = target.rpartition("#")[2] if "#" in target else ref.get("refid", "") or ""
        if not target.startswith("equation-"):
            continue
        text = ref.astext().strip()
        if _NUMBER.match(text):
            ref.children = [nodes.Text(f"({target[len('equation-'):]})")]


def setup(app):
    app.connect("doctree-resolved", _name_equations)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
