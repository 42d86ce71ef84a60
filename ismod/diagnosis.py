"""Chapter 5's diagnosis, read from saved runs: what the importance steps break (the dissection), what a
bigger batch buys per step (the critical-batch test), the completed switch rule's inputs along a run,
and whether its two predictions held. Every table and sentence here is computed from results; the
grids that make them are :func:`ismod.suites.chapter5_dissection`, :func:`~ismod.suites.chapter5_critical_batch`,
:func:`~ismod.suites.chapter5_prediction_pilot` and :func:`~ismod.suites.chapter5_prediction`.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .findings import summarize, tau_log_error
from .strategies import build_strategy
from .tau import presample_increment, required_increment
from .verdicts import (
    Comparison,
    exploratory,
    final_value,
    paired_mean,
    pairs,
    primary,
    verdict_text,
)

__all__ = [
    "run_instruments",
    "DISSECTION_CONTROLS",
    "dissection_rows",
    "dissection_markdown",
    "critical_batch_rows",
    "critical_batch_markdown",
    "rule_inputs",
    "rule_inputs_markdown",
    "PREDICTIONS",
    "BATCH_NORM_TEST",
    "BATCH_NORM_EXPLORATORY",
    "BATCH_NORM_PRICE",
    "FREE_SCORE_RACE",
    "FREE_SCORE_EXPLORATORY",
    "prediction_rows",
    "prediction_markdown",
    "rule_check_table",
    "probe_increments",
    "pilot_numbers",
    "race_rows",
    "race_table",
    "cost_model_check",
    "recalibration",
    "sqrt_check",
    "sqrt_check_table",
]


def _present(values: list[Any]) -> list[float]:
    return [
        float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]


def run_instruments(result: Any) -> dict[str, float | None]:
    """One run's instrumentation summarised: the largest weight any importance step applied, the mean
    duplicate share over intervals with importance steps, the median gradient noise scale
    :math:`B_{\\text{simple}}` over the evaluation points after the first, and the importance steps."""
    h = result.history
    weights = _present([r.get("max_weight") for r in h])
    duplicates = _present([r.get("duplicate_fraction") for r in h])
    noise = _present([(r.get("noise_scale") or {}).get("b_simple") for r in h[1:]])
    return {"max_weight": max(weights) if weights else None,
            "duplicate_fraction": statistics.fmean(duplicates) if duplicates else None,
            "b_simple": statistics.median(noise) if noise else None,
            "importance_steps": h[-1].get("importance_steps")}  # fmt: skip


# a variant that changes uniform training too is compared with uniform under the same change
DISSECTION_CONTROLS: dict[str, str] = {"forced, BN ε = 1e-5": "uniform, BN ε = 1e-5",
                                       "forced, lr halved": "uniform, lr halved"}  # fmt: skip


def dissection_rows(
    results: dict[str, list[Any]], baseline: str = "uniform"
) -> list[dict[str, Any]]:
    """Per arm: seeds, mean final test accuracy and training loss (eval mode, fixed training subset),
    the median over seeds of :func:`run_instruments`, and against ``baseline`` — or the arm's control in
    ``DISSECTION_CONTROLS``, uniform with the same change — (paired by seed, exploratory:
    unadjusted intervals) the test-accuracy difference and the log training-loss ratio, with their
    point estimates ``accuracy_gap`` and ``loss_ratio`` (defined for one seed too)."""
    rows = []
    for arm, runs in results.items():
        inst = [run_instruments(r) for r in runs]

        def med(key: str) -> float | None:
            values = _present([i[key] for i in inst])
            return statistics.median(values) if values else None

        row: dict[str, Any] = {"arm": arm, "seeds": len(runs),
                               "test_accuracy": statistics.fmean(final_value(r, "test_accuracy") for r in runs),
                               "train_loss": statistics.fmean(final_value(r, "train_eval_loss") for r in runs),
                               **{k: med(k) for k in ("max_weight", "duplicate_fraction", "b_simple", "importance_steps")}}  # fmt: skip
        control = DISSECTION_CONTROLS.get(arm, baseline)
        row["control"] = control if control in results else baseline
        if arm != baseline and not arm.startswith("uniform"):
            pair = [Comparison(arm, row["control"], "test_accuracy"),
                    Comparison(arm, row["control"], "train_eval_loss", transform=math.log)]  # fmt: skip
            row["accuracy_difference"], row["log_loss_ratio"] = exploratory(results, pair)
            # the point estimates, also for one seed (where the intervals above have none)
            gap, log_ratio = (paired_mean(results, c) for c in pair)
            row["accuracy_gap"] = gap
            row["loss_ratio"] = None if log_ratio is None else math.exp(log_ratio)
        rows.append(row)
    return rows


def _interval(d: dict[str, Any] | None, scale: float, digits: int) -> str:
    if not d or "mean" not in d:
        return "–"
    return f"{scale * d['mean']:+.{digits}f} [{scale * d['low']:+.{digits}f}, {scale * d['high']:+.{digits}f}]"


def _number(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def dissection_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`dissection_rows` as a table (accuracy differences in points, loss ratios as factors)."""
    lines = ["| arm | seeds | test acc. | against | Δ test acc., points [95%] | training loss | ×loss [95%] | "
             "largest weight | duplicates | importance steps |", "|---|---:|---:|---|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        ratio = r.get("log_loss_ratio")
        factor = "–"
        if ratio and "mean" in ratio:
            factor = f"×{math.exp(ratio['mean']):.2f} [{math.exp(ratio['low']):.2f}, {math.exp(ratio['high']):.2f}]"
        against = r["control"] if "accuracy_difference" in r else "–"
        lines.append(f"| {r['arm']} | {r['seeds']} | {100 * r['test_accuracy']:.1f}% | {against} | "
                     f"{_interval(r.get('accuracy_difference'), 100, 2)} | {r['train_loss']:.3f} | {factor} | "
                     f"{_number(r['max_weight'], '.1f')} | {_number(r['duplicate_fraction'], '.2f')} | "
                     f"{_number(r['importance_steps'], '.0f')} |")  # fmt: skip
    return "\n".join(lines)


def _steps_to(run: Any, target: float, key: str) -> float:
    """The step at which ``run``'s ``key`` first falls to ``target``, interpolated linearly in log-loss
    between evaluation points (``inf`` if it never does)."""
    points = [(r["step"], r.get(key)) for r in run.history if r.get(key) is not None]
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if v1 <= target < v0:
            frac = (math.log(v0) - math.log(target)) / (math.log(v0) - math.log(v1))
            return s0 + frac * (s1 - s0)
        if v0 <= target:
            return float(s0)
    return math.inf


def critical_batch_rows(
    results: dict[str, list[Any]], key: str = "train_mode_loss"
) -> list[dict[str, Any]]:
    """For each batch size of the critical-batch grid (labels ``"b × k"``): the final ``key`` and test
    accuracy (means), the steps each run needs to reach the loss every ``b × 1`` run reaches by its end
    (the largest of their final losses; median over seeds), the measured speed-up per step over ``b``, and the speed-up McCandlish et al.'s
    :math:`S(b) = S_{\\min}(1 + B_{\\text{noise}}/b)` predicts from the ``b`` runs' median measured
    :math:`B_{\\text{simple}}`: :math:`(1 + B/b)/(1 + B/(kb))`."""
    base_runs = results["b × 1"]
    target = max(final_value(r, key) for r in base_runs)  # a loss every b run reaches by its end
    b = base_runs[0].config["batch_size"]
    noise = statistics.median(_present([run_instruments(r)["b_simple"] for r in base_runs]))
    base_steps = statistics.median(_steps_to(r, target, key) for r in base_runs)
    rows = []
    for label, runs in results.items():
        k = runs[0].config["batch_size"] // b
        steps = statistics.median(_steps_to(r, target, key) for r in runs)
        rows.append({"label": label, "batch_size": runs[0].config["batch_size"], "seeds": len(runs),
                     "loss": statistics.fmean(final_value(r, key) for r in runs),
                     "test_accuracy": statistics.fmean(final_value(r, "test_accuracy") for r in runs),
                     "steps_to_target": steps, "speedup": base_steps / steps if steps else math.inf,
                     "predicted_speedup": (1 + noise / b) / (1 + noise / (k * b)), "b_simple": noise,
                     "target": target})  # fmt: skip
    return rows


def critical_batch_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| batch | seeds | final train-mode loss | test acc. | steps to b's final loss | speed-up per step | "
             "predicted from B_noise |", "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['batch_size']} | {r['seeds']} | {r['loss']:.3f} | {100 * r['test_accuracy']:.1f}% | "
                     f"{r['steps_to_target']:.0f} | ×{r['speedup']:.2f} | ×{r['predicted_speedup']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def rule_inputs(
    run: Any, presample_ratio: float, *, cost: float | None = None
) -> list[dict[str, Any]]:
    """The completed rule at each evaluation point of ``run`` (τ tracked, instrumented): τ, τ_eff
    (:func:`ismod.tau.presample_increment` with B = ``presample_ratio`` · b), the run's τ_th (or
    ``cost``, e.g. 1 for equal steps), the measured :math:`B_{\\text{simple}}`, the τ_eff needed
    (:func:`ismod.tau.required_increment`), whether importance sampling would pay there, and
    ``steps_ratio``, the importance steps per uniform step to a target under
    :math:`S(b) = S_{\\min}(1 + B_{\\text{noise}}/b)`: :math:`(1 + B/(\\tau_{\\text{eff}} b))/(1 + B/b)`."""
    b = run.config["batch_size"]
    big = round(presample_ratio * b)
    out = []
    for r in run.history[1:]:
        tau, noise = r.get("tau"), (r.get("noise_scale") or {}).get("b_simple")
        if not tau or noise is None or tau <= 0:
            continue
        threshold = cost if cost is not None else r["tau_threshold"]
        eff = presample_increment(tau, b, big)
        need = required_increment(threshold, max(noise, 0.0), b)
        ratio = (1 + max(noise, 0.0) / (eff * b)) / (1 + max(noise, 0.0) / b)
        out.append({"epoch": r["epoch"], "tau": tau, "tau_eff": eff, "tau_threshold": threshold,
                    "b_simple": noise, "required": need, "pays": eff > need, "steps_ratio": ratio})  # fmt: skip
    return out


