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
from torch.distributions import Distribution, Normal

from . import mc

__all__ = [
    "mc_error_against_n",
    "running_estimates",
    "tail_proposal",
    "sgd_histories",
    "estimate_histograms",
    "learning_curves",
    "gradient_norm_cdf",
    "bound_scatter",
    "variance_reduction",
]


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=(6, 4))[1]


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
    ax.loglog(xs, [ref / math.sqrt(n) for n in xs], ":", color="gray", label=r"$\propto 1/\sqrt{n}$")
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
        ax.plot(steps.numpy(), running.numpy(), label=f"{name} (ESS {results[name].ess:.0f} of {n})")
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
        axes = plt.subplots(1, 2, figsize=(10, 3.5))[1]
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
    left.legend(fontsize=8)

    hits = values > 0
    if hits.any():
        right.hist(log_w[hits].exp().numpy(), bins=40, color="C2")
        right.set_xscale("log")
    right.set_xlabel("weight p/q of draws in the tail")
    right.set_ylabel("count")
    right.set_title(
        f"{int(hits.sum())} of {n} draws in the tail; estimate {est.value:.3g} ± {est.stderr:.1g} "
        f"(exact {exact:.3g}); ESS {est.ess:.0f}",
        fontsize=9,
    )
    return est


def sgd_histories(histories: Sequence, *, title: str = "") -> plt.Figure:
    """A 2×2 figure for :func:`ismod.convex.run_sgd` histories: estimator variance and suboptimality
    against epochs, suboptimality against wall-clock seconds, and the legend."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    (var_ax, epoch_ax), (time_ax, legend_ax) = axes
    for h in histories:
        var_ax.semilogy(h.epochs, h.variance, label=h.strategy)
        epoch_ax.semilogy(h.epochs, h.suboptimality, label=h.strategy)
        time_ax.semilogy(h.seconds, h.suboptimality, label=h.strategy)
    var_ax.set(xlabel="epochs", ylabel="tr Cov of the gradient estimate")
    epoch_ax.set(xlabel="epochs", ylabel="F(x) − F*")
    time_ax.set(xlabel="wall-clock seconds (sampling + steps)", ylabel="F(x) − F*")
    legend_ax.axis("off")
    legend_ax.legend(*var_ax.get_legend_handles_labels(), loc="center", title=title or None)
    fig.tight_layout()
    return fig


def estimate_histograms(
    estimates: Mapping[str, Sequence[float]], *, exact: float, xlabel: str = "estimate", ax: Axes | None = None
) -> None:
    """Histograms of repeated estimates (one per method) on common bins, with the exact value marked."""
    ax = _axes(ax)
    top = max(max(v) for v in estimates.values())
    bins = torch.linspace(0, top * 1.05 + 1e-12, 40).numpy()
    for i, (name, values) in enumerate(estimates.items()):
        ax.hist(list(values), bins=bins, alpha=0.6 + 0.2 * i, label=name)
    ax.axvline(exact, color="black", ls="--", lw=0.8, label="exact")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("runs")
    ax.legend()


def learning_curves(results: Mapping[str, object], *, axes: Sequence[Axes] | None = None) -> None:
    """Test accuracy against epochs and against training seconds, and training loss, per result.

    ``results`` maps a label to an :class:`ismod.experiments.Result`.
    """
    if axes is None:
        axes = plt.subplots(1, 3, figsize=(13, 3.6))[1]
    for label, result in results.items():
        hist = result.history  # type: ignore[attr-defined]
        epochs = [h["epoch"] for h in hist]
        axes[0].plot(epochs, [h["test_accuracy"] for h in hist], "o-", label=label)
        axes[1].plot([h["wall_time"] for h in hist], [h["test_accuracy"] for h in hist], "o-", label=label)
        trained = [h for h in hist if h["train_loss"] is not None]
        axes[2].plot([h["epoch"] for h in trained], [h["train_loss"] for h in trained], "o-", label=label)
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
        ax.plot(norms.numpy(), torch.linspace(0, 1, len(norms)).numpy(), label=f"epoch {h['epoch']:.1f}")
    ax.set_xscale("log")
    ax.set(xlabel="per-sample gradient norm ||∇θ L_i||", ylabel="fraction of samples ≤ x")
    ax.legend(fontsize=8)


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


def variance_reduction(results: Sequence, *, batch_size: int = 128, ax: Axes | None = None) -> dict[str, list[float]]:
    """Variance of importance-sampled minibatches relative to uniform, per score, over training
    (Katharopoulos & Fleuret's slide 7, re-made): mean over ``results`` (seeds) with their range."""
    from .diagnostics import score_variance_ratios

    ax = _axes(ax)
    labels = {"loss": "p ∝ loss", "bound": "p ∝ upper bound", "grad_norm": "p ∝ exact gradient norm"}
    per_seed = [[(h["epoch"], score_variance_ratios(h["probe"], batch_size)) for h in _probe_points(r)][1:] for r in results]
    epochs = [e for e, _ in per_seed[0]]
    means: dict[str, list[float]] = {}
    for key, label in labels.items():
        values = torch.tensor([[ratios[key] for _, ratios in seed] for seed in per_seed])
        means[key] = values.mean(0).tolist()
        ax.plot(epochs, means[key], "o-", label=label)
        ax.fill_between(epochs, values.min(0).values.numpy(), values.max(0).values.numpy(), alpha=0.2)
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="uniform")
    ax.set(xlabel="epochs", ylabel=f"variance / uniform (batch {batch_size})")
    ax.legend(fontsize=8)
    return {"epochs": epochs, **means}
