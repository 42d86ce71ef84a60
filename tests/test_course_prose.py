"""The chapters' prose is written by a person and quotes the runs' numbers through glue; where a
sentence also reads a verdict in words ("and it got a higher one", "none was ahead of it"), this test
holds it to the saved "cpu" and "gpu" runs the built book shows. A re-run that changes a verdict fails
here, and the sentence is rewritten, instead of the book contradicting its own numbers."""

from pathlib import Path

import pytest
import torch

from ismod import conclusions, findings, runner, suites
from ismod.diagnostics import negligible_fraction
from ismod.verdicts import exploratory, pairs, primary

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


@pytest.fixture(scope="module")
def cpu():
    return conclusions.load_evidence("cpu", RESULTS / "cpu")


@pytest.fixture(scope="module")
def gpu():
    return conclusions.load_evidence("gpu", RESULTS / "gpu")


def words(rows):
    return [r["verdict"] for r in rows]


def test_chapter3_reads_its_verdicts_as_the_prose_does(cpu):
    variants = runner.load_suite(suites.chapter3_variants("cpu"), RESULTS / "cpu")
    n = findings.chapter3_numbers(cpu.ch3, cpu.ch3_report, variants)
    # "a design that detects about … points cannot call a difference of half a point either way"
    assert n["samplers_verdict"] == "inconclusive"
    assert n["augmentation_verdict"] == "higher"  # "the report's second claim reproduced"
    assert n["report_fit"] < 0.9  # "the report's optimiser trains slowly at this budget"
    assert n["diverged"][0] > 0 and n["diverged_report"][0] == 0  # "broke Algorithm 1"
    assert abs(n["best_variant_difference"]) < 0.01  # "about level with uniform"


def test_chapter4_reads_the_negligible_gradients_as_the_prose_does():
    probes = runner.load_suite(suites.chapter4("cpu"), RESULTS / "cpu")

    def share(runs):
        last = [torch.tensor(r.history[-1]["probe"]["grad_norm"]) for r in runs]
        return sum(negligible_fraction(g) for g in last) / len(last)

    fitted, augmented = share(probes["probe, no augmentation"]), share(probes["probe"])
    # "Fitting the data did not make most gradients negligible; it left fewer near zero"
    assert fitted < 0.5 and fitted < augmented


def test_chapter6_reads_the_race_as_the_prose_does(cpu, gpu):
    race = {**cpu.race, **cpu.modelled, **cpu.cost_model}
    rows = primary(race, list(findings.chapter6_primary("cpu")), missing="not tested")
    assert words(rows)[1] == "higher"  # the training loss: "and it got a higher one"
    assert words(rows)[0] != "higher"  # "No strategy beat uniform"
    others = [(a, "uniform") for a in cpu.race if a != "uniform"]
    assert all(
        r["mean"] < 0 for r in exploratory(cpu.race, pairs(others))
    )  # "none was ahead of it"
    on_gpu = primary(gpu.race, list(findings.chapter6_primary("gpu")), missing="not tested")
    assert words(on_gpu)[0] == "lower"


def test_chapter7_reads_its_verdicts_as_the_prose_does(cpu, gpu):
    rows = primary({**cpu.ch7, **cpu.long7}, list(findings.chapter7_primary("cpu")))
    said = words(rows)
    assert said[:3] == ["lower", "inconclusive", "lower"] and said[3].startswith("equivalent")
    on_gpu = primary(gpu.ch7, list(findings.chapter7_primary("gpu")), missing="not tested")
    assert words(on_gpu)[0] == "lower"
    # "selective backprop was below the uniform subset at every budget" (cpu, crop+flip)
    for f in (0.2, 0.3, 0.5):
        sb = cpu.ch7[suites.chapter7_label("selective backprop", "crop+flip", f)]
        uniform = cpu.ch7[suites.chapter7_label("uniform subset", "crop+flip", f)]
        mean = lambda runs: sum(r.final["test_accuracy"] for r in runs) / len(runs)
        assert mean(sb) < mean(uniform)


