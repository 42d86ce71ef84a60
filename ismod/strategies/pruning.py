"""Soft data pruning with rescaling: InfoBatch (Qin et al., ICLR 2024).

Each epoch, every sample whose last loss is below the mean of the recorded losses ("well learned") is
left out with probability ``prune_ratio`` r; the well-learned samples that stay have their loss scaled
by :math:`1/(1-r)`, so that the expected gradient of the epoch is the full data's:
:math:`\\mathbb{E}[\\mathbb{1}_{\\text{kept}}/(1-r)] = 1`. From the fraction ``delta`` of training onwards
(annealing), every sample is trained on with weight 1.
"""

from __future__ import annotations

import torch

from .scored import ScoredStrategy, _fraction

__all__ = ["InfoBatch", "prune_epoch"]


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

    def __init__(self, prune_ratio: float = 0.5, delta: float = 0.875) -> None:
        super().__init__("last", 0.0, 0)
        self.prune_ratio = _fraction("prune_ratio", prune_ratio)
        if not (isinstance(delta, (int, float)) and 0 <= delta <= 1):
            raise ValueError(f"delta (when annealing starts, as a fraction of training) must lie in [0, 1], got {delta!r}")  # fmt: skip
        self.delta = float(delta)

    def probabilities(self) -> torch.Tensor:
        """Each sample's chance of being in the next epoch, normalised (for the diagnostics log)."""
        seen = self.visits > 0
        seen_f = seen.to(torch.float64)
        scores = self.scores.to(torch.float64)
        mean = (scores * seen_f).sum() / seen_f.sum().clamp_min(1)
        keep = torch.where(seen & (scores < mean), 1.0 - self.prune_ratio, 1.0).to(torch.float64)
        return keep / keep.sum()

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.progress >= self.delta:
            self.log_distribution(step, torch.full_like(self.scores, 1.0 / self.num_items, dtype=torch.float64))  # fmt: skip
            return self._uniform_epoch()
        self.log_distribution(step, self.probabilities())
        idx, weights = prune_epoch(self.scores, self.visits > 0, self.prune_ratio, self.generator)
        if idx.numel() < self.batch_size:  # too few left for one batch: train on everything
            return self._uniform_epoch()
        return self._in_batches(idx, weights)
