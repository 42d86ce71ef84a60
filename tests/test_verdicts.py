"""The verdict vocabulary of declared primary comparisons (ismod.verdicts) and Chapter 5's readers of
the diagnosis grids (ismod.diagnosis), on synthetic results whose answers are known."""

import math

import pytest

from ismod import diagnosis, verdicts
from ismod.experiments import Result
from ismod.stats import detectable_difference, paired_difference
from ismod.verdicts import Comparison, exploratory, final_value, primary, primary_markdown


def run(seed, final=None, history=None, **config):
    config = {"seed": seed, "name": f"r{seed}", "batch_size": 100, **config}
    history = history or [{"step": 0}, {"step": 1, **(final or {})}]
    return Result(config, {}, history, {}, dict(final or {}))


def arm(values, key="test_accuracy"):
    return [run(k, {key: v}) for k, v in enumerate(values)]


BASE = [0.60, 0.62, 0.61, 0.63, 0.59]


def test_primary_verdicts_higher_equivalent_and_a_wide_loss_inconclusive():
    results = {
        "base": arm(BASE),
        "win": arm([b + 0.05 + 0.002 * (-1) ** k for k, b in enumerate(BASE)]),
        "same": arm([b + 0.001 * (-1) ** k for k, b in enumerate(BASE)]),
        # a −40-point mean with a wide interval: never equivalent, never "the same"
        "wide": arm([b + d for b, d in zip(BASE, (-0.9, 0.1, -0.4, -0.6, 0.0))]),
    }
    comparisons = [Comparison(a, "base", margin=0.01) for a in ("win", "same", "wide")]
    rows = primary(results, comparisons)
    assert [r["verdict"] for r in rows] == ["higher", "equivalent within ±0.01", "inconclusive"]
    raw = paired_difference([r.final["test_accuracy"] for r in results["wide"]], BASE).p_value
    assert rows[2]["p_difference"] >= raw  # Holm only raises p-values
    spread = [r.final["test_accuracy"] - b for r, b in zip(results["wide"], BASE)]
    mean = sum(spread) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in spread) / 4)
    assert rows[2]["detectable"] == pytest.approx(detectable_difference(sd, 5, comparisons=3))
    assert rows[2]["detectable"] > 0.4  # what five seeds of this spread could see: not 40 points
    table = primary_markdown(rows, scale=100)
    assert "equivalent within ±1" in table and "inconclusive" in table
    assert "| win − base | test accuracy (points) | 5 |" in table  # a reader's name, not the key
    assert all("verdict" not in r for r in exploratory(results, comparisons))
    with pytest.raises(KeyError, match="nowhere"):
        primary(results, [Comparison("nowhere", "base")])


def test_final_value_reads_the_last_record_when_final_lacks_the_key():
    r = run(0, history=[{"step": 0}, {"step": 5, "train_eval_loss": 0.25}])
    assert final_value(r, "train_eval_loss") == 0.25
    with pytest.raises(KeyError, match="no 'absent'"):
        final_value(r, "absent")


def _dissection_run(seed, loss, accuracy, max_weight=None):
    h = [{"step": 0}, {"step": 300, "train_eval_loss": loss, "max_weight": max_weight, "duplicate_fraction":
                       None if max_weight is None else 0.2, "importance_steps": 0 if max_weight is None else 280,
                       "noise_scale": {"b_simple": 500.0}}]  # fmt: skip
    return run(seed, {"test_accuracy": accuracy}, h)


def _dissection(as_is_loss, bounded_loss):
    jitter = (0.0, 0.01, -0.01)
    return {
        "uniform": [_dissection_run(k, 0.05 * (1 + j), 0.68 + j) for k, j in enumerate(jitter)],
        "forced, as is": [_dissection_run(k, as_is_loss * (1 + j), 0.64 + j, 300.0) for k, j in enumerate(jitter)],
        "forced, weights ≤ 5": [_dissection_run(k, bounded_loss * (1 - j), 0.68 - j, 5.0) for k, j in enumerate(jitter)],
    }  # fmt: skip


