"""The book's verdicts: declared primary comparisons with Holm's correction and an equivalence margin,
and exploratory comparisons shown as intervals without a verdict word.

A primary comparison reads *higher*, *lower* (the Holm-adjusted paired t-test rejects), *equivalent
within ±m* (the Holm-adjusted TOST rejects, :func:`ismod.stats.tost`) or *inconclusive*; each row
also states the smallest difference the design could detect (:func:`ismod.stats.detectable_difference`,
80% power, Bonferroni over the family).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .stats import detectable_difference, holm, paired_difference, tost, verdict

__all__ = [
    "Comparison",
    "final_value",
    "primary",
    "exploratory",
    "paired_mean",
    "paired_values",
    "METRIC_NAMES",
    "primary_markdown",
    "exploratory_markdown",
    "pairs",
    "interval_text",
    "margin_text",
    "verdict_text",
    "Crossing",
    "time_to_target",
    "Speedup",
    "speedups",
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


def _by_seed(results: dict[str, list[Any]], c: Comparison) -> dict[int, tuple[float, float]]:
    """The (arm, baseline) values of each seed both arms ran, after ``c.transform``."""
    for name in (c.arm, c.baseline):
        if name not in results:
            raise KeyError(f"no results for {name!r}; known arms: {sorted(results)}")
    f = c.transform or (lambda v: v)
    a = {r.config["seed"]: f(final_value(r, c.metric)) for r in results[c.arm]}
    b = {r.config["seed"]: f(final_value(r, c.metric)) for r in results[c.baseline]}
    return {k: (a[k], b[k]) for k in sorted(set(a) & set(b))}


def _paired(results: dict[str, list[Any]], c: Comparison) -> tuple[list[float], list[float]]:
    values = _by_seed(results, c).values()
    return [a for a, _ in values], [b for _, b in values]


def paired_values(results: dict[str, list[Any]], c: Comparison) -> dict[int, float]:
    """Each shared seed's ``c.arm`` − ``c.baseline`` (after ``c.transform``: for a log-transformed
    metric, the seed's log ratio), the pairs every test of this module is computed from."""
    return {seed: a - b for seed, (a, b) in _by_seed(results, c).items()}


def paired_mean(results: dict[str, list[Any]], c: Comparison) -> float | None:
    """The mean over shared seeds of ``c.arm`` − ``c.baseline`` (after ``c.transform``: for a
    log-transformed metric, the mean log ratio), the point estimate of :func:`exploratory` and
    :func:`primary`; unlike them it is defined for one seed. None if the arms share no seed."""
    differences = paired_values(results, c)
    return statistics.fmean(differences.values()) if differences else None


def exploratory(
    results: dict[str, list[Any]], comparisons: list[Comparison], *, missing: str = "raise"
) -> list[dict[str, Any]]:
    """Each comparison's paired mean difference and unadjusted 95% interval: no verdict word. An arm
    absent from ``results`` raises a ``KeyError``, or with ``missing="not tested"`` gives a row with 0
    seeds (a grid not run at this scale)."""
    if missing not in ("raise", "not tested"):
        raise ValueError(f"missing must be 'raise' or 'not tested', got {missing!r}")
    rows = []
    for c in comparisons:
        if missing == "not tested" and (c.arm not in results or c.baseline not in results):
            rows.append({"comparison": c, "seeds": 0})
            continue
        a, b = _paired(results, c)
        row: dict[str, Any] = {"comparison": c, "seeds": len(a)}
        if len(a) >= 2:
            d = paired_difference(a, b)
            row.update(mean=d.mean, low=d.low, high=d.high)
        rows.append(row)
    return rows


def primary(results: dict[str, list[Any]], comparisons: list[Comparison], *, alpha: float = 0.05,
            missing: str = "raise") -> list[dict[str, Any]]:  # fmt: skip
    """The declared primary comparisons: Holm over the family for the difference test and, separately,
    for the TOST; each row's ``verdict``, its mean and unadjusted interval (``low``, ``high``), the
    adjusted p-values ``p_difference`` and ``p_equivalence``, and ``detectable``, the smallest true
    difference the design detects with 80% power at the family's Bonferroni level. ``missing`` as
    in :func:`exploratory`; untested rows do not count in the family."""
    rows = exploratory(results, comparisons, missing=missing)
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
        r["detectable"] = detectable_difference(sd, len(d), alpha=alpha, comparisons=len(tested))
    for r, p_d, p_e in zip(tested, holm(raw_diff), holm(raw_equiv)):
        c = r["comparison"]
        r.update(p_difference=p_d, p_equivalence=p_e,
                 verdict=verdict(p_d, r["mean"], p_e, c.margin, alpha=alpha))  # fmt: skip
    for r in rows:
        r.setdefault("verdict", "not tested")
    return rows


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _name(c: Comparison) -> str:
    return c.label or f"{c.arm} − {c.baseline}"


