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
