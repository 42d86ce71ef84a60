"""Soft data pruning with rescaling: InfoBatch (Qin et al., ICLR 2024).

Each epoch, every sample whose last loss is below the mean of the recorded losses ("well learned") is
left out with probability ``prune_ratio`` r; the well-learned samples that stay have their loss scaled
by :math:`1/(1-r)`, so that the expected gradient of the epoch is the full data's:
:math:`\\mathbb{E}[\\mathbb{1}_{\\text{kept}}/(1-r)] = 1`. From the fraction ``delta`` of training onwards
(annealing), every sample is trained on with weight 1.

Compared with the authors' code (NUS-HPC-AI-Lab/InfoBatch): the same annealing epoch (epoch e, counted
from 0, prunes iff :math:`e + 1 \\le E\\delta`, because their sampler's first reset runs at construction)
and the same bound on r (their keep ratio is at least 0.1, so r ≤ 0.9 and weights ≤ 10; a larger r is
refused here rather than clamped). Each well-learned sample is kept independently with probability
1 − r, where theirs keeps exactly ``int((1 − r) n)`` of the n: both unbiased in expectation, ours
exactly so.
"""

from __future__ import annotations

from typing import Any

import torch

from .scored import ScoredStrategy, check_fraction

__all__ = ["InfoBatch", "prune_epoch", "MAX_PRUNE_RATIO"]

# The authors' code keeps at least 10% of the well-learned samples (keep ratio >= 0.1).
MAX_PRUNE_RATIO = 0.9


def prune_epoch(
    scores: torch.Tensor,
    seen: torch.Tensor,
    prune_ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One InfoBatch epoch: ``(kept indices, their loss weights)``.

    Well learned: seen and score below the mean score of the seen samples. Each is pruned with
    probability ``prune_ratio``; the kept ones weigh :math:`1/(1-r)`, every other sample 1. Unseen
    samples are never pruned. One host read (the number kept) per epoch.
    """
    seen_f = seen.to(scores.dtype)
    mean = (scores * seen_f).sum() / seen_f.sum().clamp_min(1)
    well_learned = seen & (scores < mean)
    u = torch.rand(scores.shape, device=scores.device, generator=generator)
    kept = ~(well_learned & (u < prune_ratio))
    idx = kept.nonzero().squeeze(1)
    weights = torch.where(well_learned[idx], 1.0 / (1.0 - prune_ratio), 1.0).float()
    return idx, weights


class InfoBatch(ScoredStrategy):
    """InfoBatch (Qin et al., ICLR 2024): prune well-learned samples at random, rescale the rest.

    Scores are the last loss of each sample (the paper's choice). Before ``delta`` of the budget,
    each epoch trains on :func:`~ismod.strategies.pruning.prune_epoch`'s subset, shuffled, with its weights; after it, on every
    sample, unweighted. The paper's defaults: ``prune_ratio=0.5``, ``delta=0.875``.
    """

    name = "infobatch"
    cuts_epochs_into_batches = True

    def __init__(self, prune_ratio: float = 0.5, delta: float = 0.875) -> None:
        super().__init__("last", 0.0, 0)
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio)
        if self.prune_ratio > MAX_PRUNE_RATIO:
            raise ValueError(
                f"prune_ratio must be at most {MAX_PRUNE_RATIO} (InfoBatch keeps at least 10% of the "
                f"well-learned samples, so no weight exceeds 10), got {prune_ratio!r}"
            )
        if not (isinstance(delta, (int, float)) and 0 <= delta <= 1):
            raise ValueError(f"delta (when annealing starts, as a fraction of training) must lie in [0, 1], got {delta!r}")  # fmt: skip
        self.delta = float(delta)
        # the planned number of epochs, when the caller knows it (InfoBatchSampler); the annealing
        # epoch then follows the authors' rule exactly, else it is read from the budget's progress
        self.num_epochs: int | None = None
        self.current_epoch: int | None = None  # set with num_epochs: the epoch being built
        self._epoch_start_progress: float | None = None
        self._epoch_fraction = 0.0

    def set_planned_epochs(self, num_epochs: int | None) -> None:
        self.num_epochs = num_epochs

    def set_current_epoch(self, epoch: int) -> None:
        self.current_epoch = epoch

    def annealing(self) -> bool:
        """Whether the epoch being built trains on everything: epoch e (from 0) anneals iff
        :math:`e + 1 > E\\delta`, the authors' rule. Without ``num_epochs`` the epoch's end is estimated
        as the progress at its start plus the progress the previous epoch took."""
        epoch = self.epochs_started if self.current_epoch is None else self.current_epoch
        if self.num_epochs is not None:
            return epoch + 1 > self.num_epochs * self.delta
        return self.progress + self._epoch_fraction > self.delta + 1e-12

    def probabilities(self) -> torch.Tensor:
        """Each sample's chance of being in the next epoch, normalised (for the diagnostics log)."""
        seen = self.visits > 0
        seen_f = seen.to(torch.float64)
        scores = self.scores.to(torch.float64)
        mean = (scores * seen_f).sum() / seen_f.sum().clamp_min(1)
        keep = torch.where(seen & (scores < mean), 1.0 - self.prune_ratio, 1.0).to(torch.float64)
        return keep / keep.sum()

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._epoch_start_progress is not None:
            self._epoch_fraction = self.progress - self._epoch_start_progress
        self._epoch_start_progress = self.progress
        if self.annealing():
            self.log_distribution(step, torch.full_like(self.scores, 1.0 / self.num_items, dtype=torch.float64))  # fmt: skip
            return self._uniform_epoch()
        self.log_distribution(step, self.probabilities())
        idx, weights = prune_epoch(self.scores, self.visits > 0, self.prune_ratio, self.generator)
        if idx.numel() < self.batch_size:  # too few left for one batch: train on everything
            return self._uniform_epoch()
        return self._in_batches(idx, weights)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch_start_progress": self._epoch_start_progress,
                "epoch_fraction": self._epoch_fraction}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._epoch_start_progress = state.get("epoch_start_progress")
        self._epoch_fraction = float(state.get("epoch_fraction", 0.0))
