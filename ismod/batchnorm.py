"""Batch normalisation under importance sampling (Chapter 5's batch-norm test).

A train-mode batch-norm layer normalises each sample with the mean and variance of the batch it was
drawn into (Ioffe & Szegedy, 2015). An importance-drawn batch over-represents high-score samples, so
its statistics are those of a skewed sample of the data, and every sample's output and gradient move
with them. :func:`weighted_statistics` normalises such a batch with its *importance-weighted*
statistics instead: with the importance weights :math:`w_i = 1/(B g_i)` of a batch drawn from a
presample of B, the self-normalised weighted mean and variance (Hesterberg, 1995)

.. math::

    \\hat\\mu = \\sum_i \\omega_i \\bar x_i, \\qquad
    \\hat\\sigma^2 = \\sum_i \\omega_i \\overline{(x_i - \\hat\\mu)^2}, \\qquad
    \\omega_i = w_i / \\textstyle\\sum_j w_j

(bars: the mean over a channel's positions) estimate the presample's own statistics, so the layer
sees the data as a uniform batch would, while gradients still flow through the statistics, as in any
train-mode step. It costs nothing beyond the step itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["hold_statistics_of", "tracked_norms", "weighted_statistics"]


def tracked_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that keep running statistics, in module order."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]  # fmt: skip


def hold_statistics_of(
    model: nn.Module, inputs: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Make every tracked batch-norm layer's running statistics those of a train-mode forward pass of
    ``inputs`` (without autograd) and put those layers in eval mode, so that the forward passes that
    follow normalise with them as constants. Each layer keeps its momentum; other layers (dropout)
    keep their mode; the caller restores or updates the running statistics and the layers' modes.
    Returns the captured ``(mean, var)`` of each layer, in :func:`tracked_norms` order."""
    norms = tracked_norms(model)
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.momentum = 1.0  # the running statistics become this forward pass's batch statistics
            m.train()
        with torch.no_grad():
            model(inputs)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    for m in norms:
        m.eval()
    return [(m.running_mean.clone(), m.running_var.clone()) for m in norms]


def _weighted_batch_norm(
    layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, omega: torch.Tensor
) -> torch.Tensor:
    """One train-mode batch-norm forward pass of ``x`` with the batch statistics weighted by
    ``omega`` (one weight per sample, summing to 1); the running statistics move toward the weighted
    ones with the layer's momentum, their variance corrected by the effective sample size (Kish)."""
    reduce = [0, *range(2, x.dim())]
    omega = omega.reshape((-1,) + (1,) * (x.dim() - 1))
    positions = x[0, 0].numel()  # a channel's positions in one sample
    xf = x.float()
    mean = (omega * xf).sum(reduce) / positions
    mean_shape = (1, -1, *(1,) * (x.dim() - 2))
    centred = xf - mean.reshape(mean_shape)
    var = (omega * centred.square()).sum(reduce) / positions
    if layer.track_running_stats and layer.running_mean is not None:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            share = (layer.momentum if layer.momentum is not None
                     else 1.0 / float(layer.num_batches_tracked))  # fmt: skip
            # unbiased like PyTorch's n/(n-1), with n the effective count of the weighted positions
            # (a tensor: no host sync in the step)
            n = positions / omega.square().sum()
            unbiased = var * (n / (n - 1.0).clamp_min(1e-12))
            layer.running_mean.mul_(1 - share).add_(share * mean.to(layer.running_mean.dtype))
            layer.running_var.mul_(1 - share).add_(share * unbiased.to(layer.running_var.dtype))
    out = centred * torch.rsqrt(var + layer.eps).reshape(mean_shape)  # the graph runs through both
    if layer.weight is not None:
        out = out * layer.weight.float().reshape(mean_shape) + layer.bias.float().reshape(
            mean_shape
        )
    return out.to(x.dtype)


@contextlib.contextmanager
def weighted_statistics(model: nn.Module, weights: torch.Tensor) -> Iterator[None]:
    """Inside the ``with`` block, every batch-norm layer of ``model`` in train mode normalises the
    batch with the statistics weighted by ``weights`` (the batch's importance weights
    :math:`1/(Bg_i)`, one per sample, positive; they are not differentiated), and updates its running
    statistics from them. Layers in eval mode, and other layers, are untouched.

    With equal weights this is ordinary train-mode batch norm; with integer weights it normalises as
    if each sample were repeated that many times. Source: the module docstring; Chapter 5, §5.10."""
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1:
        raise ValueError(
            "weights must be a 1-D tensor, one importance weight per sample of the batch, got "
            f"{type(weights).__name__} of shape {tuple(getattr(weights, 'shape', ()))}"
        )
    # the normalised weights, once per step for every layer
    omega = (weights.detach() / weights.detach().sum()).to(torch.float32)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        if isinstance(m, nn.SyncBatchNorm):
            raise ValueError("weighted_statistics does not support SyncBatchNorm: each rank would "
                             "weight only its own shard; convert the model with plain BatchNorm")  # fmt: skip

    def forward_of(layer: nn.modules.batchnorm._BatchNorm):
        plain = type(layer).forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not layer.training:
                return plain(layer, x)
            if x.shape[0] != omega.shape[0]:
                raise ValueError(
                    f"weights has {omega.shape[0]} entries, the batch {x.shape[0]} samples"
                )
            return _weighted_batch_norm(layer, x, omega.to(x.device))

        return forward

    for m in layers:
        m.forward = forward_of(
            m
        )  # an instance attribute: Module.__call__ finds it before the class's
    try:
        yield
    finally:
        for m in layers:
            del m.forward
