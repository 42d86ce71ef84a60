"""Reading a chapter's saved runs: summary tables, paired comparisons with Holm's correction, the
budget and τ readers, and the sentences a chapter states from them (Chapter 5's diagnosis is in
:mod:`ismod.diagnosis`, the verdict vocabulary in :mod:`ismod.verdicts`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any

from .experiments import Result
from .suites import (
    CHAPTER6_PRIMARY_ARMS,
    CHAPTER7_AUGMENTATIONS,
    CHAPTER7_BUDGETS,
    CHAPTER7_OVERFIT_EPOCHS,
    CHAPTER7_PRIMARY_ARMS,
    CHAPTER7_STRATEGIES,
    SPEED_PRIMARY_ARM,
    chapter7_label,
    chapter7_overfit_label,
    equal_time,
    modelled_label,
)
from .train import scored_samples
from .stats import holm, paired_difference, verdict
from .verdicts import Comparison, Speedup, exploratory, pairs, primary, speedups

__all__ = [
    "tau_crossing",
    "tau_points",
    "tau_log_error",
    "provenance_summary",
    "chapter7_pairs",
    "divergence_epoch",
    "sampling_log",
    "tau_log",
    "summarize",
    "budget_curves",
    "budget_time_ratios",
    "budget_cost_table",
    "scored_per_trained",
    "importance_share",
    "accuracy_difference",
    "markdown_table",
    "ACCURACY_MARGIN",
    "LOSS_RATIO_MARGIN",
    "CHAPTER3_PRIMARY",
    "chapter6_primary",
    "chapter7_primary",
    "claim_verdict",
    "chapter3_numbers",
    "fit_epoch",
    "overfit_pilot_table",
    "chapter6_exploratory",
    "with_modelled_clock",
    "race_clock",
    "chapter6_speed_primary",
    "speed_rows",
    "chapter6_speed_verdicts",
    "chapter7_exploratory",
    "algorithm1_divergences",
]


def tau_crossing(result: Result) -> float | None:
    """The epoch at which τ, as :func:`tau_log` records it, first exceeded the run's τ_th (its last
    recorded value); ``None`` if it never did."""
    x, tau, _ = tau_log(result)
    threshold = result.history[-1]["tau_threshold"]
    return next((epoch for epoch, t in zip(x, tau) if t > threshold), None)


def tau_points(runs: list[Result]) -> list[dict[str, Any]]:
    """Every presample checked by :func:`ismod.suites.chapter5_tau`'s runs, as ``{"seed", "epoch", "B", "entry"}``
    (``entry`` as :func:`ismod.experiments.tau_probe` records it), smaller presamples included."""
    points = []
    for r in runs:
        big = 3 * r.config["tau_probe_batch"]
        for h in r.history:
            for entry in (h.get("probe") or {}).get("tau", []):
                points.append(
                    {"seed": r.config["seed"], "epoch": h["epoch"], "B": big, "entry": entry}
                )
                for size, smaller in entry.get("smaller", {}).items():
                    points.append(
                        {
                            "seed": r.config["seed"],
                            "epoch": h["epoch"],
                            "B": int(size),
                            "entry": smaller,
                        }
                    )
    return points


def tau_log_error(points: list[dict[str, Any]], score: str, key: str = "tau") -> float:
    """Mean ``abs(log(predicted τ / measured variance ratio))`` over ``points`` (:func:`tau_points`) for g ∝
    ``score`` and τ as ``key`` (``"tau"`` = BΣg², ``"tau_sqrt"`` = its square root)."""
    if not points:
        raise ValueError("no τ points: the runs recorded no τ probe")
    errors = [abs(math.log(p["entry"][score][key] / p["entry"][score]["measured"])) for p in points]
    return sum(errors) / len(errors)


def provenance_summary(results: dict[str, list[Result]]) -> str:
    """One paragraph of where a set of results comes from: devices, data, dates, commits, commands."""
    runs = [r for rs in results.values() for r in rs]
    if not runs:
        return "no saved results"

    def values(key: str) -> str:
        return ", ".join(sorted({str(r.provenance.get(key, "?")) for r in runs}))

    commits = sorted({str(r.provenance.get("git_commit", "?"))[:12] for r in runs})
    commands = sorted({r.provenance.get("command") or "(not recorded)" for r in runs})
    return (f"{len(runs)} runs on {values('device')}; data {values('data_source')}; "
            f"dates {', '.join(sorted({str(r.provenance.get('date', '?'))[:10] for r in runs}))}; commit {', '.join(commits)}; "
            f"torch {values('torch_version')}; command: {' / '.join(f'`{c}`' for c in commands)}")  # fmt: skip


def chapter7_pairs(results: dict[str, list[Result]]) -> dict[str, list[tuple[str, str]]]:
    """Chapter 7's families of comparisons among the arms present in ``results``, each an
    ``(arm, baseline)`` at the same budget: ``"importance"`` — each strategy against the uniform subset
    with the same augmentation; ``"augmentation"`` — the uniform subset with mixup or RICAP against it
    with crop+flip (the 100% runs included)."""
    pairs: dict[str, list[tuple[str, str]]] = {"importance": [], "augmentation": []}
    for f in CHAPTER7_BUDGETS:
        for aug in CHAPTER7_AUGMENTATIONS:
            base = chapter7_label("uniform subset", aug, f)
            if base not in results:
                continue
            for strategy in CHAPTER7_STRATEGIES:
                arm = chapter7_label(strategy, aug, f)
                if strategy != "uniform subset" and arm in results:
                    pairs["importance"].append((arm, base))
            plain = chapter7_label("uniform subset", "crop+flip", f)
            if aug != "crop+flip" and plain in results:
                pairs["augmentation"].append((base, plain))
    return pairs


def divergence_epoch(result: Result) -> float | None:
    """The epoch of the first evaluation point whose training loss is NaN; ``None`` if the run never diverged."""
    return next(
        (
            h["epoch"]
            for h in result.history
            if h.get("train_loss") is not None and math.isnan(h["train_loss"])
        ),
        None,
    )


def sampling_log(result: Result) -> list[dict[str, Any]]:
    """A scored strategy's per-epoch distribution log, gathered from the history records."""
    return [entry for h in result.history for entry in h.get("sampling", [])]


