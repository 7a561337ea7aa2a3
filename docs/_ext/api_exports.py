"""``rhm-jax-exports PACKAGE``: a table of the names a package re-exports.

Each name in ``PACKAGE.__all__`` links to where it is documented (its defining module), so
the package page lists what ``from PACKAGE import ...`` offers without documenting any
object twice.
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from docstring_links import rewrite


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return rewrite(first)


class Exports(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        package = importlib.import_module(self.arguments[0])
        names = list(getattr(package, "__all__", []))
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 30 70", "",
                 "   * - name", "     - what"]
        for name in names:
            obj = getattr(package, name)
            if inspect.ismodule(obj):
                ref = f":py:mod:`{name} <{obj.__name__}>`"
            else:
                module = getattr(obj, "__module__", package.__name__)
                qualname = getattr(obj, "__qualname__", name)
                ref = f":py:obj:`{name} <{module}.{qualname}>`"
            lines += [f"   * - {ref}", f"     - {_summary(obj)}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.arguments[0]), self.content_offset,
                                container)
        return container.children


def setup(app):
    app.add_directive("rhm-jax-exports", Exports)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
