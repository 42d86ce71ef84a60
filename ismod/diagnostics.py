"""Diagnostics of sampling distributions and of the estimates they give (Chapters 2–3)."""

from __future__ import annotations

import math

import torch

from .sampling import _check_probs, draw

__all__ = ["distribution_summary", "weighted_mean_bias"]


def distribution_summary(probs: torch.Tensor) -> dict[str, float]:
    """How far a sampling distribution over N items is from uniform, and what its weights do.

    Returns ``max_weight`` :math:`\\max_i 1/(N p_i)` over items with :math:`p_i > 0` (the largest factor a
    step can be scaled by), ``effective_fraction`` :math:`1/(N\\sum_i p_i^2)` (the share of items the
    distribution effectively uses; 1 for uniform), ``entropy`` :math:`-\\sum_i p_i\\log p_i` in nats, and
    ``kl_from_uniform`` :math:`\\mathrm{KL}(p\\,\\|\\,u) = \\log N - \\text{entropy}`.
    """
    p = _check_probs(probs).to(torch.float64)
    n = p.numel()
    positive = p[p > 0]
    entropy = float(-(positive * positive.log()).sum())
    return {
        "max_weight": float(1.0 / (n * positive.min())),
        "effective_fraction": float(1.0 / (n * (p**2).sum())),
        "entropy": entropy,
        "kl_from_uniform": math.log(n) - entropy,
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