def tau_log(result: Result) -> tuple[list[float], list[float], list[int]]:
    """The :class:`~ismod.strategies.presample.Presample` τ log: (epochs, τ, 1 for importance steps)."""
    rows = [row for h in result.history for row in h.get("tau_log", [])]
    n, b = result.provenance["train_size"], result.config["batch_size"]
    return [s * b / n for s, _, _ in rows], [t for _, t, _ in rows], [p for _, _, p in rows]


def gradient_error_log(result: Result) -> dict[str, tuple[list[float], list[float]]]:
    """The gradient-error probe of a run (``gradient_error_draws``): for each normalisation mode it
    measured, (epochs, importance / uniform error ratios) over the evaluation points. Empty for a
    run without the probe."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for h in result.history:
        for mode, entry in (h.get("gradient_error") or {}).items():
            if isinstance(entry, dict):
                epochs, ratios = out.setdefault(mode, ([], []))
                epochs.append(h["epoch"])
                ratios.append(entry["ratio"])
    return out


def _final(result: Result, key: str) -> float | None:
    for h in reversed(result.history):
        if h.get(key) is not None:
            return float(h[key])
    return None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); a diverged seed (nan) makes both nan, visibly."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _test_accuracy(runs: list[Result]) -> tuple[float, float]:
    return _mean_sd([r.final["test_accuracy"] for r in runs])


def summarize(
    results: dict[str, list[Result]], baseline: str | None = None
) -> list[dict[str, Any]]:
    """One row per arm: mean and standard deviation over seeds of the final test accuracy, training
    loss (on the fixed training subset when recorded, else the trained batches; over the seeds that did
    not diverge, whose number is ``diverged``), training seconds,
    and the share of training time spent selecting (scoring and sampling); with ``baseline``, the
    test error and training loss relative to the baseline arm's (ratios of the seed means)."""
    rows = []
    for label, runs in results.items():
        loss_key = (
            "train_eval_loss" if _final(runs[0], "train_eval_loss") is not None else "train_loss"
        )
        acc = _test_accuracy(runs)
        losses = [_final(r, loss_key) for r in runs]
        finite = [v for v in losses if v is not None and not math.isnan(v)]  # diverged: nan
        loss = _mean_sd(finite) if finite else (math.nan, math.nan)
        secs = _mean_sd([r.final["train_time"] for r in runs])
        share = _mean_sd([r.timing["selection"] / max(r.final["train_time"], 1e-9) for r in runs])
        rows.append({"arm": label, "seeds": len(runs), "test_accuracy": acc, "train_loss": loss, "loss_kind": loss_key,
                     "diverged": sum(v is not None and math.isnan(v) for v in losses), "train_seconds": secs, "selection_share": share})  # fmt: skip
    if baseline is not None:
        base = next(r for r in rows if r["arm"] == baseline)
        for r in rows:
            r["relative_test_error"] = (1.0 - r["test_accuracy"][0]) / (
                1.0 - base["test_accuracy"][0]
            )
            r["relative_train_loss"] = r["train_loss"][0] / base["train_loss"][0]
    return rows


