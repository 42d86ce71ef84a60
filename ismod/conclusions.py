"""Chapter 8's sentences: what the chapters' saved runs say about when importance sampling pays, and the
decision guide, each rule with the evidence of every scale that measured it (the readers of
:mod:`ismod.findings` and :mod:`ismod.diagnosis`, with the verdicts of :mod:`ismod.verdicts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnosis import probe_increments
from .experiments import Result
from .findings import (
    algorithm1_divergences,
    budget_directions,
    chapter6_exploratory,
    chapter6_primary,
    chapter7_pairs,
    chapter7_primary,
    summarize,
    tau_crossing,
    tau_log,
    tau_log_error,
    tau_points,
)
from .verdicts import exploratory, interval_text, pairs, primary, verdict_text

__all__ = [
    "Evidence",
    "switch_rule_lines",
    "selection_lines",
    "fragile_weights_line",
    "budget_lines",
    "decision_guide",
    "load_evidence",
]

Runs = dict[str, list[Result]]


@dataclass
class Evidence:
    """One scale's saved runs as Chapter 8 reads them (an empty grid: not measured at that scale)."""

    scale: str
    tau_runs: list[Result] = field(default_factory=list)  # Chapter 5's τ probe
    race: Runs = field(default_factory=dict)  # Chapter 6
    modelled: Runs = field(default_factory=dict)  # Chapter 6's race under measured step costs
    cost_model: Runs = field(default_factory=dict)  # Chapter 5's "should not pay" arms
    ch3: Runs = field(default_factory=dict)
    ch3_report: Runs = field(default_factory=dict)  # Chapter 3 under the report's optimiser
    ch7: Runs = field(default_factory=dict)
    long7: Runs = field(default_factory=dict)  # Chapter 7's room-to-overfit grid
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # Chapter 5's predictions
    tau_pilot: Result | None = None  # the τ pilot, where the scale has one instead of a τ probe run

    @property
    def tag(self) -> str:
        return f"`{self.scale}`"


def _crossing(run: Result) -> str:
    first, threshold = tau_crossing(run), run.history[-1]["tau_threshold"]
    if first is None:
        return "never crossed τ_th"
    return f"crossed τ_th = {threshold:.2f} at epoch {first:.1f} of {tau_log(run)[0][-1]:.1f}"


def _ratio(run: Result) -> float:
    return run.history[-1]["t_backward"] / run.history[-1]["t_forward"]


def switch_rule_lines(e: Evidence) -> list[str]:
    """§8.1: which τ formula matched the measured variance, what τ_th was, and what the switch did in
    the race (its share of importance steps and its test error against uniform's)."""
    points = tau_points(e.tau_runs)
    err = lambda score, key: tau_log_error(points, score, key)  # noqa: E731
    run = e.tau_runs[0]
    last = run.history[-1]
    _, tau, _ = tau_log(run)
    rows = {r["arm"]: r for r in summarize(e.race, baseline="uniform")}
    bound = [r.history[-1] for r in e.race["upper bound, τ switch"]]
    share = sum(h["importance_steps"] / max(h["steps"], 1) for h in bound) / len(bound)
    root = "without" if err("bound", "tau") < err("bound", "tau_sqrt") else "with"
    mostly = (
        "mostly kept uniform sampling"
        if share < 0.5
        else "switched to importance sampling for most steps"
    )
    return [
        f"- **For the upper bound, τ {root} the library's square root predicts the variance better.** Against "
        f"the variance ratio measured with exact per-sample gradients, τ = BΣg² is off by a mean factor "
        f"e^{err('bound', 'tau'):.3f} for the upper bound (e^{err('bound', 'tau_sqrt'):.3f} with the root) and "
        f"e^{err('exact', 'tau'):.3f} for exact norms (e^{err('exact', 'tau_sqrt'):.3f}); for the loss "
        f"e^{err('loss', 'tau_sqrt'):.3f} with the root against e^{err('loss', 'tau'):.3f} without. See "
        "{ref}`Chapter 5's τ check <ch5-sqrt>`.",
        f"- **τ_th depends on the model and the machine, so measure it.** In the τ run, t_b/t_f was "
        f"{_ratio(run):.2f} (the rule assumes 2), giving τ_th = {last['tau_threshold']:.2f}; τ with the upper "
        f"bound ended at {last['tau']:.2f}, above τ_th on {sum(t > last['tau_threshold'] for t in tau) / len(tau):.0%} "
        "of logged steps. See {ref}`the threshold <ch5-threshold>` and {ref}`τ over a run <ch5-tau-run>`.",
        f"- **At equal time, the rule with the bound {mostly}.** {share:.0%} of its steps were importance steps "
        f"and its test error was ×{rows['upper bound, τ switch']['relative_test_error']:.2f} uniform's; with the "
        f"loss as the score, ×{rows['loss, τ switch']['relative_test_error']:.2f} (means over seeds). See "
        "{ref}`the equal-time race <ch5-race>`.",
    ]  # fmt: skip


def _interval(row: dict[str, Any]) -> str:
    if "mean" not in row:
        return "not tested"
    return interval_text(row, digits=1, label=" ", close="")