def test_chapter8_reads_the_tau_formulas_as_the_prose_does(cpu, gpu):
    from ismod import experiments

    gpu.tau_pilot = experiments.load_saved(
        suites.pilots("gpu")["tau crosses threshold (ch5)"], RESULTS / "gpu"
    )
    here, there = conclusions.chapter8_numbers(cpu), conclusions.chapter8_numbers(gpu)
    # "Compute τ from the upper bound, without the square root" (both scales)
    assert here["tau_err_bound"] < here["tau_err_bound_sqrt"]
    assert there["tau_err_bound"] < there["tau_err_bound_sqrt"]
    # "For the loss it was the other way round"
    assert here["tau_err_loss_sqrt"] < here["tau_err_loss"]
    # "crossed τ_th only at epoch …": late in the run on the CPU, and it did cross on both
    assert here["tau_cross_epoch"] > here["tau_epochs"] / 2 and there["tau_cross_epoch"] > 0
    # "a bar set by the cost: 5.6 with t_b = 2 t_f, … at the CPU's measured t_b/t_f": a backward pass
    # cheaper than two forwards makes scoring dearer relatively, so the bar is higher; and no
    # presample the probe measured reached it ("no regime piloted … reached it")
    assert here["tb_tf"] < 2 and here["in_time_bar"] > 5.6
    assert here["tau_eff_max"] < here["in_time_bar"]


def test_chapter6_reads_the_time_to_target_race_as_the_prose_does(cpu):
    speed = runner.load_suite(suites.chapter6_speed("cpu"), RESULTS / "cpu")
    raced = findings.with_modelled_clock({**cpu.modelled, **speed})
    loss, accuracy = findings.chapter6_speed_verdicts(raced)
    # §6.6: "No arm got to uniform's final training loss before uniform did"; the first declared
    # comparison "not reached, as predicted"; the second "held in direction and size" (below uniform,
    # within a point) though the test called it lower, not the predicted inconclusive
    reached = [v for r in findings.speed_rows(raced) if r["metric"] == "training loss"
               for v in r["speedup"].ratios.values() if v is not None]  # fmt: skip
    assert reached == [] and loss["verdict"] == "not reached"
    assert -0.01 < accuracy["mean"] < 0 and accuracy["verdict"] == "lower"
    assert accuracy["low"] > -0.01  # "The interval lies inside the ±1-point margin too"

    def final(arm, key):
        runs = raced[arm]
        return sum(r.history[-1][key] for r in runs) / len(runs)

    # "its test accuracy lies between the two controls' and its training loss near the shorter one's"
    acc = {arm: final(arm, "test_accuracy") for arm in speed}
    ib, u60, u80 = (
        suites.SPEED_PRIMARY_ARM,
        "uniform, 60% of the time",
        "uniform, 80% of the time",
    )
    assert acc[u60] < acc[ib] < acc[u80]
    # "a third of the time saved, more than the quarter predicted and somewhat less than the 40%"
    time = final(ib, "modelled_seconds") / final(
        suites.modelled_label("uniform"), "modelled_seconds"
    )
    assert 0.6 < time < 0.72
    loss_of = {arm: final(arm, "train_eval_loss") for arm in (ib, u60, u80)}
    assert abs(loss_of[ib] / loss_of[u60] - 1) < 0.15 and loss_of[ib] > 1.5 * loss_of[u80]
    # "Hard selection and RHO-LOSS … ended … behind"; InfoBatch at equal time "within a point"
    uniform = final(suites.modelled_label("uniform"), "test_accuracy")
    assert acc["hard selection"] < uniform - 0.01 and acc["RHO-LOSS"] < uniform - 0.01
    assert abs(acc["InfoBatch"] - uniform) < 0.01


def test_the_gpu_observations_read_as_chapters_6_and_7_explain_them(gpu):
    from ismod.verdicts import speedups

    # §6.7: online batch selection's low training loss is no speed-up: it reached uniform's final
    # loss only a few percent sooner, never its test accuracy, and it fitted more of the subset
    obs, race = "online batch selection", gpu.race
    loss = speedups(race, obs, "uniform", "train_eval_loss", lower_is_better=True)
    acc = speedups(race, obs, "uniform", "test_accuracy", lower_is_better=False)
    assert all(1.0 < r < 1.1 for r in loss.ratios.values())
    assert acc.not_reached == sorted(acc.ratios)

    def mean(runs, key):
        return sum(r.history[-1][key] for r in runs) / len(runs)

    assert mean(race[obs], "train_eval_accuracy") > mean(race["uniform"], "train_eval_accuracy")
    # §7.6: p-SGD's point at 20% holds in every seed, fades with the budget, and is not coverage
    grid = gpu.ch7

    def gains(f):
        p, u = (grid[suites.chapter7_label(k, "crop+flip", f)] for k in ("p-SGD", "uniform subset"))
        base = {r.config["seed"]: r.final["test_accuracy"] for r in u}
        return [r.final["test_accuracy"] - base[r.config["seed"]] for r in p], p, u

    g20, p, u = gains(0.2)
    assert min(g20) > 0.005
    assert sum(g20) / 3 > sum(gains(0.3)[0]) / 3 > sum(gains(0.5)[0]) / 3
    assert abs(mean(p, "seen") - mean(u, "seen")) < 0.01