def budget_curves(
    results: dict[str, list[Result]], dataset: str = "cifar10"
) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """Chapter 7's results as Arazo et al. plot them: for each augmentation and strategy, a list of
    (budget fraction, mean, sample standard deviation) of the final test accuracy over seeds. The
    uniform subset's 100% point is the full run, shared by every strategy's curve."""
    out: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for aug in CHAPTER7_AUGMENTATIONS:
        per_strategy = {}
        for strategy in CHAPTER7_STRATEGIES:
            points = []
            for f in CHAPTER7_BUDGETS:
                runs = results.get(chapter7_label(strategy, aug, f, dataset))
                if runs:
                    points.append((f, *_test_accuracy(runs)))
            if points:
                per_strategy[strategy] = points
        if per_strategy:
            out[aug] = per_strategy
    return out


def budget_time_ratios(
    results: dict[str, list[Result]], augmentation: str = "crop+flip"
) -> dict[str, dict[float, float]]:
    """Chapter 7's wall-clock price outside the iteration budget: for each strategy and budget below
    100%, its mean training seconds over seeds divided by the uniform subset's at the same budget and
    augmentation (arms without runs are left out)."""

    def mean_seconds(runs: list[Result]) -> float:
        return sum(r.final["train_time"] for r in runs) / len(runs)

    out: dict[str, dict[float, float]] = {}
    for strategy in CHAPTER7_STRATEGIES:
        for f in CHAPTER7_BUDGETS[:-1]:
            runs = results.get(chapter7_label(strategy, augmentation, f))
            base = results.get(chapter7_label("uniform subset", augmentation, f))
            if runs and base:
                out.setdefault(strategy, {})[f] = mean_seconds(runs) / mean_seconds(base)
    return out


def budget_cost_table(results: dict[str, list[Result]], augmentation: str = "crop+flip") -> str:
    """Chapter 7's training-time ratios (:func:`budget_time_ratios`) against the uniform subset, one row
    per strategy and a column per partial budget, as a Markdown table; a τ arm that never switched is
    marked, since its steps were uniform and its ratio is no price of importance sampling."""
    partial = list(CHAPTER7_BUDGETS[:-1])
    tau = "upper bound, τ switch"

    def cell(strategy: str, f: float, ratio: float | None) -> str:
        if ratio is None:
            return ""
        runs = results.get(chapter7_label(tau, augmentation, f)) if strategy == tau else None
        never = bool(runs) and importance_share(runs) == 0
        return f"×{ratio:.2f}" + (" (never switched)" if never else "")

    table = ["| strategy | " + " | ".join(f"{f:.0%}" for f in partial) + " |",
             "|" + "---|" * (1 + len(partial))]  # fmt: skip
    for strategy, by_budget in budget_time_ratios(results, augmentation).items():
        table.append(
            f"| {strategy} | "
            + " | ".join(cell(strategy, f, by_budget.get(f)) for f in partial)
            + " |"
        )
    return "\n".join(table)


