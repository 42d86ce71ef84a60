"""The book's one figure style (ismod.plots.BOOK_STYLE): figures narrow enough to be shown at their
natural size in the book's column and at over 70% on a phone, and text no smaller than
MIN_FONT_SIZE. The browser test measures the shown widths; this checks the code that draws them."""

import math
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402
from book_files import BOOK, ROOT  # noqa: E402

from ismod import plots  # noqa: E402


def test_the_style_keeps_text_at_the_minimum_size():
    for key, value in plots.BOOK_STYLE.items():
        if key.endswith(("size", "fontsize")) and key != "figure.figsize":
            assert value >= plots.MIN_FONT_SIZE, key
    assert plt.rcParams["legend.fontsize"] >= plots.MIN_FONT_SIZE  # applied on import
    assert plots.BOOK_STYLE["figure.figsize"][0] <= plots.PANEL_WIDTH


def test_panels_are_separate_figures_of_the_panel_width():
    axes = plots.panels(3)
    assert len({id(ax.figure) for ax in axes}) == 3
    assert all(ax.figure.get_size_inches()[0] <= plots.PANEL_WIDTH for ax in axes)
    with pytest.raises(ValueError, match="exceeds the book's panel width"):
        plots.panels(1, width=9.0)
    plt.close("all")


