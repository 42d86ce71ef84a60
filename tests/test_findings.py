"""Each chapter's findings (ismod.findings) on synthetic results whose answers are known: a clear win,
an equivalence, a wide-interval loss, an arm that was never run; and the sentences of ismod.verdicts."""

import math

import pytest

from ismod import findings, suites, verdicts
from ismod.experiments import Result

BASE = [0.60, 0.62, 0.61, 0.63, 0.59]
WIDE = (-0.9, 0.1, -0.4, -0.6, 0.0)  # a −36-point mean with an interval from about −84 to +12


def run(seed, final):
    return Result(
        {"seed": seed, "name": f"r{seed}"}, {}, [{"step": 0}, {"step": 1, **final}], {}, dict(final)
    )


def arm(shifts, base=BASE, key="test_accuracy", **extra):
    return [run(k, {key: b + s, **extra}) for k, (b, s) in enumerate(zip(base, shifts))]


def same(k=5):
    return [0.001 * (-1) ** i for i in range(k)]


def win(size):
    return [size + 0.002 * (-1) ** i for i in range(5)]


def test_chapter3_needs_equivalence_for_no_better_and_calls_a_wide_loss_inconclusive():
    uniform = "uniform, report's optimiser"
    report = {
        uniform: arm([0] * 5),
        "last-loss, report's optimiser": arm(same()),
        "running-loss, report's optimiser": arm(same()),
    }
    grid = {"uniform, no augmentation": arm([0] * 5), "uniform, crop+flip": arm(win(0.07))}
    n = findings.chapter3_numbers(grid, report, {})
    assert n["samplers_verdict"] == "equivalent" and n["augmentation_verdict"] == "higher"
    assert [r["verdict"] for r in n["primary"][:2]] == ["equivalent within ±0.01"] * 2
    assert n["report_fit"] is None  # no training-subset accuracy recorded
    assert n["best_variant"] is None and n["variant_seeds"] == 0

    report[uniform] = arm([0] * 5, train_eval_accuracy=0.45)
    assert findings.chapter3_numbers(grid, report, {})["report_fit"] == pytest.approx(0.45)
    report["last-loss, report's optimiser"] = arm(WIDE)
    n = findings.chapter3_numbers(grid, report, {})
    assert (
        n["samplers_verdict"] == "inconclusive" and n["detectable"] > 0.3
    )  # the wide row's spread

    report["last-loss, report's optimiser"] = arm(win(-0.05))
    assert findings.chapter3_numbers(grid, report, {})["samplers_verdict"] == "lower"
    del report[uniform]
    assert findings.chapter3_numbers(grid, report, {})["samplers_verdict"] == "not tested"


def test_chapter3_numbers_read_the_fast_grid_and_the_best_variant_on_the_same_seeds():
    grid = {
        "uniform, crop+flip": arm([0] * 5),
        "last-loss, crop+flip": arm([-0.4] * 5),
        "uniform, no augmentation": arm([0] * 5),
    }
    variants = {"c-SGD": arm([0.01] * 3, base=BASE[:3]), "p-SGD": arm([-0.02] * 3, base=BASE[:3])}
    n = findings.chapter3_numbers(grid, {}, variants)
    assert n["fast"] == {"last-loss": pytest.approx(-0.4)}
    assert n["diverged"] == (0, 5) and n["diverged_report"] == (0, 0)
    assert n["best_variant"] == "c-SGD" and n["variant_seeds"] == 3
    # against uniform's first three seeds (mean 0.61), not all five
    assert n["best_variant_difference"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "words, claim",
    [
        (["equivalent within ±0.01", "equivalent within ±0.01"], "equivalent"),
        (["equivalent within ±0.01", "inconclusive"], "inconclusive"),
        (["lower", "higher"], "higher"),
        (["inconclusive", "lower"], "lower"),
        (["not tested", "inconclusive"], "not tested"),
    ],
)
def test_a_claim_tested_by_several_rows_takes_one_word(words, claim):
    assert findings.claim_verdict([{"verdict": w} for w in words]) == claim


