"""Figures for the book. Each function computes with :mod:`ismod` and draws on a matplotlib ``Axes``.

Needs the ``book`` extra (matplotlib). Functions return what they measured, so a chapter can print
the numbers next to the figure instead of typing them in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter
from torch.distributions import Distribution, Normal

from . import mc
from .tau import SpeedupPrediction

__all__ = [
    "noise_scale_trajectory",
    "speedup_curves",
    "speedup_panel",
    "BOOK_STYLE",
    "PANEL_WIDTH",
    "MIN_FONT_SIZE",
    "panels",
    "mc_error_against_n",
    "running_estimates",
    "tail_proposal",
    "sgd_histories",
    "estimate_histograms",
    "learning_curves",
    "gradient_norm_cdf",
    "bound_scatter",
    "variance_reduction",
    "seed_bands",
    "score_quantiles",
    "sampling_drift",
    "time_breakdown",
    "relative_to_baseline",
    "CLOCK_LABELS",
    "budget_accuracy",
    "time_accuracy",
    "probability_settings",
    "tau_tradeoff",
    "loop_costs",
    "tau_pilot_and_switch",
    "speedup_intervals",
    "comparison_ratios",
]


# The book's one matplotlib style. A figure is one panel at most PANEL_WIDTH inches wide at 100 dpi
# (540 px): the book's column at a 1400-px window is 772 px, so every figure is shown at its natural
# size there, and a 420-px phone shows it at over 70%. A figure of several panels is several
# figures (panels()), which the page lays side by side where they fit and one under another where
# they do not (book/_static/ismod.css). Text is at least MIN_FONT_SIZE points: 13.9 px at natural
# size, 9.7 px at 70%. The browser test checks the widths; tests/test_plots.py the font sizes.
PANEL_WIDTH = 5.4
PANEL_HEIGHT = 3.6
MIN_FONT_SIZE = 10.0
BOOK_STYLE: dict[str, object] = {
    "figure.dpi": 100,
    "figure.figsize": (PANEL_WIDTH, PANEL_HEIGHT),
    "font.size": MIN_FONT_SIZE,
    "axes.titlesize": MIN_FONT_SIZE + 1,
    "axes.labelsize": MIN_FONT_SIZE,
    "xtick.labelsize": MIN_FONT_SIZE,
    "ytick.labelsize": MIN_FONT_SIZE,
    "legend.fontsize": MIN_FONT_SIZE,
    "legend.title_fontsize": MIN_FONT_SIZE,
    "figure.titlesize": MIN_FONT_SIZE + 1,
}
plt.rcParams.update(BOOK_STYLE)  # importing ismod.plots is how a chapter takes the book's style


def panels(count: int, *, height: float = PANEL_HEIGHT, width: float = PANEL_WIDTH) -> list[Axes]:
    """``count`` axes, each on a figure of its own (``width`` at most ``PANEL_WIDTH``), for a
    multi-panel figure that stays legible on a phone: the page wraps them instead of shrinking them."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if width > PANEL_WIDTH:
        raise ValueError(f"width {width} in exceeds the book's panel width of {PANEL_WIDTH} in")
    return [plt.subplots(figsize=(width, height))[1] for _ in range(count)]


def _line_with_band(ax: Axes, xs: torch.Tensor, center: torch.Tensor, ys: torch.Tensor, label: str,
                    *, ceiling: float = math.inf) -> Line2D:  # fmt: skip
    """``center`` against ``xs`` as a line, and the range of ``ys`` (one row a seed) as a band of the
    line's colour, clamped at ``ceiling``; no band for a single seed. Returns the line."""
    line = ax.plot(xs.numpy(), center.numpy(), "o-", ms=3, label=label)[0]
    if len(ys) > 1:
        low, high = ys.min(0).values.clamp(max=ceiling), ys.max(0).values.clamp(max=ceiling)
        ax.fill_between(xs.numpy(), low.numpy(), high.numpy(), alpha=0.15, color=line.get_color())
    return line


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else panels(1)[0]


def mc_error_against_n(
    f: Callable[[torch.Tensor], torch.Tensor],
    p: Distribution,
    exact: float,
    ns: Sequence[int],
    *,
    repeats: int = 50,
    seed: int = 0,
    ax: Axes | None = None,
) -> dict[int, tuple[float, float]]:
    """Plot the root-mean-square error of plain Monte Carlo and its mean reported stderr against n.

    Both should follow :math:`\\sqrt{\\mathrm{Var}_p[f]/n}`: a slope of -1/2 on log-log axes.
    Returns ``{n: (rms_error, mean_stderr)}`` over ``repeats`` independent runs per n.
    """
    ax = _axes(ax)
    out: dict[int, tuple[float, float]] = {}
    for n in ns:
        ests = [mc.monte_carlo(f, p, n, seed=seed + 1000 * r + n) for r in range(repeats)]
        rms = math.sqrt(sum((e.value - exact) ** 2 for e in ests) / repeats)
        out[n] = (rms, sum(e.stderr for e in ests) / repeats)
    xs = list(out)
    ax.loglog(xs, [v[0] for v in out.values()], "o-", label=f"RMS error over {repeats} runs")
    ax.loglog(xs, [v[1] for v in out.values()], "s--", label="mean reported stderr")
    ref = out[xs[0]][0] * math.sqrt(xs[0])
    ax.loglog(
        xs, [ref / math.sqrt(n) for n in xs], ":", color="gray", label=r"$\propto 1/\sqrt{n}$"
    )
    ax.set_xlabel("number of draws n")
    ax.set_ylabel("error")
    ax.legend()
    return out


