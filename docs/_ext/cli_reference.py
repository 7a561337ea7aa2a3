"""``rhm-jax-cli``: the command-line reference, generated from the argparse parser.

The directive calls :func:`rhm_jax.cli.build_parser` at build time and renders the root
parser's help and then one section per subcommand (its one-line summary and its
``format_help()``), so the page always matches the installed code::

    ```{rhm-jax-cli}
    ```
"""

from __future__ import annotations

import argparse
import importlib
import os
from contextlib import contextmanager

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

WIDTH = "90"


@contextmanager
def _columns(width: str):
    """Fix argparse's wrapping width (it reads ``COLUMNS``) so the page is reproducible."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = width
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser):
    """(name, summary, parser) of every subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, summaries.get(name, ""), sub


class CLIReference(SphinxDirective):
    has_content = False
    required_arguments = 0
    optional_arguments = 1          # module:function, default rhm_jax.cli:build_parser

    def run(self):
        target = self.arguments[0] if self.arguments else "rhm_jax.cli:build_parser"
        module_name, _, function = target.partition(":")
        module = importlib.import_module(module_name)
        self.env.note_dependency(module.__file__)
        with _columns(WIDTH):
            parser = getattr(module, function)()
            root_help = parser.format_help()
            commands = [(name, summary, sub.format_help())
                        for name, summary, sub in _subcommands(parser)]
        result = [nodes.literal_block(root_help, root_help, language="text")]
        for name, summary, text in commands:
            section_id = f"cli-{name}"
            section = nodes.section(ids=[section_id], names=[section_id])
            section += nodes.title(text=f"{parser.prog} {name}")
            if summary:
                section += nodes.paragraph(text=summary[0].upper() + summary[1:] + ".")
            section += nodes.literal_block(text, text, language="text")
            self.state.document.note_implicit_target(section, section)
            result.append(section)
        return result


def setup(app):
    app.add_directive("rhm-jax-cli", CLIReference)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
