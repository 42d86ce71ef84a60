"""The book's verdicts: declared primary comparisons with Holm's correction and an equivalence margin,
and exploratory comparisons shown as intervals without a verdict word.

A primary comparison reads *higher*, *lower* (the Holm-adjusted paired t-test rejects), *equivalent
within ±m* (the Holm-adjusted TOST rejects, :func:`ismod.stats.tost`) or *inconclusive*; each row
also states the smallest difference the design could detect (:func:`ismod.stats.detectable_difference`,
80% power, Bonferroni over the family).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import detectable_difference, holm, paired_difference, tost, verdict

__all__ = [
    "Comparison",
    "final_value",
    "primary",
    "exploratory",
    "primary_markdown",
    "exploratory_markdown",
]


@dataclass(frozen=True)
class Comparison:
    """``arm`` against ``baseline`` on ``metric`` (a key of a run's ``final`` or last history record),
    optionally transformed (e.g. ``math.log`` for a ratio of losses), with its equivalence ``margin``
    in the transformed units; ``label`` names it in tables."""

    arm: str
    baseline: str
    metric: str = "test_accuracy"
    margin: float = 0.01
    transform: Callable[[float], float] | None = None
    label: str = ""


def final_value(result: Any, metric: str) -> float:
    """``metric`` at the end of a run: from ``final``, else from the last history record."""
    if metric in result.final:
        return float(result.final[metric])
    value = result.history[-1].get(metric)
    if value is None:
        raise KeyError(f"run {result.config.get('name')} recorded no {metric!r}")
    return float(value)


def _paired(results: dict[str, list[Any]], c: Comparison) -> tuple[list[float], list[float]]:
    for name in (c.arm, c.baseline):
        if name not in results:
            raise KeyError(f"no results for {name!r}; known arms: {sorted(results)}")
    f = c.transform or (lambda v: v)
    a = {r.config["seed"]: f(final_value(r, c.metric)) for r in results[c.arm]}
    b = {r.config["seed"]: f(final_value(r, c.metric)) for r in results[c.baseline]}
    seeds = sorted(set(a) & set(b))
    return [a[k] for k in seeds], [b[k] for k in seeds]


def exploratory(
    results: dict[str, list[Any]], comparisons: list[Comparison]
) -> list[dict[str, Any]]:
    """Each comparison's paired mean difference and unadjusted 95% interval: no verdict word."""
    rows = []
    for c in comparisons:
        a, b = _paired(results, c)
        row: dict[str, Any] = {"comparison": c, "seeds": len(a)}
        if len(a) >= 2:
            d = paired_difference(a, b)
            row.update(mean=d.mean, low=d.low, high=d.high)
        rows.append(row)
    return rows


def primary(results: dict[str, list[Any]], comparisons: list[Comparison], *, alpha: float = 0.05
            ) -> list[dict[str, Any]]:  # fmt: skip
    """The declared primary comparisons: Holm over the family for the difference test and, separately,
    for the TOST; each row's ``verdict``, its mean and unadjusted interval (``low``, ``high``), the
    adjusted p-values ``p_difference`` and ``p_equivalence``, and ``detectable``, the smallest true
    difference the design detects with 80% power at the family's Bonferroni level."""
    rows = exploratory(results, comparisons)
    tested = [r for r in rows if "mean" in r and not math.isnan(r["mean"])]
    raw_diff, raw_equiv = [], []
    for r in tested:
        c = r["comparison"]
        a, b = _paired(results, c)
        raw_diff.append(paired_difference(a, b).p_value)
        raw_equiv.append(tost(a, b, c.margin))
        d = [x - y for x, y in zip(a, b)]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
        r["detectable"] = detectable_difference(
            sd, len(d), alpha=alpha, comparisons=len(comparisons)
        )
    for r, p_d, p_e in zip(tested, holm(raw_diff), holm(raw_equiv)):
        c = r["comparison"]
        r.update(p_difference=p_d, p_equivalence=p_e,
                 verdict=verdict(p_d, r["mean"], p_e, c.margin, alpha=alpha))  # fmt: skip
    for r in rows:
        r.setdefault("verdict", "not tested")
    return rows


def _name(c: Comparison) -> str:
    return c.label or f"{c.arm} − {c.baseline}"


def primary_markdown(rows: list[dict[str, Any]], *, scale: float = 1.0, digits: int = 3) -> str:
    """:func:`primary`'s rows as a table: difference, unadjusted interval, margin, what the design could
    detect, adjusted p-values and the verdict (values × ``scale``, e.g. 100 for accuracy in points)."""
    lines = ["| comparison (primary) | metric | seeds | difference | 95% interval (unadjusted) | margin | detectable | "
             "p (Holm) | p equiv. (Holm) | verdict |", "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        c = r["comparison"]
        if "mean" not in r:
            lines.append(
                f"| {_name(c)} | {c.metric} | {r['seeds']} | – | – | – | – | – | – | not tested |"
            )
            continue
        v = lambda x: f"{scale * x:+.{digits}f}"  # noqa: E731
        lines.append(f"| {_name(c)} | {c.metric}{' (log)' if c.transform is math.log else ''} | {r['seeds']} | "
                     f"{v(r['mean'])} | [{v(r['low'])}, {v(r['high'])}] | ±{scale * c.margin:.{digits}g} | "
                     f"{scale * r['detectable']:.{digits}g} | {r['p_difference']:.3f} | {r['p_equivalence']:.3f} | "
                     f"{r['verdict'].replace(f'±{c.margin:g}', f'±{scale * c.margin:g}')} |")  # fmt: skip
    return "\n".join(lines)


def exploratory_markdown(rows: list[dict[str, Any]], *, scale: float = 1.0, digits: int = 3) -> str:
    """:func:`exploratory`'s rows as a table of intervals (no verdicts)."""
    lines = ["| comparison (exploratory) | metric | seeds | difference | 95% interval (unadjusted) |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        c = r["comparison"]
        if "mean" not in r:
            lines.append(f"| {_name(c)} | {c.metric} | {r['seeds']} | – | – |")
            continue
        v = lambda x: f"{scale * x:+.{digits}f}"  # noqa: E731
        lines.append(
            f"| {_name(c)} | {c.metric} | {r['seeds']} | {v(r['mean'])} | [{v(r['low'])}, {v(r['high'])}] |"
        )
    return "\n".join(lines)
