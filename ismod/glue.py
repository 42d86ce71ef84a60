"""Numbers from a chapter's runs, put into the chapter's own prose.

The book's text is written in the notebooks' markdown; where a sentence needs a number from the runs
it names a key in a ``{glue:text}`` role (a number, with a format) or a ``{glue:md}`` role (a word),
and a code cell stores the value under that key with :func:`glue` (myst-nb's glue). The built HTML shows the value in the sentence. Where myst-nb is not installed (Google Colab) the
value is shown under its cell instead, when asked, so a notebook runs the same everywhere.
"""

from __future__ import annotations

from typing import Any

__all__ = ["glue", "glue_comparisons", "comparison_values"]


def glue(name: str, value: Any, *, display: bool = False) -> None:
    """Store ``value`` under ``name`` for the page's ``{glue:...}`` roles and directives.

    A ``str`` is stored as markdown, for a ``{glue:md}`` role, which renders it as a word (myst-nb
    stores a string's ``repr``, quotes included, for ``{glue:text}``). Numbers are stored as they
    are, for a ``{glue:text}`` role with a format. ``display=True`` also shows the value under the
    cell.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier-like key such as 'ch3_gain', got {name!r}")
    from IPython.display import Markdown
    from IPython.display import display as show

    stored = Markdown(value) if isinstance(value, str) else value
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab: no build to put the value into; show it if asked
        if display:
            show(stored)
        return
    myst_glue(name, stored, display=display)


def comparison_values(row: dict[str, Any], *, scale: float = 100.0) -> dict[str, Any]:
    """A :func:`ismod.verdicts.primary` or :func:`~ismod.verdicts.exploratory` row as the numbers a
    sentence quotes: ``difference``, ``low`` and ``high`` (× ``scale``, points for an accuracy; a ratio
    ``exp(value)`` for a log-transformed metric), ``seeds``, and ``verdict`` (a primary row's word, with
    its margin for an equivalence; ``"exploratory"`` for a row without one). Untested: ``nan``."""
    import math

    from .verdicts import verdict_text

    c = row["comparison"]
    as_ratio = c.transform is math.log

    def value(key: str) -> float:
        if key not in row:
            return math.nan
        return math.exp(row[key]) if as_ratio else scale * row[key]

    word = verdict_text(row, scale=scale) if "verdict" in row else "exploratory"
    return {"difference": value("mean"), "low": value("low"), "high": value("high"),
            "seeds": row.get("seeds", 0), "verdict": word}  # fmt: skip


def glue_comparisons(prefix: str, rows: list[dict[str, Any]], names: list[str], *,
                     scale: float = 100.0) -> None:  # fmt: skip
    """Glue each row's :func:`comparison_values` as ``{prefix}_{name}`` (the difference),
    ``{prefix}_{name}_low``/``_high``/``_seeds`` and ``{prefix}_{name}_verdict`` (a word, for
    ``{glue:md}``), ``names`` naming the rows in order."""
    if len(names) != len(rows):
        raise ValueError(f"names must name each of the {len(rows)} rows, got {len(names)} names")
    for name, row in zip(names, rows):
        v = comparison_values(row, scale=scale)
        glue(f"{prefix}_{name}", v["difference"])
        for key in ("low", "high", "seeds", "verdict"):
            glue(f"{prefix}_{name}_{key}", v[key])
