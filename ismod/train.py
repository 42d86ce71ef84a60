"""The training loop: budgets, learning-rate schedules, timing, evaluation, checkpoints.

One loop serves every strategy. Per step: the strategy selects indices and weights, the batch is
gathered from the on-device dataset and augmented, the per-sample losses are weighted and
back-propagated, the optimiser steps, and the strategy observes the losses. Nothing in the step waits
for the device: losses accumulate on it and are read at evaluation points.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._io import replace_atomically
from .augment import Augment
from .batchnorm import hold_statistics_of, tracked_norms, weighted_statistics
from .data import ImageData
from .diagnostics import NORM_MODES
from .process_group import World
from .strategies.base import Selection, Strategy

__all__ = [
    "TrainSettings",
    "SCHEDULES",
    "BUDGETS",
    "lr_factor",
    "amp_dtype",
    "evaluate",
    "recalibrated_batch_norm",
    "fit",
    "sgd",
    "cross_entropy_loss",
    "check_field_types",
    "frozen_batch_norm_statistics",
    "normalized_by",
    "noise_scale_at",
    "NOISE_SCALE_CHUNKS",
    "gradient_error_at",
    "GRADIENT_ERROR_PRESAMPLE",
    "TRAINED_SAMPLE_FORWARDS",
    "modelled_seconds",
    "scored_samples",
]

SCHEDULES: tuple[str, ...] = ("constant", "step", "linear", "onecycle")
BUDGETS: tuple[str, ...] = (
    "epochs",
    "steps",
    "seconds",
    "forward_passes",
    "modelled_seconds",
    "strategy_epochs",
)
# budgets whose steps are not known in advance, shown by a progress bar as a percentage
_MODELLED_BUDGETS: tuple[str, ...] = ("forward_passes", "modelled_seconds", "strategy_epochs")
# The cost model of the "forward_passes" budget: a trained sample costs a forward and a backward
# pass, the backward counted as two forwards (the t_b = 2 t_f behind Katharopoulos & Fleuret's fixed
# τ_th = (B + 3b)/(3b)); a scored sample (a presample, candidates) costs one forward pass.
TRAINED_SAMPLE_FORWARDS = 3.0
PHASES: tuple[str, ...] = ("selection", "data", "forward_backward", "communication", "optimizer")
# forward_backward split in two, for cost models that need t_f and t_b (Katharopoulos & Fleuret's τ_th)
SUBPHASES: tuple[str, ...] = ("forward", "backward")
# the step after which the strategy first hears the measured forward/backward times (one device sync)
_FIRST_TIMING_STEP = 10
# samples scored per forward pass when a strategy scores many at once (a presample, candidates)
_SCORE_CHUNK = 1024


# the normalisation modes the gradient-error probe measures unless told otherwise
GRADIENT_ERROR_MODES: tuple[str, ...] = ("train", "eval", "presample")


@dataclass(frozen=True)
class TrainSettings:
    """How to train: batch, budget, optimiser, schedule, evaluation and checkpoint cadence."""

    batch_size: int = 512
    # "epochs", "steps", "seconds" (of training time), "forward_passes" (the cost model above:
    # wall-clock time without the machine's load in it) or "modelled_seconds" (seconds from step costs
    # measured in isolation: step_seconds per training step + score_seconds per scored sample) or
    # "strategy_epochs" (the strategy's own epochs, Strategy.epochs_done: InfoBatch's pruned epochs)
    budget: str = "epochs"
    budget_amount: float = 4.0
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2  # fraction of the budget (onecycle; linear with warm-up)
    milestones: tuple[float, ...] = ()  # fractions of the budget, for "step"
    gamma: float = 0.1
    label_smoothing: float = 0.0
    evaluations: int = 8  # evaluation points spread over the budget (plus one at the start)
    amp: bool = (
        True  # CUDA only: bf16 autocast where supported, else fp16 with a gradient scaler (T4)
    )
    channels_last: bool = True  # faster on CPU too, for these convolutional nets
    final_lr: float = 0.0  # onecycle: the learning rate at the end, as a fraction of lr
    initial_lr: float = 0.0  # onecycle: the learning rate at the start, as a fraction of lr
    bias_lr_scale: float = (
        1.0  # != 1: batch-norm parameters get lr × this and decay wd / this (airbench)
    )
    lookahead: bool = (
        False  # airbench's lookahead: every 5 steps pull the weights toward a slow average
    )
    tta: int = (
        0  # test-time augmentation in evaluation: 0 none, 1 mirror, 2 mirror + 1-pixel shifts
    )
    compile: bool = (
        False  # torch.compile the model for training steps (its first steps then compile)
    )
    # > 0: after the last evaluation, evaluate once more with batch-norm statistics re-estimated on this
    # many uniform batches of training images (a diagnostic for statistics skewed by non-uniform batches)
    bn_recalibration: int = 0
    # record the instrumentation (Chapter 5's dissection): the gradient norm of every step, summarised
    # per evaluation interval, and at each evaluation point the train-mode loss on a fixed uniform
    # batch and the gradient noise scale (see :func:`noise_scale_at`)
    instrument: bool = False
    # > 0, with instrument: at each evaluation point, the error of importance-drawn against uniform
    # batch gradients in each normalisation mode, over this many draws each (gradient_error_at)
    gradient_error_draws: int = 0
    # the normalisation modes the probe measures, of ismod.diagnostics.NORM_MODES (batch-norm models;
    # a network without batch norm is probed in "train" mode only)
    gradient_error_modes: tuple[str, ...] = GRADIENT_ERROR_MODES
    checkpoint_every_steps: int = 250
    checkpoint_every_seconds: float = 300.0
    # the cost model of a "modelled_seconds" budget, measured with nothing else on the machine
    # (ismod.bench.step_costs): seconds of one training step of b samples, and of scoring one sample
    step_seconds: float = 0.0
    score_seconds: float = 0.0

    def validate(self, num_items: int) -> None:
        """Fail before any training, naming the field: its type first (a value from the command line
        arrives as text), then its range."""
        check_field_types(self)
        for ok, message in self._run_checks(num_items) + self._optimizer_checks():
            if not ok:
                raise ValueError(message)

    def _optimizer_checks(self) -> list[tuple[bool, str]]:
        """The optimiser's and the schedule's fields, each with the error that names it."""
        return [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (
                self.schedule in SCHEDULES,
                f"schedule must be one of {SCHEDULES}, got {self.schedule!r}",
            ),
            (0 <= self.warmup < 1, f"warmup must lie in [0, 1), got {self.warmup}"),
            (
                all(0 < m < 1 for m in self.milestones),
                "milestones must be fractions of the budget in (0, 1)",
            ),
            (0 <= self.label_smoothing < 1, "label_smoothing must lie in [0, 1)"),
            (0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (
                0 <= self.final_lr <= 1,
                f"final_lr (a fraction of lr) must lie in [0, 1], got {self.final_lr}",
            ),
            (
                0 <= self.initial_lr <= 1,
                f"initial_lr (a fraction of lr) must lie in [0, 1], got {self.initial_lr}",
            ),
            (self.bias_lr_scale > 0, f"bias_lr_scale must be > 0, got {self.bias_lr_scale}"),
            (
                not self.lookahead or self.budget in ("epochs", "steps"),
                "lookahead needs a budget in epochs or steps (its averaging schedule follows the step count)",
            ),
        ]

    def _run_checks(self, num_items: int) -> list[tuple[bool, str]]:
        """The run's fields (batch, budget, evaluation, probes, checkpoints), each with its error."""
        return [
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (
                self.batch_size <= num_items,
                f"batch_size {self.batch_size} exceeds the {num_items} training samples",
            ),
            (self.budget in BUDGETS, f"budget must be one of {BUDGETS}, got {self.budget!r}"),
            (self.budget_amount > 0, f"budget_amount must be > 0, got {self.budget_amount}"),
            (self.evaluations >= 1, "evaluations must be >= 1"),
            (self.checkpoint_every_steps >= 1, "checkpoint_every_steps must be >= 1"),
            (self.checkpoint_every_seconds > 0, "checkpoint_every_seconds must be > 0"),
            (
                self.tta in (0, 1, 2),
                f"tta must be 0 (none), 1 (mirror) or 2 (mirror + shifts), got {self.tta}",
            ),
            (
                self.gradient_error_draws == 0
                or (self.gradient_error_draws >= 2 and self.instrument),
                "gradient_error_draws must be 0 (off) or >= 2 with instrument=True (the probe runs "
                f"with the instrumentation), got {self.gradient_error_draws}",
            ),
            (
                len(self.gradient_error_modes) > 0
                and all(m in NORM_MODES for m in self.gradient_error_modes),
                f"gradient_error_modes must be a non-empty tuple of {NORM_MODES}, got "
                f"{self.gradient_error_modes!r}",
            ),
            (
                self.bn_recalibration >= 0,
                f"bn_recalibration must be >= 0 batches, got {self.bn_recalibration}",
            ),
            (
                self.budget != "modelled_seconds" or self.step_seconds > 0,
                "a modelled_seconds budget needs step_seconds > 0 (seconds of one training step, measured in "
                f"isolation: ismod.bench.step_costs), got {self.step_seconds}",
            ),
            (
                self.score_seconds >= 0,
                f"score_seconds (seconds to score one sample) must be >= 0, got {self.score_seconds}",
            ),
            (
                self.budget != "modelled_seconds"
                or self.step_seconds > self.score_seconds * self.batch_size,
                f"step_seconds ({self.step_seconds}) must exceed the scoring of a batch, score_seconds × "
                f"batch_size ({self.score_seconds * self.batch_size}): a step holds a forward and a backward pass",
            ),
        ]


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "True or False",
    "str": "a string",
    "tuple[float, ...]": "a tuple of numbers",
    "tuple[int, ...]": "a tuple of integers",
    "dict[str, Any]": "a dict",
    "int | None": "an integer or None",
}


