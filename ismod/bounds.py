"""Per-sample gradient norms and Katharopoulos & Fleuret's (2018) upper bound on them (Chapter 4).

For a network whose last layer maps features to logits :math:`z_i`, the chain rule gives
:math:`\\lVert\\nabla_\\theta L_i\\rVert \\le C\\,\\lVert \\partial L_i/\\partial z_i\\rVert_2` with a constant
:math:`C` common to all samples, which cancels when scores are normalised into probabilities. For softmax
cross-entropy :math:`\\partial L/\\partial z = \\mathrm{softmax}(z) - t`, so the bound costs one forward pass
and no backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["upper_bound", "logit_grad_norms", "per_sample_grad_norms", "per_sample_grads"]


def _check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")
    n, c = logits.shape
    if targets.dim() == 1:
        if targets.shape[0] != n:
            raise ValueError(f"targets has {targets.shape[0]} entries for {n} rows of logits")
        if targets.is_floating_point():
            raise ValueError(
                "class-index targets must be integers; pass probability targets as (batch, classes)"
            )
        bad = (targets < 0) | (targets >= c)
        if bad.any():
            raise ValueError(f"targets out of range [0, {c}) at {int(bad.sum())} positions")
    elif targets.shape == logits.shape:
        sums = targets.float().sum(1)
        off = (sums - 1).abs() > 1e-3
        if off.any():
            raise ValueError(f"probability targets must sum to 1; {int(off.sum())} rows do not")
    else:
        raise ValueError(
            f"targets must be class indices ({n},) or probabilities {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )


def upper_bound(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:math:`\\hat G_i = \\lVert \\mathrm{softmax}(z_i) - t_i \\rVert_2` per sample (softmax cross-entropy).

    ``targets`` are class indices (then :math:`t_i = e_{y_i}`) or per-sample probability vectors (mixup,
    RICAP, label smoothing). Computed in float32 whatever the logits' dtype, without autograd.
    """
    _check_targets(logits, targets)
    return upper_bound_unchecked(logits, targets)


def upper_bound_unchecked(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`upper_bound` without the checks (no host synchronisation), for the training step."""
    with torch.no_grad():
        residual = torch.softmax(logits.detach().float(), dim=1)
        if targets.dim() == 1:
            residual[torch.arange(len(targets), device=residual.device), targets] -= 1.0
        else:
            residual -= targets.float()
        return residual.norm(dim=1)


def logit_grad_norms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """:math:`\\lVert \\partial L_i/\\partial z_i\\rVert_2` for any per-sample loss, by autograd on the logits.

    ``loss_fn(logits, targets)`` must return one loss per sample, each depending only on its own row.
    """
    _check_targets(logits, targets)
    z = logits.detach().float().requires_grad_(True)
    with torch.enable_grad():
        losses = loss_fn(z, targets)
        if losses.shape != z.shape[:1]:
            raise ValueError(
                f"loss_fn must return per-sample losses of shape ({z.shape[0]},), got {tuple(losses.shape)}"
            )
        (grad,) = torch.autograd.grad(losses.sum(), z)
    return grad.norm(dim=1)


def per_sample_grad_norms(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact :math:`\\lVert \\nabla_\\theta L_i\\rVert_2` per sample, by ``torch.func`` (``vmap`` of ``grad``).

    BatchNorm: the model runs in eval mode here (restored afterwards), so each sample is normalised with
    the running statistics and its gradient does not depend on the rest of the batch — the only
    per-sample gradient that is well defined. ``chunk_size`` bounds the memory of the computation: at
    most that many per-sample gradients are formed at once.
    """
    return per_sample_grads(model, loss_fn, inputs, targets, chunk_size=chunk_size, reduce="norm")


def per_sample_grads(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int | None = None,
    reduce: str = "none",
) -> torch.Tensor:
    """Per-sample gradients :math:`\\nabla_\\theta L_i` flattened into the rows of an (n, P) float32
    matrix (``reduce="none"``), or only their norms (``reduce="norm"``, never holding more than
    ``chunk_size`` gradients). The model runs in eval mode, as in :func:`per_sample_grad_norms`."""
    from torch.func import functional_call, grad, vmap

    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs has {inputs.shape[0]} samples, targets {targets.shape[0]}")
    if reduce not in ("none", "norm"):
        raise ValueError(f"reduce must be 'none' or 'norm', got {reduce!r}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_of_one(p, b, x, y):
        out = functional_call(model, (p, b), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0)).sum()

    per_sample = vmap(grad(loss_of_one), in_dims=(None, None, 0, 0))
    step = chunk_size or inputs.shape[0]
    parts = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, inputs.shape[0], step):
            grads = per_sample(
                params, buffers, inputs[start : start + step], targets[start : start + step]
            )
            flat = torch.cat([g.flatten(1).float() for g in grads.values()], dim=1)
            parts.append(flat.norm(dim=1) if reduce == "norm" else flat)
    finally:
        model.train(was_training)
    return torch.cat(parts)
