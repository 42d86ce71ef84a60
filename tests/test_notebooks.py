"""Execute every notebook in _toc.yml at smoke scale; any cell error fails the test."""

import nbformat
import pytest
from nbclient import NotebookClient

from book_files import BOOK, toc_notebooks


@pytest.mark.slow
@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_runs_at_smoke_scale(path, monkeypatch, tmp_path):
    monkeypatch.setenv("ISMOD_SCALE", "smoke")
    monkeypatch.setenv(
        "ISMOD_RESULTS", str(tmp_path / "results")
    )  # never write into the repository
    nb = nbformat.read(path, as_version=4)
    # the timeout bounds a hang, not the machine's speed: a cell that reads many saved runs took over
    # 600 s on a 2-core machine busy with other work, where it takes about a minute alone
    NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}}
    ).execute()  # raises CellExecutionError naming the cell on any error
    printed = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "scale: smoke" in printed, "the notebook must resolve and print its scale"


def test_no_code_cell_is_longer_than_forty_lines():
    """Short cells over ismod code: a longer one belongs in a tested function of the package."""
    long = [(p.name, i, len(c.source.splitlines())) for p in toc_notebooks()
            for i, c in enumerate(nbformat.read(p, 4).cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > 40]  # fmt: skip
    assert not long, f"code cells over 40 lines (notebook, cell, lines): {long}"