def running_estimates(
    f: Callable[[torch.Tensor], torch.Tensor],
    p: Distribution,
    proposals: Mapping[str, Distribution],
    n: int,
    *,
    exact: float | None = None,
    seed: int = 0,
    ax: Axes | None = None,
) -> dict[str, mc.Estimate]:
    """Plot the running importance sampling estimate :math:`\\frac1k\\sum_{j\\le k} w_j f_j` for each proposal.

    A proposal with lighter tails than :math:`p|f|` gives an estimator of infinite variance: its
    running estimate creeps along, then jumps when a rare, heavily weighted sample arrives.
    Returns the final :class:`~ismod.mc.Estimate` per proposal.
    """
    ax = _axes(ax)
    results = {}
    steps = torch.arange(1, n + 1, dtype=torch.float64)
    for name, q in proposals.items():
        values, log_w = mc.importance_draws(f, p, q, n, seed=seed)
        running = torch.cumsum(log_w.exp() * values, 0) / steps
        results[name] = mc.estimate_from_draws(values, log_w)
        ax.plot(
            steps.numpy(), running.numpy(), label=f"{name} (ESS {results[name].ess:.0f} of {n})"
        )
    if exact is not None:
        ax.axhline(exact, color="black", lw=0.8, ls="--", label="exact")
    ax.set_xscale("log")
    ax.set_xlabel("number of draws")
    ax.set_ylabel("running estimate")
    ax.legend()
    return results


def tail_proposal(
    mean: float,
    scale: float,
    *,
    threshold: float = 3.0,
    n: int = 10_000,
    seed: int = 0,
    axes: Sequence[Axes] | None = None,
) -> mc.Estimate:
    """Estimate :math:`P(X > \\text{threshold})`, :math:`X \\sim N(0,1)`, with proposal :math:`N(\\text{mean}, \\text{scale}^2)`.

    Left panel: the target density, the proposal, and the zero-variance proposal
    :math:`q^* \\propto p f` (the target truncated to the tail). Right panel: the importance
    weights of the draws that land in the tail, whose spread sets the variance.
    """
    if axes is None:
        axes = panels(2)
    p, q = Normal(0.0, 1.0), Normal(float(mean), float(scale))
    exact = 0.5 * math.erfc(threshold / math.sqrt(2))
    indicator = lambda x: (x > threshold).to(torch.float64)  # noqa: E731
    values, log_w = mc.importance_draws(indicator, p, q, n, seed=seed)
    est = mc.estimate_from_draws(values, log_w)

    x = torch.linspace(-4, max(8.0, mean + 4 * scale), 600)
    left, right = axes
    left.plot(x, p.log_prob(x).exp(), label="target p = N(0, 1)")
    left.plot(x, q.log_prob(x).exp(), label=f"proposal q = N({mean:g}, {scale:g}²)")
    q_star = torch.where(x > threshold, p.log_prob(x).exp() / exact, torch.zeros_like(x))
    left.fill_between(x, q_star, alpha=0.25, color="gray", label="q* ∝ p·f (needs the answer)")
    left.set_ylim(0, min(float(q_star.max()), 1.5) * 1.05)
    left.set_xlabel("x")
    left.legend()

    hits = values > 0
    if hits.any():
        weights = log_w[hits].exp()
        low, high = float(weights.min()), float(weights.max())
        bins = torch.logspace(
            math.log10(low), math.log10(high) + 1e-9, 40
        ).numpy()  # even on a log axis
        right.hist(weights.numpy(), bins=bins, color="C2")
        right.set_xscale("log")
    right.set_xlabel("weight p/q of draws in the tail")
    right.set_ylabel("count")
    right.set_title(
        f"{int(hits.sum())} of {n} draws in the tail; estimate\n{est.value:.3g} ± {est.stderr:.1g} "
        f"(exact {exact:.3g}); ESS {est.ess:.0f}"
    )
    return est


def sgd_histories(histories: Sequence, *, title: str = "") -> list[Axes]:
    """Three panels for :func:`ismod.convex.run_sgd` histories: estimator variance and suboptimality
    against epochs, suboptimality against wall-clock seconds; the legend (titled ``title``) on the
    first."""
    var_ax, epoch_ax, time_ax = panels(3)
    for h in histories:
        var_ax.semilogy(h.epochs, h.variance, label=h.strategy)
        epoch_ax.semilogy(h.epochs, h.suboptimality, label=h.strategy)
        time_ax.semilogy(h.seconds, h.suboptimality, label=h.strategy)
    var_ax.set(xlabel="epochs", ylabel="tr Cov of the gradient estimate")
    epoch_ax.set(xlabel="epochs", ylabel="F(x) − F*")
    time_ax.set(xlabel="wall-clock seconds (sampling + steps)", ylabel="F(x) − F*")
    var_ax.legend(title=title or None)
    return [var_ax, epoch_ax, time_ax]