def _formatter(c: Comparison, scale: float, digits: int) -> Callable[[float], str]:
    """Differences × ``scale`` with a sign; a log-transformed metric as the ratio ×exp(value)."""
    if c.transform is math.log:
        return lambda x: f"×{math.exp(x):.2f}"
    return lambda x: f"{scale * x:+.{digits}f}"


# how a table names the metrics the book compares (any other metric keeps its key)
METRIC_NAMES: dict[str, str] = {"train_eval_loss": "training loss", "train_mode_loss": "training loss (train mode)",
                                "test_accuracy": "test accuracy", "test_loss": "test loss"}  # fmt: skip


def _metric(c: Comparison, scale: float) -> str:
    name = METRIC_NAMES.get(c.metric, c.metric)
    if c.transform is math.log:
        return f"{name} (ratio)"
    return f"{name} (points)" if scale == 100 and c.metric.endswith("accuracy") else name


def primary_markdown(rows: list[dict[str, Any]], *, scale: float = 1.0, digits: int = 3) -> str:
    """:func:`primary`'s rows as a table: difference, unadjusted interval, margin, what the design could
    detect, adjusted p-values and the verdict (values × ``scale``, e.g. 100 for accuracy in points; a
    log-transformed metric as a ratio)."""
    lines = ["| comparison (primary) | metric | seeds | difference | 95% interval (unadjusted) | margin | "
             "detectable (80% power) | p, difference (Holm) | p, equivalence (TOST, Holm) | verdict |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        c = r["comparison"]
        if "mean" not in r:
            lines.append(
                f"| {_name(c)} | {_metric(c, scale)} | {r['seeds']} | – | – | – | – | – | – | not tested |"
            )
            continue
        v = _formatter(c, scale, digits)
        log = c.transform is math.log
        margin = f"×{math.exp(c.margin):.2f}" if log else f"{scale * c.margin:.{digits}g}"
        detect = (
            f"×{math.exp(r['detectable']):.2f}" if log else f"{scale * r['detectable']:.{digits}g}"
        )
        word = verdict_text(r, scale=scale, unit="")
        lines.append(f"| {_name(c)} | {_metric(c, scale)} | {r['seeds']} | {v(r['mean'])} | "
                     f"[{v(r['low'])}, {v(r['high'])}] | ±{margin} | {detect} | {r['p_difference']:.3f} | "
                     f"{r['p_equivalence']:.3f} | {word} |")  # fmt: skip
    return "\n".join(lines)


def exploratory_markdown(rows: list[dict[str, Any]], *, scale: float = 1.0, digits: int = 3) -> str:
    """:func:`exploratory`'s rows as a table of intervals (no verdicts)."""
    lines = ["| comparison (exploratory) | metric | seeds | difference | 95% interval (unadjusted) |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        c = r["comparison"]
        if "mean" not in r:
            lines.append(f"| {_name(c)} | {_metric(c, scale)} | {r['seeds']} | – | – |")
            continue
        v = _formatter(c, scale, digits)
        lines.append(
            f"| {_name(c)} | {_metric(c, scale)} | {r['seeds']} | {v(r['mean'])} | [{v(r['low'])}, {v(r['high'])}] |"
        )
    return "\n".join(lines)


def interval_text(row: dict[str, Any], *, scale: float = 100.0, unit: str = "points", digits: int = 2,
                  label: str = " (unadjusted 95% interval ", close: str = ")") -> str:  # fmt: skip
    """A row's mean difference and its interval as text, × ``scale`` with ``unit``, or as a ratio
    ×exp(value) for a log-transformed metric; ``label`` and ``close`` frame the interval."""
    v = _formatter(row["comparison"], scale, digits)
    unit = "" if row["comparison"].transform is math.log else f" {unit}"
    return f"{v(row['mean'])}{unit}{label}[{v(row['low'])}, {v(row['high'])}]{close}"


def margin_text(c: Comparison, *, scale: float = 100.0, unit: str = "points") -> str:
    """The equivalence margin as a reader reads it: ``"1 point"`` (× ``scale``, in ``unit``), or the
    ratio ``"×1.25"`` for a log-transformed metric."""
    if c.transform is math.log:
        return f"×{math.exp(c.margin):.2f}"
    points = scale * c.margin
    if not unit:
        return f"{points:g}"
    return f"{points:g} {unit.rstrip('s') if points == 1 else unit}"


def verdict_text(row: dict[str, Any], *, scale: float = 100.0, unit: str = "points") -> str:
    """A :func:`primary` row's verdict word, an equivalence stated with its margin in ``unit``
    (:func:`margin_text`) rather than in the metric's raw scale."""
    word = row.get("verdict", "not tested")
    if word.startswith("equivalent"):
        return f"equivalent within ±{margin_text(row['comparison'], scale=scale, unit=unit)}"
    return word


def pairs(arm_baselines: list[tuple[str, str]], **fields: Any) -> list[Comparison]:
    """``(arm, baseline)`` pairs as :class:`Comparison` objects sharing ``fields`` (metric, margin...)."""
    return [Comparison(arm, baseline, **fields) for arm, baseline in arm_baselines]


# --- time to a target ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossing:
    """When a run first reached a target: training ``seconds`` (the run's own clock, evaluation
    excluded) and ``step``, both interpolated between the two evaluation records that bracket the
    crossing; ``None`` for both when it never did."""

    seconds: float | None
    step: float | None

    @property
    def reached(self) -> bool:
        return self.seconds is not None


def time_to_target(history: list[dict[str, Any]], metric: str, target: float, *,
                   lower_is_better: bool, clock: str = "wall_time") -> Crossing:  # fmt: skip
    r"""The first time a run's ``metric`` reaches ``target`` (at or below it when
    ``lower_is_better``, else at or above it), in the records' ``clock``: ``"wall_time"`` (training
    seconds of the run's own clock) or ``"modelled_seconds"`` (a cost model's, which the load of the
    machine cannot move).

    Between the last record short of the target and the first at or past it, ``metric`` is taken to
    move linearly in training time, so the crossing is
    :math:`t_0 + (t_1 - t_0)\,(v_0 - \text{target}) / (v_0 - v_1)` (and the step alike). A run whose
    first record with a value already reaches the target reaches it then. Records without the metric
    (``None``, as ``train_loss`` before any step) are skipped. The measure InfoBatch, airbench and
    selective backprop report (time to the baseline's accuracy or loss)."""
    sign = 1.0 if lower_is_better else -1.0
    previous: dict[str, Any] | None = None
    for record in history:
        value = record.get(metric)
        if value is None:
            continue
        if sign * (float(value) - target) <= 0:
            if previous is None:
                return Crossing(float(record[clock]), float(record["step"]))
            v0, v1 = float(previous[metric]), float(value)
            share = (v0 - target) / (v0 - v1)  # in (0, 1]: v0 is short of the target, v1 is not
            t0, t1 = float(previous[clock]), float(record[clock])
            s0, s1 = float(previous["step"]), float(record["step"])
            return Crossing(t0 + share * (t1 - t0), s0 + share * (s1 - s0))
        previous = record
    return Crossing(None, None)


@dataclass(frozen=True)
class Speedup:
    """``arm`` against ``baseline`` in time to the baseline's final ``metric``, seed by seed:
    ``ratios[seed]`` is the baseline's time to its own final value over the arm's time to it (above 1:
    the arm got there sooner), ``None`` where the arm never got there. ``mean``, ``low`` and ``high``
    are the geometric mean and its t-interval over the seeds where both reached it (a paired interval
    of log ratios; ``None`` with fewer than 2 such seeds)."""

    arm: str
    baseline: str
    metric: str
    ratios: dict[int, float | None]
    mean: float | None
    low: float | None
    high: float | None

    @property
    def not_reached(self) -> list[int]:
        return sorted(seed for seed, r in self.ratios.items() if r is None)


def speedups(results: dict[str, list[Any]], arm: str, baseline: str, metric: str, *,
             lower_is_better: bool, confidence: float = 0.95, clock: str = "wall_time") -> Speedup:  # fmt: skip
    """Paired speed-up of ``arm`` over ``baseline`` to the baseline's final ``metric``, in ``clock``
    (as :func:`time_to_target`).

    For each seed both arms ran, the target is the baseline run's last recorded ``metric`` (its final
    training loss or test accuracy, say), the baseline's time is the time it first reached that value
    (:func:`time_to_target`, at most its whole run) and the arm's time is the time it first reached the
    same value. Runs pair by ``config["seed"]``, never by position."""
    for name in (arm, baseline):
        if name not in results:
            raise KeyError(f"no results for {name!r}; known arms: {sorted(results)}")

    def last(history: list[dict[str, Any]]) -> float:
        values = [r[metric] for r in history if r.get(metric) is not None]
        if not values:
            raise KeyError(f"a {baseline!r} run recorded no {metric!r}")
        return float(values[-1])

    base = {r.config["seed"]: r for r in results[baseline]}
    ratios: dict[int, float | None] = {}
    for run in results[arm]:
        seed = run.config["seed"]
        if seed not in base:
            continue
        reference = base[seed].history
        target = last(reference)
        own = time_to_target(
            reference, metric, target, lower_is_better=lower_is_better, clock=clock
        )
        other = time_to_target(
            run.history, metric, target, lower_is_better=lower_is_better, clock=clock
        )
        assert own.seconds is not None  # a run reaches its own last value
        ratios[seed] = None if other.seconds is None else own.seconds / max(other.seconds, 1e-12)
    logs = [math.log(r) for r in ratios.values() if r is not None and r > 0]
    mean = low = high = None
    if len(logs) >= 2:
        d = paired_difference(logs, [0.0] * len(logs), confidence=confidence)
        mean, low, high = math.exp(d.mean), math.exp(d.low), math.exp(d.high)
    return Speedup(arm, baseline, metric, dict(sorted(ratios.items())), mean, low, high)
