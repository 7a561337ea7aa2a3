"""Sphinx configuration of the rhm_jax documentation.

Build (from the repository root, after ``pip install -e ".[docs]"``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The notebooks are rendered from their committed outputs (nothing is executed), the CLI
reference is generated from the argparse parser, and the API reference from the
docstrings.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import rhm_jax  # noqa: E402

project = "rhm_jax"
author = "the rhm_jax authors"
copyright = "the rhm_jax authors"
release = rhm_jax.__version__
version = release

extensions = [
    "myst_nb",                      # MyST markdown and .ipynb (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "cli_reference",                # docs/_ext/cli_reference.py
    "docstring_links",              # docs/_ext/docstring_links.py
    "api_exports",                  # docs/_ext/api_exports.py
    "equation_names",               # docs/_ext/equation_names.py
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build", "Thumbs.db", ".DS_Store",
    "**/*.py",                      # jupytext pairs of the notebooks, never documents
    "**/.ipynb_checkpoints",
    "theory/_references.txt",
]

# -- MyST ------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- Notebooks: rendered from their committed outputs --------------------------------
nb_execution_mode = "off"
nb_merge_streams = True


def _link_notebooks() -> None:
    """Mirror ``notebooks/*.ipynb`` into ``docs/notebooks/`` as symbolic links.

    Sphinx only reads documents below its source folder; the links (ignored by git) make
    every committed notebook a page without copying it, so a new notebook appears in the
    site on the next build.
    """
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    wanted = {p.name: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for link in target.iterdir():
        if link.name not in wanted and (link.is_symlink() or link.suffix == ".ipynb"):
            link.unlink()
    for name, source in wanted.items():
        link = target / name
        relative = os.path.relpath(source, target)
        if link.is_symlink() and os.readlink(link) == relative:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(relative)


_link_notebooks()

# -- autodoc / autosummary / napoleon --------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False
napoleon_use_ivar = True
nitpicky = False

# -- doctest (``sphinx-build -b doctest docs docs/_build/doctest``) -----------------------
# Only the guide's explicit ``doctest`` blocks: the ``>>>`` examples of the docstrings are
# run by pytest (``--doctest-modules``) in their modules' namespaces.
doctest_test_doctest_blocks = ""
doctest_global_setup = """
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
"""

# -- HTML -------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"rhm_jax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_copy_source = False
# A local MathJax (e.g. for offline previews) can be named with RHM_JAX_DOCS_MATHJAX.
if os.environ.get("RHM_JAX_DOCS_MATHJAX"):
    mathjax_path = os.environ["RHM_JAX_DOCS_MATHJAX"]


# -- setup ------------------------------------------------------------------------------
def _skip_field_aliases(app, what, name, obj, skip, options):
    """Skip the members autodoc finds for NamedTuple and dataclass fields.

    Each class lists its fields in its "Attributes:" section (rendered as a field list,
    ``napoleon_use_ivar``); the members themselves carry no documentation of their own
    ("Alias for field number 0", or a bare annotation).
    """
    if what != "class":
        return None
    doc = getattr(obj, "__doc__", None) or ""
    if type(obj).__name__ == "_tuplegetter" and doc.startswith("Alias for field number"):
        return True
    if repr(obj) == "INSTANCE_ATTR":
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_field_aliases)