def test_dissection_rows_compare_each_arm_with_its_control():
    rows = diagnosis.dissection_rows(_dissection(0.5, 0.06))
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["forced, as is"]["max_weight"] == 300.0
    assert math.exp(by_arm["forced, as is"]["log_loss_ratio"]["mean"]) == pytest.approx(
        10.0, rel=1e-3
    )
    assert "| forced, as is | 3 | 64.0% | uniform |" in diagnosis.dissection_markdown(rows)
    assert by_arm["forced, as is"]["loss_ratio"] == pytest.approx(10.0)
    assert by_arm["forced, as is"]["accuracy_gap"] == pytest.approx(0.64 - 0.68)
    # one seed: no interval, but the point estimates are there (the chapter quotes them at any scale)
    single = {arm: runs[:1] for arm, runs in _dissection(0.5, 0.06).items()}
    row = {r["arm"]: r for r in diagnosis.dissection_rows(single)}["forced, weights ≤ 5"]
    assert "mean" not in row["log_loss_ratio"] and row["loss_ratio"] == pytest.approx(0.06 / 0.05)
    # a variant that changes uniform training too is compared with its uniform control
    controlled = _dissection(0.5, 0.06)
    controlled["forced, lr halved"] = controlled.pop("forced, as is")
    controlled["uniform, lr halved"] = [_dissection_run(k, 0.5, 0.64) for k in range(3)]
    row = {r["arm"]: r for r in diagnosis.dissection_rows(controlled)}["forced, lr halved"]
    assert row["control"] == "uniform, lr halved" and abs(row["log_loss_ratio"]["mean"]) < 0.02


def _decaying(seed, rate, batch):
    h = [{"step": s, "train_mode_loss": math.exp(-rate * s / 100), "noise_scale": {"b_simple": 1e6}}
         for s in range(0, 301, 50)]  # fmt: skip
    return run(seed, {"test_accuracy": 0.6}, h, batch_size=batch)


def test_critical_batch_speedup_is_measured_in_steps_to_the_base_loss():
    results = {"b × 1": [_decaying(k, 1.0, 100) for k in range(3)],
               "b × 2": [_decaying(k, 2.0, 200) for k in range(3)]}  # fmt: skip
    rows = diagnosis.critical_batch_rows(results)
    assert rows[0]["steps_to_target"] == pytest.approx(300) and rows[1][
        "steps_to_target"
    ] == pytest.approx(150)
    assert rows[1]["speedup"] == pytest.approx(2.0)
    assert rows[1]["predicted_speedup"] == pytest.approx((1 + 1e4) / (1 + 5e3))


def test_rule_inputs_apply_the_presample_cap_and_the_critical_batch():
    h = [
        {"step": 0},
        {
            "step": 10,
            "epoch": 1.0,
            "tau": 4.0,
            "tau_threshold": 2.0,
            "noise_scale": {"b_simple": 1000.0},
        },
    ]
    point = diagnosis.rule_inputs(run(0, history=h), 3.0)[0]
    assert point["tau_eff"] == pytest.approx(1 / (1 / 4 + 1 / 3))
    assert point["required"] == pytest.approx(10 * 2 / (11 - 2)) and not point["pays"]
    assert point["steps_ratio"] == pytest.approx((1 + 10 / point["tau_eff"]) / 11)
    assert diagnosis.rule_inputs(run(0, history=h), 3.0, cost=1.0)[0]["pays"]
    h.append(
        {
            "step": 20,
            "epoch": 2.0,
            "tau": 6.0,
            "tau_threshold": 2.0,
            "noise_scale": {"b_simple": 500.0},
        }
    )
    numbers = diagnosis.pilot_numbers(diagnosis.rule_inputs(run(0, history=h), 3.0))
    assert (
        numbers["tau_peak"] == 6.0 and numbers["tau_peak_epoch"] == 2.0 and numbers["points"] == 2
    )
    assert numbers["tau_eff_min"] == pytest.approx(point["tau_eff"])
    assert numbers["tau_eff_max"] == pytest.approx(1 / (1 / 6 + 1 / 3))
    assert (numbers["b_simple_min"], numbers["b_simple_max"]) == (500.0, 1000.0)
    assert numbers["pays"] == 0 and diagnosis.pilot_numbers([]) is None