def _type_ok(value: Any, annotation: str) -> bool:
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "int | None":
        return value is None or _type_ok(value, "int")
    if annotation == "tuple[float, ...]":
        return isinstance(value, (tuple, list)) and all(_type_ok(v, "float") for v in value)
    if annotation == "tuple[int, ...]":
        return isinstance(value, (tuple, list)) and all(_type_ok(v, "int") for v in value)
    if annotation == "dict[str, Any]":
        return isinstance(value, dict)
    return True  # an annotation this check does not know is left to the range checks


def check_field_types(settings: Any) -> None:
    """Raise ``TypeError`` naming the first field of the dataclass ``settings`` whose value has the
    wrong type for its annotation, e.g. ``lr must be a number, got 'abc' (str)``."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _type_ok(value, annotation):
            raise TypeError(f"{f.name} must be {_TYPE_NAMES.get(annotation, annotation)}, got {value!r} "
                            f"({type(value).__name__})")  # fmt: skip


def lr_factor(settings: TrainSettings, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` ∈ [0, 1] of the budget.

    ``constant``; ``step`` (×``gamma`` at each milestone); ``linear`` (to zero over the budget, the
    budgeted-training schedule of Arazo et al. 2021, after an optional warm-up); ``onecycle`` (linear
    warm-up over ``warmup`` from ``initial_lr``, then linear decay to ``final_lr``; both 0 by default —
    airbench94's triangle is 0.2 → 1 at 23% → 0.07).
    """
    p = min(max(progress, 0.0), 1.0)
    if settings.schedule == "constant":
        return 1.0
    if settings.schedule == "step":
        return settings.gamma ** sum(p >= m for m in settings.milestones)
    if (
        settings.schedule == "onecycle"
    ):  # start → 1 over the warm-up, then 1 → end (0 → 1 → 0 by default)
        start, end = settings.initial_lr, settings.final_lr
        if settings.warmup > 0 and p < settings.warmup:
            return start + (1.0 - start) * p / settings.warmup
        return end + (1.0 - end) * (1.0 - p) / (1.0 - settings.warmup)
    if settings.warmup > 0 and p < settings.warmup:
        return p / settings.warmup
    if settings.warmup > 0:
        return (1.0 - p) / (1.0 - settings.warmup)
    return 1.0 - p


def scored_samples(steps: int, forward_passes: float, batch_size: int) -> float:
    """Samples scored outside the training steps (presamples, candidates): the forward passes less the
    ``TRAINED_SAMPLE_FORWARDS`` × b that each training step counts."""
    return forward_passes - TRAINED_SAMPLE_FORWARDS * batch_size * steps