def _sources():
    yield "ismod/plots.py", (ROOT / "ismod" / "plots.py").read_text()
    yield "ismod/widgets.py", (ROOT / "ismod" / "widgets.py").read_text()
    for path in sorted(BOOK.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        yield path.name, "\n".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize(
    "name, source", list(_sources()), ids=lambda v: v if isinstance(v, str) and len(v) < 40 else ""
)
def test_no_figure_is_wider_than_a_panel_nor_its_text_smaller_than_the_minimum(name, source):
    for m in re.finditer(r"figsize=\(([\d.]+)", source):
        assert float(m.group(1)) <= plots.PANEL_WIDTH, f"{name}: figsize width {m.group(1)} in"
    for m in re.finditer(r"fontsize=([\d.]+)", source):
        assert float(m.group(1)) >= plots.MIN_FONT_SIZE, f"{name}: fontsize={m.group(1)}"
    assert "plt.subplots(1, " not in source and "plt.subplots(2, " not in source, (
        f"{name}: a multi-panel figure is one image; use ismod.plots.panels"
    )


def test_probability_settings_draws_the_largest_weight_of_each_setting():
    import torch

    scores = torch.tensor([1.0, 2.0, 4.0, 8.0])
    settings = {"smoothing": ("proportional", "smoothing", [0.0, 0.5, 1.0])}
    axes = plots.panels(1)
    plots.probability_settings(scores, settings, axes=axes)
    largest = axes[0].lines[0].get_ydata()
    # p ∝ s: p_min = 1/15, weight 15/4; half uniform: p_min = (1/15 + 1/4)/2; uniform: 1
    assert list(largest) == pytest.approx([15 / 4, 1 / (4 * (1 / 15 + 1 / 4) / 2), 1.0])
    plt.close("all")


def test_time_accuracy_names_each_strategy_once():
    from ismod.experiments import Config, Result

    def run(t, acc):
        return Result(Config().to_dict(), {}, [], {}, {"train_time": t, "test_accuracy": acc})

    ax = plots.panels(1)[0]
    plots.time_accuracy(
        {"a": {0.2: [run(1, 0.5), run(2, 0.6)], 1.0: [run(5, 0.8)]}, "b": {0.2: [run(3, 0.4)]}},
        ax=ax,
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert len(ax.lines) == 4
    assert [line.get_marker() for line in ax.lines] == ["o", "o", "s", "o"]  # one shape a budget
    plt.close("all")


def test_tau_pilot_and_switch_marks_the_first_importance_step_and_returns_the_crossing():
    from ismod.experiments import Result

    log = [[10 * k, 1.0 + 0.5 * k, 0] for k in range(6)]  # τ 1.0 … 3.5 at steps 0 … 50
    pilot = Result({"seed": 0, "batch_size": 100}, {"train_size": 1000},
                   [{"step": 0, "epoch": 0.0, "tau_log": log[:3]}, {"step": 50, "epoch": 5.0, "tau_log": log[3:],
                    "tau_threshold": 2.2}], {}, {})  # fmt: skip
    history = [
        {"epoch": e, "train_eval_loss": 1.0 / (1 + e), "switch_step": 20} for e in (0.0, 1.0, 2.0)
    ]
    race = {name: [Result({"seed": 0, "batch_size": 100}, {"train_size": 1000}, history, {}, {})]
            for name in ("uniform", "upper bound, τ switch")}  # fmt: skip
    axes = plots.panels(2)
    crossed = plots.tau_pilot_and_switch(pilot, race, axes=axes)
    assert crossed is not None and 2.9 < crossed <= 3.1  # the first τ above 2.2 is 2.5, at step 30
    marks = [line for line in axes[1].get_lines() if line.get_label() == "first importance step"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(20 * 100 / 1000)
    plt.close("all")


def test_speedup_intervals_counts_the_seeds_that_never_reached_and_draws_the_rest():
    from ismod.verdicts import Speedup

    def row(arm, ratios):
        reached = [r for r in ratios.values() if r is not None]
        mean = (reached[0] * reached[1]) ** 0.5 if len(reached) == 2 else None
        s = Speedup(arm, "uniform", "train_eval_loss", ratios, mean, mean and mean * 0.9,
                    mean and mean * 1.1)  # fmt: skip
        return {"arm": arm, "speedup": s}

    ax = plots.panels(1)[0]
    plots.speedup_intervals([row("fast, cost model", {0: 1.2, 1: 1.5}),
                             row("slow", {0: None, 1: None, 2: 0.9})], ax=ax)  # fmt: skip
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fast", "slow"]
    assert [t.get_text() for t in ax.texts] == ["2 of 3 not reached"]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(d.get_xdata()) for d in dots] == [[1.2, 1.5], [0.9]]
    low, high = ax.get_xlim()
    assert low <= 0.5 and high >= 4.0 and all(t.get_text() == "" for t in ax.get_xminorticklabels())
    plt.close("all")


def test_gradient_error_ratios_draws_one_line_per_arm_and_mode_as_geometric_means():
    from types import SimpleNamespace

    def run(ratios_by_mode):
        history = [{"epoch": e, "gradient_error": {**{m: {"ratio": r[i]} for m, r in ratios_by_mode.items()}, "tau": 2.0}}
                   for i, e in enumerate((1.0, 2.0))]  # fmt: skip
        return SimpleNamespace(history=history)

    batch = [run({"train": [2.0, 8.0], "eval": [0.5, 0.5], "presample": [0.5, 0.8]}),
             run({"train": [8.0, 2.0], "eval": [0.5, 0.5], "presample": [0.5, 0.8]})]  # fmt: skip
    group = [run({"train": [1.0, 1.0]})]
    ax = plots.panels(1)[0]
    curves = plots.gradient_error_ratios({"batch norm": batch, "group norm": group}, ax=ax)
    assert list(curves) == ["batch norm, batch statistics", "batch norm, running statistics",
                            "batch norm, presample statistics", "group norm"]  # fmt: skip
    assert curves["batch norm, batch statistics"] == pytest.approx([4.0, 4.0])  # geometric means
    assert curves["group norm"] == pytest.approx([1.0, 1.0])
    assert ax.get_yscale() == "log"
    one_mode = plots.gradient_error_ratios({"batch norm": batch}, modes=("eval",))
    assert one_mode == {"batch norm": pytest.approx([0.5, 0.5])}  # named by its arm alone
    plt.close("all")


def test_noise_scale_trajectory_draws_medians_and_marks_points_beyond_measurement():
    from types import SimpleNamespace

    def run(values):
        history = [{"step": 50 * k, "noise_scale": {"b_simple": v}} for k, v in enumerate(values)]
        return SimpleNamespace(
            history=[{"step": -1}, *history]
        )  # a record without the probe is skipped

    inf = math.inf
    three = [run([100.0, 400.0, 900.0]), run([300.0, 200.0, inf]), run([200.0, 800.0, inf])]
    two = [run([100.0, 1000.0, 50.0]), run([300.0, 3000.0, inf])]
    ax = plots.panels(1)[0]
    medians = plots.noise_scale_trajectory({"three": three, "two": two}, ax=ax, batch_sizes=(64,))
    assert medians["three"] == [
        200.0,
        400.0,
        inf,
    ]  # the middle seed; two of three beyond measurement
    assert medians["two"] == [200.0, 2000.0, inf]  # mean of the middle two, inf when one is
    # beyond measurement: an open triangle at twice the largest finite value, one per arm
    markers = [line for line in ax.lines if line.get_marker() == "^"]
    assert len(markers) == 2 and all(list(m.get_ydata()) == [2 * 3000.0] for m in markers)
    assert any(list(line.get_ydata()) == [64, 64] for line in ax.lines)  # the batch size, dotted
    assert ax.get_yscale() == "log"
    plt.close("all")


def test_the_tau_tradeoff_predicts_the_completed_rules_speedup():
    from ismod.tau import predict_speedup

    numbers = plots.tau_tradeoff(3.0, 2.0, 1.0, batch=64)
    # a presample of 192 for a batch of 64, t_b = 2 t_f: the same arithmetic as predict_speedup
    p = predict_speedup(numbers["tau"], 64, presample=192)
    assert numbers["tau_eff"] == pytest.approx(p.tau_eff)
    assert numbers["speedup"] == pytest.approx(p.speedup) and numbers["tau_threshold"] == 2.0
    plt.close("all")


def test_speedup_curves_draw_one_line_per_noise_scale_on_each_panel():
    axes = plots.panels(2)
    plots.speedup_curves(noise_ratios=(1.0, math.inf), axes=axes)
    for ax in axes:
        # two curves; free scores reach τ (50) with no noise cap, a presample of 3b at most 3/2
        assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]) == 2
    assert max(axes[1].get_lines()[1].get_ydata()) == pytest.approx(50.0, rel=1e-6)
    assert max(axes[0].get_lines()[1].get_ydata()) < 1.5
    # with τ marked, the panel returns the predictions there, one per noise scale
    from ismod.tau import predict_speedup

    ax = plots.panels(1)[0]
    marked = plots.speedup_panel(ax, presample_ratio=3.0, noise_ratios=(1.0, 4.0), tau=4.0)
    assert [p.speedup for p in marked] == [
        predict_speedup(4.0, 128, presample=384, noise_scale=r * 128).speedup for r in (1.0, 4.0)
    ]
    assert plots.speedup_panel(ax, presample_ratio=None, noise_ratios=(1.0,)) == []
    plt.close("all")