def test_chapter6_tests_the_headline_on_both_budgets_and_leaves_the_others_exploratory():
    loss = [0.10, 0.12, 0.11, 0.09, 0.10]
    race = {
        "uniform": arm([0] * 3, base=BASE[:3], train_eval_loss=0.1),
        "upper bound, τ switch": arm(same(3), base=BASE[:3], train_eval_loss=0.1),
        "selective backprop": arm(win(-0.04)[:3], base=BASE[:3], train_eval_loss=0.2),
    }
    cost = {
        "should not pay: uniform": [run(k, {"test_accuracy": b, "train_eval_loss": l})
                                    for k, (b, l) in enumerate(zip(BASE, loss))],
        "should not pay: τ switch": [run(k, {"test_accuracy": b - 0.05 + 0.002 * (-1) ** k,
                                             "train_eval_loss": 2 * l}) for k, (b, l) in enumerate(zip(BASE, loss))],
    }  # fmt: skip

    def read(results, scale):
        rows = verdicts.primary(
            results, list(findings.chapter6_primary(scale)), missing="not tested"
        )
        return rows, findings.chapter6_exploratory(results, scale)

    # on a GPU the seconds race is the equal-time primary pair
    primary, explore = read({**race, **cost}, "gpu")
    assert len(primary) == 4
    assert "equal time" in primary[0]["comparison"].label
    assert verdicts.verdict_text(primary[0]) == "equivalent within ±1 point"
    assert "equal forward passes" in primary[2]["comparison"].label
    assert primary[2]["verdict"] == "lower"
    assert "equal forward passes" in primary[3]["comparison"].label
    assert primary[3]["verdict"] == "higher" and math.exp(primary[3]["mean"]) == pytest.approx(
        2.0, abs=0.005
    )
    assert len(explore) == 2
    rows = findings.chapter6_exploratory(race, "gpu")
    assert [(r["comparison"].arm, r["comparison"].metric) for r in rows] == [
        ("selective backprop", "test_accuracy"),
        ("selective backprop", "train_eval_loss"),
    ]
    assert not any("verdict" in r for r in explore)  # exploratory: intervals, no verdict word
    # without the cost-model grid those rows are not tested, and the family shrinks to two
    primary, _ = read(race, "gpu")
    assert sum(r["verdict"] == "not tested" for r in primary) == 2

    # at cpu scale the race is the cost-model race, its runs read under both labels
    m = suites.modelled_label
    modelled = {
        m("uniform"): arm([0] * 5, train_eval_loss=0.1),
        m("upper bound, τ switch"): arm(win(-0.03), train_eval_loss=0.3),
        m("selective backprop"): arm(same(3), base=BASE[:3], train_eval_loss=0.1),
    }
    primary, explore = read({**race, **modelled, **cost}, "cpu")
    assert (
        "equal modelled time" in primary[0]["comparison"].label and primary[0]["verdict"] == "lower"
    )
    assert "equal modelled time" in primary[1]["comparison"].label
    assert primary[1]["verdict"] == "higher" and math.exp(primary[1]["mean"]) == pytest.approx(
        3.0, abs=0.005
    )
    arms = [
        (r["comparison"].arm, r["comparison"].baseline)
        for r in findings.chapter6_exploratory({**race, **modelled}, "cpu")
    ]
    # the race's plain labels name the same runs at cpu scale: each pair once, under the cost model's
    assert arms[:1] == [(m("selective backprop"), m("uniform"))]
    assert not any(a == "selective backprop" for a, _ in arms)
    assert (m("upper bound, τ switch"), m("uniform")) not in arms
    # the cpu primaries read only the cost-model race: without it, those rows are not tested
    primary, _ = read({**race, **cost}, "cpu")
    assert sum(r["verdict"] == "not tested" for r in primary) == 2


