"""Build the whole book from scratch at smoke scale, warnings as errors (the CI's book check)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from book_files import ROOT, toc_files, toc_notebooks


@pytest.mark.slow
def test_book_builds_clean_at_smoke_scale(tmp_path):
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    env = dict(os.environ, ISMOD_SCALE="smoke", ISMOD_RESULTS=str(tmp_path / "results"))
    cmd = [
        str(jupyter_book), "build", "book", "--config", str(ROOT / "_config.yml"), "--toc", str(ROOT / "_toc.yml"),
        "--path-output", str(tmp_path), "--all", "-W", "-n", "--keep-going",
    ]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    html = tmp_path / "_build" / "html"
    reports = sorted((html / "reports").glob("**/*.log")) if (html / "reports").exists() else []
    logs = "\n".join(p.read_text()[-3000:] for p in reports)
    assert run.returncode == 0, f"book build failed:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}\n{logs}"
    assert not reports, f"notebook execution reports:\n{logs}"
    for name in toc_files():
        assert (html / f"{name}.html").exists(), f"{name}.html missing from the build"
    for notebook in toc_notebooks():
        page = (html / f"{notebook.stem}.html").read_text()
        assert "colab.research.google.com/github/" in page, f"{notebook.stem}: no Colab launch button"
        assert 'src="_images/' in page, f"{notebook.stem}: the executed chapter shows no figures"
    # formulas render without internet: MathJax is served from the book itself, not a CDN
    intro = (html / "intro.html").read_text()
    assert 'src="_static/mathjax/tex-chtml.js"' in intro and "cdn.jsdelivr" not in intro
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists()
