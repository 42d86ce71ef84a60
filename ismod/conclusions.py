"""Chapter 8's numbers: what the chapters' saved runs say about when importance sampling pays, read
from every scale that measured it (with the readers of :mod:`ismod.findings` and
:mod:`ismod.diagnosis`). The chapter's sentences and its decision guide are written in the chapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .diagnosis import probe_increments
from .experiments import Result
from .findings import (
    algorithm1_divergences,
    chapter7_pairs,
    summarize,
    tau_crossing,
    tau_log,
    tau_log_error,
    tau_points,
)
from .tau import in_time_bar
from .verdicts import exploratory, pairs

__all__ = ["Evidence", "chapter8_numbers", "load_evidence"]

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


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _tau_run(e: Evidence) -> Result | None:
    """The run whose τ log the guide reads: the τ pilot where a scale has one (the gpu scale's), else
    the first τ probe run."""
    return e.tau_pilot if e.tau_pilot is not None else (e.tau_runs[0] if e.tau_runs else None)


def chapter8_numbers(e: Evidence) -> dict[str, float]:
    """What Chapter 8's prose quotes from one scale's runs, as numbers (``nan`` where that scale did not
    measure it); the sentences, and the decision guide they support, are the chapter's own.

    - ``tau_err_{bound,exact,loss}`` and ``…_sqrt``: the mean factor by which τ = BΣg² (or its square
      root, the authors' library's form) misses the variance ratio measured with exact per-sample
      gradients, e to the mean absolute log error (:func:`ismod.findings.tau_log_error`); ``tau_points``, ``tau_seeds``;
    - ``tb_tf``, ``tau_th``, ``tau_end``, ``tau_above`` (share of logged steps with τ > τ_th),
      ``tau_cross_epoch`` and ``tau_epochs`` of the τ run under uniform training, and ``in_time_bar``,
      the smallest τ that pays at equal time for any presample size at that ``tb_tf``
      (:func:`ismod.tau.in_time_bar`, scoring at a training forward's cost);
    - ``tau_eff_max``: the largest τ_eff = 1/(1/τ + b/B) over the probe's presamples;
    - ``race_share``: the bound's τ switch's share of importance steps in Chapter 6's race;
      ``race_{bound,loss}_error``: its and the loss switch's test error over uniform's;
    - for online batch selection, prioritised replay and selective backprop (``obs``, ``per``, ``sb``):
      ``{k}_share`` of time selecting, ``{k}_error`` and ``{k}_loss`` over uniform's, and ``{k}_acc``
      with ``{k}_low``/``{k}_high``, the accuracy difference in points (exploratory);
    - ``ch3_diverged``/``ch3_runs`` and ``ch3_report_diverged``/``ch3_report_runs`` (Algorithm 1),
      ``ch3_last_loss`` and ``ch3_augmentation`` (points, means over seeds);
    - ``ch7_below``/``ch7_compared``: importance-sampling arms below the uniform subset (exploratory).
    """
    nan = math.nan
    out: dict[str, float] = {}
    points = tau_points(e.tau_runs)
    for score in ("bound", "exact", "loss"):
        for key, name in (("tau", ""), ("tau_sqrt", "_sqrt")):
            out[f"tau_err_{score}{name}"] = (
                math.exp(tau_log_error(points, score, key)) if points else nan
            )
    out["tau_points"], out["tau_seeds"] = len(points), len({p["seed"] for p in points})
    caps = probe_increments(points) if points else {}
    out["tau_eff_max"] = max((v["tau_eff_max"] for v in caps.values()), default=nan)
    run = _tau_run(e)
    keys = (
        "tb_tf",
        "tau_th",
        "tau_end",
        "tau_above",
        "tau_cross_epoch",
        "tau_epochs",
        "in_time_bar",
    )
    out.update(dict.fromkeys(keys, nan))
    if run is not None:
        last, (x, tau, _) = run.history[-1], tau_log(run)
        first = tau_crossing(run)
        out.update(tb_tf=last["t_backward"] / last["t_forward"], tau_th=last["tau_threshold"],
                   tau_end=last["tau"], tau_above=_mean([t > last["tau_threshold"] for t in tau]),
                   tau_cross_epoch=nan if first is None else first, tau_epochs=x[-1],
                   in_time_bar=in_time_bar(last["t_backward"] / last["t_forward"]).tau)  # fmt: skip
    rows = {r["arm"]: r for r in summarize(e.race, baseline="uniform")} if e.race else {}
    bound = [r.history[-1] for r in e.race.get("upper bound, τ switch", [])]
    out["race_share"] = _mean([h["importance_steps"] / max(h["steps"], 1) for h in bound])
    for arm, key in (("upper bound, τ switch", "bound"), ("loss, τ switch", "loss")):
        out[f"race_{key}_error"] = rows[arm]["relative_test_error"] if arm in rows else nan
    for arm, key in (("online batch selection", "obs"), ("prioritised replay", "per"),
                     ("selective backprop", "sb")):  # fmt: skip
        r = rows.get(arm)
        [d] = exploratory(e.race, pairs([(arm, "uniform")])) if r else [{}]
        out.update({f"{key}_share": r["selection_share"][0] if r else nan,
                    f"{key}_error": r["relative_test_error"] if r else nan,
                    f"{key}_loss": r["relative_train_loss"] if r else nan,
                    **{f"{key}_{n}": 100 * d.get(k, nan) for n, k in (("acc", "mean"), ("low", "low"), ("high", "high"))}})  # fmt: skip
    out["ch3_diverged"], out["ch3_runs"] = algorithm1_divergences(e.ch3)
    out["ch3_report_diverged"], out["ch3_report_runs"] = algorithm1_divergences(e.ch3_report)
    acc = {r["arm"]: r["test_accuracy"][0] for r in summarize(e.ch3)} if e.ch3 else {}
    gap = lambda a, b: 100 * (acc[a] - acc[b]) if a in acc and b in acc else nan
    out["ch3_last_loss"] = gap("last-loss, crop+flip", "uniform, crop+flip")
    out["ch3_augmentation"] = gap("uniform, crop+flip", "uniform, no augmentation")
    family = chapter7_pairs(e.ch7)["importance"] if e.ch7 else []
    explore = [r for r in exploratory(e.ch7, pairs(family)) if "mean" in r] if family else []
    out["ch7_below"], out["ch7_compared"] = sum(r["mean"] < 0 for r in explore), len(explore)
    return out


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