def selection_lines(e: Evidence) -> list[str]:
    """§8.2: each strategy without a cost model at equal time — its selection share, its test error and
    training loss against uniform's, and its accuracy difference with an unadjusted interval
    (exploratory: Chapter 6's verdicts are on the τ switch)."""
    rows = {r["arm"]: r for r in summarize(e.race, baseline="uniform")}
    lines = []
    for arm in ("online batch selection", "prioritised replay", "selective backprop"):
        if arm not in e.race:
            continue
        r = rows[arm]
        [d] = exploratory(e.race, pairs([(arm, "uniform")]))
        lines.append(f"- **{arm}**: {r['selection_share'][0]:.0%} of training time selecting; test error "
                     f"×{r['relative_test_error']:.2f} uniform's, training loss ×{r['relative_train_loss']:.2f} "
                     f"(test accuracy {_interval(d)}, exploratory).")  # fmt: skip
    return lines


def fragile_weights_line(e: Evidence) -> str:
    """§8.3: how many of Chapter 3's Algorithm-1 runs diverged, and the two effects (means over seeds)."""
    rows = {r["arm"]: r["test_accuracy"][0] for r in summarize(e.ch3)}
    diverged, total = algorithm1_divergences(e.ch3)
    aug = rows["uniform, crop+flip"] - rows["uniform, no augmentation"]
    gap = rows["last-loss, crop+flip"] - rows["uniform, crop+flip"]
    report = ""
    if e.ch3_report:
        slow, runs = algorithm1_divergences(e.ch3_report)
        report = f" With the report's own optimiser (a learning rate 75 times lower) {slow} of {runs} diverged."
    return (f"- {diverged} of {total} Algorithm-1 runs of the fast schedule diverged; with crop+flip, last-loss "
            f"sampling moved test accuracy by {gap:+.1%} against uniform, and augmentation moved uniform's by "
            f"{aug:+.1%} (means over seeds).{report} See "
            "{ref}`Chapter 3's curves <fig-ch3-curves>`, {ref}`what the scores did <ch3-drift>` and "
            "{ref}`the variants <ch3-variants>`.")  # fmt: skip


def _primary7(e: Evidence) -> list[dict[str, Any]]:
    return primary({**e.ch7, **e.long7}, list(chapter7_primary(e.scale)), missing="not tested")


_METRICS = {"test_accuracy": "test accuracy", "train_eval_loss": "training loss"}


def _said(row: dict[str, Any]) -> str:
    c = row["comparison"]
    what = f"{c.label} ({_METRICS.get(c.metric, c.metric)})"
    if "mean" not in row:
        return f"{what}: not tested"
    return f"{what}: {verdict_text(row)}, {_interval(row)}"


def budget_lines(e: Evidence) -> list[str]:
    """§8.4: Chapter 7's declared verdicts, and the direction of the exploratory importance family."""
    rows = _primary7(e)
    lines = [f"- **{_said(r)}**" for r in rows if "mean" in r]
    family = chapter7_pairs(e.ch7)["importance"]
    explore = [r for r in exploratory(e.ch7, pairs(family)) if "mean" in r]
    below = sum(r["mean"] < 0 for r in explore)
    said = (
        f"below it in {below} of {len(explore)} comparisons (means over seeds)"
        if explore
        else "not tested"
    )
    lines.append(f"- Importance sampling against the uniform subset at the same budget and augmentation "
                 f"(exploratory): {said}. See {{ref}}`Figure 7.1 <fig-ch7-budget>`.")  # fmt: skip
    directions = budget_directions(e.ch7)
    if directions:
        text = "; ".join(directions)
        lines.append(f"- {text[0].upper()}{text[1:]}.")
    lines.append("- The iteration budget does not charge scoring passes; their wall-clock price is in "
                 "{ref}`Figure 7.2 <fig-ch7-time>`.")  # fmt: skip
    return lines


def _equal_time(e: Evidence) -> str:
    results = {**e.race, **e.modelled, **e.cost_model}
    rows = primary(results, list(chapter6_primary(e.scale)), missing="not tested")
    said = [_said(r) for r in rows if "mean" in r]
    # where the cost-model race is the primary one, say which race an exploratory row is from
    seconds = " in the seconds race" if e.modelled else ""
    said += [f"{r['comparison'].arm}{seconds if r['comparison'].baseline == 'uniform' else ''} {_interval(r)} "
             "(exploratory)" for r in chapter6_exploratory(results, e.scale)
             if "mean" in r and r["comparison"].metric == "test_accuracy"]  # fmt: skip
    return "; ".join(said) or "not tested (fewer than two seeds)"