def test_comparison_ratios_draws_each_seeds_ratio_and_the_rows_interval():
    import math
    from types import SimpleNamespace

    from ismod.verdicts import Comparison

    def runs(losses):
        return [SimpleNamespace(config={"seed": k}, final={"loss": v}, history=[])
                for k, v in enumerate(losses)]  # fmt: skip

    results = {"forced": runs([1.0, 2.0, 4.0]), "uniform": runs([2.0, 2.0, 2.0])}
    c = Comparison("forced", "uniform", "loss", 0.1, math.log, "forced − uniform")
    row = {"comparison": c, "mean": 0.0, "low": math.log(0.5), "high": math.log(2.0)}
    ax = plots.panels(1)[0]
    drawn = plots.comparison_ratios(results, [row], labels=["forced"], ax=ax)
    assert drawn == {"forced": [0.5, 1.0, 2.0]}
    bars = [line for line in ax.lines if line.get_linestyle() == "-" and line.get_linewidth() == 3]
    assert [list(b.get_xdata()) for b in bars] == [[pytest.approx(0.5), pytest.approx(2.0)]]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["forced"]
    # a range under a decade is labelled in 1-2-5 steps, not by ×1 alone
    ax.figure.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert {"×0.5", "×1", "×2"} <= set(shown)
    with pytest.raises(ValueError, match="labels has 2 names for 1 rows"):
        plots.comparison_ratios(results, [row], labels=["a", "b"])
    with pytest.raises(ValueError, match="not of a log ratio"):
        plots.comparison_ratios(results, [{"comparison": Comparison("forced", "uniform", "loss")}])
    plt.close("all")


def test_a_cost_model_race_is_drawn_in_its_budgets_seconds():
    from ismod import findings
    from ismod.experiments import Config, Result

    def run(steps, modelled, budget="modelled_seconds"):
        config = Config(budget=budget, step_seconds=0.5 if budget == "modelled_seconds" else 0.0)
        history = [{"step": k, "wall_time": 10.0 * k, "modelled_seconds": 0.5 * k, "loss": 1.0 / (k + 1)}
                   for k in (0, steps // 2, steps)]  # fmt: skip
        timing = {"data": 1.0, "forward_backward": 5.0, "optimizer": 1.0, "selection": 3.0}
        return Result(
            config.to_dict(), {}, history, timing, {"steps": steps, "modelled_seconds": modelled}
        )

    race = {"uniform": [run(10, 5.0), run(10, 5.0)], "scored": [run(6, 4.0)]}
    assert findings.race_clock(race) == "modelled_seconds"
    assert findings.race_clock({"u": [run(10, 0.0, budget="seconds")]}) == "wall_time"
    ax = plots.panels(1)[0]
    parts = plots.time_breakdown(race, ax=ax, clock="modelled_seconds")
    # training: steps × step_seconds; selection: the rest of the budget's clock; no evaluation
    assert parts["scored"] == {"training": 3.0, "selection": 1.0, "evaluation": 0.0}
    assert parts["uniform"]["selection"] == 0.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "selection"]
    assert plots.time_breakdown(race)["scored"]["training"] == 7.0  # the clock's own seconds
    ax = plots.panels(1)[0]
    curves = plots.relative_to_baseline(race, "uniform", lambda h: h["loss"], ax=ax,
                                        x="modelled_seconds")  # fmt: skip
    assert curves["scored"][0] == [1.5, 3.0] and ax.get_xlabel() == "modelled seconds"
    plt.close("all")
