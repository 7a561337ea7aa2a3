"""Turn references to the theory into links, in the rendered docstrings and notebooks.

Docstrings cite the theory by page, e.g. ``docs/theory/belief_propagation.md`` (optionally
with ``#anchor``, or followed by an equation label such as ``(upward)``). In the API
reference those become links to the page. Older references by section number of the
specification the theory pages were written from (``<spec> §3``) are mapped to the same
pages, and references to the project's issue tracker are dropped: neither means anything
to a reader of the site.
"""

from __future__ import annotations

import re

#: Section of the original specification -> theory page (see theory/_references.txt).
SECTION_PAGES = {
    1: "model", 2: "noise", 3: "belief_propagation", 4: "phase_transition",
    5: "mean_field", 6: "correlations", 7: "denoisers", 8: "images",
}

_SPEC = "DESIGN" + r"\.md"
_SECTIONS = re.compile(
    _SPEC + r"\s*(§\s*\d+(?:\s*(?:,|;|–|-|and)\s*§?\s*\d+)*)(?:\s*,\s*\"[^\"]*\")?")
_ISSUE_IN_PARENS = re.compile(r"\s*\(issue \d+[^)]*\)")
_ISSUE_AFTER = re.compile(r"\s*[;,]\s*issue \d+(?:\s+items?\s+[\d\-–, ]+\d)?")
_PAGE = re.compile(r"(``)?docs/theory/([a-z_]+)\.md(#[A-Za-z0-9_\-]+)?(``)?")


def _pages(text: str) -> list[str]:
    numbers: list[int] = []
    for part in re.split(r"\s*(?:,|;|and)\s*", text):
        bounds = [int(x) for x in re.findall(r"\d+", part)]
        if len(bounds) == 2 and re.search(r"[–-]", part):
            numbers.extend(range(bounds[0], bounds[1] + 1))
        else:
            numbers.extend(bounds)
    pages = []
    for number in numbers:
        page = SECTION_PAGES.get(number)
        if page and page not in pages:
            pages.append(page)
    return pages


def rewrite(text: str) -> str:
    """The docstring line ``text`` with theory references as links, issue numbers removed."""
    text = _ISSUE_IN_PARENS.sub("", text)
    text = _ISSUE_AFTER.sub("", text)

    def sections(match):
        pages = _pages(match.group(1))
        links = ", ".join(f":doc:`/theory/{page}`" for page in pages) or "the theory pages"
        before = match.string[:match.start()].rstrip()
        return ("see " + links) if before.endswith("(") else links

    text = _SECTIONS.sub(sections, text)
    return _PAGE.sub(lambda m: f":doc:`/theory/{m.group(2)}`", text)


_SPEC_AS_DOCUMENT = re.compile(r"`?" + _SPEC + r"`?\s+of the repository")
_SECTIONS_MYST = re.compile(_SPEC + r"\s*(§\s*\d+(?:\s*(?:,|;|–|-|and)\s*§?\s*\d+)*)")


def rewrite_markdown(text: str) -> str:
    """The same for MyST markdown (the notebooks' text cells), as ``{doc}`` links."""
    text = _SPEC_AS_DOCUMENT.sub("the {doc}`theory pages </theory/index>`", text)

    def sections(match):
        pages = _pages(match.group(1))
        links = ", ".join(f"{{doc}}`/theory/{page}`" for page in pages) or "the theory pages"
        before = match.string[:match.start()].rstrip()
        return ("see " + links) if before.endswith("(") else links

    return _SECTIONS_MYST.sub(sections, text)


def _source_read(app, docname, source):
    if not docname.startswith("notebooks/"):
        return
    if "DESIGN" in source[0]:
        source[0] = rewrite_markdown(source[0])
    # The notebooks link the theory as seen from notebooks/ on disk (../docs/theory/...);
    # their pages in the site sit in docs/notebooks/, one folder closer to the theory.
    source[0] = source[0].replace("../docs/theory/", "../theory/")


def _process(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "DESIGN" in line or "issue" in line or "docs/theory/" in line:
            lines[i] = rewrite(line)


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    app.connect("source-read", _source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
