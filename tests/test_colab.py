"""The Colab path, emulated: a fresh virtual environment that sees a preinstalled scientific stack (torch,
torchvision, numpy, matplotlib, Jupyter — as Colab's image has) but not ismod; a working directory
outside the repository; a stub ``google.colab`` module; Chapter 5's setup cell with the repository
address pointed at a local clone. The chapter then runs top to bottom at smoke scale. Checked: the
setup cell's install leaves torch exactly as it was, and the chapter finds the saved GPU results that
came with the clone."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest

from book_files import BOOK, ROOT, config

CHAPTER = "ch05_tau_switch"
# run by the fresh environment's Python: execute the chapter in a kernel of that environment
RUNNER = """
import sys
import nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
nbformat.write(nb, sys.argv[3])
"""


@pytest.mark.slow
def test_a_chapter_runs_as_in_colab(tmp_path):
    if subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", "main"], capture_output=True
    ).returncode:
        pytest.skip("needs a git checkout with a 'main' branch to clone from")
    env_dir = tmp_path / "colab-env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())  # fmt: skip
    # Colab's preinstalled packages: the test environment's site-packages, added as a plain path so
    # that its .pth files (ismod's editable install among them) are not processed
    stub = tmp_path / "colab-stub"
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text('"""stand-in for Colab\'s module"""\n')
    # and Colab's kernel has google.colab imported when a notebook starts (a .pth "import" line runs
    # at every interpreter start)
    (site / "preinstalled.pth").write_text(
        f"{sysconfig.get_path('purelib')}\n{stub}\nimport google.colab\n"
    )
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONNOUSERSITE": "1",
           "ISMOD_SCALE": "smoke", "ISMOD_RESULTS": ""}  # fmt: skip
    env.pop("PYTHONPATH", None)
    check = "import importlib.util as u, torch; print(torch.__version__, torch.__file__, u.find_spec('ismod'))"
    before = subprocess.check_output(
        [str(python), "-c", check], env=env, text=True, cwd=tmp_path
    ).split()
    assert before[-1] == "None", (
        "the fresh environment must not see ismod before the setup cell runs"
    )

    nb = nbformat.read(BOOK / f"{CHAPTER}.ipynb", as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code")
    clone = tmp_path / "content" / "ismod"
    setup.source = (setup.source.replace(f'REPOSITORY = "{config()["repository"]["url"]}"', f'REPOSITORY = "{ROOT}"')
                    .replace('CLONE = "/content/ismod"', f'CLONE = "{clone}"'))  # fmt: skip
    assert str(ROOT) in setup.source and str(clone) in setup.source, (
        "the setup cell's constants changed"
    )
    workdir = tmp_path / "content"
    workdir.mkdir()
    source, executed = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, source)
    run = subprocess.run([str(python), "-c", RUNNER, str(source), str(workdir), str(executed)],
                         env=env, cwd=workdir, capture_output=True, text=True, timeout=3600)  # fmt: skip
    # (timeout: a hang bound for an install and a chapter on a machine that may be busy)
    assert run.returncode == 0, (
        f"the chapter failed as in Colab:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
    )

    after = subprocess.check_output(
        [str(python), "-c", check], env=env, text=True, cwd=tmp_path
    ).split()
    assert after[:2] == before[:2], f"the setup cell replaced torch: {before[:2]} -> {after[:2]}"
    assert str(clone) in " ".join(after[2:]), f"ismod is not installed from the clone: {after[2:]}"
    cells = nbformat.read(executed, as_version=4).cells
    out = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in cells if c.cell_type == "code" for o in c.outputs)  # fmt: skip
    assert "no saved gpu results" not in out, (
        "the chapter did not find the saved GPU results of the clone"
    )
    assert "H200" in out, "the chapter's GPU section shows no saved run's provenance"
