"""Execute every notebook in _toc.yml at smoke scale, each alone; any cell error fails the test."""

import re

import nbformat
import pytest

from book_files import toc_notebooks


@pytest.mark.slow
@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_runs_at_smoke_scale(path, executed_book):
    nb = executed_book.execute(path)  # alone, in a fresh kernel with an empty results folder
    assert executed_book.errors[path.name] is None, executed_book.errors[path.name]
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "scale: smoke" in printed, "the notebook must resolve and print its scale"
    # every number the prose quotes from the runs ({glue:text}`key` ...) was glued by a cell
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
             for o in c.outputs if "scrapbook" in o.get("metadata", {})}  # fmt: skip
    quoted = {key for c in nb.cells if c.cell_type == "markdown"
              for key in re.findall(r"\{glue:?\w*\}`(\w+)", c.source)}  # fmt: skip
    assert quoted <= glued, f"the prose quotes keys no cell glued: {sorted(quoted - glued)}"


def test_no_code_cell_is_longer_than_forty_lines():
    """Short cells over ismod code: a longer one belongs in a tested function of the package."""
    long = [(p.name, i, len(c.source.splitlines())) for p in toc_notebooks()
            for i, c in enumerate(nbformat.read(p, 4).cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > 40]  # fmt: skip
    assert not long, f"code cells over 40 lines (notebook, cell, lines): {long}"