def test_chapter7_states_arazos_headline_and_the_direction_of_each_augmentation():
    label = suites.chapter7_label
    long = suites.chapter7_overfit_label
    results = {
        label("uniform subset", "crop+flip", 1.0): arm([0] * 5),
        label("uniform subset", "RICAP", 0.3): arm(win(-0.05)),
        label("uniform subset", "crop+flip", 0.3): arm(win(-0.03)),
        label("p-SGD", "crop+flip", 0.3): arm([-0.03 + s for s in same()]),
        long("crop+flip", 1.0, "cpu"): arm([0] * 5),
        long("RICAP", 1.0, "cpu"): arm(win(0.02)),
        long("RICAP", 0.3, "cpu"): arm(same()),
    }
    for aug, shift in (("mixup", -0.01), ("RICAP", -0.02)):
        for f in (0.2, 0.5, 1.0):
            results.setdefault(label("uniform subset", aug, f), arm(win(shift)))
    results[label("uniform subset", "crop+flip", 0.2)] = arm([0] * 5)
    results[label("uniform subset", "crop+flip", 0.5)] = arm([0] * 5)
    rows = verdicts.primary(results, list(findings.chapter7_primary("cpu")))
    short, psgd, long_short, long_full = rows
    assert short["comparison"].label == "RICAP 30% − crop+flip 100%"
    assert short["verdict"] == "lower" and 100 * short["mean"] == pytest.approx(-5.0, abs=0.05)
    assert verdicts.verdict_text(long_short) == "equivalent within ±1 point"
    assert long_full["comparison"].label == "RICAP − crop+flip at 100%, 64 epochs"
    assert long_full["verdict"] == "higher" and long_full["seeds"] == 5
    assert psgd["comparison"].label == "p-SGD − uniform subset, 30%"
    assert psgd["verdict"].startswith("equivalent")
    explored = {
        (r["comparison"].arm, r["comparison"].baseline)
        for r in findings.chapter7_exploratory(results)
    }
    assert (label("p-SGD", "crop+flip", 0.3), label("uniform subset", "crop+flip", 0.3)) in explored
    assert (
        label("uniform subset", "RICAP", 1.0),
        label("uniform subset", "crop+flip", 1.0),
    ) in explored
    # at a scale without the overfitting grid, its two rows are not tested and Holm counts two
    gpu = {k: v for k, v in results.items() if "epochs" not in k}
    rows = verdicts.primary(gpu, list(findings.chapter7_primary("gpu")), missing="not tested")
    assert [r["verdict"] for r in rows[2:]] == ["not tested", "not tested"]
    assert rows[0]["detectable"] == pytest.approx(
        verdicts.primary(gpu, list(findings.chapter7_primary("gpu"))[:2])[0]["detectable"]
    )


def test_primary_and_exploratory_tables_state_ratios_for_log_metrics_and_the_detectable_size():
    results = {
        "base": arm([0] * 5, key="loss", base=[1.0] * 5),
        "half": [run(k, {"loss": 0.5 * (1 + 0.01 * (-1) ** k)}) for k in range(5)],
    }
    c = verdicts.Comparison(
        "half", "base", metric="loss", transform=math.log, margin=math.log(1.25)
    )
    rows = verdicts.primary(results, [c])
    assert rows[0]["verdict"] == "lower"
    table = verdicts.primary_markdown(rows, scale=100)
    assert "| ×0.50 | [×0.49, ×0.51] | ±×1.25 | ×1.0" in table and table.endswith("| lower |")
    explore = verdicts.exploratory_markdown(verdicts.exploratory(results, [c]))
    assert "| ×0.50 | [×0.49, ×0.51] |" in explore and "lower" not in explore
    assert "| loss (ratio) |" in explore
    with pytest.raises(ValueError, match="missing must be"):
        verdicts.exploratory(results, [c], missing="skip")


def test_the_overfitting_pilot_table_says_when_the_full_run_fits_and_when_it_never_does():
    def long_run(accuracies, test):
        history = [{"epoch": 8.0 * k, "train_eval_accuracy": a} for k, a in enumerate(accuracies)]
        return Result({"seed": 0}, {}, history, {}, {"test_accuracy": test})

    fits = {"crop+flip, 100%": [long_run([0.1, 0.7, 0.9, 0.985, 1.0], 0.76)],
            "RICAP, 100%": [long_run([0.1, 0.5, 0.6, 0.7, 0.8], 0.78)]}  # fmt: skip
    table = findings.overfit_pilot_table(fits).splitlines()
    assert table[2] == "| crop+flip, 100% | 70%, 90%, 98%, 100% | epoch 32 of 32 | 76.0% |"
    assert table[3] == "| RICAP, 100% | 50%, 60%, 70%, 80% | – | 78.0% |"
    assert findings.fit_epoch(fits["crop+flip, 100%"][0], 0.9) == 16.0
    fits["crop+flip, 100%"] = [long_run([0.1, 0.5, 0.9, 0.95, 0.97], 0.7)]
    assert findings.fit_epoch(fits["crop+flip, 100%"][0], 0.99) is None