def estimate_histograms(
    estimates: Mapping[str, Sequence[float]],
    *,
    exact: float,
    xlabel: str = "estimate",
    ax: Axes | None = None,
) -> None:
    """Histograms of repeated estimates (one per method) on common bins, with the exact value marked."""
    ax = _axes(ax)
    top = max(max(v) for v in estimates.values())
    # values shown in units of a power of ten named in the label, not as an offset above the axis,
    # which would collide with the label
    exponent = math.floor(math.log10(abs(top))) if top > 0 else 0
    unit = 10.0**exponent if abs(exponent) >= 3 else 1.0
    bins = torch.linspace(0, top * 1.05 / unit + 1e-12, 40).numpy()
    for i, (name, values) in enumerate(estimates.items()):
        ax.hist([v / unit for v in values], bins=bins, alpha=0.6 + 0.2 * i, label=name)
    ax.axvline(exact / unit, color="black", ls="--", lw=0.8, label="exact")
    ax.set_xlabel(xlabel if unit == 1.0 else f"{xlabel}, in units of 1e{exponent}")
    ax.set_ylabel("runs")
    # above the axes: inside it the legend covered the bars near the exact value
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(estimates) + 1, frameon=False)


def learning_curves(results: Mapping[str, object], *, axes: Sequence[Axes] | None = None) -> None:
    """Test accuracy against epochs and against training seconds, and training loss, per result.

    ``results`` maps a label to an :class:`ismod.experiments.Result`.
    """
    if axes is None:
        axes = panels(3)
    for label, result in results.items():
        hist = result.history  # type: ignore[attr-defined]
        epochs = [h["epoch"] for h in hist]
        axes[0].plot(epochs, [h["test_accuracy"] for h in hist], "o-", label=label)
        axes[1].plot(
            [h["wall_time"] for h in hist], [h["test_accuracy"] for h in hist], "o-", label=label
        )
        trained = [h for h in hist if h["train_loss"] is not None]
        axes[2].plot(
            [h["epoch"] for h in trained], [h["train_loss"] for h in trained], "o-", label=label
        )
    axes[0].set(xlabel="epochs", ylabel="test accuracy")
    axes[1].set(xlabel="training seconds (evaluation excluded)", ylabel="test accuracy")
    axes[2].set(xlabel="epochs", ylabel="training loss (since the previous point)")
    axes[0].legend()


def _probe_points(result: object) -> list[dict]:
    return [h for h in result.history if "probe" in h]  # type: ignore[attr-defined]


def gradient_norm_cdf(result: object, *, ax: Axes | None = None) -> None:
    """Empirical CDF of the exact per-sample gradient norms of the probe set at each evaluation point
    (Katharopoulos & Fleuret's slide 2, re-made)."""
    ax = _axes(ax)
    for h in _probe_points(result):
        norms = torch.tensor(h["probe"]["grad_norm"]).sort().values.clamp_min(1e-8)
        ax.plot(
            norms.numpy(), torch.linspace(0, 1, len(norms)).numpy(), label=f"epoch {h['epoch']:.1f}"
        )
    ax.set_xscale("log")
    ax.set(xlabel="per-sample gradient norm ||∇θ L_i||", ylabel="fraction of samples ≤ x")
    ax.legend()


def bound_scatter(result: object, *, point: int = -1, ax: Axes | None = None) -> float:
    """Exact gradient norm against the upper bound for the probe set at one evaluation point; returns
    their Spearman correlation."""
    from .diagnostics import spearman

    ax = _axes(ax)
    h = _probe_points(result)[point]
    bound, exact = torch.tensor(h["probe"]["bound"]), torch.tensor(h["probe"]["grad_norm"])
    rho = spearman(bound, exact)
    ax.loglog(bound.clamp_min(1e-8).numpy(), exact.clamp_min(1e-8).numpy(), ".", alpha=0.4, ms=3)
    ax.set(xlabel="upper bound ||softmax(z) − e_y||", ylabel="exact ||∇θ L_i||",
           title=f"epoch {h['epoch']:.1f}: Spearman ρ = {rho:.3f}")  # fmt: skip
    return rho


def variance_reduction(
    results: Sequence, *, batch_size: int = 128, ax: Axes | None = None
) -> dict[str, list[float]]:
    """Variance of importance-sampled minibatches relative to uniform, per score, over training
    (Katharopoulos & Fleuret's slide 7, re-made): mean over ``results`` (seeds) with their range."""
    from .diagnostics import score_variance_ratios

    ax = _axes(ax)
    labels = {
        "loss": "p ∝ loss",
        "bound": "p ∝ upper bound",
        "grad_norm": "p ∝ exact gradient norm",
    }
    per_seed = [
        [(h["epoch"], score_variance_ratios(h["probe"], batch_size)) for h in _probe_points(r)][1:]
        for r in results
    ]
    epochs = [e for e, _ in per_seed[0]]
    means: dict[str, list[float]] = {}
    for key, label in labels.items():
        values = torch.tensor([[ratios[key] for _, ratios in seed] for seed in per_seed])
        means[key] = values.mean(0).tolist()
        ax.plot(epochs, means[key], "o-", label=label)
        ax.fill_between(
            epochs, values.min(0).values.numpy(), values.max(0).values.numpy(), alpha=0.2
        )
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="uniform")
    ax.set(xlabel="epochs", ylabel=f"variance / uniform (batch {batch_size})")
    ax.legend()
    return {"epochs": epochs, **means}


