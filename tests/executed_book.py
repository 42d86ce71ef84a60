"""Each chapter executed once per test session, shared by the notebook tests and the book build.

Each notebook runs alone, in its own kernel with its own empty results folder, as a reader who opens
just that chapter runs it (one chapter cannot lean on runs another chapter saved). The book build
then renders these executed copies instead of executing every chapter a second time: that second
execution was the largest part of CI's time.

The chapters run a few at a time, each kernel with an equal share of the cores (one torch thread on
a 2-core machine). Why: one kernel with two torch threads beside one other CPU-bound process ran a
training step about 4 times slower than alone, its threads waiting on each other for the busy core
(measured on this 2-core machine: 4.2 s against 0.97 s; one thread, 2.8 s), and the chapters'
execution took 37 of a loaded pass's 60 minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from book_files import BOOK

CELL_FAILED = 3  # the child's exit status when a cell raised (any other non-zero: it crashed)


class ExecutedBook:
    """A copy of ``book/`` whose notebooks are executed on demand, once each, at smoke scale."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.source = root / "book"
        # the saved runs are read, never written (ISMOD_RESULTS points elsewhere): a link is enough
        shutil.copytree(BOOK, self.source, ignore=shutil.ignore_patterns("results", "_build"))
        (self.source / "results").symlink_to(BOOK / "results", target_is_directory=True)
        self.errors: dict[str, str | None] = {}

    def execute(self, path: Path) -> nbformat.NotebookNode:
        """Run ``path`` (a notebook of ``book/``) if not run yet; return the executed copy."""
        self.execute_all([path], workers=1)
        return nbformat.read(self.source / path.name, as_version=4)

    def execute_all(self, paths: list[Path], workers: int | None = None) -> None:
        """Run each notebook of ``paths`` not run yet, ``workers`` at a time (default: one per core,
        at most 4), each in a child process whose kernel has ``cores // workers`` torch threads."""
        todo = [p for p in dict.fromkeys(paths) if p.name not in self.errors]
        cores = os.cpu_count() or 1
        workers = workers or max(1, min(4, cores, len(todo)))
        threads = str(max(1, cores // workers))
        with ThreadPoolExecutor(workers) as pool:
            errors = list(pool.map(lambda p: self._run_child(p, threads), todo))
        self.errors.update({p.name: e for p, e in zip(todo, errors)})

    def _run_child(self, path: Path, threads: str) -> str | None:
        env = {
            **os.environ,
            "ISMOD_SCALE": "smoke",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "ISMOD_RESULTS": str(self.root / "results" / path.stem),
        }  # never the repository's
        cmd = [sys.executable, __file__, str(path), str(self.source / path.name)]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if run.returncode == 0:
            return None
        if run.returncode != CELL_FAILED:  # kept, so the other chapters still build
            nbformat.write(nbformat.read(path, as_version=4), self.source / path.name)
        return run.stderr[-20000:] or f"exit status {run.returncode}"


def _execute(path: Path, out: Path) -> int:
    """Execute ``path`` in a fresh kernel, write it to ``out``; CELL_FAILED if a cell raised."""
    nb = nbformat.read(path, as_version=4)
    # the timeout bounds a hang, not the machine's speed: a cell that reads many saved runs took
    # over 600 s on a 2-core machine busy with other work (a minute alone)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(BOOK)}})  # fmt: skip
    try:
        client.execute()
        status = 0
    except CellExecutionError as err:  # the executed cells are still written, for the build
        print(err, file=sys.stderr)
        status = CELL_FAILED
    nbformat.write(nb, out)
    return status


if __name__ == "__main__":
    sys.exit(_execute(Path(sys.argv[1]), Path(sys.argv[2])))