def _race_run(seed, accuracy, loss, selection=0.0, steps=100, importance=0):
    history = [{"step": 0}, {"step": steps, "steps": steps, "importance_steps": importance,
                             "train_eval_loss": loss, "test_accuracy": accuracy}]  # fmt: skip
    return Result({"seed": seed}, {}, history, {"selection": selection},
                  {"test_accuracy": accuracy, "train_time": 45.0})  # fmt: skip


def test_chapter8_numbers_read_selection_costs_budgets_and_divergences():
    import math

    from ismod import conclusions

    race = {
        "uniform": [_race_run(k, 0.68 + 0.01 * k, 0.1) for k in range(3)],
        "upper bound, τ switch": [
            _race_run(k, 0.67 + 0.01 * k, 0.1, importance=10) for k in range(3)
        ],
        "selective backprop": [_race_run(k, 0.62 + 0.01 * k, 0.3, selection=9.0) for k in range(3)],
    }
    n = conclusions.chapter8_numbers(conclusions.Evidence("cpu", race=race))
    assert n["sb_share"] == pytest.approx(0.2)  # 9 of 45 seconds selecting
    assert n["sb_acc"] == pytest.approx(-6.0) and n["sb_low"] == pytest.approx(-6.0)
    assert n["sb_loss"] == pytest.approx(3.0) and n["race_share"] == pytest.approx(0.1)
    assert math.isnan(n["obs_share"]) and math.isnan(n["tau_th"])  # not run: nan, not an error

    label = suites.chapter7_label
    ch7 = {label("uniform subset", "crop+flip", 1.0): arm([0] * 5),
           label("uniform subset", "RICAP", 0.3): arm(win(-0.05)),
           label("uniform subset", "crop+flip", 0.3): arm(win(-0.03)),
           label("p-SGD", "crop+flip", 0.3): arm(win(-0.04))}  # fmt: skip
    n = conclusions.chapter8_numbers(conclusions.Evidence("cpu", ch7=ch7))
    assert (n["ch7_below"], n["ch7_compared"]) == (1, 1)

    def ch3_arm(accuracy, first_loss=0.5):
        return [Result({"seed": k}, {},
                       [{"epoch": 0.0, "train_loss": None}, {"epoch": 2.0, "train_loss": first_loss if k == 0 else 0.5}],
                       {"selection": 0.0}, {"test_accuracy": accuracy, "train_time": 1.0}) for k in range(5)]  # fmt: skip

    ch3 = {"uniform, crop+flip": ch3_arm(0.7), "uniform, no augmentation": ch3_arm(0.6),
           "last-loss, crop+flip": ch3_arm(0.5, first_loss=float("nan"))}  # fmt: skip
    n = conclusions.chapter8_numbers(conclusions.Evidence("cpu", ch3=ch3))
    assert (n["ch3_diverged"], n["ch3_runs"]) == (1, 5)
    assert findings.algorithm1_divergences(ch3) == (1, 5)  # uniform arms are not counted
    assert n["ch3_augmentation"] == pytest.approx(10.0) and n["ch3_last_loss"] == pytest.approx(
        -20.0
    )
    assert (n["ch3_report_diverged"], n["ch3_report_runs"]) == (0, 0)
    report = {
        "uniform, report's optimiser": ch3_arm(0.4),
        "last-loss, report's optimiser": ch3_arm(0.4),
    }
    n = conclusions.chapter8_numbers(conclusions.Evidence("cpu", ch3=ch3, ch3_report=report))
    assert (n["ch3_report_diverged"], n["ch3_report_runs"]) == (0, 5)


