"""The chapters' experiment grids: valid configs at every scale, distinct result files, the CLI."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from ismod import diagnosis, findings, runner, suites
from ismod.experiments import Result, config_hash, result_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_every_suite_is_valid_and_its_runs_are_distinct(scale):
    # a result file is named by the config's hash, so a path shared by two suites is the same run on
    # purpose (Chapter 6 reuses Chapter 5's); within a suite every run must have its own file
    for name, make in suites.SUITES.items():
        paths = set()
        suite = make(scale)
        for label, configs in suite.items():
            assert configs, f"{name}: arm {label!r} has no seeds"
            seeds = [c.seed for c in configs]
            assert seeds == sorted(set(seeds)), f"{name}: arm {label!r} repeats a seed"
            for c in configs:
                c.validate()
                path = result_path(c, "r")
                assert path not in paths, f"{name}: {c.name} collides with another run"
                paths.add(path)


def test_seed_counts_follow_the_issues():
    # five seeds for every arm a declared primary comparison reads, where a cpu run costs under a
    # minute; the race's other arms keep three
    grids = {**suites.chapter3("cpu"), **suites.chapter3_report("cpu"), **suites.chapter7("cpu"),
             **suites.chapter7_overfit("cpu"), **suites.chapter5_prediction("cpu"),
             **suites.chapter6_modelled("cpu")}  # fmt: skip
    race = suites.chapter6("cpu")
    declared = [
        *findings.CHAPTER3_PRIMARY,
        *findings.chapter6_primary("cpu"),
        *findings.chapter7_primary("cpu"),
    ]
    for c in declared:
        for name in (c.arm, c.baseline):
            # the exception, stated with its reason: the race (above)
            expected = 3 if name in race else 5
            assert len(grids.get(name, race.get(name, ()))) == expected, name
    primary_arms = {name for c in declared for name in (c.arm, c.baseline)}
    # at cpu scale Chapters 5 and 6 show the cost-model race, whose declared arms have five seeds
    primary_arms |= set(suites.CHAPTER6_PRIMARY_ARMS)
    for grid in (
        suites.chapter3("cpu"),
        suites.chapter5("cpu"),
        suites.chapter6("cpu"),
        suites.chapter6_modelled("cpu"),
        suites.chapter7("cpu"),
    ):
        assert all(len(c) == 3 for name, c in grid.items() if name not in primary_arms)
    assert len(suites.chapter3("cpu")) == 6  # three samplers, with and without augmentation
    # Chapter 7's cpu grid has no τ switch: its τ never reached τ_th within those budgets
    assert not any("τ" in name for name in suites.chapter7("cpu")) and any(
        "τ" in n for n in suites.chapter7("gpu")
    )
    # Chapter 5's diagnosis: three seeds per dissection arm, 3/2/1 per critical-batch arm (the b arm
    # is the dissection's uniform arm, all its seeds), five per prediction arm
    assert all(len(c) == 3 for c in suites.chapter5_dissection("cpu").values())
    assert [len(c) for c in suites.chapter5_critical_batch("cpu").values()] == [3, 2, 1]
    predictions = suites.chapter5_prediction("cpu")
    assert all(len(predictions[c.arm]) == 5 for c, _, _ in diagnosis.PREDICTIONS)
    assert all(len(predictions[c.baseline]) == 5 for c, _, _ in diagnosis.PREDICTIONS)
    # the critical-batch test's b arm is the dissection's uniform arm, config for config
    critical, dissection = suites.chapter5_critical_batch("cpu"), suites.chapter5_dissection("cpu")
    assert critical["b × 1"] == dissection["uniform"]
    # its two regeneration grids hold every arm once
    parts = {
        **suites.chapter5_dissection_weights("cpu"),
        **suites.chapter5_dissection_changes("cpu"),
    }
    assert parts == dissection and sum(map(len, suites.DISSECTION_PARTS.values())) == len(
        dissection
    )


def test_report_settings_are_the_appendix():
    last, running = suites.REPORT_SETTINGS["last-loss"], suites.REPORT_SETTINGS["running-loss"]
    assert last["subset"] * 50_000 == pytest.approx(8192) and last["warmup_epochs"] == 5
    assert running["subset"] * 50_000 == pytest.approx(30_000) and running["beta"] == 0.2
    gpu = suites.chapter3("gpu")["last-loss, crop+flip"][0]
    assert (gpu.model, gpu.batch_size, gpu.budget_amount) == ("fast_cnn", 1024, 20)
    assert gpu.strategy_options["warmup_epochs"] == 2  # the report's 5 of 45 epochs, scaled to 20


def _row(arm, accs, loss=1.0):
    from ismod.experiments import Config

    config = Config().to_dict()
    results = []
    for a in accs:
        results.append(Result(config, {}, [{"train_loss": loss}], {"selection": 1.0},
                              {"test_accuracy": a, "train_time": 10.0}))  # fmt: skip
    return arm, results


def test_summarize_means_spreads_and_relative_error():
    rows = findings.summarize(
        dict([_row("uniform", [0.8, 0.6]), _row("other", [0.9, 0.9], loss=0.5)]), baseline="uniform"
    )
    uniform, other = rows
    assert uniform["test_accuracy"][0] == pytest.approx(0.7) and uniform["test_accuracy"][
        1
    ] == pytest.approx(0.1414, abs=1e-4)
    assert other["relative_test_error"] == pytest.approx(0.1 / 0.3)
    assert (
        other["relative_train_loss"] == pytest.approx(0.5) and uniform["relative_train_loss"] == 1.0
    )
    assert uniform["selection_share"][0] == pytest.approx(0.1)
    table = findings.markdown_table(rows)
    assert "| other | 2 | 90.0% ± 0.0% | 0.500 ± 0.000 |" in table and "| 0.50 | 0.33 |" in table


def test_a_diverged_seed_is_counted_not_averaged_into_nan():
    _, runs = _row("sampler", [0.5, 0.1, 0.1])
    runs[1].history[-1]["train_loss"] = float("nan")
    runs[2].history[-1]["train_loss"] = float("nan")
    (row,) = findings.summarize({"sampler": runs})
    assert row["diverged"] == 2 and row["train_loss"][0] == pytest.approx(1.0)
    table = findings.markdown_table([row])
    assert "1.000 ± 0.000 (2 diverged)" in table and "nan" not in table
    runs[0].history[-1]["train_loss"] = float("nan")
    assert "| diverged |" in findings.markdown_table(findings.summarize({"sampler": runs}))


def test_cli_suite_rejects_unknown_names():
    out = subprocess.run([sys.executable, "-m", "ismod", "suite", "nonsense", "--scale", "smoke", "--out", "x"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert out.returncode == 2 and "no suite named 'nonsense'" in out.stderr


def test_result_readers():
    from ismod.experiments import Config

    config = Config(batch_size=10).to_dict()
    history = [
        {"epoch": 0.0, "train_loss": None, "sampling": [{"step": 0}]},
        {
            "epoch": 1.0,
            "train_loss": 2.0,
            "sampling": [{"step": 5}, {"step": 8}],
            "tau_log": [[0, 1.5, 0], [5, 2.5, 1]],
        },
        {"epoch": 2.0, "train_loss": float("nan"), "tau_log": [[10, 3.0, 1]]},
    ]
    r = Result(config, {"train_size": 50}, history, {}, {})
    assert findings.divergence_epoch(r) == 2.0
    assert findings.divergence_epoch(Result(config, {}, history[:2], {}, {})) is None
    assert [e["step"] for e in findings.sampling_log(r)] == [0, 5, 8]
    assert findings.tau_log(r) == ([0.0, 1.0, 2.0], [1.5, 2.5, 3.0], [0, 1, 1])
    history[-1]["tau_threshold"] = 2.0  # τ first above 2 at the second logged step (epoch 1)
    assert findings.tau_crossing(r) == 1.0
    history[-1]["tau_threshold"] = 3.0  # never above 3
    assert findings.tau_crossing(r) is None


def test_the_cpu_race_is_the_cost_model_race_and_scores_what_it_trains_on():
    # a seconds budget on a shared CPU measures the machine, so at cpu and smoke scale Chapters 5 and
    # 6 read the cost-model race (the same saved runs); a GPU race stays in seconds
    for scale in ("cpu", "smoke"):
        modelled = suites.chapter6_modelled(scale)
        race = suites.equal_time(scale)
        assert race == {arm: modelled[suites.modelled_label(arm)] for arm in race}
        presample = [c for runs in race.values() for c in runs if c.strategy == "presample"]
        assert presample and all(c.strategy_options["score_augmented"] for c in presample)
    gpu = suites.equal_time("gpu")
    assert {c.budget for runs in gpu.values() for c in runs} == {"seconds"}
    # the saved gpu race predates the scorer fix and keeps its hashes until a GPU re-runs it
    assert all(not c.strategy_options["score_augmented"]
               for runs in gpu.values() for c in runs if c.strategy == "presample")  # fmt: skip


def test_chapter6_reuses_chapter5_runs_and_adds_the_other_strategies():
    for scale in ("smoke", "cpu", "gpu"):
        ch5, ch6 = suites.chapter5(scale), suites.chapter6(scale)
        for label in ("uniform", "upper bound, τ switch", "loss, τ switch"):
            assert [config_hash(c) for c in ch6[label]] == [config_hash(c) for c in ch5[label]]
        assert {c[0].strategy for c in ch6.values()} == {
            "uniform",
            "presample",
            "obs",
            "per",
            "selective_backprop",
        }
        # one wall-clock budget and schedule for every arm
        assert (
            len(
                {
                    (c.budget, c.budget_amount, c.lr, c.milestones, c.subset)
                    for cs in ch6.values()
                    for c in cs
                }
            )
            == 1
        )


def test_chapter7_budgets_are_fractions_of_the_full_run_with_linear_decay():
    suite = suites.chapter7("gpu")
    full = suite[suites.chapter7_label("uniform subset", "crop+flip", 1.0)][0]
    assert (full.model, full.budget, full.budget_amount, full.schedule, full.final_lr) == (
        "fast_cnn",
        "epochs",
        20,
        "onecycle",
        0.0,
    )
    assert (full.label_smoothing, full.lookahead, full.tta) == (
        0.0,
        False,
        0,
    )  # the confounding tricks are off
    p30 = suite[suites.chapter7_label("p-SGD", "crop+flip", 0.3)][0]
    assert p30.budget_amount == pytest.approx(6) and p30.strategy_options == {
        "kind": "p",
        "subset": 0.3,
    }
    sb = suite[suites.chapter7_label("selective backprop", "RICAP", 0.2)][0]
    assert sb.ricap_beta == 0.3 and sb.budget_amount == pytest.approx(4)
    # mixing only with strategies whose scores stay attributed to the right samples
    mixed = {
        label.split(", ")[0] for label in suite if ", mixup, " in label or ", RICAP, " in label
    }
    assert mixed == {"uniform subset", "selective backprop"}
    # 100% only for the uniform subset (the subset strategies all reduce to it)
    assert not any(
        label.endswith("100%") for label in suite if not label.startswith("uniform subset")
    )
    cpu = suites.chapter7("cpu")
    assert {label.split(", ")[0] for label in cpu if ", mixup, " in label} == {"uniform subset"}
    assert {c.dataset for cs in cpu.values() for c in cs} == {"cifar10"}


def test_budget_curves_and_accuracy_difference():
    from ismod.experiments import Config

    def runs(*accs):
        return [Result(Config().to_dict(), {}, [], {}, {"test_accuracy": a}) for a in accs]

    results = {
        suites.chapter7_label("uniform subset", "crop+flip", f): runs(f, f + 0.02)
        for f in (0.2, 1.0)
    }
    results[suites.chapter7_label("p-SGD", "crop+flip", 0.2)] = runs(0.5)
    curves = findings.budget_curves(results)
    assert list(curves) == ["crop+flip"]
    (f, mean, sd), (f2, _, _) = curves["crop+flip"]["uniform subset"]
    assert (
        (f, f2) == (0.2, 1.0) and mean == pytest.approx(0.21) and sd == pytest.approx(0.02 / 2**0.5)
    )
    assert curves["crop+flip"]["p-SGD"] == [(0.2, 0.5, 0.0)]
    diff, se = findings.accuracy_difference(runs(0.7, 0.9), runs(0.5, 0.5, 0.5))
    assert diff == pytest.approx(0.3) and se == pytest.approx((0.02 / 2) ** 0.5)


def test_cost_model_counts_steps_scoring_and_evaluation():
    from ismod.experiments import Config

    times = {("small_cnn", 100, "cpu"): {"forward_s": 0.1, "backward_s": 0.2, "scoring_s": 0.05}}
    uniform = Config(
        batch_size=100,
        subset=1000,
        test_subset=500,
        budget="epochs",
        budget_amount=2,
        evaluations=1,
    )
    # 20 steps × 0.3 s × 1.15, plus 2 evaluation points × 5 batches × 0.05 s
    assert runner.estimate_seconds([uniform], "cpu", step_times=times) == pytest.approx(
        20 * 0.3 * 1.15 + 0.5
    )
    sb = uniform.replace(strategy="selective_backprop", strategy_options={"beta": 3.0})
    # selective backprop adds (β + 1) scoring passes of t_f / (t_f + t_b) each
    assert runner.estimate_seconds([sb], "cpu", step_times=times) == pytest.approx(
        20 * 0.3 * 1.15 * (1 + 4 / 3) + 0.5
    )
    timed = uniform.replace(budget="seconds", budget_amount=7.0)
    assert runner.estimate_seconds([timed], "cpu", step_times=times) == pytest.approx(7.5)


def test_a_grid_over_its_time_limit_does_not_start(tmp_path, monkeypatch):
    from ismod import experiments

    monkeypatch.setattr(
        runner, "estimate_seconds", lambda configs, device=None, **kw: 3600.0 * len(configs)
    )
    monkeypatch.setattr(
        experiments, "run", lambda *a, **k: pytest.fail("an over-budget grid must not train")
    )
    suite = suites.chapter5("smoke")
    with pytest.raises(runner.GridOverBudget, match="max_minutes=15"):
        runner.run_suite(suite, tmp_path, scale="gpu", if_over_budget="raise")
    with pytest.raises(runner.GridOverBudget, match="no saved results"):
        runner.run_suite(suite, tmp_path, scale="gpu")
    assert runner.run_suite(suite, tmp_path, scale="gpu", if_over_budget="saved or none") == {}
    # with saved results, an over-budget grid shows them instead of training the rest
    first = suite["uniform"][0]
    experiments.Result(
        first.to_dict(), {"behaviour_version": experiments.BEHAVIOUR_VERSION}, [], {}, {}
    ).save(experiments.result_path(first, tmp_path))
    shown = runner.run_suite(suite, tmp_path, scale="gpu")
    assert list(shown) == ["uniform"] and len(shown["uniform"]) == 1
    monkeypatch.setenv(runner.MAX_MINUTES_ENV, "inf")
    assert runner.default_max_minutes("gpu") is None
    monkeypatch.setenv(runner.MAX_MINUTES_ENV, "abc")
    with pytest.raises(ValueError, match="ISMOD_MAX_MINUTES"):
        runner.default_max_minutes("gpu")
    monkeypatch.delenv(runner.MAX_MINUTES_ENV)
    assert runner.default_max_minutes("gpu") == 15.0 and runner.default_max_minutes("cpu") is None


def test_budget_time_ratios_and_importance_share():
    from ismod.experiments import Config

    def runs(*seconds, importance=None):
        history = (
            [{"importance_steps": importance, "steps": 10}] if importance is not None else [{}]
        )
        return [Result(Config().to_dict(), {}, history, {}, {"train_time": t}) for t in seconds]

    results = {
        suites.chapter7_label("uniform subset", "crop+flip", 0.2): runs(10.0, 30.0),
        suites.chapter7_label("selective backprop", "crop+flip", 0.2): runs(50.0),
        suites.chapter7_label("selective backprop", "crop+flip", 0.3): runs(99.0),
    }  # no baseline at 30%
    ratios = findings.budget_time_ratios(results)
    assert ratios == {"uniform subset": {0.2: 1.0}, "selective backprop": {0.2: pytest.approx(2.5)}}
    assert findings.importance_share(
        runs(1.0, 1.0, importance=0) + runs(1.0, importance=6)
    ) == pytest.approx(0.2)


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_every_saved_result_is_one_the_book_reads(scale):
    """A saved run is found by the book only if a suite of its scale still produces its exact config: a
    new field that changes every hash, or a grid that stopped listing a run, would orphan it silently."""
    import json

    from ismod.experiments import Config, config_hash, result_path
    from ismod.suites import SUITES, pilots

    folder = Path(__file__).resolve().parents[1] / "book" / "results" / scale
    # results of the harness (a page's own measurements, saved_or_measured, carry an "identity")
    saved = sorted(p for p in folder.glob("*.json") if "identity" not in json.loads(p.read_text()))
    if not saved:
        pytest.skip(f"no saved {scale} results")
    wanted = {
        result_path(c, folder).name
        for suite in SUITES.values()
        for runs in suite(scale).values()
        for c in runs
    }
    wanted |= {result_path(c, folder).name for c in pilots(scale).values()}
    for path in saved:
        config = Config.from_dict(json.loads(path.read_text())["config"])
        assert path.name == result_path(config, folder).name, (
            f"{path.name}: its config hashes to {config_hash(config)[:12]}"
        )
    orphans = [p.name for p in saved if p.name not in wanted]
    assert not orphans, (
        f"saved results no suite produces any more (delete or regenerate them): {orphans[:5]}"
    )


def test_no_page_trains_more_than_a_minute_at_cpu_scale():
    """The cost model's prediction for building each page at "cpu" scale from the saved runs: a page
    whose grid lost a saved run (a changed config, a new arm) would train it during the build, on a
    2-core machine for minutes; this fails first. (The own-loop page has its own check.)"""
    import os

    from ismod.runner import page_costs

    data = os.environ.get("ISMOD_DATA")
    if not data:
        pytest.skip("ISMOD_DATA is not set: saved runs are matched to the CIFAR-10 copy they used")
    results = Path(__file__).resolve().parents[1] / "book" / "results" / "cpu"
    costs = page_costs("cpu", results, data_root=data)
    slow = {page: c for page, c in costs.items() if c["seconds"] > 60}
    assert not slow, f"pages that would train at cpu scale: {slow}"


def test_budget_cost_marks_a_tau_arm_that_never_switched_and_counts_extra_passes():
    from ismod.experiments import Config, Result
    from ismod.suites import chapter7_label
    from ismod.findings import budget_cost_table, scored_per_trained

    def runs(seconds, history):
        return [Result(Config().to_dict(), {}, [history], {}, {"train_time": seconds})]

    results = {}
    for f in (0.2, 0.3, 0.5):
        results[chapter7_label("uniform subset", "crop+flip", f)] = runs(10.0, {})
        results[chapter7_label("selective backprop", "crop+flip", f)] = runs(
            30.0, {"scored_per_trained": 4.0 + f}
        )
        switched = {"importance_steps": 5 if f == 0.5 else 0, "steps": 10}
        results[chapter7_label("upper bound, τ switch", "crop+flip", f)] = runs(15.0, switched)
    text = budget_cost_table(results)
    assert "| selective backprop | ×3.00 | ×3.00 | ×3.00 |" in text
    assert (
        "| upper bound, τ switch | ×1.50 (never switched) | ×1.50 (never switched) | ×1.50 |"
        in text
    )
    assert scored_per_trained(results, "selective backprop") == pytest.approx(
        {0.2: 4.2, 0.3: 4.3, 0.5: 4.5}
    )


def test_the_cost_model_race_charges_the_step_costs_measured_alone():
    # the constants in ismod.suites are the saved measurement's (benchmarks/step_costs.py), and every
    # arm of the grid is charged its own: the race's arms and seeds, a modelled-seconds budget
    import json

    saved = json.loads((ROOT / "benchmarks/results/step-costs-cpu.json").read_text())
    race = suites._equal_time_seconds("cpu")
    assert set(suites.MODELLED_STEP_COSTS) == set(saved["step_seconds"]) == set(race)
    grid = suites.chapter6_modelled("cpu")
    assert set(grid) == {suites.modelled_label(a) for a in race}
    for arm, (step_s, score_s) in suites.MODELLED_STEP_COSTS.items():
        assert step_s == pytest.approx(saved["step_seconds"][arm], rel=5e-3), arm
        assert score_s == pytest.approx(saved["score_seconds"].get(arm, 0.0), rel=5e-3), arm
        for c, raced in zip(grid[suites.modelled_label(arm)], race[arm]):
            assert (c.budget, c.budget_amount) == ("modelled_seconds", raced.budget_amount)
            assert (c.step_seconds, c.score_seconds) == (step_s, score_s)
            assert (c.strategy, c.strategy_options, c.seed) == (
                raced.strategy,
                raced.strategy_options,
                raced.seed,
            )
    assert suites.chapter6_modelled("gpu") == {}  # a GPU run has its machine to itself


def test_the_descendants_race_charges_borrowed_costs_and_gives_infobatch_uniforms_epochs():
    grid = suites.chapter6_speed("cpu")
    uniform = suites.chapter6_modelled("cpu")[suites.modelled_label("uniform")][0]
    for label, (strategy, options) in suites.SPEED_ARMS.items():
        step_s, score_s = suites.SPEED_STEP_COSTS[label]
        assert (step_s, score_s) in suites.MODELLED_STEP_COSTS.values(), label  # measured, borrowed
        for c in grid[label]:
            assert (c.strategy, c.strategy_options) == (strategy, options)
            assert (c.budget, c.budget_amount) == ("modelled_seconds", uniform.budget_amount)
            assert (c.step_seconds, c.score_seconds, c.evaluations) == (step_s, score_s, 12)
        assert len(grid[label]) == 3
    declared = grid[suites.SPEED_PRIMARY_ARM]
    assert len(declared) == 5 and {c.seed for c in declared} == {0, 1, 2, 3, 4}
    # InfoBatch's claim: uniform's epochs (327 steps of 256 of 2,500 images), its own, pruned
    assert declared[0].budget == "strategy_epochs"
    assert declared[0].budget_amount == pytest.approx(327 * 256 / 2500)
    for f in suites.SPEED_UNIFORM_FRACTIONS:
        short = grid[f"uniform, {f:.0%} of the time"]
        assert [c.budget_amount for c in short] == [pytest.approx(f * 45.0)] * 3
    assert len({c.name for runs in grid.values() for c in runs}) == sum(map(len, grid.values()))
    assert suites.chapter6_speed("gpu") == {}


def test_the_batch_norm_tests_comparisons_name_its_arms_five_seeds_each():
    test = suites.chapter5_batch_norm("cpu")
    declared = [c for c, _, _ in diagnosis.BATCH_NORM_TEST]
    assert len(declared) == 6 and all(c.transform is math.log for c in declared)
    for c in declared + diagnosis.BATCH_NORM_EXPLORATORY:
        assert len(test[c.arm]) == 5 and len(test[c.baseline]) == 5, c.label
    # the price of giving up batch norm: the coupled network's uniform arm is the baseline
    assert all(c.baseline.endswith("uniform, batch norm") and "group" in c.arm
               for c in diagnosis.BATCH_NORM_PRICE)  # fmt: skip
    assert diagnosis.BATCH_NORM_EXPLORATORY[-4:] == diagnosis.BATCH_NORM_PRICE
    race = suites.chapter5_free_scores("cpu")
    for c, _, _ in diagnosis.FREE_SCORE_RACE:
        assert len(race[c.arm]) == 5 and len(race[c.baseline]) == 5, c.label
    # its exploratory rows are the same pairs, in test accuracy
    assert [(c.arm, c.baseline, c.metric) for c in diagnosis.FREE_SCORE_EXPLORATORY] == [
        (c.arm, c.baseline, "test_accuracy") for c, _, _ in diagnosis.FREE_SCORE_RACE
    ]
