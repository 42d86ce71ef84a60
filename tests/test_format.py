"""The package, the tests, the benchmarks and the chapters are formatted (ruff: 100 characters a line,
88 in the chapters so that code fits the book's column; pyproject.toml and book/ruff.toml): run
`ruff format ismod tests benchmarks book` to fix."""

import shutil
import subprocess
import sys
from pathlib import Path

from book_files import ROOT


def test_code_is_formatted():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: it is in requirements.txt (python3 dev.py test installs it)"
    run = subprocess.run([ruff, "format", "--check", "ismod", "tests", "benchmarks", "book"], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, (
        f"run `ruff format ismod tests benchmarks book`:\n{run.stdout}{run.stderr}"
    )