def decision_guide(here: Evidence, gpu: Evidence | None = None) -> str:
    """§8.5 as Markdown: each rule of the guide with the evidence of this page's scale and of the saved
    ``gpu`` runs (``None`` or empty grids where not measured)."""
    scales = [here] + ([gpu] if gpu is not None and gpu.scale != here.scale else [])

    def each(fn, need) -> list[str]:
        return [f"{e.tag}: {fn(e)}" for e in scales if need(e)] or ["not measured"]

    def tau_formula(e: Evidence) -> str:
        points = tau_points(e.tau_runs)
        return (f"mean log error e^{tau_log_error(points, 'bound', 'tau'):.3f} without the root, "
                f"e^{tau_log_error(points, 'bound', 'tau_sqrt'):.3f} with it, over {len(points)} presamples "
                f"({len({p['seed'] for p in points})} seed(s), B = {sorted({p['B'] for p in points})})")  # fmt: skip

    def completed(e: Evidence) -> str:
        if e.outcomes:
            return ("the completed rule's predictions "
                    + ", ".join(r["outcome"] for r in e.outcomes if r["outcome"] != "reported") + " (§5.9)")  # fmt: skip
        caps = probe_increments(tau_points(e.tau_runs))
        return (f"the probe's τ_eff at most {max(v['tau_eff_max'] for v in caps.values()):.2f} against τ_th = "
                f"{e.tau_runs[0].history[-1]['tau_threshold']:.2f}")  # fmt: skip

    def weights(e: Evidence) -> str:
        diverged, total = algorithm1_divergences(e.ch3)
        return (
            f"{diverged} of {total} runs of the report's Algorithm 1 on the fast schedule diverged"
        )

    def importance(e: Evidence) -> str:
        p = _primary7(e)[1]
        return _said(p)

    def augmentation(e: Evidence) -> str:
        rows = _primary7(e)
        return "; ".join(
            [_said(r) for r in (rows[0], rows[2], rows[3]) if "mean" in r]
            + budget_directions(e.ch7)
        )

    # the short-budget claims alone (RICAP at 30% against the full crop+flip run, on either grid):
    # RICAP level with crop+flip at 100% says the regime rewards it, not that it rescues a budget
    gains = [r for e in scales if e.ch7 for i, r in enumerate(_primary7(e)) if i in (0, 2)]
    helps = any(
        r.get("verdict") == "higher" or r.get("verdict", "").startswith("equivalent") for r in gains
    )

    def tau_run(e: Evidence) -> Result | None:  # the pilot where a scale has one (the gpu scale's)
        return e.tau_pilot if e.tau_pilot is not None else (e.tau_runs[0] if e.tau_runs else None)

    rules = [
        ("Measure τ before you presample.",
         each(lambda e: f"τ with the upper bound {_crossing(tau_run(e))} under uniform training", tau_run)),
        ("Compute τ from the upper bound, with the formula that matched the measured variance (§8.1).",
         each(tau_formula, lambda e: e.tau_runs)),
        ("Compare τ_eff = 1/(1/τ + b/B), not τ, with τ_th, and only below the critical batch size (§5.6): with "
         "t_b = 2t_f no presample size pays in time unless τ > 5.6.", each(completed, lambda e: e.outcomes or e.tau_runs)),
        ("Measure t_b/t_f on your model and machine instead of assuming 2.",
         each(lambda e: f"{_ratio(tau_run(e)):.2f}", tau_run)),
        ("Bound the importance weights, or train unweighted (§8.3).", each(weights, lambda e: e.ch3)),
        ("Charge selection to the clock: at equal time a strategy must beat uniform by more than its selection "
         "costs.", each(_equal_time, lambda e: e.race or e.modelled)),
        ("Under a budget of iterations, a uniform subset is the baseline to beat.", each(importance, lambda e: e.ch7)),
        (("Strong augmentation can recover a short budget's accuracy; try it before importance sampling."
          if helps else "Do not count on strong augmentation to rescue a short budget: where measured here, "
          "RICAP at 30% was neither higher than nor equivalent to the full crop+flip run."),
         each(augmentation, lambda e: e.ch7)),
    ]  # fmt: skip
    return "\n".join(f"{k}. **{rule}** Evidence — " + "; ".join(evidence) + "."
                     for k, (rule, evidence) in enumerate(rules, 1))  # fmt: skip


def load_evidence(scale: str, results_dir: Any, *, train: bool = False) -> Evidence:
    """The saved runs of one scale that Chapter 8 reads (grids with none saved come back empty). With
    ``train``, missing runs are trained first, as the chapters' own pages do, unless the grid is over
    the scale's time limit (:func:`ismod.runner.run_suite` with ``if_over_budget="saved or none"``)."""
    from . import runner, suites
    from .diagnosis import prediction_rows

    def grid(name: str) -> Runs:
        suite = getattr(suites, name)(scale)
        if train:
            return runner.run_suite(suite, results_dir, scale=scale, if_over_budget="saved or none")
        return runner.load_suite(suite, results_dir)

    predicted = grid("chapter5_prediction")
    complete = len(predicted) == len(suites.chapter5_prediction(scale))
    return Evidence(scale, tau_runs=grid("chapter5_tau").get("τ probe", []), race=grid("chapter6"),
                    modelled=grid("chapter6_modelled"),
                    cost_model={k: v for k, v in predicted.items() if k.startswith("should not pay")},
                    ch3=grid("chapter3"), ch3_report=grid("chapter3_report"), ch7=grid("chapter7"),
                    long7=grid("chapter7_overfit"), outcomes=prediction_rows(predicted) if complete else [])  # fmt: skip
