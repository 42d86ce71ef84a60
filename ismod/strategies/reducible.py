"""RHO-LOSS: train on the points whose loss is reducible (Mindermann et al. 2022; Chapter 6's race)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..sampling import EpochStream
from .base import ReferenceTrainer, Selection, Strategy


class ReducibleHoldoutLoss(Strategy):
    """Reducible holdout loss selection, RHO-LOSS (Mindermann et al., ICML 2022, "Prioritized Training
    on Points that are Learnable, Worth Learning, and Not Yet Learnt", Algorithm 1).

    Once, at the first step, a random ``holdout`` share of the training set is set aside and a fresh
    model of the run's architecture is trained on it (the trainer's reference model,
    :meth:`~ismod.strategies.base.Strategy.set_reference_trainer`); its loss of each remaining point
    is that point's *irreducible loss* :math:`L[y_i \\mid x_i; D_{ho}]`. Each step then draws
    ``round(b / keep)`` candidates uniformly from the remaining points (shuffled epochs), scores them
    with the model being trained, without autograd, and trains on the b with the largest *reducible
    holdout loss*

    .. math:: L[y_i \\mid x_i; D_t] - L[y_i \\mid x_i; D_{ho}],

    unweighted: high loss now, low loss for a model that has seen similar data, so neither learnt yet
    nor noise. The authors' CIFAR-10 setting held out half of the training set (``valset_fraction``
    of their code), drew candidates of 320 and kept 10 % (b = 32).

    Its cost, all charged to the run's time and budget: the reference model's training (a one-off,
    in the first step), the scoring of the remaining points by it, and ``1/keep`` candidates scored
    per trained sample. The held-out points are never trained on.

    Args:
        keep: b / n_B, the fraction of each candidate batch trained on (the paper's 0.1); the
            candidates are at most the points not held out.
        holdout: the share of the training set that trains the irreducible-loss model (0.5).
        reference_epochs: epochs of that model's training on the holdout, with the run's settings.
    """

    name = "rho_loss"
    uses_observations = False  # its choices read the scoring pass and the irreducible losses
    own_loop_adapter = "ReducibleLossSelection"

    @property
    def scoring_passes_per_sample(self) -> float:
        """About 1/keep candidates scored per trained sample (the reference model's one-off training
        is charged where it happens, in the first step)."""
        return 1.0 / self.keep

    def __init__(
        self, keep: float = 0.1, holdout: float = 0.5, reference_epochs: float = 10.0
    ) -> None:
        if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
            raise ValueError(f"keep (the fraction of each candidate batch trained on) must lie in (0, 1], got {keep!r}")  # fmt: skip
        if not (isinstance(holdout, (int, float)) and 0 < holdout < 1):
            raise ValueError(f"holdout (the share of the training set held out) must lie in (0, 1), got {holdout!r}")  # fmt: skip
        if not (isinstance(reference_epochs, (int, float)) and math.isfinite(reference_epochs)
                and reference_epochs > 0):  # fmt: skip
            raise ValueError(
                f"reference_epochs must be a positive number, got {reference_epochs!r}"
            )
        self.keep, self.holdout = float(keep), float(holdout)
        self.reference_epochs = float(reference_epochs)
        self.train_reference: ReferenceTrainer | None = None

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        if score_fn is None:
            raise ValueError("ReducibleHoldoutLoss needs score_fn (a forward pass of the candidates); run it under ismod.train.fit")  # fmt: skip
        self.held_out = round(self.holdout * num_items)
        remaining = num_items - self.held_out
        if self.held_out < 1 or remaining < batch_size:
            raise ValueError(
                f"holdout {self.holdout} of {num_items} samples holds out {self.held_out} and leaves "
                f"{remaining} to train on: at least 1 must be held out and batch_size {batch_size} left"
            )
        # b / keep candidates, or all the remaining points where there are fewer (a small set)
        self.candidates = min(round(batch_size / self.keep), remaining)
        self.pool: torch.Tensor | None = None  # the indices trained on, drawn at the first step
        self.irreducible = torch.zeros(num_items, device=device)
        self.stream = EpochStream(self._permutation, device)

    def set_reference_trainer(self, train_reference: ReferenceTrainer) -> None:
        self.train_reference = train_reference

    def _permutation(self, refill: int) -> torch.Tensor:
        assert self.pool is not None
        order = torch.randperm(self.pool.numel(), device=self.device, generator=self.generator)
        return self.pool[order]

    def _prepare(self) -> None:
        """Split off the holdout, train the irreducible-loss model on it, keep its losses."""
        if self.train_reference is None:
            raise ValueError("ReducibleHoldoutLoss needs the trainer's reference model (set_reference_trainer); "
                             "run it under ismod.train.fit")  # fmt: skip
        order = torch.randperm(self.num_items, device=self.device, generator=self.generator)
        held_out, self.pool = order[: self.held_out], order[self.held_out :]
        losses_of = self.train_reference(held_out, self.reference_epochs)
        self.irreducible[self.pool] = losses_of(self.pool).float()

    def select(self, step: int) -> Selection:
        if self.pool is None:
            self._prepare()
        idx = self.stream.take(self.candidates)
        losses, _ = self.score_fn(idx)
        reducible = losses.float() - self.irreducible[idx]
        return Selection(idx[torch.topk(reducible, self.batch_size, sorted=False).indices], None)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "irreducible": self.irreducible, "stream": self.stream.order,
                "position": self.stream.position}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool = None if state["pool"] is None else state["pool"].to(self.device)
        self.irreducible = state["irreducible"].to(self.device)
        self.stream.order = state["stream"].to(self.device)
        self.stream.position = int(state["position"])
