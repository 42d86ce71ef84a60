"""Diagnostics of sampling distributions and of the estimates they give (Chapters 2–3)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .batchnorm import hold_statistics_of, weighted_statistics
from .sampling import check_probs, draw

__all__ = [
    "distribution_summary",
    "distribution_stats",
    "STAT_NAMES",
    "coverage",
    "weighted_mean_bias",
    "variance_from_norms",
    "spearman",
    "score_variance_ratios",
    "negligible_fraction",
    "NoiseScale",
    "gradient_noise_scale",
    "NORM_MODES",
    "GradientError",
    "batch_gradient",
    "batch_gradient_error",
]

STAT_NAMES: tuple[str, ...] = ("entropy", "kl_from_uniform", "effective_fraction", "max_weight")


def distribution_summary(probs: torch.Tensor) -> dict[str, float]:
    """How far a sampling distribution over N items is from uniform, and what its weights do.

    Returns ``max_weight`` :math:`\\max_i 1/(N p_i)` over items with :math:`p_i > 0` (the largest factor a
    step can be scaled by), ``effective_fraction`` :math:`1/(N\\sum_i p_i^2)` (the share of items the
    distribution effectively uses; 1 for uniform), ``entropy`` :math:`-\\sum_i p_i\\log p_i` in nats, and
    ``kl_from_uniform`` :math:`\\mathrm{KL}(p\\,\\|\\,u) = \\log N - \\text{entropy}`.
    """
    stats = distribution_stats(check_probs(probs)).tolist()
    return dict(zip(STAT_NAMES, stats))


def distribution_stats(probs: torch.Tensor) -> torch.Tensor:
    """:func:`distribution_summary` as a float64 tensor on the device of ``probs``, in the order of
    ``STAT_NAMES``, without validation or host synchronisation (for use inside a training step)."""
    p = probs.to(torch.float64)
    n = p.numel()
    positive = p > 0
    entropy = -torch.where(positive, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum()
    smallest = torch.where(positive, p, torch.full_like(p, math.inf)).min()
    return torch.stack(
        [
            entropy,
            (math.log(n) - entropy).clamp_min(0.0),
            1.0 / (n * (p**2).sum()),
            1.0 / (n * smallest),
        ]
    )


def coverage(visits: torch.Tensor) -> dict[str, float]:
    r"""How evenly training has visited the data, from per-sample visit counts (N,).

    ``seen``: the fraction of samples visited at least once; ``visit_entropy``: the entropy of the
    visit frequencies divided by :math:`\log N` (1 when every sample was visited equally often).
    """
    v = torch.as_tensor(visits, dtype=torch.float64)
    if v.dim() != 1 or v.numel() < 2:
        raise ValueError(
            f"visits must be a 1-D tensor of at least 2 counts, got shape {tuple(v.shape)}"
        )
    if (v < 0).any():
        raise ValueError("visits must be non-negative counts")
    total = float(v.sum())
    if total == 0:
        return {"seen": 0.0, "visit_entropy": 0.0}
    f = v[v > 0] / total
    return {
        "seen": float((v > 0).double().mean()),
        "visit_entropy": float(-(f * f.log()).sum()) / math.log(v.numel()),
    }


def weighted_mean_bias(
    values: torch.Tensor,
    probs: torch.Tensor,
    k: int,
    *,
    replacement: bool,
    repeats: int = 2000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Relative bias of the weighted minibatch mean :math:`\\frac1k\\sum_j v_{I_j}/(N p_{I_j})`.

    ``values`` is (N,) or (N, dim) (per-sample gradients). Over ``repeats`` independent batches drawn by
    :func:`~ismod.sampling.draw`, returns :math:`\\lVert \\overline{\\hat v} - \\bar v\\rVert / \\lVert\\bar v\\rVert`
    and its standard error (the same norm of the standard error of the mean of the batches, relative):
    a bias well above that standard error is real.
    """
    v = values.to(torch.float64)
    v = v[:, None] if v.dim() == 1 else v
    estimates = []
    for _ in range(repeats):
        idx, w = draw(probs, k, replacement=replacement, generator=generator)
        estimates.append((w[:, None] * v[idx]).mean(0))
    est = torch.stack(estimates)
    target = v.mean(0)
    scale = float(target.norm())
    bias = float((est.mean(0) - target).norm()) / scale
    stderr = float((est.std(0) / math.sqrt(repeats)).norm()) / scale
    return bias, stderr