def scored_per_trained(results: dict[str, list[Result]], strategy: str, augmentation: str = "crop+flip") -> dict[float, float]:  # fmt: skip
    """For each partial budget, the samples ``strategy`` scored per sample it trained on (mean over
    seeds): its extra forward passes, which do not depend on how busy the machine was."""
    out = {}
    for f in CHAPTER7_BUDGETS[:-1]:
        runs = results.get(chapter7_label(strategy, augmentation, f)) or []
        if runs:
            out[f] = sum(r.history[-1]["scored_per_trained"] for r in runs) / len(runs)
    return out


def importance_share(runs: list[Result]) -> float:
    """The τ switch's share of importance steps (presample, score, resample), mean over seeds."""
    last = [r.history[-1] for r in runs]
    return sum(h.get("importance_steps", 0) / max(h.get("steps") or 1, 1) for h in last) / len(last)


def accuracy_difference(runs: list[Result], baseline: list[Result]) -> tuple[float, float]:
    """Mean final test accuracy of ``runs`` minus that of ``baseline``, and the standard error of that
    difference from the two seed spreads, :math:`\\sqrt{s_a^2/n_a + s_b^2/n_b}` (0 with one seed each).
    A difference beyond two standard errors is one the seeds do not explain."""
    (ma, sa), (mb, sb) = _test_accuracy(runs), _test_accuracy(baseline)
    return ma - mb, math.sqrt(sa**2 / len(runs) + sb**2 / len(baseline))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """:func:`summarize`'s rows as a Markdown table (mean ± standard deviation over seeds; a training
    loss over the seeds that did not diverge, their number said, never ``nan ± nan``)."""
    rel = "relative_test_error" in rows[0]
    head = "| arm | seeds | test accuracy | training loss | training s | selection share |" + (
        " training loss / baseline | test error / baseline |" if rel else ""
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        a, lo, s, sh = r["test_accuracy"], r["train_loss"], r["train_seconds"], r["selection_share"]
        k = r.get("diverged", 0)
        loss = (
            "diverged"
            if k == r["seeds"]
            else f"{lo[0]:.3f} ± {lo[1]:.3f}" + (f" ({k} diverged)" if k else "")
        )
        line = (f"| {r['arm']} | {r['seeds']} | {a[0]:.1%} ± {a[1]:.1%} | {loss} | "
                f"{s[0]:.0f} ± {s[1]:.0f} | {sh[0]:.1%} |")  # fmt: skip
        if rel:
            line += f" {r['relative_train_loss']:.2f} | {r['relative_test_error']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


# Each experiment chapter's declared primary comparisons (Holm runs over each chapter's family; every
# other comparison a chapter shows is exploratory: an interval, no verdict word). Margins: one point of
# test accuracy, and ×1.25 for a ratio of training losses (a quarter, against the ×10 that
# Katharopoulos & Fleuret report).
ACCURACY_MARGIN = 0.01
LOSS_RATIO_MARGIN = math.log(1.25)

CHAPTER3_PRIMARY: tuple[Comparison, ...] = (
    Comparison("last-loss, report's optimiser", "uniform, report's optimiser", margin=ACCURACY_MARGIN,
               label="last-loss − uniform, report's optimiser"),
    Comparison("running-loss, report's optimiser", "uniform, report's optimiser", margin=ACCURACY_MARGIN,
               label="running-loss − uniform, report's optimiser"),
    Comparison("uniform, crop+flip", "uniform, no augmentation", margin=ACCURACY_MARGIN,
               label="crop+flip − no augmentation, uniform"),
)  # fmt: skip

# The race's arms (Chapters 5 and 6's equal-time grid), whatever the scale.
RACE_ARMS: tuple[str, ...] = tuple(equal_time("smoke"))


def chapter6_primary(scale: str) -> tuple[Comparison, ...]:
    """Chapter 6's primary comparisons: Katharopoulos & Fleuret's headline, the upper bound's τ switch
    against uniform on test accuracy and on the training-loss ratio, (1–2) at equal time and (3–4)
    under the cost model of a forward-pass budget (Chapter 5's "should not pay" grid). Equal time is
    the seconds race on a GPU, which has its machine to itself; at ``cpu`` and ``smoke`` scale it is
    the race under measured step costs (:func:`ismod.suites.chapter6_modelled`), so that the load of
    a shared machine cannot decide the verdict, and the seconds race is exploratory."""
    arm, uniform = CHAPTER6_PRIMARY_ARMS
    if scale in ("cpu", "smoke"):
        arm, uniform, where = modelled_label(arm), modelled_label(uniform), "equal modelled time"
    else:
        where = "equal time"
    return (
        Comparison(arm, uniform, margin=ACCURACY_MARGIN, label=f"τ switch − uniform, {where}"),
        Comparison(arm, uniform, metric="train_eval_loss", transform=math.log, margin=LOSS_RATIO_MARGIN,
                   label=f"τ switch / uniform, {where}"),
        Comparison("should not pay: τ switch", "should not pay: uniform", margin=ACCURACY_MARGIN,
                   label="τ switch − uniform, equal forward passes"),
        Comparison("should not pay: τ switch", "should not pay: uniform", metric="train_eval_loss",
                   transform=math.log, margin=LOSS_RATIO_MARGIN, label="τ switch / uniform, equal forward passes"),
    )  # fmt: skip


def chapter7_primary(scale: str) -> tuple[Comparison, ...]:
    """Chapter 7's primary comparisons: Arazo et al.'s headline (RICAP at 30% against the full
    crop+flip run) on the main grid and where the full run has room to overfit
    (:func:`ismod.suites.chapter7_overfit`), RICAP against crop+flip at 100% there (does the regime
    reward regularisation at all?), and p-SGD against the uniform subset at 30% (importance sampling
    under a budget)."""
    main = {k: chapter7_label(*k) for k in CHAPTER7_PRIMARY_ARMS}
    long = {
        (a, f): chapter7_overfit_label(a, f, scale)
        for a in ("crop+flip", "RICAP")
        for f in (0.3, 1.0)
    }
    epochs = CHAPTER7_OVERFIT_EPOCHS[scale]
    m = ACCURACY_MARGIN
    return (
        Comparison(main["uniform subset", "RICAP", 0.3], main["uniform subset", "crop+flip", 1.0], margin=m,
                   label="RICAP 30% − crop+flip 100%"),
        Comparison(main["p-SGD", "crop+flip", 0.3], main["uniform subset", "crop+flip", 0.3], margin=m,
                   label="p-SGD − uniform subset, 30%"),
        Comparison(long["RICAP", 0.3], long["crop+flip", 1.0], margin=m,
                   label=f"RICAP 30% − crop+flip 100%, {epochs} epochs"),
        Comparison(long["RICAP", 1.0], long["crop+flip", 1.0], margin=m,
                   label=f"RICAP − crop+flip at 100%, {epochs} epochs"),
    )  # fmt: skip


def _word(row: dict[str, Any]) -> str:
    return row.get("verdict", "not tested")


def claim_verdict(rows: list[dict[str, Any]]) -> str:
    """One verdict word for a claim that several primary rows test together ("each sampler is no
    better than uniform"): ``"equivalent"`` only if every row is equivalent within its margin, else
    ``"higher"`` or ``"lower"`` if any row is (higher first), else ``"not tested"`` if any row was not
    run, else ``"inconclusive"``."""
    words = [_word(r) for r in rows]
    if words and all(w.startswith("equivalent") for w in words):
        return "equivalent"
    for word in ("higher", "lower", "not tested"):
        if word in words:
            return word
    return "inconclusive"


def chapter3_numbers(grid: dict[str, list[Result]], report: dict[str, list[Result]],
                     variants: dict[str, list[Result]]) -> dict[str, Any]:  # fmt: skip
    """What Chapter 3's prose states, as numbers and verdict words (the sentences are the chapter's):

    - ``primary``: the rows of ``CHAPTER3_PRIMARY`` over the main and the report's-optimiser grids
      (:func:`ismod.verdicts.primary`; differences in accuracy, not points);
    - ``samplers_verdict``: :func:`claim_verdict` of the two sampler rows, the report's "no better than
      uniform"; ``augmentation_verdict``: the crop+flip row's word; ``detectable``: the larger of the two
      sampler rows' detectable differences (``nan`` if not tested);
    - ``report_fit``: uniform's mean accuracy on the fixed training subset with the report's optimiser
      (``None`` if not recorded);
    - ``fast``: last-loss and running-loss minus uniform (mean test accuracy, crop+flip, fast schedule);
      ``diverged`` and ``diverged_report``: ``(diverged, runs)`` of Algorithm 1 in each grid;
    - ``best_variant``, ``best_variant_difference`` and ``variant_seeds``: the variant of §3.5 with the
      highest mean test accuracy against uniform on the same seeds (``None`` without variants).
    """
    rows = primary({**grid, **report}, list(CHAPTER3_PRIMARY), missing="not tested")
    samplers = rows[:2]
    fitted = [
        r.history[-1].get("train_eval_accuracy")
        for r in report.get("uniform, report's optimiser", [])
    ]
    numbers: dict[str, Any] = {
        "primary": rows,
        "samplers_verdict": claim_verdict(samplers),
        "augmentation_verdict": _word(rows[2]),
        "detectable": max((r.get("detectable", math.nan) for r in samplers), default=math.nan),
        "report_fit": sum(fitted) / len(fitted) if fitted and None not in fitted else None,
        "fast": {},
        "diverged": algorithm1_divergences(grid),
        "diverged_report": algorithm1_divergences(report),
        "best_variant": None,
        "best_variant_difference": None,
        "variant_seeds": 0,
    }
    if "uniform, crop+flip" in grid:
        u = _test_accuracy(grid["uniform, crop+flip"])[0]
        numbers["fast"] = {kind: _test_accuracy(grid[f"{kind}, crop+flip"])[0] - u
                           for kind in ("last-loss", "running-loss") if f"{kind}, crop+flip" in grid}  # fmt: skip
        seeds = {r.config["seed"] for r in next(iter(variants.values()), [])}
        base = [r for r in grid["uniform, crop+flip"] if r.config["seed"] in seeds]
        if variants and base:
            diffs = {k: _test_accuracy(v)[0] - _test_accuracy(base)[0] for k, v in variants.items()}
            best = max(diffs, key=diffs.get)
            numbers.update(
                best_variant=best, best_variant_difference=diffs[best], variant_seeds=len(base)
            )
    return numbers


def chapter6_exploratory(results: dict[str, list[Result]], scale: str) -> list[dict[str, Any]]:
    """Every race arm against its race's uniform, test accuracy then the training-loss ratio, except
    the pairs :func:`chapter6_primary` declares: exploratory. On a GPU the race is the seconds one;
    at ``cpu`` and ``smoke`` scale it is the cost-model race (:func:`ismod.suites.chapter5`), read
    under its ``modelled_label`` names only, since its plain labels name the same runs."""
    declared = {(c.arm, c.baseline) for c in chapter6_primary(scale)}
    others = []
    for label in (modelled_label,) if scale in ("cpu", "smoke") else (str,):
        uniform = label("uniform")
        others += [(label(a), uniform) for a in RACE_ARMS if a != "uniform" and uniform in results
                   and label(a) in results and (label(a), uniform) not in declared]  # fmt: skip
    comparisons = pairs(others) + pairs(others, metric="train_eval_loss", transform=math.log)
    return exploratory(results, comparisons)


def chapter7_exploratory(results: dict[str, list[Result]]) -> list[dict[str, Any]]:
    """Chapter 7's two exploratory families (:func:`chapter7_pairs`): each strategy against the uniform
    subset, and mixup and RICAP against crop+flip, at the same budget."""
    family = chapter7_pairs(results)
    return exploratory(results, pairs(family["importance"] + family["augmentation"]))


def algorithm1_divergences(grid: dict[str, list[Result]]) -> tuple[int, int]:
    """How many of a Chapter 3 grid's importance-sampled runs (every arm but uniform) diverged, of how many."""
    runs = [r for arm, v in grid.items() if not arm.startswith("uniform") for r in v]
    return sum(divergence_epoch(r) is not None for r in runs), len(runs)


def fit_epoch(result: Result, threshold: float = 0.99) -> float | None:
    """The first evaluation epoch at which accuracy on the fixed (un-augmented) training subset reached
    ``threshold``; ``None`` if it never did."""
    return next(
        (h["epoch"] for h in result.history if (h.get("train_eval_accuracy") or 0) >= threshold),
        None,
    )


def overfit_pilot_table(pilot: dict[str, list[Result]], threshold: float = 0.99) -> str:
    """The pilot of :func:`ismod.suites.chapter7_overfit` as a Markdown table: per full run, its accuracy
    on the fixed training subset at each evaluation point, the epoch it first reached ``threshold``, and
    its test accuracy."""
    lines = [f"| run (seed 0) | training-subset accuracy at the evaluation points | first ≥ {threshold:.0%} "
             "| test accuracy |", "|---|---|---:|---:|"]  # fmt: skip
    for label, runs in pilot.items():
        r = runs[0]
        path = ", ".join(
            f"{h['train_eval_accuracy']:.0%}" for h in r.history[1:] if "train_eval_accuracy" in h
        )
        fit = fit_epoch(r, threshold)
        when = "–" if fit is None else f"epoch {fit:g} of {r.history[-1]['epoch']:g}"
        lines.append(f"| {label} | {path} | {when} | {r.final['test_accuracy']:.1%} |")
    return "\n".join(lines)


def race_clock(runs: dict[str, list[Result]]) -> str:
    """The history key a race's time budget counts in: ``"modelled_seconds"`` when any run has a
    cost-model budget (read it after :func:`with_modelled_clock`), else ``"wall_time"``."""
    modelled = any(r.config.get("budget") == "modelled_seconds" for rs in runs.values() for r in rs)
    return "modelled_seconds" if modelled else "wall_time"


def with_modelled_clock(runs: dict[str, list[Result]]) -> dict[str, list[Result]]:
    """The runs of a cost-model race with every history record carrying ``modelled_seconds``, the
    budget's clock (:func:`ismod.train.modelled_seconds`), so that time to a target can be read in it.

    Runs recorded since records carry it keep theirs. For a run saved before, a record's clock is
    ``step × step_seconds + scored × score_seconds`` with the samples scored by then spread evenly over
    the steps that score: all of them for an arm that scores at a steady rate, the importance steps of
    its τ log for a τ switch. The last record's clock is then the run's own ``modelled_seconds``.
    Runs without a cost model (``step_seconds`` 0) are returned as they are."""

    def clocked(r: Result) -> Result:
        step_s, score_s = r.config.get("step_seconds", 0.0), r.config.get("score_seconds", 0.0)
        if step_s <= 0 or all("modelled_seconds" in h for h in r.history):
            return r
        steps = r.final["steps"]
        scored = scored_samples(steps, r.final["forward_passes"], r.config["batch_size"])
        log = [(int(k), bool(imp)) for h in r.history for k, _, imp in h.get("tau_log") or []]
        scoring = sorted(k for k, imp in log if imp) if log else None
        total = len(scoring) if scoring is not None else steps

        def before(step: int) -> int:  # the scoring steps done by the record at ``step``
            return bisect.bisect_left(scoring, step) if scoring is not None else step

        history = [{**h, "modelled_seconds": h["step"] * step_s
                    + (scored * before(h["step"]) / total if total else 0.0) * score_s}
                   for h in r.history]  # fmt: skip
        return dataclasses.replace(r, history=history)

    return {arm: [clocked(r) for r in rs] for arm, rs in runs.items()}


def chapter6_speed_primary(scale: str) -> tuple[Comparison, ...]:
    """The accuracy half of Chapter 6's declared speed comparison (§6.6): InfoBatch run for as many of
    its own epochs as uniform's cost-model run has (``ismod.suites.SPEED_PRIMARY_ARM``, fewer steps)
    against that uniform run, test accuracy, equivalence margin ±1 point. Its time half is the same
    arm's speed-up to uniform's final training loss; :func:`chapter6_speed_verdicts` tests both, with
    Holm's correction over the two."""
    return (
        Comparison(SPEED_PRIMARY_ARM, modelled_label("uniform"), margin=ACCURACY_MARGIN,
                   label="InfoBatch (uniform's epochs) − uniform, test accuracy"),
    )  # fmt: skip


# the speed-up read for each metric: (record key, lower is better, words)
SPEED_METRICS: tuple[tuple[str, bool, str], ...] = (
    ("train_eval_loss", True, "training loss"), ("test_accuracy", False, "test accuracy"))  # fmt: skip


def speed_rows(results: dict[str, list[Result]], *, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Every arm's speed-up over uniform's cost-model run (``modelled_label("uniform")``) to uniform's
    final training loss (fixed training subset) and final test accuracy, in modelled seconds
    (:func:`with_modelled_clock`, :func:`ismod.verdicts.speedups`), one row per arm and metric.

    A row's ``verdict``: *not reached* if any seed never reached uniform's value (there is no time at
    which it matched uniform, so no speed-up to report); otherwise *higher* or *lower* when the paired
    t-test of the log speed-ups against 0 (``p_value``) rejects at ``alpha``, else *inconclusive*.
    Unadjusted: :func:`chapter6_speed_verdicts` adjusts the declared row."""
    uniform = modelled_label("uniform")
    clocked = with_modelled_clock(results)
    rows = []
    for arm in clocked:
        if arm == uniform or uniform not in clocked:
            continue
        for metric, lower, words in SPEED_METRICS:
            s = speedups(
                clocked, arm, uniform, metric, lower_is_better=lower, clock="modelled_seconds"
            )
            # a ratio of 0: uniform met its own final value at its first record (a run too short
            # to move it), so there is no time to compare; speedups() leaves it out of its mean too
            logs = [math.log(r) for r in s.ratios.values() if r is not None and r > 0]
            p = None
            if not s.not_reached and len(logs) >= 2:
                p = paired_difference(logs, [0.0] * len(logs)).p_value
            rows.append({"arm": arm, "metric": words, "speedup": s, "p_value": p,
                         "verdict": _speed_verdict(s, p, alpha)})  # fmt: skip
    return rows


def _speed_verdict(s: Speedup, p: float | None, alpha: float) -> str:
    if not s.ratios:
        return "not tested"
    if s.not_reached:
        return "not reached"
    if p is not None and p < alpha:
        return "higher" if s.mean > 1 else "lower"
    return "inconclusive"


def chapter6_speed_verdicts(
    results: dict[str, list[Result]], *, alpha: float = 0.05
) -> list[dict[str, Any]]:
    """Chapter 6's two declared speed comparisons (§6.6), Holm's correction over the pair: InfoBatch
    run for uniform's epochs (``SPEED_PRIMARY_ARM``), (1) its speed-up to uniform's final training
    loss (a :func:`speed_rows` row) and (2) its test accuracy against uniform's
    (:func:`chapter6_speed_primary`, a :func:`ismod.verdicts.primary` row). Empty when either arm is
    missing."""
    uniform = modelled_label("uniform")
    if SPEED_PRIMARY_ARM not in results or uniform not in results:
        return []
    loss = next(r for r in speed_rows({k: results[k] for k in (SPEED_PRIMARY_ARM, uniform)}, alpha=alpha)
                if r["metric"] == "training loss")  # fmt: skip
    (accuracy,) = primary(results, list(chapter6_speed_primary("cpu")), alpha=alpha)
    raw = [loss["p_value"], accuracy.get("p_difference")]
    tested = [p for p in raw if p is not None]
    adjusted = iter(holm(tested))
    p_loss, p_acc = (next(adjusted) if p is not None else None for p in raw)
    loss.update(p_value=p_loss, verdict=_speed_verdict(loss["speedup"], p_loss, alpha))
    if p_acc is not None:
        accuracy.update(p_difference=p_acc, verdict=verdict(p_acc, accuracy["mean"], accuracy["p_equivalence"],
                                                            ACCURACY_MARGIN, alpha=alpha))  # fmt: skip
    return [loss, accuracy]
