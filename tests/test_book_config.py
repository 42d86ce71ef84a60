"""The book's files are consistent: toc entries exist, notebooks are committed clean, each has one
parameters cell with SCALE, and every Colab install cell names the repository from _config.yml."""

import nbformat
import pytest

from book_files import BOOK, config, toc_files, toc_notebooks


def test_every_toc_entry_exists():
    for name in toc_files():
        matches = [p for p in BOOK.glob(f"{name}.*") if p.suffix in (".md", ".ipynb")]
        assert matches, f"_toc.yml names {name!r}, but book/ has no {name}.md or {name}.ipynb"


def test_there_are_notebooks():
    assert toc_notebooks(), "no notebook chapters listed in _toc.yml"


def test_colab_settings():
    repo = config()["repository"]
    assert repo["path_to_book"] == "book" and repo["branch"] == "main"
    assert repo["url"].startswith("https://github.com/")
    assert "colab_url" in config()["launch_buttons"]


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{path.name} has outputs committed; clear them (the book build executes notebooks)"
    )
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert 'SCALE = "auto"' in params[0].source


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_install_cell_uses_the_configured_repository(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "google.colab" in first_code.source and "import ismod" in first_code.source
    assert f'REPOSITORY = "{config()["repository"]["url"]}"' in first_code.source
    assert "==" not in first_code.source.replace('"google.colab" not in', ""), "no == pins on Colab"


def test_no_notebook_outside_the_toc():
    listed = {p.resolve() for p in toc_notebooks()}
    stray = [p.name for p in BOOK.glob("*.ipynb") if p.resolve() not in listed]
    assert not stray, f"notebooks not in _toc.yml (they would not be built or tested): {stray}"


def test_the_intro_names_the_chapters_with_saved_gpu_runs():
    """The intro's statement about saved results is kept true by this test, not by hand: the chapters
    it names are exactly those with a saved "gpu" run (a grid's run or a pilot) in book/results/gpu."""
    import re

    names = [p.name for p in (BOOK / "results" / "gpu").glob("*.json")]
    measured = sorted({int(m.group(1)) for n in names if (m := re.match(r"(?:pilot-)?ch(\d)-", n))})
    listed = ", ".join(str(c) for c in measured[:-1]) + f" and {measured[-1]}"
    intro = " ".join((BOOK / "intro.md").read_text().split())
    assert f"has saved runs for Chapters {listed}" in intro, (
        f"the intro should name Chapters {listed}"
    )
    conclusions = " ".join(
        c.source for c in nbformat.read(BOOK / "ch08_conclusions.ipynb", as_version=4).cells
    )
    conclusions = " ".join(conclusions.split())
    for chapter in sorted(set(range(3, 8)) - set(measured)):
        assert f'Chapter {chapter} is not measured at `"gpu"` scale' in intro
        assert f'Chapter {chapter} is not measured at `"gpu"` scale' in conclusions
    probes = [n for n in names if n.startswith("pilot-ch4-")]
    if len(probes) == 1 and not any(n.startswith("ch4-") for n in names):
        assert "Chapter 4 only by one probe run" in conclusions


def test_the_own_loop_page_reads_its_saved_cpu_run():
    """At "cpu" scale the own-loop page trains six ResNet-18 loops (minutes) unless its saved run was
    made by exactly the loops on the page: the functions' source, as inspect.getsource gives it, is part
    of the saved run's identity. A change to a loop must come with a regenerated run
    (ISMOD_SCALE=cpu, execute book/own_loop.ipynb), or the build trains it."""
    import ast
    import json

    from ismod.experiments import BEHAVIOUR_VERSION

    saved = json.loads((BOOK / "results" / "cpu" / "own-loop.json").read_text())
    nb = nbformat.read(BOOK / "own_loop.ipynb", as_version=4)
    functions = {}
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.source.startswith("%"):
            continue
        tree = ast.parse(cell.source)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                functions[node.name] = ast.get_source_segment(cell.source, node) + "\n"
    identity = saved["identity"]
    assert identity["behaviour_version"] == BEHAVIOUR_VERSION
    for name, source in identity["code"].items():
        assert functions.get(name) == source, (
            f"own_loop.ipynb's {name}() differs from the saved run's"
        )
    assert identity["epochs"] == 6 and identity["batch"] == 128 and identity["train_size"] == 5000


def test_every_member_the_api_page_names_exists():
    """A name listed in an ``automodule``'s ``:members:`` that the module no longer has breaks the
    book's build with an unreadable Sphinx logging error; this says which name it is."""
    import importlib
    import re

    text = (BOOK / "api.md").read_text()
    missing = []
    for module, members in re.findall(
        r"\.\. automodule:: ([\w.]+)\n   :members: ((?:.+\n)(?: {13}.+\n)*)", text
    ):
        names = [n.strip() for n in members.replace("\n", " ").split(",") if n.strip()]
        loaded = importlib.import_module(module)
        missing += [f"{module}.{n}" for n in names if not hasattr(loaded, n)]
    assert not missing, f"book/api.md lists members that do not exist: {missing}"