def _prediction_results(lose_factor, pay_factor):
    base = [0.1, 0.12, 0.11, 0.09, 0.1]
    wobble = [0.01 * (-1) ** k for k in range(5)]

    def losses(factor):
        return [run(k, {"test_accuracy": 0.6 + w}, [{"step": 0}, {"step": 1, "train_eval_loss": b * factor * (1 + w)}])
                for k, (b, w) in enumerate(zip(base, wobble))]  # fmt: skip

    return {"should not pay: uniform": losses(1.0), "should not pay: τ switch": losses(lose_factor),
            "should pay per step: uniform": losses(1.0), "should pay per step: forced": losses(pay_factor)}  # fmt: skip


def test_prediction_outcomes_follow_the_verdicts():
    rows = diagnosis.prediction_rows(_prediction_results(2.0, 0.5))
    assert [r["outcome"] for r in rows] == ["held", "held", "held", "reported"]
    assert rows[0]["verdict"] == "higher" and rows[2]["verdict"] == "lower"
    rows = diagnosis.prediction_rows(_prediction_results(0.5, 2.0))
    assert [r["outcome"] for r in rows][:3:2] == ["failed", "failed"]
    table = diagnosis.prediction_markdown(rows).splitlines()
    assert table[2].endswith("| no lower training loss than uniform | lower | failed |"), table
    assert table[4].endswith("| a lower training loss than uniform | higher | failed |"), table
    assert table[5].endswith("| equivalent within ±1 point | reported |"), table


def _race_run(seed, accuracy, recalibrated, done, **last):
    history = [{"step": 0}, {"step": done, "train_eval_loss": 1.0 - accuracy, **last}]
    final = {"test_accuracy": accuracy + 0.002 * seed, "test_accuracy_recalibrated": recalibrated + 0.002 * seed,
             "train_time": 10.0}  # fmt: skip
    return Result(
        {
            "seed": seed,
            "name": f"r{seed}",
            "strategy": "presample" if last else "uniform",
            "strategy_options": {},
        },  # fmt: skip
        {},
        history,
        {"selection": 1.0},
        final,
    )


def test_the_race_rows_and_the_cost_model_check_read_the_forced_arm():
    forced = dict(importance_steps=40, steps=50, switch_step=10, tau=1.8, tau_threshold=1.0, t_forward=1.0,
                  t_backward=2.0)  # fmt: skip
    race = {"uniform": [_race_run(k, 0.70, 0.70, 100) for k in range(3)],
            "upper bound, always": [_race_run(k, 0.60 + 0.001 * k * k, 0.68, 50, **forced) for k in range(3)]}  # fmt: skip
    (row,) = diagnosis.race_rows(race)
    assert row["switch_steps"] == [10, 10, 10] and row["importance_share"] == pytest.approx(0.8)
    assert (row["steps"], row["baseline_steps"], row["tau"]) == (50, 100, 1.8)
    assert (
        "| upper bound, always | 10, 10, 10 | 80% | 50 (100) | 1.80 | 1.00 |"
        in diagnosis.race_table([row])
    )
    # 80% importance steps at τ_th = 1 + 3·1/3 = 2 predict 1/(0.8·2 + 0.2) = 0.556 of uniform's steps;
    # 0.50 measured: the model understates an importance step's cost by 10%
    check = diagnosis.cost_model_check(race)
    assert check["step_cost"] == pytest.approx(2.0) and check["predicted"] == pytest.approx(1 / 1.8)
    assert check["measured"] == pytest.approx(0.5) and check["error"] == pytest.approx(
        0.5 * 1.8 - 1
    )
    assert diagnosis.cost_model_check(race, forced="absent") is None


