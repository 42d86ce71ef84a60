"""Each chapter executed once per test session, shared by the notebook tests and the book build.

Each notebook runs alone, in its own kernel with its own empty results folder, as a reader who opens
just that chapter runs it (one chapter cannot lean on runs another chapter saved). The book build
then renders these executed copies instead of executing every chapter a second time: that second
execution was the largest part of CI's time."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from book_files import BOOK


class ExecutedBook:
    """A copy of ``book/`` whose notebooks are executed on demand, once each, at smoke scale."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root = root
        self.source = root / "book"
        # the saved runs are read, never written (ISMOD_RESULTS points elsewhere): a link is enough
        shutil.copytree(BOOK, self.source, ignore=shutil.ignore_patterns("results", "_build"))
        (self.source / "results").symlink_to(BOOK / "results", target_is_directory=True)
        self._monkeypatch = monkeypatch
        self.errors: dict[str, str | None] = {}

    def execute(self, path: Path) -> nbformat.NotebookNode:
        """Run ``path`` (a notebook of ``book/``) if not run yet; return the executed copy."""
        out = self.source / path.name
        if path.name not in self.errors:
            results = self.root / "results" / path.stem
            with self._monkeypatch.context() as env:
                env.setenv("ISMOD_SCALE", "smoke")
                env.setenv("ISMOD_RESULTS", str(results))  # never write into the repository
                nb = nbformat.read(path, as_version=4)
                # the timeout bounds a hang, not the machine's speed: a cell that reads many saved
                # runs took over 600 s on a 2-core machine busy with other work (a minute alone)
                client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                                        resources={"metadata": {"path": str(BOOK)}})  # fmt: skip
                try:
                    client.execute()
                    self.errors[path.name] = None
                except CellExecutionError as err:  # kept, so the other chapters still build
                    self.errors[path.name] = str(err)
            nbformat.write(nb, out)
        return nbformat.read(out, as_version=4)
