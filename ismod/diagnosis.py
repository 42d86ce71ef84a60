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
from .verdicts import Comparison, exploratory, exploratory_markdown, final_value, pairs, primary

__all__ = [
    "run_instruments",
    "DISSECTION_CONTROLS",
    "dissection_rows",
    "dissection_markdown",
    "dissection_findings",
    "critical_batch_rows",
    "critical_batch_markdown",
    "rule_inputs",
    "rule_inputs_markdown",
    "PREDICTIONS",
    "BATCH_NORM_TEST",
    "FREE_SCORE_RACE",
    "prediction_rows",
    "prediction_findings",
    "rule_check_markdown",
    "probe_increments",
    "pilot_summary",
    "race_lines",
    "recalibration_lines",
    "sqrt_check_markdown",
    "exploratory_line",
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
    unadjusted intervals) the test-accuracy difference and the log training-loss ratio."""
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
            acc, loss = exploratory(results, [Comparison(arm, row["control"], "test_accuracy"),
                                              Comparison(arm, row["control"], "train_eval_loss", transform=math.log)])  # fmt: skip
            row["accuracy_difference"], row["log_loss_ratio"] = acc, loss
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


# the variants that leave every weight of the method in place, and those that bound it
_KEEPS_WEIGHTS = ("forced, as is", "forced, BN ε = 1e-5", "forced, lr halved")
_BOUNDS_WEIGHTS = ("forced, unweighted (w = 1)", "forced, weights ≤ 5")


def dissection_findings(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences naming what the numbers of :func:`dissection_rows` separate: the arms that kept the
    method's weights against those that bounded them, with their largest weights and their training
    loss and accuracy against uniform, and the arm that scores what it trains on."""
    by_arm = {r["arm"]: r for r in rows}

    def describe(arm: str) -> str:
        r = by_arm[arm]
        ratio = r["log_loss_ratio"]
        return (f"{arm}: largest weight {_number(r['max_weight'], '.0f')}, training loss ×{math.exp(ratio['mean']):.2f} "
                f"[{math.exp(ratio['low']):.2f}, {math.exp(ratio['high']):.2f}] and test accuracy "
                f"{_interval(r['accuracy_difference'], 100, 2)} points against {r['control']}")  # fmt: skip

    out = []
    kept = [a for a in _KEEPS_WEIGHTS if a in by_arm and "mean" in by_arm[a]["log_loss_ratio"]]
    bounded = [a for a in _BOUNDS_WEIGHTS if a in by_arm and "mean" in by_arm[a]["log_loss_ratio"]]
    if kept:
        out.append("- **The method's weights kept**: " + "; ".join(describe(a) for a in kept) + ".")
    if bounded:
        out.append("- **Weights bounded**: " + "; ".join(describe(a) for a in bounded) + ".")
    faithful = "forced, scores what it trains on"
    if faithful in by_arm and "mean" in by_arm[faithful]["log_loss_ratio"]:
        out.append(
            f"- **Scoring the augmented images it trains on** (the authors' library): {describe(faithful)}."
        )
        if "forced, as is" in kept:
            before, after = by_arm["forced, as is"], by_arm[faithful]
            out.append(f"- Against *as is*, scoring what it trains on moved the training-loss ratio from "
                       f"×{math.exp(before['log_loss_ratio']['mean']):.2f} to ×{math.exp(after['log_loss_ratio']['mean']):.2f} "
                       f"and test accuracy from {100 * before['accuracy_difference']['mean']:+.2f} to "
                       f"{100 * after['accuracy_difference']['mean']:+.2f} points, with weights as large as before "
                       f"(largest {_number(after['max_weight'], '.0f')} against {_number(before['max_weight'], '.0f')}).")  # fmt: skip
    if kept and bounded:
        worst_bounded = max(by_arm[a]["log_loss_ratio"]["mean"] for a in bounded)
        best_kept = min(by_arm[a]["log_loss_ratio"]["mean"] for a in kept)
        if worst_bounded < best_kept:
            out.append(f"- Every arm that bounded the weights ({'; '.join(bounded)}) ended with a lower training loss, "
                       f"against its control, than every arm that kept them ({'; '.join(kept)}): ×{math.exp(worst_bounded):.2f} "
                       f"at worst against ×{math.exp(best_kept):.2f} at best. The harm goes with the weights.")  # fmt: skip
        else:
            out.append(
                "- The arms that bounded the weights and those that kept them overlap in training loss: "
                "the weights alone do not separate them."
            )
    return out


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