def seed_bands(results: Mapping[str, Sequence], key: str, *, x: str = "epoch", ax: Axes | None = None,
               ylabel: str | None = None) -> dict[str, list[float]]:  # fmt: skip
    """History ``key`` against ``x`` for each arm: the mean over seeds as a line, their range as a band.
    ``results`` maps an arm's label to its seeds' results (as :func:`ismod.runner.run_suite` returns).
    Returns the mean curve per arm."""
    ax = _axes(ax)
    means = {}
    for label, runs in results.items():
        rows = [[h for h in r.history if h.get(key) is not None] for r in runs]  # type: ignore[attr-defined]
        n = min(len(rw) for rw in rows)
        xs = torch.tensor([[h[x] for h in rw[:n]] for rw in rows], dtype=torch.float64).mean(0)
        ys = torch.tensor([[h[key] for h in rw[:n]] for rw in rows], dtype=torch.float64)
        mean = ys.mean(0)
        _line_with_band(ax, xs, mean, ys, label)
        means[label] = mean.tolist()
    ax.set(
        xlabel={
            "epoch": "epochs (samples seen / N)",
            "wall_time": "training seconds",
            "modelled_seconds": "modelled seconds",
        }.get(x, x),
        ylabel=ylabel or key,
    )
    return means


def score_quantiles(
    result: object, *, ax: Axes | None = None, batch_size: int | None = None
) -> None:
    """The distribution of the strategy's scores at each epoch it logged (the report's Appendix B):
    median, 25–75% and 5–95% bands, and the maximum."""
    ax = _axes(ax)
    from .findings import sampling_log

    log = sampling_log(result)  # type: ignore[arg-type]
    n = result.provenance["train_size"]  # type: ignore[attr-defined]
    b = batch_size or result.config["batch_size"]  # type: ignore[attr-defined]
    epochs = [e["step"] * b / n for e in log]
    q = torch.tensor([e["score_quantiles"] for e in log])  # levels 0, 0.05, ..., 1
    ax.fill_between(epochs, q[:, 1].numpy(), q[:, 19].numpy(), alpha=0.2, label="5–95%")
    ax.fill_between(epochs, q[:, 5].numpy(), q[:, 15].numpy(), alpha=0.35, label="25–75%")
    ax.plot(epochs, q[:, 10].numpy(), "-", label="median")
    ax.plot(epochs, q[:, 20].numpy(), ":", label="max")
    ax.set(xlabel="epochs", ylabel="score")
    ax.legend()


def sampling_drift(
    results: Mapping[str, Sequence], *, stat: str = "kl_from_uniform", ax: Axes | None = None
) -> None:
    """A per-epoch statistic of each arm's sampling distribution (``kl_from_uniform``, ``entropy``,
    ``effective_fraction`` or ``max_weight``), every seed drawn thin."""
    from .findings import sampling_log

    ax = _axes(ax)
    for i, (label, runs) in enumerate(results.items()):
        color = f"C{i}"
        for j, r in enumerate(runs):
            log = sampling_log(r)
            b, n = r.config["batch_size"], r.provenance["train_size"]  # type: ignore[attr-defined]
            ax.plot([e["step"] * b / n for e in log], [e[stat] for e in log], "-", color=color, lw=1,
                    alpha=0.8, label=label if j == 0 else None)  # fmt: skip
    ax.set(xlabel="epochs", ylabel=stat.replace("_", " "))
    ax.legend()


# axis labels of a race's clocks (the history keys a time budget counts in)
CLOCK_LABELS: dict[str, str] = {
    "wall_time": "training seconds",
    "modelled_seconds": "modelled seconds",
}


def time_breakdown(
    results: Mapping[str, Sequence], *, ax: Axes | None = None, clock: str = "wall_time"
) -> dict[str, dict[str, float]]:
    """Seconds per run spent training (data, forward, backward, optimiser), selecting (scoring and
    sampling) and evaluating, mean over seeds, as stacked bars (the report's Appendix C). With
    ``clock="modelled_seconds"`` (a cost-model race) the seconds are the budget's: training is
    steps × ``step_seconds``, selection the rest of the run's ``modelled_seconds``, and evaluation,
    outside the budget, is not drawn."""
    ax = _axes(ax)
    parts: dict[str, dict[str, float]] = {}
    for label, runs in results.items():
        if clock == "modelled_seconds":
            train = [r.final["steps"] * r.config["step_seconds"] for r in runs]  # type: ignore[attr-defined]
            total = [r.final["modelled_seconds"] for r in runs]  # type: ignore[attr-defined]
            parts[label] = {"training": sum(train) / len(runs), "evaluation": 0.0,
                            "selection": sum(t - s for t, s in zip(total, train)) / len(runs)}  # fmt: skip
            continue
        t = [r.timing for r in runs]  # type: ignore[attr-defined]
        mean = lambda f: sum(f(x) for x in t) / len(t)  # noqa: E731
        parts[label] = {
            "training": mean(lambda x: x["data"] + x["forward_backward"] + x["optimizer"]),
            "selection": mean(lambda x: x["selection"]),
            "evaluation": mean(lambda x: x.get("evaluation", 0.0)),
        }
    labels = list(parts)
    left = [0.0] * len(labels)
    for k, name in enumerate(("training", "selection", "evaluation")):
        values = [parts[lab][name] for lab in labels]
        if not any(values):  # a cost-model race has no evaluation in its budget
            continue
        ax.barh(labels, values, left=left, color=f"C{k}", label=name)
        left = [a + v for a, v in zip(left, values)]
    ax.invert_yaxis()
    ax.set(xlabel=f"{CLOCK_LABELS.get(clock, clock)} per run")
    ax.legend()
    return parts


