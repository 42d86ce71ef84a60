"""The book as a course (#40): the chapters converted so far open with what they found ("In short"),
hold at least three exercises each with its solution, and link terms to a glossary that defines
every word of the harness and the statistics the book uses."""

import json
import re

import pytest
from book_files import ROOT

BOOK = ROOT / "book"
# every chapter notebook and the own-loop page (the appendices and the harness page are references)
COURSE_PAGES = [
    "ch01_monte_carlo",
    "ch02_sgd_monte_carlo",
    "ch03_loss_scores",
    "ch04_upper_bound",
    "ch05_tau_switch",
    "ch05b_diagnosis",
    "ch05c_batch_norm",
    "ch06_wall_clock",
    "ch07_budgeted",
    "ch08_conclusions",
    "own_loop",
]
# the words a reader meets in the experiments, which the glossary must define
TERMS = ["arm", "grid", "pilot", "scale", "presample", "resample", "τ", "τ_th", "τ_eff", "B_noise",
         "primary comparison", "exploratory comparison", "Holm", "TOST", "equivalence margin",
         "proposal", "importance weight", "effective sample size", "upper bound"]  # fmt: skip


def glossary_terms() -> set[str]:
    text = (BOOK / "glossary.md").read_text()
    terms = set()
    for block in re.findall(r"```\{glossary\}\n(.*?)```", text, re.DOTALL):
        terms |= {line for line in block.splitlines() if line and not line.startswith(" ")}
    return terms


def markdown_of(page: str) -> list[str]:
    cells = json.loads((BOOK / f"{page}.ipynb").read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def test_the_glossary_defines_every_term_the_experiments_use():
    missing = [t for t in TERMS if t not in glossary_terms()]
    assert not missing, f"book/glossary.md lacks {missing}"


@pytest.mark.parametrize("page", COURSE_PAGES)
def test_a_course_page_opens_with_its_answer_and_holds_exercises_with_solutions(page):
    cells = markdown_of(page)
    assert "```{admonition} In short" in cells[0], f"{page}: the first cell opens no 'In short'"
    text = "\n".join(cells)
    exercises = re.findall(r"```\{exercise\}\n:label: ([\w-]+)", text)
    solved = set(re.findall(r"```\{solution(?:-start)?\} ([\w-]+)", text))
    assert len(exercises) >= 3, f"{page}: {len(exercises)} exercises"
    assert set(exercises) <= solved, f"{page}: no solution for {set(exercises) - solved}"
    assert text.count("```{solution-start}") == text.count("```{solution-end}")


@pytest.mark.parametrize("page", [p.stem for p in sorted(BOOK.glob("*.ipynb"))] + ["intro"])
def test_every_term_a_page_links_is_in_the_glossary(page):
    path = BOOK / f"{page}.ipynb"
    text = "\n".join(markdown_of(page)) if path.exists() else (BOOK / f"{page}.md").read_text()
    linked = set(re.findall(r"\{term\}`([^`<]+?)(?:\s*<([^>]+)>)?`", text))
    unknown = {target or name for name, target in linked} - glossary_terms()
    assert not unknown, f"{page} links terms the glossary does not define: {unknown}"
