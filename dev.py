#!/usr/bin/env python3
"""The project's two commands; each installs what it needs into ./.venv first.

    python3 dev.py book   build the HTML book into _build/html, executing every notebook
                          at its default scale (SCALE = "auto": "cpu" here, "gpu" with CUDA)
    python3 dev.py test   run the whole test suite, including a smoke-scale book build

Extra arguments after `test` go to pytest (e.g. `python3 dev.py test -k mc -x`).
The virtual environment's location can be changed with ISMOD_VENV.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ISMOD_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"


def _requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create .venv and install requirements.txt plus ismod (editable), unless already current."""
    stamp = VENV / ".ismod-requirements"
    wanted = _requirements_hash()
    if stamp.exists() and stamp.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing requirements (torch and torchvision resolved together)", flush=True)
    # One pip call for everything, so torch and torchvision come as a matching pair.
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(ROOT / "requirements.txt"), "-e", str(ROOT)],
        check=True,
    )  # fmt: skip
    stamp.write_text(wanted)


def predicted_times() -> None:
    """Print what each page will train at the build's scale (nothing, where its runs are saved)."""
    code = "from ismod.scale import resolve_scale; print(resolve_scale('auto'))"
    scale = os.environ.get("ISMOD_SCALE") or subprocess.run(
        [str(PYTHON), "-c", code], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    if scale in ("smoke", "cpu", "gpu"):
        subprocess.run([str(PYTHON), "-m", "ismod", "pages", "--scale", scale], cwd=ROOT)
        saved = ROOT / "book" / "results" / "cpu" / "own-loop.json"
        if scale == "cpu" and saved.exists():  # the loops' own measured seconds, not a guess
            runs = json.loads(saved.read_text())["results"].values()
            minutes = sum(r.get("seconds", 0.0) for r in runs) / 60
            print(f"  own_loop             reads {saved.relative_to(ROOT)} while the loops' code is "
                  f"unchanged (else trains them: {minutes:.1f} min when it was saved)", flush=True)


def book() -> int:
    predicted_times()
    cmd = [
        str(BIN / "jupyter-book"), "build", "book", "--config", str(ROOT / "_config.yml"), "--toc", str(ROOT / "_toc.yml"),
        "--path-output", ".", "--all", "-W", "-n", "--keep-going",
    ]  # fmt: skip
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code == 0:
        print(f"book built: {ROOT / '_build' / 'html' / 'index.html'}")
    else:
        print("book build failed; notebook execution logs are in _build/html/reports/", file=sys.stderr)
    return code


def test(args: list[str]) -> int:
    # the slowest tests listed at the end, so that CI's log shows where its 30 minutes go
    return subprocess.run([str(PYTHON), "-m", "pytest", "--durations=15", *args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("book", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    return book() if argv[0] == "book" else test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