def relative_to_baseline(results: Mapping[str, Sequence], baseline: str, key: Callable[[dict], float], *,
                         ax: Axes | None = None, ylabel: str = "",
                         x: str = "wall_time") -> dict[str, tuple[list[float], list[float]]]:  # fmt: skip
    """Katharopoulos & Fleuret's presentation: ``key(history point)`` of each arm divided by the
    baseline arm's at the same evaluation point (means over seeds), against the clock ``x``
    (``"wall_time"``, or ``"modelled_seconds"`` for a cost-model race). With a time budget, evaluation
    point k falls at the same fraction of every arm's time. Returns the curves."""
    ax = _axes(ax)
    base = results[baseline]
    curves = {}
    for label, runs in results.items():
        n = min(len(r.history) for r in [*runs, *base])  # type: ignore[attr-defined]

        def mean(rs: Sequence, i: int, f: Callable[[dict], float]) -> float:
            return sum(f(r.history[i]) for r in rs) / len(rs)  # type: ignore[attr-defined]

        xs = [mean(runs, i, lambda h: h[x]) for i in range(1, n)]
        ys = [mean(runs, i, key) / mean(base, i, key) for i in range(1, n)]
        ax.plot(xs, ys, "o-", ms=3, label=label)
        curves[label] = (xs, ys)
    ax.axhline(1, color="black", lw=0.8, ls="--")
    ax.set(xlabel=CLOCK_LABELS.get(x, x), ylabel=ylabel or f"/ {baseline}")
    return curves