def modelled_seconds(steps: int, forward_passes: float, settings: TrainSettings) -> float:
    """Seconds of a run by the cost model of a ``"modelled_seconds"`` budget:
    ``steps × step_seconds + scored × score_seconds`` (scored: :func:`scored_samples`)."""
    scored = scored_samples(steps, forward_passes, settings.batch_size)
    return steps * settings.step_seconds + scored * settings.score_seconds


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype on ``device``: bf16 on CUDA GPUs of compute capability 8 (Ampere) or later,
    fp16 before them (Colab's T4, 7.5, has no bf16 units); bf16 on CPU."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        return torch.float16
    return torch.bfloat16


def _tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits averaged over test-time augmentations: level 1 adds the mirror image, level 2 also the
    mirrored pair shifted by one pixel up-left and down-right (weights 1/2, 1/4, 1/4, as airbench94)."""

    def mirror(inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * (model(inputs).float() + model(inputs.flip(3)).float())

    if level == 0:
        return model(x).float()
    if level == 1:
        return mirror(x)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[2:]
    shifted = 0.5 * (mirror(padded[:, :, :h, :w]) + mirror(padded[:, :, 2:, 2:]))
    return 0.5 * mirror(x) + 0.5 * shifted


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, augment: Augment, *, batch_size: int = 1000,
             amp: bool = False, channels_last: bool = False, world: World | None = None,
             tta: int = 0) -> tuple[float, float]:  # fmt: skip
    """(accuracy, mean cross-entropy) of ``model`` on ``data``, without augmentation (or with
    test-time augmentation ``tta``: 1 adds the mirror image, 2 also one-pixel shifts). With ``world``,
    each rank evaluates every K-th sample and the sums are added over ranks."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=data.labels.device)
    loss = torch.zeros((), device=data.labels.device)
    images, labels = data.images, data.labels
    if world is not None:
        images, labels = images[world.rank :: world.size], labels[world.rank :: world.size]
    device = data.labels.device
    for start in range(0, labels.numel(), batch_size):
        x, y = augment(
            images[start : start + batch_size], labels[start : start + batch_size], train=False
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            logits = _tta_logits(model, x, tta)
        correct += (logits.argmax(1) == y).sum()
        loss += F.cross_entropy(logits, y, reduction="sum")
    model.train(was_training)
    if world is not None:
        total_correct, total_loss = world.reduce_floats([float(correct), float(loss)])
        return total_correct / len(data), total_loss / len(data)
    return float(correct) / len(data), float(loss) / len(data)


@contextlib.contextmanager
def recalibrated_batch_norm(
    model: nn.Module,
    data: ImageData,
    augment: Augment,
    *,
    batches: int,
    batch_size: int,
    seed: int = 0,
    amp: bool = False,
    channels_last: bool = False,
) -> Iterator[None]:
    """Inside the ``with`` block, every batch-norm layer of ``model`` uses statistics re-estimated as the
    plain average over ``batches`` uniformly drawn batches of ``data`` (un-augmented); on exit the
    running statistics and momenta are restored exactly. An importance sampler trains on non-uniform
    batches, so its running statistics describe those batches; comparing evaluations inside and
    outside the block separates that effect from what the weights learnt."""
    norms = tracked_norms(model)
    momenta = [m.momentum for m in norms]
    was_training = model.training
    # the running statistics come back through the one buffer-restoring mechanism; momenta here
    with frozen_batch_norm_statistics(model):
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches below
            generator = torch.Generator().manual_seed(seed)
            device = data.labels.device
            model.train()
            with torch.no_grad():
                for _ in range(batches):
                    index = torch.randint(
                        len(data), (min(batch_size, len(data)),), generator=generator
                    ).to(device)
                    x, _ = augment(data.images[index], data.labels[index], train=False)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
                        model(x)
            model.train(was_training)
            yield
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
            model.train(was_training)


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the ``with`` block, train-mode forward passes leave every batch-norm layer's running
    statistics (and batch count) exactly as they were: a measurement must not move the model."""
    saved = [{k: v.clone() for k, v in m.state_dict().items()
              if k.startswith("running") or k == "num_batches_tracked"} for m in tracked_norms(model)]  # fmt: skip
    try:
        yield
    finally:
        for m, buffers in zip(tracked_norms(model), saved):
            for k, v in buffers.items():
                getattr(m, k).copy_(v)


@contextlib.contextmanager
def normalized_by(model: nn.Module, inputs: torch.Tensor) -> Iterator[None]:
    """Inside the ``with`` block, every batch-norm layer normalises with the statistics of ``inputs``
    (a uniform presample) instead of those of the batch being trained, so that a sample's output and
    gradient do not depend on which other samples were drawn with it (Chapter 5's batch-norm test).

    The statistics are those a train-mode forward pass of ``inputs`` computes, layer after layer
    (one extra forward pass, without autograd); the block's forward and backward passes then use them
    as constants, as in inference mode. On leaving, each layer's running statistics are updated from
    ``inputs`` with the layer's own momentum, as if ``inputs`` had been the training batch, and not
    from the trained, importance-drawn batch. Other layers (dropout) keep their mode."""
    norms = tracked_norms(model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.momentum, m.training) for m in norms]
    presample: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    try:
        presample = hold_statistics_of(model, inputs)
        yield
    finally:
        for m, (mean, var, momentum, training) in zip(norms, saved):
            m.momentum, m.training = momentum, training
        if presample is not None:
            for m, (mean, var, momentum, _), (p_mean, p_var) in zip(norms, saved, presample):
                # the layer's own update: its momentum, or with momentum=None PyTorch's cumulative
                # average, 1/(batches seen), the presample's pass counted in num_batches_tracked
                share = momentum if momentum is not None else 1.0 / float(m.num_batches_tracked)
                # new tensors, not in place: the block's autograd graph holds the ones it used
                m.running_mean = (1 - share) * mean + share * p_mean
                m.running_var = (1 - share) * var + share * p_var
        else:
            for m, (mean, var, _, _) in zip(norms, saved):
                m.running_mean, m.running_var = mean, var


# parts the fixed batch of the noise-scale measurement is split into (McCandlish et al. average
# per-device gradients the same way): b_small = its size / 8, b_big = its size
NOISE_SCALE_CHUNKS = 8


def noise_scale_at(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss: PerSampleLoss, *,
                   chunks: int = NOISE_SCALE_CHUNKS, amp: bool = False, channels_last: bool = False) -> dict[str, float]:  # fmt: skip
    r"""The train-mode loss on a fixed batch and the gradient noise scale there (McCandlish et al. 2018,
    Appendix A): the batch (already normalised) is split into ``chunks`` parts of :math:`b_s`; each
    part's mean-loss gradient :math:`G_k` is taken in train mode (batch statistics, as a training step
    sees them; running statistics untouched), and :func:`ismod.diagnostics.gradient_noise_scale`
    is given :math:`\overline{|G_k|^2}` at :math:`b_s` and :math:`|\bar G|^2` at :math:`b_s\cdot` ``chunks``.
    Returns ``train_mode_loss``, ``grad_sq``, ``trace``, ``b_simple``, ``b_small``, ``b_big``."""
    from .diagnostics import gradient_noise_scale

    n = targets.shape[0]
    if chunks < 2 or n < chunks:
        raise ValueError(
            f"the fixed batch of {n} samples cannot be split into chunks={chunks} >= 2 parts"
        )
    b_small = n // chunks
    params = [p for p in model.parameters() if p.requires_grad]
    device = images.device
    was_training = model.training
    model.train()
    total: list[torch.Tensor] | None = None
    small_sq, losses = [], []
    with frozen_batch_norm_statistics(model):
        for k in range(chunks):
            x, y = images[k * b_small : (k + 1) * b_small], targets[k * b_small : (k + 1) * b_small]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
                logits = model(x)
            mean_loss = per_sample_losses(loss, logits.float(), y).mean()
            grads = torch.autograd.grad(mean_loss, params)
            small_sq.append(torch.stack([(g.double() ** 2).sum() for g in grads]).sum())
            total = (
                [g.double() for g in grads]
                if total is None
                else [t + g for t, g in zip(total, grads)]
            )
            losses.append(mean_loss.detach())
    model.train(was_training)
    big_sq = torch.stack([((t / chunks) ** 2).sum() for t in total]).sum()
    estimate = gradient_noise_scale(torch.stack(small_sq), big_sq, b_small, b_small * chunks)
    return {"train_mode_loss": float(torch.stack(losses).mean()), "grad_sq": estimate.grad_sq,
            "trace": estimate.trace, "b_simple": estimate.b_simple, "b_small": b_small,
            "b_big": b_small * chunks}  # fmt: skip


# the probe's presample, in batches: B = 6b, the regime of Chapter 5's batch-norm test
GRADIENT_ERROR_PRESAMPLE = 6


def gradient_error_at(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, loss: PerSampleLoss, *,
                      batch_size: int, draws: int, generator: torch.Generator,
                      presample: int = GRADIENT_ERROR_PRESAMPLE,
                      modes: tuple[str, ...] = GRADIENT_ERROR_MODES) -> dict[str, Any]:  # fmt: skip
    r"""How far an importance-drawn batch gradient lands from the mean gradient, against a uniform one,
    in each normalisation mode a step can use (Chapter 5's batch-norm test): importance sampling's
    theory holds a sample's gradient fixed whatever its batch, which batch norm in train mode breaks.

    On the fixed batch ``images`` (the pool), each draw takes a uniform presample of
    :math:`B` = ``presample`` · b, scores it with the upper bound :math:`\hat G_i` in eval mode, and
    draws b with :math:`p_i \propto \hat G_i` and :math:`w_i = 1/(B p_i)` (importance), or b of it
    uniformly (uniform). For each of ``modes`` (:data:`ismod.diagnostics.NORM_MODES`; only ``"train"``
    for a network without batch norm, where they coincide) :func:`ismod.diagnostics.batch_gradient_error`
    gives each rule's mean squared error against the mode's mean gradient: in eval mode the pool's
    gradient; otherwise the mean of 2·``draws`` uniform batches' gradients (no other full gradient
    exists there; its own noise pulls the ratio slightly toward 1). Returns, per mode, ``uniform``,
    ``importance`` (each with ``_se``) and ``ratio`` (importance / uniform: below 1, the method removes
    variance), and ``tau``, the presamples' mean :math:`\tau = B\sum_i g_i^2`
    (:func:`ismod.tau.equivalent_batch_increment`). The model is left as it was."""
    from .bounds import upper_bound_unchecked
    from .diagnostics import batch_gradient, batch_gradient_error
    from .sampling import draw_unchecked

    n, b = targets.shape[0], batch_size
    size = min(presample * b, n)
    if size < b or draws < 2:
        raise ValueError(f"the probe needs a pool of at least b = {b} samples and draws >= 2, got {n} and {draws}")  # fmt: skip
    was_training = model.training
    model.eval()
    with torch.no_grad():
        # on the host, with the host generator: a probe, not a training step
        scores = upper_bound_unchecked(model(images), targets).double().clamp_min(1e-12).cpu()
    model.train(was_training)
    device, taus = images.device, []

    def uniform(gen: torch.Generator) -> tuple[torch.Tensor, None, torch.Tensor]:
        pre = torch.randperm(n, generator=gen)[:size]
        return pre[torch.randperm(size, generator=gen)[:b]].to(device), None, pre.to(device)

    def importance(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = torch.randperm(n, generator=gen)[:size]
        p = scores[pre] / scores[pre].sum()
        taus.append(size * (p**2).sum())
        picked, weights = draw_unchecked(p, b, True, gen)  # weights 1/(B p)
        return pre[picked].to(device), weights.float().to(device), pre.to(device)

    out: dict[str, Any] = {}
    for mode in modes if tracked_norms(model) else ("train",):
        if mode == "eval":
            reference = batch_gradient(model, loss, images, targets, torch.arange(n, device=images.device), mode="eval")  # fmt: skip
        else:
            reference = torch.stack([batch_gradient(model, loss, images, targets, i, w, mode=mode,
                                                    presample=pre if mode == "presample" else None)
                                     for i, w, pre in (uniform(generator) for _ in range(2 * draws))]).mean(0)  # fmt: skip
        errors = {name: batch_gradient_error(model, loss, images, targets, rule, reference=reference,
                                             draws=draws, mode=mode, generator=generator)
                  for name, rule in (("uniform", uniform), ("importance", importance))}  # fmt: skip
        out[mode] = {"uniform": errors["uniform"].mse, "uniform_se": errors["uniform"].standard_error,
                     "importance": errors["importance"].mse,
                     "importance_se": errors["importance"].standard_error,
                     "ratio": errors["importance"].mse / max(errors["uniform"].mse, 1e-300)}  # fmt: skip
    out["tau"] = float(torch.stack(taus).mean())
    return out


class _Lookahead:
    """airbench's lookahead: every ``every`` steps the slow copy moves toward the weights,
    slow ← slow + (1 − d)(w − slow), and the weights are reset to it; d = 0.95⁵ (t/T)³ grows from 0
    (no averaging) to 0.77 at the end, where the weights take the slow copy a last time. The floating
    state of the model (parameters and batch-norm statistics) is updated in two fused calls."""

    every = 5

    def __init__(self, model: nn.Module) -> None:
        # the model's floating tensors, once: state_dict() shares their storage, and training,
        # load_state_dict and this class all write them in place
        current = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        self.slow = {k: v.detach().clone() for k, v in current.items()}
        self._current, self._slow = list(current.values()), list(self.slow.values())

    def load(self, slow: dict[str, torch.Tensor]) -> None:
        """Restore the slow copy saved in a checkpoint."""
        for key, tensor in self.slow.items():
            tensor.copy_(slow[key])

    @torch.no_grad()
    def step(self, step: int, total_steps: int) -> None:
        if step % self.every == 0:
            self._pull(0.95**5 * (step / total_steps) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        torch._foreach_lerp_(self._slow, self._current, 1.0 - decay)
        torch._foreach_copy_(self._current, self._slow)


def _param_groups(model: nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """SGD's parameter groups; frozen parameters are left out; ``lr_scale`` multiplies the scheduled lr.

    With ``bias_lr_scale`` = 1 (default): weights (dim > 1) decay by ``weight_decay``, 1-d parameters
    (batch-norm shifts and scales, biases) do not decay. Otherwise airbench's grouping: batch-norm
    parameters take lr × scale and decay wd / scale (so their per-step decay lr·wd equals the weights'),
    and every other parameter, biases included, takes lr and wd.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    scale = settings.bias_lr_scale
    if scale == 1.0:
        weights, others = [p for p in params if p.dim() > 1], [p for p in params if p.dim() <= 1]
        return [{"params": weights, "weight_decay": settings.weight_decay, "lr_scale": 1.0},
                {"params": others, "weight_decay": 0.0, "lr_scale": 1.0}]  # fmt: skip
    norm_ids = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for p in m.parameters()
    }
    norms, rest = (
        [p for p in params if id(p) in norm_ids],
        [p for p in params if id(p) not in norm_ids],
    )
    return [{"params": rest, "weight_decay": settings.weight_decay, "lr_scale": 1.0},
            {"params": norms, "weight_decay": settings.weight_decay / scale, "lr_scale": scale}]  # fmt: skip


class _Clock:
    """Per-phase time: perf_counter on CPU; CUDA events on GPU, read only at evaluation points."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.totals = {phase: 0.0 for phase in PHASES + SUBPHASES}
        self._pending: list[tuple[str, Any, Any]] = []

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def add(self, phase: str, start: Any, end: Any) -> None:
        if self.cuda:
            self._pending.append((phase, start, end))
        else:
            self.totals[phase] += end - start

    def seconds_if_done(self, start: Any, end: Any) -> float | None:
        """Seconds between two marks, or None while a CUDA mark has not been reached (never waits)."""
        if not self.cuda:
            return end - start
        return start.elapsed_time(end) / 1000.0 if end.query() else None

    def settle(self) -> dict[str, float]:
        if self._pending:
            torch.cuda.synchronize()
            for phase, start, end in self._pending:
                self.totals[phase] += start.elapsed_time(end) / 1000.0
            self._pending.clear()
        return dict(self.totals)


# (logits as float32, targets: class indices or probability vectors) -> per-sample losses, shape (B,)
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def cross_entropy_loss(label_smoothing: float = 0.0) -> PerSampleLoss:
    """The default per-sample loss: cross-entropy (hard or soft targets) with ``label_smoothing``."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), targets, reduction="none", label_smoothing=label_smoothing
        )

    return loss


def per_sample_losses(
    loss: PerSampleLoss, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``loss(logits, targets)``, checked to hold one loss per sample (a reduced loss is named)."""
    losses = loss(logits, targets)
    if not isinstance(losses, torch.Tensor) or losses.shape != (logits.shape[0],):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss must return one loss per sample, shape ({logits.shape[0]},), got "
                         f"{shape}; use reduction='none'")  # fmt: skip
    return losses


def sgd(settings: TrainSettings) -> OptimizerFactory:
    """The default optimiser: SGD with ``settings``' momentum and Nesterov flag over the given groups."""

    def make(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum,
                               nesterov=settings.nesterov and settings.momentum > 0)  # fmt: skip

    return make


def fit(
    model: nn.Module,
    train: ImageData,
    test: ImageData,
    strategy: Strategy,
    augment: Augment,
    settings: TrainSettings,
    *,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    tag: str = "",
    progress: bool = True,
    probe: Callable[[nn.Module], dict[str, Any]] | None = None,
    train_eval: ImageData | None = None,
    optimizer: OptimizerFactory | None = None,
    loss: PerSampleLoss | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``train`` within the budget; return ``history``, ``timing`` and ``final``.

    History records (at the start and at ``settings.evaluations`` points): ``step``, ``epoch``
    (samples seen / N), ``wall_time`` (training seconds, evaluation excluded), ``samples_seen``,
    ``train_loss`` (mean per-sample loss since the previous record), ``test_accuracy``, ``test_loss``,
    ``lr`` and the strategy's summary, ``forward_passes`` (so far; with ``settings.step_seconds`` set,
    also ``modelled_seconds``, the cost model's clock: :func:`modelled_seconds`), ``train_accuracy`` (of the trained batches since the previous
    record, against their labels' argmax), and with ``train_eval`` (a fixed set of training samples)
    ``train_eval_loss`` and ``train_eval_accuracy`` on it, un-augmented. With ``checkpoint``, the full
    state is written there atomically every ``checkpoint_every_steps`` steps or
    ``checkpoint_every_seconds`` seconds; ``resume=True`` continues from it (a killed run loses only the
    steps since), provided ``tag`` (the config hash) matches. ``probe(model)``, if given, runs at each
    evaluation point (its time counted as ``probe``, not training) and its return value is stored in
    the record under ``"probe"``.

    ``optimizer`` builds the optimiser from parameter groups (default :func:`sgd`); the schedule sets
    each group's learning rate. ``loss`` maps (logits, targets) to per-sample losses (default
    :func:`cross_entropy_loss` with ``settings.label_smoothing``); scoring passes use the same loss, so a
    sample's training and scoring losses agree.

    Under ``torch.distributed`` (see :mod:`ismod.distributed`), ``settings.batch_size`` is the global
    batch: every rank selects and augments the same global batch, trains on its slice, averages
    gradients, and all-gathers losses and logits for the strategy; only rank 0 writes the checkpoint.
    """
    loop = _Loop(model, train, test, strategy, augment, settings, seed=seed, checkpoint=checkpoint, tag=tag,
                 probe=probe, train_eval=train_eval, optimizer=optimizer, loss=loss)  # fmt: skip
    if resume:
        loop.restore()
    return loop.run(progress)


@dataclass
class LoopState:
    """What a run has done so far: the loop's part of a checkpoint."""

    step: int = 0
    train_time: float = 0.0  # seconds of training steps (evaluation and probes excluded)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    next_eval: int = 0  # the next evaluation point, k of settings.evaluations
    # forward passes spent: 3 per trained sample, 1 per scored one (a host count: no sync)
    forward_passes: float = 0.0
    # the current evaluation interval's sums of training loss and correct predictions (on the device)
    loss_sum: torch.Tensor | float = 0.0
    correct_sum: torch.Tensor | float = 0.0
    loss_count: int = 0

    def start_interval(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct_sum = torch.zeros((), device=device)
        self.loss_count = 0

    def add_batch(self, losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """The interval's sums grow by a trained batch's losses and correct predictions (on the device)."""
        self.loss_sum += losses.sum()
        labels = targets if targets.dim() == 1 else targets.argmax(1)
        self.correct_sum += (logits.argmax(1) == labels).sum()
        self.loss_count += losses.numel()

    def counters(self, step: int, settings: TrainSettings, n: int, lr: float, summary: dict[str, Any],
                 test: tuple[float, float]) -> dict[str, Any]:  # fmt: skip
        """A history record's counters (the interval's training loss and accuracy, the learning rate
        ``lr``, the strategy's ``summary``, forward passes), around the test set's ``(accuracy, loss)``."""
        count = self.loss_count
        record = {
            "step": step, "epoch": step * settings.batch_size / n, "wall_time": self.train_time,
            "samples_seen": step * settings.batch_size,
            "train_loss": float(self.loss_sum) / count if count else None,  # None: nothing trained yet
            "train_accuracy": float(self.correct_sum) / count if count else None,
            "test_accuracy": test[0], "test_loss": test[1], "lr": lr, **summary,
            "forward_passes": self.forward_passes,
        }  # fmt: skip
        if settings.step_seconds > 0:  # the cost model's clock, so time to a target can read it
            record["modelled_seconds"] = modelled_seconds(step, self.forward_passes, settings)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LoopState:
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


class _Instruments:
    """Chapter 5's instrumentation of a run: the gradient norm of every step, summed over the evaluation
    interval on the device, and at each evaluation point the train-mode loss and the gradient noise
    scale on a fixed uniform batch (:func:`noise_scale_at`) and, with ``gradient_error_draws``, the
    gradient-error probe (:func:`gradient_error_at`)."""

    def __init__(self, train: ImageData, augment: Augment, seed: int) -> None:
        n = len(train)
        # the fixed uniform batch of the noise-scale measurement: 8 parts of min(128, N/8)
        size = NOISE_SCALE_CHUNKS * min(128, n // NOISE_SCALE_CHUNKS)
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 999))[:size]
        index = index.to(train.images.device)
        self.batch = augment(train.images[index], train.labels[index], train=False)
        self.seed = seed
        self._fresh_interval()

    def _fresh_interval(self) -> None:
        self.grad_norm_sum: torch.Tensor | float = 0.0
        self.grad_norm_count = 0
        self.grad_norm_importance_sum: torch.Tensor | float = 0.0
        self.grad_norm_importance_count = 0

    def add_step(self, model: nn.Module, scaler: torch.amp.GradScaler, importance: bool) -> None:
        """Add this step's gradient norm (of the weighted mean loss, unscaled) to the interval's sums,
        on the device: read only at the next evaluation point."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).double())
        if scaler.is_enabled():
            norm = norm / scaler._get_scale_async().double()
        self.grad_norm_sum = self.grad_norm_sum + norm
        self.grad_norm_count += 1
        if importance:
            self.grad_norm_importance_sum = self.grad_norm_importance_sum + norm
            self.grad_norm_importance_count += 1

    def read(self, model: nn.Module, loss: PerSampleLoss, settings: TrainSettings, step: int, *,
             amp: bool) -> dict[str, Any]:  # fmt: skip
        """The record's instrumentation, and a fresh interval: ``grad_norm`` (mean over the interval's
        steps), ``grad_norm_importance`` (over its weighted steps; None if none), ``train_mode_loss``,
        ``noise_scale`` and, with ``gradient_error_draws``, ``gradient_error``."""

        def mean(total: torch.Tensor | float, count: int) -> float | None:
            return float(total) / count if count else None

        out: dict[str, Any] = {
            "grad_norm": mean(self.grad_norm_sum, self.grad_norm_count),
            "grad_norm_importance": mean(
                self.grad_norm_importance_sum, self.grad_norm_importance_count
            ),
        }
        images, labels = self.batch
        noise = noise_scale_at(
            model, images, labels, loss, amp=amp, channels_last=settings.channels_last
        )
        out["train_mode_loss"] = noise.pop("train_mode_loss")
        out["noise_scale"] = noise
        if settings.gradient_error_draws:
            # seeded by the step, so that a resumed run probes as the uninterrupted one did
            probe = torch.Generator().manual_seed(self.seed * 100_003 + step)
            out["gradient_error"] = gradient_error_at(model, images, labels, loss, batch_size=settings.batch_size,
                                                      draws=settings.gradient_error_draws, generator=probe,
                                                      modes=settings.gradient_error_modes)  # fmt: skip
        self._fresh_interval()
        return out

    _STATE = (
        "grad_norm_sum",
        "grad_norm_count",
        "grad_norm_importance_sum",
        "grad_norm_importance_count",
    )

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])


class _Budget:
    """When a run ends and where it stands: by steps (an epoch or step budget, known ahead) or by what
    the steps spend (seconds, forward passes, modelled seconds, the strategy's own epochs)."""

    def __init__(
        self, settings: TrainSettings, n: int, strategy: Strategy, state: LoopState
    ) -> None:
        self.settings, self.n, self.strategy, self.state = settings, n, strategy, state
        s = settings
        if s.budget == "epochs":
            self.total_steps: int | None = max(1, round(s.budget_amount * n / s.batch_size))
        elif s.budget == "steps":
            self.total_steps = int(s.budget_amount)
        else:
            self.total_steps = None  # seconds or forward passes: what the steps spend decides

    def spent(self) -> float:
        """What a seconds, forward-pass or modelled-seconds budget has used so far."""
        s, state = self.settings, self.state
        if s.budget == "modelled_seconds":
            return modelled_seconds(state.step, state.forward_passes, s)
        if s.budget == "strategy_epochs":
            return float(self.strategy.epochs_done())
        return state.forward_passes if s.budget == "forward_passes" else state.train_time

    def progress_of(self, step: int) -> float:
        if self.total_steps is not None:
            return step / self.total_steps
        return self.spent() / self.settings.budget_amount

    def finished(self, step: int) -> bool:
        if self.total_steps is not None:
            return step >= self.total_steps
        return self.spent() >= self.settings.budget_amount

    def due_for_eval(self, step: int) -> bool:
        k = self.state.next_eval
        if k > self.settings.evaluations:
            return False
        return self.progress_of(step) >= k / self.settings.evaluations - 1e-12

    def progress_bar(self, tag: str) -> Any:
        from tqdm.auto import tqdm

        steps = self.total_steps
        if steps is None and self.settings.budget in _MODELLED_BUDGETS:
            return tqdm(total=100, leave=False, unit="%", desc=tag[:8] or "train")
        return tqdm(total=steps if steps is not None else round(self.settings.budget_amount),
                    initial=self.state.step if steps is not None else 0, leave=False,
                    unit="step" if steps is not None else "s", desc=tag[:8] or "train")  # fmt: skip

    def advance(self, bar: Any) -> None:
        if self.total_steps is not None:
            bar.update(1)
        else:
            scale = (
                100 / self.settings.budget_amount
                if self.settings.budget in _MODELLED_BUDGETS
                else 1
            )
            bar.n = min(round(self.spent() * scale), bar.total)
            bar.refresh()


class _Scorer:
    """The strategies' ``score_fn``: per-sample losses and logits of training indices, without autograd
    and in inference mode, each scored sample counted as a forward pass of the run; and their
    reference trainer (:meth:`train_reference`), whose model is scored the same way."""

    def __init__(self, model: nn.Module, train: ImageData, test: ImageData, augment: Augment,
                 settings: TrainSettings, loss: PerSampleLoss, generator: torch.Generator, world: World | None,
                 state: LoopState, seed: int) -> None:  # fmt: skip
        self.model, self.train, self.test, self.augment, self.settings = (
            model,
            train,
            test,
            augment,
            settings,
        )
        self.seed = seed
        self.loss, self.gen, self.world, self.state = loss, generator, world, state
        self.device = train.images.device
        self.use_amp = settings.amp and self.device.type == "cuda"
        self.dtype = amp_dtype(self.device)

    def __call__(
        self, indices: torch.Tensor, *, augmented: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses and logits of ``indices`` without autograd, in chunks of ``_SCORE_CHUNK`` (split over
        ranks and gathered, when distributed). Un-augmented by default; ``augmented=True`` scores a
        fresh training augmentation of each sample and returns those inputs ``(x, y)`` as a third
        value, so that a strategy can train on exactly what it scored
        (:class:`~ismod.strategies.base.Selection`'s ``inputs``)."""
        self.state.forward_passes += indices.numel()  # a host count: no sync
        if augmented:
            if self.augment.soft_targets:
                raise ValueError("scoring augmented inputs needs an augmentation without mixing (a mixup or RICAP "
                                 "output holds several samples): pass score_augmented=False to score clean images")  # fmt: skip
            # the whole presample augmented, as every rank does alike (one generator state everywhere)
            x, y = self.augment(
                self.train.images[indices], self.train.labels[indices], generator=self.gen
            )
            if self.world is None:
                return (*self.inputs(lambda a, b: (x[a:b], y[a:b]), indices.numel()), (x, y))
            positions = self.world.shard(torch.arange(indices.numel(), device=indices.device))
            losses, logits = self.inputs(
                lambda a, b: (x[positions[a:b]], y[positions[a:b]]), positions.numel()
            )
            return (self.world.unshard(losses, indices.numel()),
                    self.world.unshard(logits, indices.numel()), (x, y))  # fmt: skip
        if self.world is None:
            return self.local(indices)
        losses, logits = self.local(self.world.shard(indices))
        return self.world.unshard(losses, indices.numel()), self.world.unshard(
            logits, indices.numel()
        )

    def local(self, indices: torch.Tensor, model: nn.Module | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Scores of ``indices`` on this process alone, un-augmented (by ``model``, by default the run's)."""
        images, labels = self.train.images, self.train.labels

        def chunk(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            part = indices[start:stop]
            return self.augment(images[part], labels[part], train=False)

        return self.inputs(chunk, indices.numel(), model)

    def inputs(self, chunk: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], count: int,
               model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        # inference mode (BatchNorm's running statistics, as Katharopoulos & Fleuret's library scores):
        # a sample's score does not depend on the chunk it is scored with, and no buffer moves
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        losses, logits = [], []
        for start in range(0, count, _SCORE_CHUNK):
            x, y = chunk(start, min(start + _SCORE_CHUNK, count))
            if self.settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with (
                torch.no_grad(),
                torch.autocast(self.device.type, dtype=self.dtype, enabled=self.use_amp),
            ):
                z = model(x).float()
            losses.append(per_sample_losses(self.loss, z, y))
            logits.append(z)
        model.train(was_training)
        return torch.cat(losses), torch.cat(logits)

    def train_reference(
        self, indices: torch.Tensor, epochs: float
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The strategies' :data:`~ismod.strategies.base.ReferenceTrainer`: a copy of the model as it
        is before the first update (so a fresh model of the run's architecture and initialisation),
        trained by :func:`fit` with uniform batches on the training samples ``indices`` for ``epochs``
        epochs under the run's settings (the batch at most ``len(indices)``, one evaluation). Its
        trained samples' passes are added to the run's forward passes, and its time, spent inside the
        step that asks, to the run's. Returns the per-sample losses of training indices under it,
        un-augmented and in inference mode, each scored sample counted as a forward pass."""
        from .strategies.uniform import Uniform

        if self.state.step > 0:
            raise RuntimeError("train_reference must be called before the first update (in the first select): "
                               "the copy it trains starts from the model's initialisation")  # fmt: skip
        reference = copy.deepcopy(self.model)
        held = dataclasses.replace(
            self.train, images=self.train.images[indices], labels=self.train.labels[indices]
        )
        settings = dataclasses.replace(self.settings, budget="epochs", budget_amount=float(epochs),
                                       batch_size=min(self.settings.batch_size, len(held)),
                                       evaluations=1, instrument=False, compile=False)  # fmt: skip
        out = fit(reference, held, self.test, Uniform(), self.augment, settings,
                  seed=self.seed + 104_729, progress=False, loss=self.loss)  # fmt: skip
        # the reference run's own count of its forward passes, charged to this run
        self.state.forward_passes += out["final"]["forward_passes"]

        def losses_of(idx: torch.Tensor) -> torch.Tensor:
            self.state.forward_passes += idx.numel()
            return self.local(idx, reference)[0]

        return losses_of


class _Loop:
    """One training run in named parts: budget and schedule, scoring, the step, recording, checkpoints."""

    def __init__(self, model: nn.Module, train: ImageData, test: ImageData, strategy: Strategy, augment: Augment,
                 settings: TrainSettings, *, seed: int, checkpoint: str | os.PathLike | None, tag: str,
                 probe: Callable[[nn.Module], dict[str, Any]] | None, train_eval: ImageData | None,
                 optimizer: OptimizerFactory | None, loss: PerSampleLoss | None) -> None:  # fmt: skip
        settings.validate(len(train))
        self.world = World.current()
        self.local = _local_slice(self.world, settings.batch_size, tag)
        self.train, self.strategy, self.augment, self.settings = train, strategy, augment, settings
        self.tag = tag
        self.device = device = train.images.device
        self.n = len(train)
        self.use_amp = settings.amp and device.type == "cuda"
        self.dtype = amp_dtype(device)
        self.scaler = _grad_scaler(self.use_amp, self.dtype)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # the compiled module shares the model's parameters and buffers; evaluation and scoring use the
        # plain model, so their other batch shapes trigger no recompilation
        self.train_model = torch.compile(model) if settings.compile else model
        self.loss = loss if loss is not None else cross_entropy_loss(settings.label_smoothing)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.state = LoopState()
        self.state.start_interval(device)
        self.score = _Scorer(model, train, test, augment, settings, self.loss, self.gen, self.world, self.state,
                             seed)  # fmt: skip
        strategy.setup(self.n, settings.batch_size, device, self.gen, self.score, train.labels)
        strategy.set_reference_trainer(self.score.train_reference)
        _check_strategy_budget(settings, strategy, self.world)
        self.optimizer = (optimizer or sgd(settings))(_param_groups(model, settings))
        self.lookahead = _Lookahead(model) if settings.lookahead else None
        self.budget = _Budget(settings, self.n, strategy, self.state)
        self.total_steps = self.budget.total_steps
        self.instruments = _Instruments(train, augment, seed) if settings.instrument else None
        self.clock = _Clock(device)
        self.evaluations = _Evaluations(model, train, test, train_eval, augment, settings, self.loss,
                                        probe, self.instruments, self.world, self.use_amp, seed,
                                        self.clock.totals)  # fmt: skip
        self.checkpoint = _Checkpoint(Path(checkpoint), tag) if checkpoint is not None else None
        if self.checkpoint is not None:
            strategy.state_dict()  # a strategy that cannot be checkpointed fails now, not at the first save

    # --- budget and schedule ----------------------------------------------------------------------

    def progress_of(self, step: int) -> float:
        return self.budget.progress_of(step)

    def set_learning_rate(self, progress: float) -> None:
        factor = lr_factor(self.settings, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * factor * group["lr_scale"]

    # --- one step -------------------------------------------------------------------------------------

    def step(self) -> None:
        """Select, augment, forward, weight, backward, (all-reduce), update, observe; time each phase."""
        state, clock, world, strategy = self.state, self.clock, self.world, self.strategy
        step = state.step
        wall_start = time.perf_counter()
        progress = self.progress_of(step)
        self.set_learning_rate(progress)
        strategy.progress = progress
        t0 = clock.mark()
        selection = Selection.of(strategy.select(step))
        indices, weights = selection
        t1 = clock.mark()
        x, y, y_global, weights = _step_inputs(selection, self.train, self.augment, self.gen, self.local,
                                               self.settings.channels_last)  # fmt: skip
        t2 = clock.mark()
        logits, losses, t_forward = self._forward_backward(x, y, weights, selection.norm_inputs,
                                                           selection.weighted_norm)  # fmt: skip
        t3 = clock.mark()
        if world is not None:
            world.average_([p.grad for p in self.model.parameters() if p.grad is not None])
        t_reduced = clock.mark()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.lookahead is not None:
            self.lookahead.step(step + 1, self.total_steps)
        if self.instruments is not None:
            self.instruments.add_step(self.model, self.scaler, importance=weights is not None)
        t4 = clock.mark()
        t_gathered = self._observe(indices, losses, logits, y_global)
        t5 = clock.mark()
        for phase, a, b in (("selection", t0, t1), ("data", t1, t2), ("forward_backward", t2, t3),
                            ("communication", t3, t_reduced), ("optimizer", t_reduced, t4),
                            ("communication", t4, t_gathered), ("selection", t_gathered, t5),
                            ("forward", t2, t_forward), ("backward", t_forward, t3)):  # fmt: skip
            clock.add(phase, a, b)
        state.step = step + 1
        state.forward_passes += TRAINED_SAMPLE_FORWARDS * self.settings.batch_size
        if state.step == _FIRST_TIMING_STEP:
            self.tell_step_times()
        elapsed = time.perf_counter() - wall_start
        if (
            world is not None and self.total_steps is None
        ):  # a seconds budget ends on the same step everywhere
            elapsed = world.reduce_floats([elapsed], "max")[0]
        state.train_time += elapsed

    def _forward_backward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        weights: torch.Tensor | None,
        norm_inputs: torch.Tensor | None,
        weighted_norm: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The weighted loss's forward and backward passes, normalised by ``norm_inputs``' batch-norm
        statistics where the strategy gave them, or by the batch's own statistics weighted by
        ``weights`` (``weighted_norm``); the logits, per-sample losses and the clock's mark between the
        two passes."""
        if norm_inputs is not None:  # one more forward pass: the presample's statistics
            self.state.forward_passes += norm_inputs.shape[0]
        autocast = functools.partial(
            torch.autocast, self.device.type, dtype=self.dtype, enabled=self.use_amp
        )
        with _step_normalisation(self.model, weights if weighted_norm else None, norm_inputs, autocast,
                                 self.settings.channels_last):  # fmt: skip
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.use_amp):
                logits = self.train_model(x)
            losses = per_sample_losses(self.loss, logits.float(), y)
            loss = (losses * weights).mean() if weights is not None else losses.mean()
            t_forward = self.clock.mark()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        return logits, losses, t_forward

    def _observe(
        self,
        indices: torch.Tensor,
        losses: torch.Tensor,
        logits: torch.Tensor,
        y_global: torch.Tensor,
    ) -> Any:
        """The strategy observes the whole global batch; the interval's loss and accuracy sums grow.
        Returns the clock's mark after gathering the batch from every rank."""
        detached, seen_logits = losses.detach(), logits.detach()
        if self.world is not None:  # every rank's strategy observes the whole global batch
            detached, seen_logits = (
                self.world.all_gather_cat(detached),
                self.world.all_gather_cat(seen_logits),
            )
        t_gathered = self.clock.mark()
        if self.augment.soft_targets and self.strategy.uses_observations:
            # a mixed output holds several samples: the strategy observes each sample's own clean score
            self.strategy.observe(indices, *self.score(indices))
        else:
            self.strategy.observe(indices, detached, seen_logits)
        self.state.add_batch(detached, seen_logits, y_global)
        return t_gathered

    def tell_step_times(self) -> None:
        times = _step_times(self.settings, self.clock, self.state.step, self.world)
        if times is not None:
            self.strategy.set_step_times(*times)

    # --- recording --------------------------------------------------------------------------------------

    def record(self, step: int) -> None:
        """Evaluate and append a history record (evaluation and probe time are not training time)."""
        state = self.state
        if (
            self.device.type == "cuda"
        ):  # the steps still queued on the device belong to training time
            start = time.perf_counter()
            torch.cuda.synchronize(self.device)
            state.train_time += time.perf_counter() - start
        lr = self.settings.lr * lr_factor(self.settings, self.progress_of(step))
        counters = functools.partial(
            state.counters, step, self.settings, self.n, lr, self.strategy.summary()
        )
        state.history.append(self.evaluations.at(step, counters))
        state.start_interval(self.device)
        state.next_eval += 1
        self.tell_step_times()

    # --- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if self.checkpoint is not None and (self.world is None or self.world.rank == 0):
            self.checkpoint.save(self)

    def restore(self) -> None:
        """Continue from the checkpoint, if there is one (it must carry this run's tag)."""
        if self.checkpoint is not None:
            self.checkpoint.restore(self)

    # --- the loop -------------------------------------------------------------------------------------------

    def run(self, progress: bool) -> dict[str, Any]:
        bar = self.budget.progress_bar(self.tag) if progress else None
        self.model.train()
        last_save_time, last_save_step = time.perf_counter(), self.state.step
        while True:
            step = self.state.step
            finished = self.budget.finished(step)
            if finished and self.lookahead is not None:
                self.lookahead.finish()  # the weights take the slow copy before the last evaluation
            if self.budget.due_for_eval(step):
                self.record(step)
                if bar is not None:
                    bar.set_postfix(test_acc=f"{self.state.history[-1]['test_accuracy']:.3f}")
            if finished:
                while (
                    self.state.next_eval <= self.settings.evaluations
                ):  # a seconds budget can end between points
                    self.record(step)
                break
            self.step()
            if bar is not None:
                self.budget.advance(bar)
            if self.checkpoint is not None and (
                self.state.step - last_save_step >= self.settings.checkpoint_every_steps
                or time.perf_counter() - last_save_time >= self.settings.checkpoint_every_seconds
            ):
                self.save_checkpoint()
                last_save_time, last_save_step = time.perf_counter(), self.state.step
        if bar is not None:
            bar.close()
        self.save_checkpoint()
        return self._output()

    def _output(self) -> dict[str, Any]:
        timing = self.clock.settle()
        final = {
            **_final_summary(self.state, self.settings, self.n),
            **self.evaluations.recalibrated(),
        }
        steps = max(self.state.step, 1)
        per_step = {k: v / steps for k, v in timing.items() if k in PHASES + SUBPHASES}
        return {
            "history": self.state.history,
            "timing": {**timing, "per_step": per_step},
            "final": final,
        }


def _step_inputs(selection: Selection, train: ImageData, augment: Augment, gen: torch.Generator,
                 local: slice | None, channels_last: bool,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """A step's inputs ``x, y`` (this process's part), the global batch's targets and the weights."""
    indices, weights = selection
    if selection.inputs is not None:  # the very inputs the strategy scored (and weighted) this step
        x, y = selection.inputs
    else:
        x, y = augment(train.images[indices], train.labels[indices], generator=gen)
    y_global = y
    if (
        local is not None
    ):  # the whole global batch was augmented, as one process would; train on a slice
        x, y = x[local], y[local]
        weights = weights[local] if weights is not None else None
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, y_global, weights


@contextlib.contextmanager
def _step_normalisation(model: nn.Module, weights: torch.Tensor | None, norm_inputs: torch.Tensor | None,
                        autocast: Callable[[], Any], channels_last: bool) -> Iterator[None]:  # fmt: skip
    """The batch-norm statistics a step's forward pass normalises by: the batch's own weighted by
    ``weights`` (:func:`~ismod.batchnorm.weighted_statistics`; this rank's shard, by its own weights),
    those of ``norm_inputs`` (:func:`normalized_by`), or, with neither, the batch's own."""
    with contextlib.ExitStack() as normalisation:
        if weights is not None:
            normalisation.enter_context(weighted_statistics(model, weights))
        if norm_inputs is not None:
            if channels_last:
                norm_inputs = norm_inputs.contiguous(memory_format=torch.channels_last)
            # under the step's autocast, so the statistics are those its forward pass would see
            with autocast():
                normalisation.enter_context(normalized_by(model, norm_inputs))
        yield


def _local_slice(world: World | None, batch_size: int, tag: str) -> slice | None:
    """This process's part of the global batch (None in one process); every rank must run ``tag``."""
    if world is None:
        return None
    if batch_size % world.size:
        raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the world "
                         f"size {world.size}; choose a multiple of {world.size}")  # fmt: skip
    world.check_same(tag, "config hash")
    per_rank = batch_size // world.size
    return slice(world.rank * per_rank, (world.rank + 1) * per_rank)


def _grad_scaler(use_amp: bool, dtype: torch.dtype) -> torch.amp.GradScaler:
    """fp16 (GPUs before Ampere) needs loss scaling; bf16 has float32's range and does not. The scale
    starts at 2^10 (airbench's summed loss over 1024 samples, in effect): from the default 2^16 the
    fast network's batch-norm backward overflows and the first ten steps would be skipped."""
    return torch.amp.GradScaler(
        "cuda", init_scale=1024.0, enabled=use_amp and dtype == torch.float16
    )


def _check_strategy_budget(
    settings: TrainSettings, strategy: Strategy, world: World | None
) -> None:
    if settings.budget == "strategy_epochs" and (
        strategy.epochs_done() is None or world is not None
    ):
        raise ValueError(
            f"budget='strategy_epochs' counts the strategy's own epochs, which {strategy.name!r} "
            "does not cut (Strategy.epochs_done is None), or the run has several processes; use "
            "budget='epochs' (samples seen / N) or an epoch-cutting strategy in one process"
        )


def _step_times(settings: TrainSettings, clock: _Clock, done: int,
                world: World | None) -> tuple[float, float] | None:  # fmt: skip
    """The (forward, backward) seconds of a step the strategy's τ_th rests on: the cost model's under a
    modelled budget, else the clock's means over the ``done`` steps (None before the first)."""
    if settings.budget == "modelled_seconds":
        # the modelled costs, not the clock's: τ_th = 1 + B·score_seconds/step_seconds, the same on
        # a busy machine as on an idle one (a batch's scoring pass stands for t_f, the rest of a step for t_b)
        forward = settings.score_seconds * settings.batch_size
        return forward, settings.step_seconds - forward
    if not done:
        return None
    totals = clock.settle()
    times = [totals["forward"] / done, totals["backward"] / done]
    if world is not None:  # one τ_th on every rank
        times = world.reduce_floats(times, "mean")
    return times[0], times[1]


class _Evaluations:
    """What an evaluation point measures beyond the loop's counters (the test set, the fixed training
    subset, the instruments and the probe), timed apart from training into the clock's ``totals``; and
    the run's closing evaluation with recalibrated batch-norm statistics."""

    def __init__(self, model: nn.Module, train: ImageData, test: ImageData, train_eval: ImageData | None,
                 augment: Augment, settings: TrainSettings, loss: PerSampleLoss,
                 probe: Callable[[nn.Module], dict[str, Any]] | None, instruments: _Instruments | None,
                 world: World | None, amp: bool, seed: int, totals: dict[str, float]) -> None:  # fmt: skip
        self.model, self.train, self.test, self.train_eval = model, train, test, train_eval
        self.augment, self.settings, self.loss, self.probe = augment, settings, loss, probe
        self.instruments, self.world, self.amp, self.seed = instruments, world, amp, seed
        self.totals = totals
        self.kwargs = dict(amp=amp, channels_last=settings.channels_last, world=world)

    def at(
        self, step: int, counters: Callable[[tuple[float, float]], dict[str, Any]]
    ) -> dict[str, Any]:
        """The history record of ``step``: ``counters(test accuracy and loss)`` and the measurements."""
        start = time.perf_counter()
        record = counters(
            evaluate(self.model, self.test, self.augment, tta=self.settings.tta, **self.kwargs)
        )
        if self.train_eval is not None:
            acc, loss = evaluate(self.model, self.train_eval, self.augment, **self.kwargs)
            record.update(train_eval_accuracy=acc, train_eval_loss=loss)
        if self.instruments is not None and self.world is None:
            record.update(
                self.instruments.read(self.model, self.loss, self.settings, step, amp=self.amp)
            )
        self.totals["evaluation"] = self.totals.get("evaluation", 0.0) + time.perf_counter() - start
        if self.probe is not None:
            start = time.perf_counter()
            record["probe"] = self.probe(self.model)
            self.totals["probe"] = self.totals.get("probe", 0.0) + time.perf_counter() - start
        return record

    def recalibrated(self) -> dict[str, float]:
        """With ``settings.bn_recalibration`` batches (single process only): :func:`evaluate_recalibrated`."""
        if not self.settings.bn_recalibration or self.world is not None:
            return {}
        return evaluate_recalibrated(self.model, self.train, self.test, self.train_eval, self.augment,
                                     self.settings, seed=self.seed, amp=self.amp)  # fmt: skip


class _Checkpoint:
    """A run's checkpoint file: everything that decides what the run does next, written atomically,
    and restored only into the run whose tag (its config hash) it carries."""

    def __init__(self, path: Path, tag: str) -> None:
        self.path, self.tag = path, tag

    def save(self, loop: _Loop) -> None:
        blob = {
            "tag": self.tag, "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "strategy": loop.strategy.state_dict(), "augment": loop.augment.state_dict(),
            "generator": loop.gen.get_state(), "torch_rng": torch.get_rng_state(), "loop": loop.state.state_dict(),
            "instruments": loop.instruments.state_dict() if loop.instruments is not None else None,
            "timing": loop.clock.settle(), "scaler": loop.scaler.state_dict(),
            "lookahead": loop.lookahead.slow if loop.lookahead is not None else None,
        }  # fmt: skip
        replace_atomically(self.path, lambda tmp: torch.save(blob, tmp))

    def restore(self, loop: _Loop) -> None:
        if not self.path.exists():
            return
        saved = torch.load(self.path, map_location=loop.device, weights_only=False)
        if saved["tag"] != self.tag:
            raise ValueError(
                f"checkpoint {self.path} belongs to another config (hash {saved['tag']}, not {self.tag})"
            )
        loop.model.load_state_dict(saved["model"])
        loop.optimizer.load_state_dict(saved["optimizer"])
        loop.strategy.load_state_dict(saved["strategy"])
        loop.augment.load_state_dict(saved["augment"])
        loop.gen.set_state(saved["generator"].cpu())
        torch.set_rng_state(saved["torch_rng"].cpu())
        loop.scaler.load_state_dict(saved["scaler"])
        if loop.lookahead is not None:
            loop.lookahead.load(saved["lookahead"])
        restored = LoopState.from_state_dict(saved["loop"])
        for name, value in restored.state_dict().items():  # in place: the budget and scorer hold it
            setattr(loop.state, name, value)
        if loop.instruments is not None:
            loop.instruments.load_state_dict(saved["instruments"])
        loop.clock.totals.update(saved["timing"])


def _final_summary(state: LoopState, settings: TrainSettings, n: int) -> dict[str, Any]:
    """A run's ``final`` record: its totals, and the last evaluation's accuracy and losses."""
    last = state.history[-1]
    final = {
        "steps": state.step, "epochs": state.step * settings.batch_size / n,
        "train_time": state.train_time, "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
        "train_loss": last["train_loss"],
        "images_per_second": state.step * settings.batch_size / max(state.train_time, 1e-9),
        "forward_passes": state.forward_passes,
    }  # fmt: skip
    if settings.step_seconds > 0:
        final["modelled_seconds"] = modelled_seconds(state.step, state.forward_passes, settings)
    return final


def evaluate_recalibrated(model: nn.Module, train: ImageData, test: ImageData, train_eval: ImageData | None,
                          augment: Augment, settings: TrainSettings, *, seed: int, amp: bool) -> dict[str, float]:  # fmt: skip
    """Test (and training-subset) accuracy and loss of ``model`` with its batch-norm statistics
    re-estimated on ``settings.bn_recalibration`` uniform batches of training images, and restored
    after (:func:`recalibrated_batch_norm`)."""
    kwargs = dict(amp=amp, channels_last=settings.channels_last)
    with recalibrated_batch_norm(model, train, augment, batches=settings.bn_recalibration,
                                 batch_size=settings.batch_size, seed=seed + 4321, **kwargs):  # fmt: skip
        out = dict(zip(("test_accuracy_recalibrated", "test_loss_recalibrated"),
                       evaluate(model, test, augment, tta=settings.tta, **kwargs)))  # fmt: skip
        if train_eval is not None:
            out.update(zip(("train_eval_accuracy_recalibrated", "train_eval_loss_recalibrated"),
                           evaluate(model, train_eval, augment, **kwargs)))  # fmt: skip
    return out