def test_recalibration_says_which_deficits_it_closed_and_which_it_widened():
    forced = dict(importance_steps=40, steps=50, switch_step=10, tau=1.8, tau_threshold=1.0, t_forward=1.0,
                  t_backward=2.0)  # fmt: skip
    uniform = [_race_run(k, 0.70, 0.70, 100) for k in range(3)]
    # 10 points behind with running statistics, 2 behind re-estimated: closed by more than half
    race = {
        "uniform": uniform,
        "forced": [_race_run(k, 0.60 + 0.001 * k * k, 0.68, 50, **forced) for k in range(3)],
    }
    found = diagnosis.recalibration(race)
    assert (
        found["behind"] == ["forced"] and found["closed"] == ["forced"] and found["widened"] == []
    )
    assert found["shift"]["forced"] == pytest.approx(0.08 - 0.001 * 5 / 3)
    # 10 behind, then 15 behind: widened, not closed
    race["forced"] = [_race_run(k, 0.60 + 0.001 * k * k, 0.55, 50, **forced) for k in range(3)]
    found = diagnosis.recalibration(race)
    assert found["closed"] == [] and found["widened"] == ["forced"]
    del race["uniform"][0].final["test_accuracy_recalibrated"]
    assert diagnosis.recalibration(race) is None


def _tau_point(seed, size, tau_plain, tau_root, measured):
    entry = {"mean_grad_sq": 0.1, "mean_sq_norm": 1.0}
    for score in ("bound", "loss", "exact"):
        entry[score] = {"tau": tau_plain, "tau_sqrt": tau_root, "measured": measured}
    entry["bound"].update(sampled=measured * 1.01, sampled_rel_se=0.02)
    return {"seed": seed, "epoch": 1.0, "B": size, "entry": entry}


def test_the_square_root_check_counts_which_formula_is_closer_seed_by_seed():
    # τ = 4 against a measured 4: without the root exact; the root (2) off by log 2
    check = diagnosis.sqrt_check([_tau_point(s, 96, 4.0, 2.0, 4.0) for s in range(3)])
    assert check["cases"] == {"bound": (3, 3), "loss": (3, 3), "exact": (3, 3)}
    assert check["rows"][0]["error_tau"] == 0 and check["rows"][0]["error_sqrt"] == pytest.approx(
        math.log(2)
    )
    assert check["dropped_share"] == pytest.approx(0.1) and check["sampled_ratio"][
        0
    ] == pytest.approx(1.01)
    assert "| bound | 96 | 0.000 | 0.693 | 3 / 3 |" in diagnosis.sqrt_check_table(check)
    # measured 2: the root is exact, and closer in every case
    rooted = diagnosis.sqrt_check([_tau_point(s, 96, 4.0, 2.0, 2.0) for s in range(3)])
    assert rooted["cases"]["loss"] == (0, 3)


def _history(points, metric="test_accuracy"):
    """Records at steps 0, 10, 20, … with wall_time 2 s a step and ``metric`` as given."""
    return [{"step": 10 * k, "wall_time": 20.0 * k, metric: v} for k, v in enumerate(points)]


def test_time_to_target_interpolates_between_the_records_that_bracket_the_crossing():
    from ismod.verdicts import time_to_target

    h = _history([None, 0.40, 0.60, 0.70, 0.65])
    c = time_to_target(h, "test_accuracy", 0.55, lower_is_better=False)
    # crossed between step 10 (0.40) and 20 (0.60), three quarters of the way
    assert c.reached and c.step == pytest.approx(17.5) and c.seconds == pytest.approx(35.0)
    assert time_to_target(h, "test_accuracy", 0.60, lower_is_better=False).step == pytest.approx(20)
    assert not time_to_target(h, "test_accuracy", 0.71, lower_is_better=False).reached
    # the first value already past the target: reached at that record, not before it
    assert time_to_target(h, "test_accuracy", 0.30, lower_is_better=False).step == 10
    losses = _history([2.0, 1.0, 0.5, 0.6], "train_loss")
    c = time_to_target(losses, "train_loss", 0.8, lower_is_better=True)
    assert c.step == pytest.approx(14.0) and c.seconds == pytest.approx(28.0)
    # in another clock (a cost model's): the same crossing, read off that clock's records
    modelled = [{**r, "modelled_seconds": 3.0 * r["step"] + (50.0 if r["step"] >= 20 else 0.0)}
                for r in losses]  # fmt: skip
    c = time_to_target(modelled, "train_loss", 0.8, lower_is_better=True, clock="modelled_seconds")
    assert c.step == pytest.approx(14.0) and c.seconds == pytest.approx(30.0 + 0.4 * (110.0 - 30.0))