def variance_from_norms(
    sq_norms: torch.Tensor, mean_sq_norm: float, probs: torch.Tensor, batch_size: int = 1
) -> float:
    r"""Trace of the covariance of the reweighted minibatch mean, drawn with replacement, from norms alone.

    :math:`\frac1b\big(\frac1{N^2}\sum_i \lVert G_i\rVert^2/p_i - \lVert\bar G\rVert^2\big)`, with
    ``sq_norms`` :math:`\lVert G_i\rVert^2` (N,) and ``mean_sq_norm`` :math:`\lVert\bar G\rVert^2`. It is
    the expected :math:`\lVert \bar G - \hat g\rVert^2` of Katharopoulos & Fleuret's variance measurement.
    """
    sq = torch.as_tensor(sq_norms, dtype=torch.float64)
    p = torch.as_tensor(probs, dtype=torch.float64)
    if sq.dim() != 1 or p.shape != sq.shape:
        raise ValueError(
            f"sq_norms and probs must be 1-D of one length, got {tuple(sq.shape)} and {tuple(p.shape)}"
        )
    if ((sq > 0) & (p <= 0)).any():
        return math.inf
    n = sq.numel()
    term = torch.where(sq > 0, sq / p.clamp_min(1e-300), torch.zeros_like(sq)).sum() / n**2
    return float(term - mean_sq_norm) / batch_size


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D samples (ties broken by position)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or a.numel() < 2:
        raise ValueError(
            f"a and b must be 1-D of one length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def score_variance_ratios(
    probe: dict, batch_size: int = 128, scores: tuple[str, ...] = ("loss", "bound", "grad_norm")
) -> dict[str, float]:
    """For each score in ``probe``, the variance of minibatches drawn with :math:`p \\propto` score
    (reweighted, with replacement) divided by that of uniform minibatches — below 1 is a reduction.

    ``probe`` holds per-sample ``grad_norm`` and the ``mean_grad_sq`` of the probe set, as recorded by
    :func:`ismod.experiments.gradient_probe`; Katharopoulos & Fleuret's protocol with the expectation
    computed exactly instead of averaged over sampled batches.
    """
    sq = torch.tensor(probe["grad_norm"], dtype=torch.float64) ** 2
    n = sq.numel()
    uniform = variance_from_norms(
        sq, probe["mean_grad_sq"], torch.full((n,), 1.0 / n, dtype=torch.float64), batch_size
    )
    out = {}
    for name in scores:
        s = torch.tensor(probe[name], dtype=torch.float64).clamp_min(0)
        p = s / s.sum() if s.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        out[name] = variance_from_norms(sq, probe["mean_grad_sq"], p, batch_size) / uniform
    return out


def negligible_fraction(norms: torch.Tensor, relative: float = 0.01) -> float:
    """Fraction of samples whose gradient norm is below ``relative`` × the largest one, the measure of
    Katharopoulos & Fleuret's slide 2 ("most samples have negligible gradient" late in training)."""
    if not 0 < relative < 1:
        raise ValueError(f"relative must lie in (0, 1), got {relative}")
    if norms.dim() != 1 or norms.numel() == 0:
        raise ValueError(
            f"norms must be a non-empty 1-D tensor of per-sample gradient norms, got shape {tuple(norms.shape)}"
        )
    return float((norms < relative * norms.max()).double().mean())


@dataclass(frozen=True)
class NoiseScale:
    """McCandlish et al.'s (2018) estimates: ``grad_sq`` :math:`|G|^2`, ``trace``
    :math:`\\operatorname{tr}\\Sigma` (per-sample gradient covariance) and their ratio ``b_simple``
    :math:`B_{\\text{simple}} = \\operatorname{tr}\\Sigma/|G|^2`, the batch size at which gradient
    noise and signal are equal (their estimate of the critical batch size)."""

    grad_sq: float
    trace: float
    b_simple: float