def rule_inputs_markdown(points: list[dict[str, Any]]) -> str:
    lines = ["| epoch | τ | τ_eff | B_simple | steps per uniform step | cost (τ_th) | τ_eff needed | pays? |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for p in points:
        need = "∞" if math.isinf(p["required"]) else f"{p['required']:.2f}"
        lines.append(f"| {p['epoch']:.1f} | {p['tau']:.2f} | {p['tau_eff']:.2f} | {p['b_simple']:.0f} | "
                     f"{p['steps_ratio']:.2f} | {p['tau_threshold']:.2f} | {need} | {'yes' if p['pays'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


# The predictions, declared before the runs: for each regime's comparison, the verdicts that would
# bear it out. Margins: a point of test accuracy; 10% of training loss (log ratio log 1.1).
_LOSS_MARGIN = math.log(1.1)
PREDICTIONS: list[tuple[Comparison, tuple[str, ...], str]] = [
    (Comparison("should not pay: τ switch", "should not pay: uniform", "train_eval_loss", _LOSS_MARGIN, math.log,
                "τ switch − uniform, forward-pass budget"), ("higher", "equivalent"),
     "no lower training loss than uniform"),
    (Comparison("should not pay: τ switch", "should not pay: uniform", "test_accuracy", 0.01,
                label="τ switch − uniform, forward-pass budget"), ("lower", "equivalent"),
     "no higher test accuracy than uniform"),
    (Comparison("should pay per step: forced", "should pay per step: uniform", "train_eval_loss", _LOSS_MARGIN,
                math.log, "importance − uniform, equal steps, b = 64"), ("lower",),
     "a lower training loss than uniform"),
    (Comparison("should pay per step: forced", "should pay per step: uniform", "test_accuracy", 0.01,
                label="importance − uniform, equal steps, b = 64"), (),
     "nothing (the rule is about the training objective)"),
]  # fmt: skip


def _batch_norm_test() -> list[tuple[Comparison, tuple[str, ...], str]]:
    """Chapter 5's batch-norm test (:func:`ismod.suites.chapter5_batch_norm`), declared before its
    runs: within each normalisation and augmentation, forced importance − uniform in training loss
    (un-augmented training samples, running statistics; log ratio, margin 10%), the six primaries.

    The predictions are the completed rule's at equal steps (scoring free), read with the gradient-error
    probe of the pilots (:func:`ismod.suites.chapter5_norm_pilot`, :func:`ismod.suites.chapter5_weighted_pilot`):
    where an importance batch's gradient error is below a uniform one's, a step is worth more, so
    **lower** without batch norm, whose pilot ratios stayed below 1 once the network began to fit; with
    the batch's own statistics the ratio stayed near or above 1, and §5.9's forced runs ended above
    uniform, so **higher**; with the batch's weighted statistics the pilot's ratio stayed above 1 and its
    training loss ended far above uniform's, so **higher**. The weighted arm replaced, before its runs,
    one with the presample's statistics held constant, which did not train (§5.10)."""
    from .suites import UNCOUPLED_NORM

    arms = (("batch norm (batch statistics)", "batch norm", ("higher",), "a higher training loss than uniform"),
            # replaced the presample-statistics arm (which could not train) before any of its runs;
            # predicted from its pilot (suites.chapter5_weighted_pilot), declared before its runs
            ("batch norm (weighted statistics)", "batch norm", ("higher",), "a higher training loss than uniform"),
            (f"{UNCOUPLED_NORM} norm", f"{UNCOUPLED_NORM} norm", ("lower",), "a lower training loss than uniform"))  # fmt: skip
    declared = []
    for aug in ("no augmentation", "crop+flip"):
        for forced, uniform, holds, claim in arms:
            comparison = Comparison(f"{aug}: forced, {forced}", f"{aug}: uniform, {uniform}", "train_eval_loss",
                                    _LOSS_MARGIN, math.log, f"importance − uniform, {forced}, {aug}")  # fmt: skip
            declared.append((comparison, holds, claim))
    return declared


BATCH_NORM_TEST: list[tuple[Comparison, tuple[str, ...], str]] = _batch_norm_test()


def _in_test_accuracy(arm: str, baseline: str, label: str) -> Comparison:
    """``arm`` − ``baseline`` in test accuracy (margin one point), labelled ``"{label}, test accuracy"``:
    the exploratory companion of a comparison declared in training loss."""
    return Comparison(arm, baseline, "test_accuracy", 0.01, label=f"{label}, test accuracy")


def _batch_norm_price() -> list[Comparison]:
    """What giving up batch norm cost (exploratory): in each augmentation, forced importance with
    GroupNorm against uniform with batch norm, in training loss and test accuracy — does importance
    sampling in the network without coupling beat the network with it?"""
    from .suites import UNCOUPLED_NORM

    out = []
    for aug in ("no augmentation", "crop+flip"):
        arm, baseline = f"{aug}: forced, {UNCOUPLED_NORM} norm", f"{aug}: uniform, batch norm"
        label = f"forced {UNCOUPLED_NORM} norm − uniform batch norm, {aug}"
        out.append(
            Comparison(
                arm, baseline, "train_eval_loss", _LOSS_MARGIN, math.log, f"{label}, training loss"
            )
        )
        out.append(_in_test_accuracy(arm, baseline, label))
    return out


BATCH_NORM_PRICE: list[Comparison] = _batch_norm_price()


def _batch_norm_exploratory() -> list[Comparison]:
    """The batch-norm test's exploratory comparisons (no verdict): each primary pair in test accuracy
    and in the training-mode loss (a uniform batch normalised with its own statistics), then
    :data:`BATCH_NORM_PRICE`."""
    out = []
    for c, _, _ in BATCH_NORM_TEST:
        out.append(_in_test_accuracy(c.arm, c.baseline, c.label))
        out.append(Comparison(c.arm, c.baseline, "train_mode_loss", _LOSS_MARGIN, math.log,
                              f"{c.label}, training-mode loss"))  # fmt: skip
    return out + BATCH_NORM_PRICE


BATCH_NORM_EXPLORATORY: list[Comparison] = _batch_norm_exploratory()


def _free_score_race() -> list[tuple[Comparison, tuple[str, ...], str]]:
    """Chapter 5's free-score race (:func:`ismod.suites.chapter5_free_scores`), declared before its runs:
    stale bound − uniform in final training loss (un-augmented training samples, running statistics;
    log ratio, margin 10%) at equal steps, within each normalisation; Holm over the two.

    Predictions: scores from the training step cost nothing, so τ_th = 1 and the completed rule says
    any τ > 1 pays per step. Without batch coupling (:data:`ismod.suites.UNCOUPLED_NORM`) the pilot's
    gradient-error ratio stayed below 1 once the network fit, so **lower**; with batch norm the drawn
    batch is skewed as the forced arms' are, and the pilot's training loss ended about twice the
    uniform pilot's, so **higher**."""
    from .suites import UNCOUPLED_NORM

    arms = ((f"{UNCOUPLED_NORM} norm", ("lower",), "a lower training loss than uniform"),
            ("batch norm", ("higher",), "a higher training loss than uniform"))  # fmt: skip
    return [(Comparison(f"stale bound, {norm}", f"uniform, {norm}", "train_eval_loss", _LOSS_MARGIN, math.log,
                        f"stale bound − uniform, {norm}, equal steps"), holds, claim)
            for norm, holds, claim in arms]  # fmt: skip


FREE_SCORE_RACE: list[tuple[Comparison, tuple[str, ...], str]] = _free_score_race()


def _free_score_exploratory() -> list[Comparison]:
    """The free-score race's exploratory comparisons (no verdict): each primary pair in test accuracy."""
    return [_in_test_accuracy(c.arm, c.baseline, c.label) for c, _, _ in FREE_SCORE_RACE]


FREE_SCORE_EXPLORATORY: list[Comparison] = _free_score_exploratory()


def prediction_rows(results: dict[str, list[Any]],
                    declared: list[tuple[Comparison, tuple[str, ...], str]] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """:func:`ismod.verdicts.primary` over ``declared`` (by default ``PREDICTIONS``; Holm over the
    family), each row with ``predicted`` (the claim) and ``outcome``: ``"held"`` when the verdict is
    one that bears the prediction out, ``"failed"`` when it is the opposite, ``"undecided"`` when
    inconclusive, and ``"reported"`` for a comparison with no prediction."""
    declared = PREDICTIONS if declared is None else declared
    rows = primary(results, [c for c, _, _ in declared])
    for row, (_, holds, claim) in zip(rows, declared):
        row["predicted"] = claim
        word = row["verdict"].split()[0]
        if not holds:
            row["outcome"] = "reported"
        elif word in holds:
            row["outcome"] = "held"
        elif word == "inconclusive" or word == "not":
            row["outcome"] = "undecided"
        else:
            row["outcome"] = "failed"
    return rows


def prediction_markdown(rows: list[dict[str, Any]]) -> str:
    """:func:`prediction_rows` as a table: each comparison, what was predicted before the runs, the
    verdict (Holm over the family) and whether the prediction held. The sizes and intervals are in
    :func:`ismod.verdicts.primary_markdown`'s table of the same rows."""
    lines = ["| comparison | predicted | verdict | prediction |", "|---|---|---|---|"]
    for r in rows:
        c = r["comparison"]
        tested = "mean" in r
        lines.append(f"| {c.label} | {r['predicted']} | {verdict_text(r) if tested else 'not tested'} "
                     f"| {r['outcome'] if tested else '–'} |")  # fmt: skip
    return "\n".join(lines)


def rule_check_table(check: Any) -> str:
    """``ismod.convex.rule_check`` as a markdown table: per batch size, the steps to the target
    measured and predicted for uniform SGD, for importance sampling over all N (predicted with τ) and
    for a presample of B = ``presample_ratio``·b (predicted with τ_eff, and with τ in its place)."""
    k = check.presample_ratio
    lines = ["| b | uniform: measured | predicted | importance, all N: measured | predicted (τ) | "
             f"presample B = {k}b: measured | predicted (τ_eff) | predicted with τ instead |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for i, b in enumerate(check.batch_sizes):
        lines.append(f"| {b} | {check.steps_uniform[i]:.0f} | {check.predicted(1.0, b):.1f} | "
                     f"{check.steps_importance[i]:.0f} | {check.predicted(check.tau, b):.1f} | "
                     f"{check.steps_presample[i]:.0f} | {check.predicted(check.tau_eff, b):.1f} | "
                     f"{check.predicted(check.tau, b):.1f} |")  # fmt: skip
    return "\n".join(lines)


def probe_increments(
    points: list[dict[str, Any]], score: str = "bound"
) -> dict[int, dict[str, float]]:
    """For the τ probe's points (:func:`ismod.findings.tau_points`), per presample size B: the range of τ
    and of τ_eff = 1/(1/τ + b/B) (b = B/3) for g ∝ ``score``, and of the measured variance ratio."""
    out: dict[int, dict[str, float]] = {}
    for size in sorted({p["B"] for p in points}):
        entries = [p["entry"][score] for p in points if p["B"] == size]
        effs = [presample_increment(e["tau"], size // 3, size) for e in entries]
        out[size] = {"points": len(entries), "tau_min": min(e["tau"] for e in entries),
                     "tau_max": max(e["tau"] for e in entries), "tau_eff_min": min(effs), "tau_eff_max": max(effs),
                     "measured_max": max(e["measured"] for e in entries)}  # fmt: skip
    return out


def pilot_numbers(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """:func:`rule_inputs`' points of one run, summed up for the prose: τ's peak and its epoch, the
    ranges of τ_eff, of the cost τ_th, of B_simple and of the importance steps worth one uniform step
    with scoring free, and at how many points the completed rule says importance sampling pays in
    time; None if no point has τ and a noise scale."""
    if not points:
        return None
    peak = max(points, key=lambda p: p["tau"])
    out = {"tau_peak": peak["tau"], "tau_peak_epoch": peak["epoch"], "points": len(points),
           "pays": sum(p["pays"] for p in points)}  # fmt: skip
    for key in ("tau_eff", "tau_threshold", "b_simple", "steps_ratio"):
        values = [p[key] for p in points]
        out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    return out


# --- Chapter 5's race (§5.5), read ------------------------------------------------------------------


def race_rows(race: dict[str, list[Any]], baseline: str = "uniform") -> list[dict[str, Any]]:
    """The equal-time race, one row per arm other than ``baseline``, means over seeds: ``switch_steps``
    (each seed's first importance step, ``None`` for never), ``importance_share`` (importance steps
    over all steps), ``steps`` and ``baseline_steps`` (steps taken in the budget), the final ``tau``
    and ``tau_threshold``, and the final ``train_loss_ratio`` and ``test_error_ratio`` against
    ``baseline`` (ratios of the seed means, as :func:`ismod.findings.summarize`)."""
    baseline_steps = statistics.fmean(r.history[-1]["step"] for r in race[baseline])
    summary = {r["arm"]: r for r in summarize(race, baseline=baseline)}
    rows = []
    for arm, runs in race.items():
        if arm == baseline:
            continue
        last = [r.history[-1] for r in runs]
        rows.append({"arm": arm, "switch_steps": [x["switch_step"] for x in last],
                     "importance_share": statistics.fmean(x["importance_steps"] / max(x["steps"], 1) for x in last),
                     "steps": statistics.fmean(x["steps"] for x in last), "baseline_steps": baseline_steps,
                     "tau": statistics.fmean(x["tau"] for x in last),
                     "tau_threshold": statistics.fmean(x["tau_threshold"] for x in last),
                     "train_loss_ratio": summary[arm]["train_loss"][0] / summary[baseline]["train_loss"][0],
                     "test_error_ratio": summary[arm]["relative_test_error"]})  # fmt: skip
    return rows


def race_table(rows: list[dict[str, Any]]) -> str:
    """:func:`race_rows` as a markdown table."""
    lines = ["| arm | first importance step, per seed | importance steps | steps (uniform's) | final τ | τ_th "
             "| training loss ÷ uniform's | test error ÷ uniform's |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        first = ", ".join("never" if s is None else str(s) for s in r["switch_steps"])
        lines.append(f"| {r['arm']} | {first} | {r['importance_share']:.0%} | {r['steps']:.0f} ({r['baseline_steps']:.0f}) "
                     f"| {r['tau']:.2f} | {r['tau_threshold']:.2f} | {r['train_loss_ratio']:.2f} | {r['test_error_ratio']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def cost_model_check(race: dict[str, list[Any]], forced: str = "upper bound, always",
                     baseline: str = "uniform") -> dict[str, float] | None:  # fmt: skip
    """The cost model of §5.2 checked on the arm whose switch is forced: with a share ``s`` of
    importance steps, each costing :math:`\\tau_{th} = 1 + (B/b)\\,t_f/(t_f + t_b)` uniform steps
    from the run's own measured times (whatever threshold the arm used), the model predicts
    :math:`1/(s\\tau_{th} + 1 - s)` of ``baseline``'s steps in the same time. Returns ``share``,
    ``step_cost`` (that τ_th), ``predicted`` and ``measured`` (steps as a fraction of the baseline's)
    and ``error`` (measured ÷ predicted − 1: negative where the model understates an importance
    step's cost); ``None`` if the race has no ``forced`` arm."""
    if forced not in race:
        return None
    last = [r.history[-1] for r in race[forced]]
    measured = statistics.fmean(x["steps"] for x in last) / statistics.fmean(
        r.history[-1]["step"] for r in race[baseline]
    )
    share = statistics.fmean(x["importance_steps"] / x["steps"] for x in last)
    saved = race[forced][0].config
    passes = build_strategy(saved["strategy"], saved["strategy_options"]).scoring_passes_per_sample
    step_cost = statistics.fmean(
        1 + passes * x["t_forward"] / (x["t_forward"] + x["t_backward"]) for x in last
    )
    predicted = 1 / (share * step_cost + (1 - share))
    return {"share": share, "step_cost": step_cost, "predicted": predicted, "measured": measured,
            "error": measured / predicted - 1}  # fmt: skip


def recalibration(race: dict[str, list[Any]], baseline: str = "uniform") -> dict[str, Any] | None:
    """The race's test accuracy against ``baseline`` with the running batch-norm statistics
    (``plain``) and with statistics re-estimated on uniform batches (``recalibrated``), as
    :func:`ismod.verdicts.exploratory` rows; ``shift``, each arm's mean change of test accuracy under
    re-estimation; and which arms behind the baseline saw their deficit ``closed`` by at least half or
    ``widened``, out of the arms ``behind``. ``None`` if the runs have no re-estimated evaluation."""
    if not all("test_accuracy_recalibrated" in r.final for runs in race.values() for r in runs):
        return None
    against = [(arm, baseline) for arm in race if arm != baseline]
    plain = exploratory(race, pairs(against))
    fixed = exploratory(race, pairs(against, metric="test_accuracy_recalibrated"))
    shift = {arm: statistics.fmean(r.final["test_accuracy_recalibrated"] - r.final["test_accuracy"] for r in runs)
             for arm, runs in race.items()}  # fmt: skip
    behind = [(row["comparison"].arm, row["mean"], again["mean"]) for row, again in zip(plain, fixed)
              if "mean" in row and "mean" in again and row["mean"] < 0]  # fmt: skip
    return {"plain": plain, "recalibrated": fixed, "shift": shift,
            "behind": [arm for arm, _, _ in behind],
            "closed": [arm for arm, before, after in behind if after > before / 2],
            "widened": [arm for arm, before, after in behind if after < before]}  # fmt: skip


def sqrt_check(points: list[dict[str, Any]]) -> dict[str, Any]:
    """§5.3's numbers: for each score and presample size (``rows``), the mean absolute log error of
    τ = BΣg² (``error_tau``) and of its square root (``error_sqrt``) against the measured variance
    ratio, and in how many of the ``seeds`` τ without the root was the closer
    (``closer_without_root``); the same count summed over sizes per score (``cases``:
    ``{score: (closer without the root, cases)}``); ``dropped_share``, the mean share of
    :math:`\\lVert\\bar G_U\\rVert^2` in the mean :math:`\\lVert G_i\\rVert^2` (the term §5.1
    drops); and the sampled check of the closed form for the bound: ``sampled_ratio`` (mean, least,
    largest of sampled ÷ closed form) and ``sampled_rel_se`` (one sampled ratio's relative standard
    error)."""
    sizes = sorted({p["B"] for p in points})
    seeds = sorted({p["seed"] for p in points})
    rows, cases = [], {}
    for score in ("bound", "loss", "exact"):
        closer = 0
        for size in sizes:
            at = [p for p in points if p["B"] == size]
            per_seed = [[p for p in at if p["seed"] == s] for s in seeds]
            n = sum(
                tau_log_error(g, score, "tau") < tau_log_error(g, score, "tau_sqrt")
                for g in per_seed
            )
            closer += n
            rows.append({"score": score, "B": size, "error_tau": tau_log_error(at, score, "tau"),
                         "error_sqrt": tau_log_error(at, score, "tau_sqrt"),
                         "closer_without_root": n, "seeds": len(seeds)})  # fmt: skip
        cases[score] = (closer, len(sizes) * len(seeds))
    sampled = [p["entry"]["bound"]["sampled"] / p["entry"]["bound"]["measured"] for p in points]
    return {"rows": rows, "cases": cases,
            "dropped_share": statistics.fmean(p["entry"]["mean_grad_sq"] / p["entry"]["mean_sq_norm"] for p in points),
            "sampled_ratio": (statistics.fmean(sampled), min(sampled), max(sampled)),
            "sampled_rel_se": statistics.fmean(p["entry"]["bound"]["sampled_rel_se"] for p in points)}  # fmt: skip


def sqrt_check_table(check: dict[str, Any]) -> str:
    """:func:`sqrt_check`'s rows as a markdown table (a log error of 0.1 is about 10%)."""
    lines = ["| g ∝ | B | log error of τ = BΣg² | log error of √(BΣg²) | seeds where τ = BΣg² is closer |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in check["rows"]:
        lines.append(f"| {r['score']} | {r['B']} | {r['error_tau']:.3f} | {r['error_sqrt']:.3f} "
                     f"| {r['closer_without_root']} / {r['seeds']} |")  # fmt: skip
    return "\n".join(lines)