def budget_accuracy(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float, float]]]], *,
                    axes: Sequence[Axes] | None = None) -> None:  # fmt: skip
    """Arazo et al.'s figure: test accuracy against the budget (percent of the full run), one panel per
    augmentation, a line per strategy with ± one standard deviation over seeds
    (``curves`` from :func:`ismod.findings.budget_curves`). The full run is drawn as a horizontal line."""
    if axes is None:
        axes = panels(len(curves))
    # one colour and offset per strategy across all panels
    order = list(
        dict.fromkeys(strategy for per_strategy in curves.values() for strategy in per_strategy)
    )
    for ax, (aug, per_strategy) in zip(axes, curves.items()):
        for strategy, points in per_strategy.items():
            k = order.index(strategy)
            shown = [pt for pt in points if pt[0] < 1.0]
            ax.errorbar([100 * f + 0.6 * (k - 2) for f, _, _ in shown], [100 * m for _, m, _ in shown],
                        yerr=[100 * sd for _, _, sd in shown], fmt="o-", ms=4, capsize=3, label=strategy,
                        color=f"C{k}")  # fmt: skip
            full = [pt for pt in points if pt[0] == 1.0]
            if full:
                ax.axhline(
                    100 * full[0][1], color="black", lw=0.8, ls="--", label=f"{strategy}, 100%"
                )
        ax.set(title=aug, xlabel="budget (% of the full run's iterations)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()


def time_accuracy(
    runs: Mapping[str, Mapping[float, Sequence[object]]], *, ax: Axes | None = None
) -> None:
    """Test accuracy against training seconds, every run: one colour per strategy, one marker per
    budget (``runs[strategy][budget]`` lists :class:`ismod.experiments.Result`; budgets as fractions,
    at most four)."""
    ax = _axes(ax)
    shapes = "os^D"
    budgets = sorted({f for by_budget in runs.values() for f in by_budget})
    for k, (strategy, by_budget) in enumerate(runs.items()):
        label = strategy  # each strategy named once, at its first run
        for f, results in by_budget.items():
            for r in results:
                ax.plot(r.final["train_time"], 100 * r.final["test_accuracy"],  # type: ignore[attr-defined]
                        shapes[budgets.index(f)], color=f"C{k}", alpha=0.8, label=label)  # fmt: skip
                label = None
    key = "  ".join(f"{m} {f:.0%}" for m, f in zip("○□△◇", budgets))
    ax.set(xlabel="training seconds", ylabel="test accuracy (%)", title=f"markers: {key}")
    ax.legend()


def probability_settings(scores: torch.Tensor, settings: Mapping[str, tuple[str, str, Sequence[float]]], *,
                         axes: Sequence[Axes] | None = None) -> None:  # fmt: skip
    """For each ``title -> (method, knob, values)``, the largest weight :math:`1/(N p_{\\min})` and
    :math:`1/\\text{effective fraction}` of :func:`ismod.sampling.probabilities` of ``scores`` as the
    knob (``temperature``, ``smoothing`` or ``pressure``) takes each value: one panel per setting."""
    from .diagnostics import distribution_summary
    from .sampling import probabilities

    if axes is None:
        axes = panels(len(settings))
    for ax, (title, (method, knob, values)) in zip(axes, settings.items()):
        summaries = [
            distribution_summary(probabilities(scores, method, **{knob: v})) for v in values
        ]
        ax.semilogy(
            values, [s["max_weight"] for s in summaries], "o-", label="largest weight 1/(N p_min)"
        )
        ax.semilogy(values, [1 / s["effective_fraction"] for s in summaries], "s--",
                    label="1 / effective fraction")  # fmt: skip
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set(xlabel=knob, title=title)
    axes[0].legend()


def tau_tradeoff(presample_ratio: float, backward_ratio: float, spread: float, *, batch: int = 128, seed: int = 0,
                 axes: Sequence[Axes] | None = None) -> dict[str, float]:  # fmt: skip
    """Katharopoulos & Fleuret's cost model for a presample of B = ``presample_ratio`` · b scored with
    log-normal scores of log-spread ``spread`` (σ; 0 is uniform). Left: the presample's normalised
    scores g. Right: τ and τ_eff = 1/(1/τ + b/B) against σ, with τ_th = 1 + B t_f/(b(t_f + t_b)) for
    t_b = ``backward_ratio`` · t_f; the completed rule's predicted speed-up in time, far below the
    critical batch size, is τ_eff/τ_th (:func:`ismod.tau.predict_speedup`). Returns the numbers."""
    from .tau import equivalent_batch_increment, presample_increment, switch_threshold

    if axes is None:
        axes = panels(2)
    big_b = max(batch, round(presample_ratio * batch))
    z = torch.randn(big_b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def tau_at(sigma: float) -> float:
        s = torch.exp(sigma * z)
        return equivalent_batch_increment(s / s.sum())

    threshold = switch_threshold(big_b, batch, 1.0, backward_ratio)
    s = torch.exp(spread * z)
    g = (s / s.sum()).sort(descending=True).values
    axes[0].bar(range(big_b), g.numpy(), width=1.0)
    axes[0].axhline(1 / big_b, color="black", lw=0.8, ls="--", label="uniform 1/B")
    axes[0].set(
        xlabel="presampled point (sorted)", ylabel="g_i", title=f"B = {big_b}, σ = {spread:.2f}"
    )
    axes[0].legend()
    sigmas = torch.linspace(0, 2, 81)
    taus = [tau_at(float(x)) for x in sigmas]
    axes[1].plot(sigmas.numpy(), taus, label="τ = B Σ g²")
    axes[1].plot(sigmas.numpy(), [presample_increment(t, batch, big_b) for t in taus],
                 color="C2", label="τ_eff = 1/(1/τ + b/B)")  # fmt: skip
    axes[1].axhline(threshold, color="C3", ls="--", label=f"τ_th = {threshold:.2f}")
    tau = tau_at(spread)
    tau_eff = presample_increment(tau, batch, big_b)
    axes[1].plot([spread, spread], [tau, tau_eff], "o", color="C1")
    axes[1].set(xlabel="score spread σ", ylabel="τ, τ_eff", yscale="log",
                title=f"σ = {spread:.2f}: speed-up τ_eff/τ_th = {tau_eff / threshold:.2f}")  # fmt: skip
    axes[1].legend()
    return {
        "tau": tau,
        "tau_eff": tau_eff,
        "tau_threshold": threshold,
        "speedup": tau_eff / threshold,
    }


def speedup_panel(ax: Axes, *, presample_ratio: float | None, backward_ratio: float = 2.0,
                  batch: int = 128, noise_ratios: Sequence[float] = (0.5, 2.0, 8.0, math.inf),
                  tau: float | None = None) -> list[SpeedupPrediction]:  # fmt: skip
    """The completed switch rule's predicted speed-up in time to a target over uniform sampling
    (:func:`ismod.tau.predict_speedup`) against τ, one line per :math:`B_{\\text{noise}}/b` in
    ``noise_ratios``, scoring a presample of B = ``presample_ratio`` · b with t_b = ``backward_ratio``
    · t_f, or with free scores (no presample, τ_th = 1) when ``presample_ratio`` is ``None``. Above
    the dashed line importance sampling pays. With ``tau``, that τ is marked on each line and the
    predictions there are returned, one per noise scale (none without ``tau``)."""
    from .tau import predict_speedup

    presample = None if presample_ratio is None else max(batch, round(presample_ratio * batch))
    taus = torch.logspace(0, math.log10(50), 120).tolist()
    at_tau = []
    for k, ratio in enumerate(noise_ratios):

        def predict(t: float) -> SpeedupPrediction:
            return predict_speedup(t, batch, presample=presample, t_backward=backward_ratio,
                                   noise_scale=ratio * batch)  # fmt: skip

        label = "B_noise ≫ b" if math.isinf(ratio) else f"B_noise = {ratio:g} b"
        ax.plot(taus, [predict(t).speedup for t in taus], color=f"C{k}", label=label)
        if tau is not None:
            at_tau.append(predict(tau))
            ax.plot([tau], [at_tau[-1].speedup], "o", color=f"C{k}")
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    title = ("free scores (τ_th = 1)" if presample is None
             else f"presample B = {presample / batch:g} b, t_b = {backward_ratio:g} t_f")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="τ", ylabel="predicted speed-up in time", title=title)
    # under the axes: inside, the legend covered the curves
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return at_tau


def speedup_curves(*, presample_ratio: float = 3.0, backward_ratio: float = 2.0, batch: int = 128,
                   noise_ratios: Sequence[float] = (0.5, 2.0, 8.0, math.inf),
                   axes: Sequence[Axes] | None = None) -> None:  # fmt: skip
    """Two :func:`speedup_panel` panels: left, scoring a presample of B = ``presample_ratio`` · b;
    right, free scores."""
    if axes is None:
        axes = panels(2)
    for ax, ratio in zip(axes, (presample_ratio, None)):
        speedup_panel(ax, presample_ratio=ratio, backward_ratio=backward_ratio, batch=batch,
                      noise_ratios=noise_ratios)  # fmt: skip


def loop_costs(
    runs: Mapping[str, Mapping[str, float]], *, axes: Sequence[Axes] | None = None
) -> None:
    """Two panels, one bar per training loop: its wall-clock seconds and its test accuracy.

    ``runs`` maps a loop's name to ``{"seconds": ..., "accuracy": ...}`` (accuracy as a fraction), as
    the book's page on adding each method to an ordinary loop measures them."""
    if axes is None:
        axes = panels(2, height=0.4 * len(runs) + 1.4)
    names = list(runs)[::-1]  # the first loop on top
    positions = range(len(names))
    seconds_ax, accuracy_ax = axes
    seconds_ax.barh(positions, [runs[n]["seconds"] for n in names], color="tab:gray")
    seconds_ax.set_yticks(list(positions), names)
    seconds_ax.set_xlabel("training time (s)")
    accuracy_ax.barh(positions, [100 * runs[n]["accuracy"] for n in names], color="tab:blue")
    accuracy_ax.set_yticks(list(positions), names)
    accuracy_ax.set_xlabel("test accuracy (%)")


def tau_pilot_and_switch(pilot: object, race: Mapping[str, Sequence], *, switching: str = "upper bound, τ switch",
                         baseline: str = "uniform", axes: Sequence[Axes] | None = None) -> float | None:  # fmt: skip
    """Chapter 5's GPU figure. Left: the pilot's τ (bound scores, tracked under uniform training, never
    acted on) against its measured τ_th. Right: for seed 0 of ``baseline`` and of ``switching``, the
    eval-mode loss on the fixed training subset, with the switching arm's first importance step
    marked. Returns the epoch at which the pilot's τ first exceeded τ_th (``None``: never)."""
    from .findings import tau_crossing, tau_log

    if axes is None:
        axes = panels(2)
    x, tau, _ = tau_log(pilot)
    threshold = pilot.history[-1]["tau_threshold"]  # type: ignore[attr-defined]
    axes[0].plot(x, tau, lw=1, label="τ (bound scores), uniform training")
    axes[0].axhline(threshold, color="C3", ls="--", label=f"τ_th measured = {threshold:.2f}")
    axes[0].set(xlabel="epochs", ylabel="τ", title="pilot: τ tracked, never acted on")
    axes[0].legend()
    for label, colour in ((baseline, "C0"), (switching, "C1")):
        r = race[label][0]
        axes[1].plot([h["epoch"] for h in r.history], [h["train_eval_loss"] for h in r.history], "o-",
                     color=colour, label=label)  # fmt: skip
    switch = race[switching][0]
    first = switch.history[-1]["switch_step"]
    if first is not None:
        axes[1].axvline(first * switch.config["batch_size"] / switch.provenance["train_size"], color="C1", ls=":",
                        label="first importance step")  # fmt: skip
    axes[1].set(xlabel="epochs", ylabel="loss on the fixed training subset (eval mode)", yscale="log",
                title=f"seed {switch.config['seed']}")  # fmt: skip
    axes[1].legend()
    return tau_crossing(pilot)


def speedup_intervals(rows: Sequence[Mapping], *, ax: Axes | None = None, title: str = "") -> None:
    """Speed-ups to a target, one line per row (:func:`ismod.findings.speed_rows`, one metric): each
    seed's ratio as a dot, the geometric mean over the seeds that reached the target with its 95%
    interval as a bar, and the seeds that never reached it counted at the right. Log scale; right of
    the dashed line at 1 is faster than uniform."""
    ax = _axes(ax)
    for y, row in enumerate(rows):
        s = row["speedup"]
        # a ratio of 0 (uniform met its target at its first record) has no place on a log scale
        reached = [r for r in s.ratios.values() if r is not None and r > 0]
        ax.plot(reached, [y] * len(reached), "o", color="C0", alpha=0.6, ms=5)
        if s.mean is not None:
            ax.plot([s.low, s.high], [y, y], "-", color="C1", lw=3, alpha=0.8)
            ax.plot([s.mean], [y], "|", color="C1", ms=14, mew=2)
        if s.not_reached:
            ax.annotate(f"{len(s.not_reached)} of {len(s.ratios)} not reached", (1.0, y),
                        xycoords=("axes fraction", "data"), xytext=(-4, 0), textcoords="offset points",
                        ha="right", va="center", color="C3")  # fmt: skip
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    # a fixed range with room on the right for the counts, and plain ×-ticks (no 10^0 labels)
    seen = [r for row in rows for r in row["speedup"].ratios.values() if r is not None and r > 0]
    ax.set_xlim(min([0.5, *(0.8 * r for r in seen)]), max([4.0, *(2.5 * r for r in seen)]))
    ax.xaxis.set_major_locator(FixedLocator([0.25, 0.5, 1, 2, 4, 8]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(rows)), [row["arm"].replace(", cost model", "") for row in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set(xlabel="speed-up: uniform's time / the arm's", title=title)


def comparison_ratios(results: Mapping[str, Sequence], rows: Sequence[Mapping], *,
                      labels: Sequence[str] | None = None, ax: Axes | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Declared comparisons of a log-transformed metric (:func:`ismod.verdicts.primary`'s rows, e.g. a
    ratio of training losses), one line each: every seed's ratio arm / baseline as a dot and the
    geometric mean with its unadjusted 95% interval as a bar (``exp`` of the row's mean, ``low`` and
    ``high``). Log scale; left of the dashed line at 1 the arm is lower. ``labels`` name the lines
    (default: each comparison's label). Returns each line's per-seed ratios."""
    from .verdicts import paired_values

    ax = _axes(ax)
    names = list(labels) if labels is not None else [r["comparison"].label for r in rows]
    if len(names) != len(rows):
        raise ValueError(f"labels has {len(names)} names for {len(rows)} rows: give one a row")
    drawn: dict[str, list[float]] = {}
    for y, (row, name) in enumerate(zip(rows, names)):
        c = row["comparison"]
        if c.transform is not math.log:
            raise ValueError(f"comparison {c.label!r} is not of a log ratio (transform=math.log)")
        ratios = [math.exp(v) for v in paired_values(results, c).values()]
        ax.plot(ratios, [y] * len(ratios), "o", color="C0", alpha=0.6, ms=5)
        if "low" in row and math.isfinite(row["low"]):
            ax.plot(
                [math.exp(row["low"]), math.exp(row["high"])],
                [y, y],
                "-",
                color="C1",
                lw=3,
                alpha=0.8,
            )
        if "mean" in row and math.isfinite(row["mean"]):
            ax.plot([math.exp(row["mean"])], [y], "|", color="C1", ms=14, mew=2)
        drawn[name] = ratios
    ax.axvline(1.0, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    if high / low < 30:  # within about a decade only ×1 would be labelled: add the 2s and 5s
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(rows)), names)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    return drawn


# how each normalisation mode of the gradient-error probe reads in a legend
NORM_MODE_LABELS: dict[str, str] = {"train": "batch statistics", "eval": "running statistics",
                                    "presample": "presample statistics", "weighted": "weighted statistics"}  # fmt: skip


def gradient_error_ratios(results: Mapping[str, Sequence], *, modes: Sequence[str] = ("train", "eval", "presample"),
                          ax: Axes | None = None) -> dict[str, list[float]]:  # fmt: skip
    """The gradient-error probe (:func:`ismod.train.gradient_error_at`) along training: for each arm and
    each normalisation mode it measured, the importance batches' error over the uniform ones', the
    geometric mean over seeds as a line and their range as a band. Log scale; below the dashed line at
    1 importance sampling removes variance, above it adds error. A line is named by its arm, and by
    its mode where ``modes`` names more than one. Returns the mean curve per line."""
    from .findings import gradient_error_log

    ax = _axes(ax)
    curves = {}
    for label, runs in results.items():
        logs = [gradient_error_log(r) for r in runs]
        for mode in modes:
            if not all(mode in log for log in logs):
                continue
            n = min(len(log[mode][1]) for log in logs)
            xs = torch.tensor([log[mode][0][:n] for log in logs], dtype=torch.float64).mean(0)
            ys = torch.tensor([log[mode][1][:n] for log in logs], dtype=torch.float64).log()
            # one mode asked for, or a network without batch norm (one mode), needs no mode name
            single = len(modes) == 1 or len(logs[0]) == 1
            name = label if single else f"{label}, {NORM_MODE_LABELS[mode]}"
            _line_with_band(ax, xs, ys.mean(0).exp(), ys.exp(), name)  # geometric mean, range
            curves[name] = ys.mean(0).exp().tolist()
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator([0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="epochs (samples seen / N)", ylabel="gradient error, importance / uniform")
    return curves


def noise_scale_trajectory(results: Mapping[str, Sequence], *, ax: Axes | None = None,
                           batch_sizes: Sequence[int] = ()) -> dict[str, list[float]]:  # fmt: skip
    r"""The simple noise scale :math:`B_{\text{simple}}` (McCandlish et al. 2018; measured by
    ``instrument=True`` at every evaluation point, :func:`ismod.train.noise_scale_at`) along training
    for each arm: the median over seeds as a line, their range as a band, log scale. An estimate of
    :math:`\lVert G\rVert^2` at or below zero gives :math:`B_{\text{simple}} = \infty` (the gradient is
    lost in its noise): such points are drawn at the top edge as open triangles. Dotted lines mark
    ``batch_sizes``. Returns the median curve per arm (``inf`` kept)."""
    ax = _axes(ax)
    medians: dict[str, list[float]] = {}
    finite_max = 1.0
    drawn = []
    for label, runs in results.items():
        rows = [
            [h for h in r.history if (h.get("noise_scale") or {}).get("b_simple") is not None]
            for r in runs
        ]  # type: ignore[attr-defined]
        n = min(len(rw) for rw in rows)
        xs = torch.tensor([[h["step"] for h in rw[:n]] for rw in rows], dtype=torch.float64).mean(0)
        ys = torch.tensor(
            [[h["noise_scale"]["b_simple"] for h in rw[:n]] for rw in rows], dtype=torch.float64
        )
        ordered, k = ys.sort(0).values, len(runs)
        median = ordered[(k - 1) // 2 : k // 2 + 1].mean(0)  # the middle one or two; inf stays inf
        finite = ys[torch.isfinite(ys)]
        finite_max = max(finite_max, finite.max().item() if finite.numel() else 1.0)
        drawn.append((label, xs, ys, median))
        medians[label] = median.tolist()
    ceiling = 2.0 * finite_max  # where a point beyond measurement is drawn
    for label, xs, ys, median in drawn:
        shown = median.clamp(max=ceiling)
        finite_median = torch.where(torch.isfinite(median), median, torch.nan)
        line = _line_with_band(ax, xs, finite_median, ys, label, ceiling=ceiling)
        beyond = ~torch.isfinite(median)
        if beyond.any():
            ax.plot(
                xs[beyond].numpy(),
                shown[beyond].numpy(),
                "^",
                ms=7,
                mfc="none",
                color=line.get_color(),
            )
    for b in batch_sizes:
        ax.axhline(b, color="k", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="B_simple (samples)")
    return medians