def gradient_noise_scale(
    sq_norm_small: float | torch.Tensor,
    sq_norm_big: float | torch.Tensor,
    b_small: int,
    b_big: int,
) -> NoiseScale:
    r"""The gradient noise scale from squared norms of mean gradients over batches of two sizes
    (McCandlish et al. 2018, Appendix A).

    With :math:`\mathbb{E}|G_b|^2 = |G|^2 + \operatorname{tr}\Sigma/b`, the unbiased estimates are
    :math:`|G|^2 \approx (b_{big}|G_{big}|^2 - b_{small}|G_{small}|^2)/(b_{big} - b_{small})` and
    :math:`\operatorname{tr}\Sigma \approx (|G_{small}|^2 - |G_{big}|^2)/(1/b_{small} - 1/b_{big})`.
    Tensors of several measurements are averaged first (their ratio of means, as the paper advises:
    a ratio of single noisy estimates is biased). ``b_simple`` is ``math.inf`` when the estimated
    :math:`|G|^2 \le 0` (no signal detected above the noise)."""
    for name, value in (("b_small", b_small), ("b_big", b_big)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer batch size, got {value!r}")
    if b_big <= b_small:
        raise ValueError(f"b_big must exceed b_small, got b_small={b_small}, b_big={b_big}")

    def mean_of(name: str, value: float | torch.Tensor) -> float:
        t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{name} must be finite squared norms (>= 0), got {value!r}")
        return float(t.mean())

    small, big = mean_of("sq_norm_small", sq_norm_small), mean_of("sq_norm_big", sq_norm_big)
    grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1.0 / b_small - 1.0 / b_big)
    b_simple = trace / grad_sq if grad_sq > 0 else math.inf
    return NoiseScale(grad_sq, trace, b_simple)


# --- the error of a batch gradient, in the normalisation mode training uses (Chapter 5) -------------

NORM_MODES = ("train", "eval", "presample", "weighted")
"""The ways a batch can be normalised when its gradient is taken. ``"train"`` uses the batch's own
statistics (what a training step with batch norm does; a sample's gradient then depends on its batch);
``"eval"`` the running statistics (a sample's gradient is its own); ``"presample"`` the statistics of
the uniform presample the batch was drawn from, as ``Presample(batch_norm="presample")`` trains (a
sample's gradient depends on its presample, not on which of its members were drawn with it);
``"weighted"`` the batch's own statistics weighted by its importance weights
(:func:`ismod.batchnorm.weighted_statistics`, as ``Presample(batch_norm="weighted")`` trains: an
estimate of the presample's statistics, with gradients through them; a uniform batch, weights 1,
is normalised as in ``"train"``)."""

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BatchRule = Callable[[torch.Generator], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True)
class GradientError:
    """:func:`batch_gradient_error`'s answer: ``mse`` :math:`\\mathbb{E}\\lVert\\hat g - \\bar g\\rVert^2`
    estimated from ``draws`` batches, its ``standard_error`` (the squared errors' standard deviation
    over :math:`\\sqrt{R}`), and ``reference_sq_norm`` :math:`\\lVert\\bar g\\rVert^2`, to compare against."""

    mse: float
    standard_error: float
    draws: int
    reference_sq_norm: float