def prediction_findings(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per prediction: the claim, the verdict with its size, and whether it held."""
    out = []
    for r in rows:
        c = r["comparison"]
        if "mean" not in r:
            out.append(f"- {c.label} ({c.metric}): not tested.")
            continue
        if c.transform is math.log:
            size = (f"training loss ×{math.exp(r['mean']):.2f} [{math.exp(r['low']):.2f}, {math.exp(r['high']):.2f}], "
                    f"margin ×{math.exp(c.margin):.2f}")  # fmt: skip
        else:
            size = (f"test accuracy {100 * r['mean']:+.2f} points [{100 * r['low']:+.2f}, {100 * r['high']:+.2f}], "
                    f"margin ±{100 * c.margin:g}")  # fmt: skip
        verdict = r["verdict"].replace(f"±{c.margin:g}", f"±{100 * c.margin:g} points" if c.transform is None
                                       else f"×{math.exp(c.margin):.2f}")  # fmt: skip
        out.append(f"- **{c.label}** — predicted: {r['predicted']}. Measured: {size}, {r['seeds']} seeds; "
                   f"verdict *{verdict}* (Holm over the four). Prediction **{r['outcome']}**.")  # fmt: skip
    return out


def rule_check_markdown(check: Any) -> str:
    """``ismod.convex.rule_check`` as a table of measured against predicted steps, with the fitted
    and closed-form noise scales and τ, τ_eff above it."""
    head = (f"Fitted to uniform SGD: $S_{{\\min}}$ = {check.s_min:.1f} steps, $B_{{\\text{{crit}}}}$ = {check.b_crit:.0f}; "
            f"closed form at the target: $B_{{\\text{{simple}}}}$ = {check.b_simple:.0f}, "
            f"$B_{{\\text{{noise}}}}$ = {check.b_noise:.0f}; τ = {check.tau:.2f} for $p \\propto \\lVert G_i\\rVert$ over "
            f"all N, τ_eff = {check.tau_eff:.2f} from a presample of B = {check.presample_ratio}b.\n\n")  # fmt: skip
    lines = ["| b | uniform: measured | predicted | importance, all N: measured | predicted (τ) | "
             f"presample B = {check.presample_ratio}b: measured | predicted (τ_eff) | predicted with τ instead |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for i, b in enumerate(check.batch_sizes):
        lines.append(f"| {b} | {check.steps_uniform[i]:.0f} | {check.predicted(1.0, b):.1f} | "
                     f"{check.steps_importance[i]:.0f} | {check.predicted(check.tau, b):.1f} | "
                     f"{check.steps_presample[i]:.0f} | {check.predicted(check.tau_eff, b):.1f} | "
                     f"{check.predicted(check.tau, b):.1f} |")  # fmt: skip
    return head + "\n".join(lines)


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


def pilot_summary(label: str, points: list[dict[str, Any]]) -> str:
    """One sentence of :func:`rule_inputs`' points: τ's peak, τ_eff's range against the cost, the noise
    scale's range against b and what a step would be worth with scoring free."""
    if not points:
        return f"- {label}: no evaluation point with τ and a noise scale."
    peak = max(points, key=lambda p: p["tau"])
    pays = sum(p["pays"] for p in points)
    return (f"- {label}: τ peaked at {peak['tau']:.2f} (epoch {peak['epoch']:.0f}); τ_eff "
            f"{min(p['tau_eff'] for p in points):.2f}–{max(p['tau_eff'] for p in points):.2f} against a cost τ_th of "
            f"{min(p['tau_threshold'] for p in points):.2f}–{max(p['tau_threshold'] for p in points):.2f}, so the completed "
            f"rule says importance sampling pays in time at {pays} of {len(points)} points; B_simple "
            f"{min(p['b_simple'] for p in points):.0f}–{max(p['b_simple'] for p in points):.0f}; with scoring free, "
            f"{min(p['steps_ratio'] for p in points):.2f}–{max(p['steps_ratio'] for p in points):.2f} importance steps "
            "per uniform step.")  # fmt: skip


# --- Chapter 5's race (§5.5), read ------------------------------------------------------------------


def race_lines(race: dict[str, list[Any]], baseline: str = "uniform",
               forced: str = "upper bound, always") -> list[str]:  # fmt: skip
    """The race's lines: for each arm, when it switched, its share of importance steps, its steps
    against the baseline's and its final τ against τ_th; training loss and test error relative to the
    baseline; and the cost model checked on the forced arm (its share s of importance steps, each
    costing τ_th = 1 + (B/b) t_f/(t_f + t_b) uniform steps from its measured times, predicts
    1/(s τ_th + 1 − s) of the baseline's steps)."""
    base = race[baseline]
    uniform_steps = statistics.fmean(r.history[-1]["step"] for r in base)
    lines = []
    for label, runs in race.items():
        if label == baseline:
            continue
        h = [r.history[-1] for r in runs]
        share = statistics.fmean(x["importance_steps"] / max(x["steps"], 1) for x in h)
        lines.append(f"- **{label}**: switched at steps {[x['switch_step'] for x in h]} (None: never); {share:.0%} of "
                     f"its steps were importance steps; {statistics.fmean(x['steps'] for x in h):.0f} steps in the "
                     f"budget against uniform's {uniform_steps:.0f}; final τ {statistics.fmean(x['tau'] for x in h):.2f} "
                     f"vs τ_th {statistics.fmean(x['tau_threshold'] for x in h):.2f}.")  # fmt: skip
    rows = {r["arm"]: r for r in summarize(race, baseline=baseline)}
    for label in race:
        if label != baseline:
            r, u = rows[label], rows[baseline]
            lines.append(f"- {label} vs uniform at equal time: training loss ×{r['train_loss'][0] / u['train_loss'][0]:.2f}, "
                         f"test error ×{r['relative_test_error']:.2f}.")  # fmt: skip
    if forced in race:
        h = [r.history[-1] for r in race[forced]]
        steps_ratio = statistics.fmean(x["steps"] for x in h) / uniform_steps
        share = statistics.fmean(x["importance_steps"] / x["steps"] for x in h)
        # the cost of an importance step in uniform steps is the τ_th of the measured times, whatever
        # threshold the arm used
        saved = race[forced][0].config
        ratio = build_strategy(
            saved["strategy"], saved["strategy_options"]
        ).scoring_passes_per_sample
        threshold = statistics.fmean(
            1 + ratio * x["t_forward"] / (x["t_forward"] + x["t_backward"]) for x in h
        )
        predicted = 1 / (share * threshold + (1 - share))
        lines.append(f"- Cost model check, switch forced: {share:.0%} importance steps, each predicted to cost "
                     f"{threshold:.2f} uniform steps (τ_th from the measured t_f, t_b), so {predicted:.2f}× uniform's "
                     f"steps in the same time; measured {steps_ratio:.2f}× — the model "
                     f"{'overstates' if steps_ratio > predicted else 'understates'} the cost of an importance step here "
                     f"by {abs(steps_ratio / predicted - 1):.0%}.")  # fmt: skip
    return lines


def recalibration_lines(race: dict[str, list[Any]], baseline: str = "uniform") -> str | None:
    """The race's test accuracy against the baseline with the running batch-norm statistics and with
    statistics re-estimated on uniform batches (two tables of intervals, exploratory), and which arms' deficit
    re-estimation closed by at least half; ``None`` if the runs have no re-estimated evaluation."""
    if not all("test_accuracy_recalibrated" in r.final for runs in race.values() for r in runs):
        return None
    against = [(arm, baseline) for arm in race if arm != baseline]
    plain = exploratory(race, pairs(against))
    fixed = exploratory(race, pairs(against, metric="test_accuracy_recalibrated"))
    shift = {arm: statistics.fmean(r.final["test_accuracy_recalibrated"] - r.final["test_accuracy"] for r in runs)
             for arm, runs in race.items()}  # fmt: skip
    closed = [row["comparison"].arm for row, again in zip(plain, fixed)
              if "mean" in row and row["mean"] < 0 and again["mean"] > row["mean"] / 2]  # fmt: skip
    moved = ", ".join(f"{shift[arm]:+.1%} ({arm})" for arm in race)
    reading = (f"It closed at least half of the deficit against uniform for {', '.join(closed)}: there the running "
               "statistics, not the weights, carried the loss." if closed else
               "It closed less than half of any arm's deficit against uniform: the deficit is in the weights (or in the "
               "steps the arm could not take), not in the batch-norm statistics.")  # fmt: skip
    return ("Test accuracy against uniform, with the running statistics (exploratory):\n\n"
            + exploratory_markdown(plain, scale=100, digits=2)
            + "\n\nThe same weights with re-estimated statistics:\n\n" + exploratory_markdown(fixed, scale=100, digits=2)
            + f"\n\nRe-estimating the statistics moved test accuracy by {moved} on average. " + reading)  # fmt: skip


def sqrt_check_markdown(points: list[dict[str, Any]]) -> str:
    """§5.3's table: for each score and presample size, the mean absolute log error of τ = BΣg² and of
    its square root against the measured variance ratio, which is better seed by seed, the share of
    :math:`\\lVert\\bar G_U\\rVert^2` in the mean :math:`\\lVert G_i\\rVert^2` (the term §5.1 drops) and the
    sampled check of the closed form."""
    sizes = sorted({p["B"] for p in points})
    seeds = sorted({p["seed"] for p in points})
    rows = ["| g ∝ | B | τ = BΣg² | √(BΣg²) | better, seed by seed |", "|---|---|---|---|---|"]
    wins = {score: [0, 0] for score in ("bound", "loss", "exact")}
    for score in wins:
        for size in sizes:
            at = [p for p in points if p["B"] == size]
            per_seed = [[p for p in at if p["seed"] == s] for s in seeds]
            plain = [tau_log_error(group, score, "tau") for group in per_seed]
            root = [tau_log_error(group, score, "tau_sqrt") for group in per_seed]
            n_plain = sum(a < b for a, b in zip(plain, root))
            wins[score][0] += n_plain
            wins[score][1] += len(seeds)
            rows.append(f"| {score} | {size} | {tau_log_error(at, score, 'tau'):.3f} | "
                        f"{tau_log_error(at, score, 'tau_sqrt'):.3f} | without the root in {n_plain} of {len(seeds)} |")  # fmt: skip
    exact_gap = statistics.fmean(
        p["entry"]["mean_grad_sq"] / p["entry"]["mean_sq_norm"] for p in points
    )
    sampled = [p["entry"]["bound"]["sampled"] / p["entry"]["bound"]["measured"] for p in points]
    rel_se = statistics.fmean(p["entry"]["bound"]["sampled_rel_se"] for p in points)
    said = []
    for score, (n, total) in wins.items():
        verdict = ("without the root" if n == total else "with the root" if n == 0
                   else f"without the root in {n} and with it in {total - n}")  # fmt: skip
        said.append(f"for g ∝ {score}, {verdict} of the {total} (B, seed) cases")
    return ("Mean absolute log error of each formula against the measured ratio (0 is perfect; 0.1 is about 10%):\n\n"
            + "\n".join(rows)
            + f"\n\n**Measured:** the formula that predicts the variance ratio better is {'; '.join(said)}. "
            f"Across these presamples $\\lVert\\bar G_U\\rVert^2$ averaged {exact_gap:.1%} of the mean "
            "$\\lVert G_i\\rVert^2$ — the term §5.1 drops. Sampled minibatches confirm the closed form: sampled / "
            f"closed-form ratio {sum(sampled) / len(sampled):.3f} on average (range {min(sampled):.3f}–{max(sampled):.3f}; "
            f"relative standard error of one sampled ratio ≈ {rel_se:.3f}).")  # fmt: skip


def exploratory_line(results: dict[str, list[Any]], arm: str, baseline: str) -> str:
    """An exploratory comparison as a sentence: the training-loss ratio and the test-accuracy difference
    against ``baseline`` with unadjusted 95% intervals, the seeds, and no verdict word."""
    acc, loss = exploratory(results, [Comparison(arm, baseline, "test_accuracy"),
                                      Comparison(arm, baseline, "train_eval_loss", transform=math.log)])  # fmt: skip
    if "mean" not in loss:
        shared = sorted(
            {r.config["seed"] for r in results[arm]} & {r.config["seed"] for r in results[baseline]}
        )
        if not shared:
            return f"- {arm} against {baseline}: no shared seed."
        a = next(r for r in results[arm] if r.config["seed"] == shared[0])
        u = next(r for r in results[baseline] if r.config["seed"] == shared[0])
        return (f"- {arm} against {baseline} (exploratory, one seed — no interval): training loss "
                f"{final_value(a, 'train_eval_loss'):.3f} against {final_value(u, 'train_eval_loss'):.3f}, test accuracy "
                f"{100 * final_value(a, 'test_accuracy'):.1f}% against {100 * final_value(u, 'test_accuracy'):.1f}%.")  # fmt: skip
    return (f"- {arm} against {baseline} (exploratory, {loss['seeds']} seeds, unadjusted 95% intervals): training loss "
            f"×{math.exp(loss['mean']):.2f} [{math.exp(loss['low']):.2f}, {math.exp(loss['high']):.2f}], test accuracy "
            f"{_interval(acc, 100, 2)} points.")  # fmt: skip