def test_speedups_pair_seeds_and_say_which_never_reached_the_target():
    from ismod.verdicts import speedups

    def result(seed, points, time_scale=1.0):
        h = [{**r, "wall_time": r["wall_time"] * time_scale} for r in _history(points)]
        return Result({"seed": seed, "name": f"s{seed}"}, {}, h, {}, {})

    baseline = [result(s, [0.1, 0.3, 0.5, 0.6]) for s in (0, 1, 2)]  # reaches its final 0.6 at 60 s
    arm = [
        result(2, [0.1, 0.6, 0.6, 0.6], 1.0),  # listed first: pairing must go by seed
        result(0, [0.1, 0.3, 0.5, 0.6], 0.5),  # the same curve in half the time: ×2
        result(1, [0.1, 0.6, 0.6, 0.6], 2.0),  # 0.6 at step 10 but 2 s per step: 40 s, ×1.5
        result(3, [0.9], 1.0),  # a seed the baseline lacks: not paired
    ]
    s = speedups(
        {"uniform": baseline, "fast": arm},
        "fast",
        "uniform",
        "test_accuracy",
        lower_is_better=False,
    )
    assert s.ratios == pytest.approx({0: 2.0, 1: 1.5, 2: 3.0})
    assert s.mean == pytest.approx((2.0 * 1.5 * 3.0) ** (1 / 3)) and s.low < s.mean < s.high
    slow = [result(s, [0.1, 0.2, 0.3, 0.4]) for s in (0, 1, 2)]
    t = speedups(
        {"uniform": baseline, "slow": slow},
        "slow",
        "uniform",
        "test_accuracy",
        lower_is_better=False,
    )
    assert t.not_reached == [0, 1, 2] and t.mean is None


def test_the_rule_check_table_predicts_the_presample_with_tau_eff():
    from ismod.convex import RuleCheck

    # S(b) = 10 (1 + 40/b); τ = 6 over all N, so a presample of 3b is worth τ_eff = 1/(1/6 + 1/3) = 2
    check = RuleCheck(batch_sizes=(4,), steps_uniform=(110.0,), steps_importance=(27.0,),
                      steps_presample=(60.0,), s_min=10.0, b_crit=40.0, b_simple=38.0, b_noise=45.0,
                      tau=6.0, presample_ratio=3)  # fmt: skip
    assert check.tau_eff == pytest.approx(2.0)
    # predicted: uniform 10(1 + 10) = 110; with τ 10(1 + 10/6) = 26.7; with τ_eff 10(1 + 5) = 60
    assert "| 4 | 110 | 110.0 | 27 | 26.7 | 60 | 60.0 | 26.7 |" in diagnosis.rule_check_table(check)


def test_paired_values_are_each_shared_seeds_transformed_difference():
    results = {"a": [run(0, {"loss": 2.0}), run(1, {"loss": 1.0}), run(3, {"loss": 5.0})],
               "b": [run(0, {"loss": 1.0}), run(1, {"loss": 4.0}), run(2, {"loss": 9.0})]}  # fmt: skip
    c = Comparison("a", "b", "loss", 0.1, math.log)
    values = verdicts.paired_values(results, c)
    assert list(values) == [0, 1]  # seeds 2 and 3 ran in one arm only
    assert values[0] == pytest.approx(math.log(2.0)) and values[1] == pytest.approx(math.log(0.25))
    assert verdicts.paired_mean(results, c) == pytest.approx(sum(values.values()) / 2)
    with pytest.raises(KeyError, match="no results for 'c'"):
        verdicts.paired_values(results, Comparison("c", "b", "loss"))