def batch_gradient(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    mode: str = "train",
    presample: torch.Tensor | None = None,
) -> torch.Tensor:
    """The flattened gradient of :math:`\\frac1b\\sum_j w_j L_{i_j}` over the model's trainable
    parameters, for the batch ``x[indices]`` normalised as ``mode`` says (:data:`NORM_MODES`);
    ``mode="presample"`` needs ``presample``, the indices into ``x`` of the presample whose statistics
    normalise the batch.

    The model is left as it was: its train/eval flag, its buffers (batch norm's running statistics,
    which a train-mode forward pass would move) and its parameters' ``.grad``."""
    if mode not in NORM_MODES:
        raise ValueError(f"mode must be one of {NORM_MODES}, got {mode!r}")
    if (mode == "presample") != (presample is not None):
        raise ValueError(
            "presample (the indices of the presample whose statistics normalise the batch) is "
            f"needed with mode='presample' and only then; got mode={mode!r}, presample="
            f"{'None' if presample is None else 'given'}"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters: there is no gradient to measure")
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train(mode in ("train", "weighted"))
    try:
        with contextlib.ExitStack() as normalisation:
            if presample is not None:
                hold_statistics_of(model, x[presample])
            if mode == "weighted" and weights is not None:
                normalisation.enter_context(weighted_statistics(model, weights.to(x.device)))
            logits = model(x[indices])
        losses = loss_fn(logits, y[indices])
        if losses.dim() != 1 or losses.shape[0] != indices.numel():
            raise ValueError(
                f"loss_fn must return one loss per sample (reduction='none'), got shape "
                f"{tuple(losses.shape)} for a batch of {indices.numel()}"
            )
        if weights is not None:
            losses = losses * weights.to(losses.device, losses.dtype)
        grads = torch.autograd.grad(losses.mean(), params)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for live, saved in zip(model.buffers(), buffers):
                live.copy_(saved)
    return torch.cat([g.reshape(-1) for g in grads]).double()


def batch_gradient_error(
    model: nn.Module,
    loss_fn: PerSampleLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    rule: BatchRule,
    *,
    reference: torch.Tensor,
    draws: int = 12,
    mode: str = "train",
    generator: torch.Generator | None = None,
) -> GradientError:
    """The mean squared error of a batch gradient against a reference gradient,
    :math:`\\mathbb{E}\\lVert\\hat g - \\bar g\\rVert^2`, over ``draws`` batches drawn by ``rule``.

    ``rule(generator)`` returns a batch's ``(indices, weights)`` into ``x, y`` (weights ``None`` for
    1), e.g. a uniform batch, or b draws with :math:`p_i \\propto s_i` and :math:`w_i = 1/(N p_i)`
    (:func:`ismod.sampling.draw`), and, for ``mode="presample"``, a third value: the indices of the
    presample the batch was drawn from. Each batch's gradient is :func:`batch_gradient` in ``mode``.
    ``reference`` is :math:`\\bar g`: the full data's mean gradient where a sample's gradient does not
    depend on its batch (``mode="eval"``, or a network without batch norm), or, in ``"train"`` mode,
    the mean gradient of many uniform batches (:func:`batch_gradient` averaged), since no other
    "full gradient" exists there.

    Importance sampling's theory (Chapter 2, Chapter 5's §5.1) predicts, for b draws with replacement
    and per-sample gradients :math:`G_i` that do not depend on the batch,
    :math:`\\frac1b\\bigl(\\sum_i \\lVert G_i\\rVert^2/(N^2 p_i) - \\lVert\\bar g\\rVert^2\\bigr)`:
    lowest at :math:`p_i \\propto \\lVert G_i\\rVert`. With batch norm in train mode a sample's gradient
    depends on its batch, and that prediction need not hold; this function measures what does."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(
            f"draws must be an integer >= 2 (a standard error needs two), got {draws!r}"
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    reference = reference.detach().reshape(-1).double()
    errors = []
    for _ in range(draws):
        indices, weights, *presample = rule(generator)
        if mode == "presample" and not presample:
            raise ValueError(
                "with mode='presample' the rule must return (indices, weights, presample indices)"
            )
        g = batch_gradient(model, loss_fn, x, y, indices, weights, mode=mode,
                           presample=presample[0] if mode == "presample" else None)  # fmt: skip
        if g.shape != reference.shape:
            raise ValueError(
                f"reference has {reference.numel()} entries, the model's gradient {g.numel()}: pass the "
                "flattened gradient of the same model (batch_gradient)"
            )
        errors.append(float(((g - reference.to(g.device)) ** 2).sum()))
    sq = torch.tensor(errors, dtype=torch.float64)
    return GradientError(float(sq.mean()), float(sq.std() / math.sqrt(draws)), draws,
                         float((reference**2).sum()))  # fmt: skip