def _clocked_run(seed, losses, accuracies, seconds_per_step, name="r"):
    """A cost-model run evaluated every 10 steps, its clock in the records."""
    history = [{"step": 10 * k, "modelled_seconds": seconds_per_step * 10 * k, "train_eval_loss": v,
                "test_accuracy": a} for k, (v, a) in enumerate(zip(losses, accuracies))]  # fmt: skip
    final = {"test_accuracy": accuracies[-1], "train_eval_loss": losses[-1]}
    return Result({"seed": seed, "name": f"{name}{seed}", "step_seconds": seconds_per_step}, {},
                  history, {}, final)  # fmt: skip


def test_the_declared_speed_comparison_reads_the_cost_models_clock_and_holds_not_reached_apart():
    u, arm = suites.modelled_label("uniform"), suites.SPEED_PRIMARY_ARM
    losses, acc = [2.0, 1.0, 0.5, 0.2], [0.1, 0.5, 0.6, 0.65]
    uniform = [_clocked_run(s, losses, [a + 0.001 * s for a in acc], 1.0) for s in range(5)]
    # the same curves at 0.7 and 0.72 s per step: uniform's final loss 1/0.7 and 1/0.72 times sooner
    faster = [_clocked_run(s, losses, [a + 0.001 * s for a in acc], 0.7 + 0.02 * (s % 2), "f")
              for s in range(5)]  # fmt: skip
    rows = findings.chapter6_speed_verdicts({u: uniform, arm: faster})
    loss, accuracy = rows
    assert loss["verdict"] == "higher" and loss["speedup"].mean == pytest.approx(
        1 / 0.708, rel=0.01
    )
    assert accuracy["verdict"] == "equivalent within ±0.01"  # ±1 point, as a fraction
    # one seed that stops short of uniform's final loss: no speed-up to report, whatever the others
    short = faster[:4] + [_clocked_run(4, [2.0, 1.0, 0.5, 0.25], acc, 0.7, "f")]
    loss, _ = findings.chapter6_speed_verdicts({u: uniform, arm: short})
    assert loss["verdict"] == "not reached" and loss["speedup"].not_reached == [4]
    # exploratory rows for every other arm, both metrics
    rows = findings.speed_rows({u: uniform, "hard selection": faster[:3]})
    assert [(r["arm"], r["metric"]) for r in rows] == [
        ("hard selection", "training loss"), ("hard selection", "test accuracy")]  # fmt: skip


def test_a_saved_cost_model_run_gets_a_clock_that_ends_at_its_own_modelled_seconds():
    from pathlib import Path

    from ismod import runner

    root = Path(__file__).resolve().parents[1] / "book" / "results" / "cpu"
    race = runner.load_suite(suites.chapter6_modelled("cpu"), root)
    if not race:
        pytest.skip("no saved cpu race")
    clocked = findings.with_modelled_clock(race)
    for label, runs in clocked.items():
        for r in runs:
            times = [h["modelled_seconds"] for h in r.history]
            assert times[0] == 0 and all(a < b for a, b in zip(times, times[1:])), label
            assert times[-1] == pytest.approx(r.final["modelled_seconds"], rel=1e-9), label
    # a τ switch scores only on its importance steps: its clock runs at uniform's rate before them
    tau = clocked[suites.modelled_label("upper bound, τ switch")][0]
    first = next(h["step"] for h in tau.history for k, _, imp in h.get("tau_log") or [] if imp)
    early = [h for h in tau.history if 0 < h["step"] < first]
    assert early and all(h["modelled_seconds"] == pytest.approx(h["step"] * 0.1439) for h in early)


def test_speed_rows_take_a_baseline_that_met_its_target_at_once_without_failing():
    # a smoke-length run whose loss ends above its first value: uniform "reached" it at time 0
    u, arm = suites.modelled_label("uniform"), "hard selection"
    flat = [_clocked_run(s, [1.0, 1.2, 1.1], [0.1, 0.1, 0.1], 1.0) for s in range(3)]
    rows = findings.speed_rows({u: flat, arm: flat})
    assert [r["verdict"] for r in rows] == ["inconclusive", "inconclusive"]
