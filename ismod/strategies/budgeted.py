"""The budgeted-training baselines of Arazo et al. (2021): p-SGD, c-SGD and selective backprop.

Following Arazo et al., these draw without replacement and apply no weight correction: they change
which samples are trained on, not how their gradients are weighted (Arazo et al. 2021).
"""

from __future__ import annotations

from typing import Any

import torch

from ..sampling import EpochStream, draw_unchecked
from .base import Strategy
from .scored import ScoredStrategy, check_fraction, score_probabilities

__all__ = [
    "PredictionSubset",
    "SelectiveBackprop",
    "HardSelection",
    "LossWindow",
    "percentile_in",
    "selective_backprop_keep",
    "hardest",
]


class PredictionSubset(ScoredStrategy):
    """p-SGD and c-SGD (Chang et al. 2017, as used by Arazo et al. 2021).

    Each sample keeps the running mean :math:`\\bar p_i` of the probability the model gave its true
    class whenever it was trained on. The score is :math:`1 - \\bar p_i` (``kind="p"``: prefer samples
    the model gets wrong) or :math:`\\bar p_i (1 - \\bar p_i)` (``kind="c"``: prefer uncertain ones);
    ``kind="uniform"`` ignores the scores: Arazo et al.'s uniform-subset baseline, unif-SGD.
    After ``warmup_epochs`` uniform epochs, each epoch draws a subset of ``round(subset * N)`` samples
    without replacement with :math:`p \\propto` score mixed with ``smoothing`` of uniform, unweighted.
    """

    name = "prediction_subset"
    observes_logits = True  # each sample's true-class probability

    def __init__(
        self, kind: str = "p", subset: float = 0.5, smoothing: float = 0.1, warmup_epochs: int = 1
    ) -> None:
        super().__init__("last", 0.0, warmup_epochs)
        if kind not in ("p", "c", "uniform"):
            raise ValueError(
                f"kind must be 'p' (p-SGD), 'c' (c-SGD) or 'uniform' (unif-SGD), got {kind!r}"
            )
        if not (isinstance(subset, (int, float)) and 0 < subset <= 1):
            raise ValueError(f"subset must lie in (0, 1], got {subset!r}")
        self.kind, self.subset = kind, float(subset)
        self.uses_observations = kind != "uniform"  # unif-SGD's subsets ignore the scores
        self.smoothing = check_fraction("smoothing", smoothing)

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        if labels is None:
            raise ValueError(
                "PredictionSubset needs the training labels (fit passes them to setup)"
            )
        self.subset_size = max(batch_size, round(self.subset * num_items))
        self.prob_sum = torch.zeros(num_items, device=device)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        p_true = logits.float().softmax(1).gather(1, self.labels[indices][:, None]).squeeze(1)
        self.prob_sum.index_add_(0, indices, p_true)
        self.visits.index_add_(0, indices, torch.ones_like(indices))
        seen = self.visits[indices].clamp_min(1).to(self.prob_sum.dtype)
        mean = self.prob_sum[indices] / seen
        self.scores.index_put_((indices,), 1.0 - mean if self.kind == "p" else mean * (1.0 - mean))

    def probabilities(self) -> torch.Tensor:
        if self.kind == "uniform":
            return torch.full(
                (self.num_items,), 1.0 / self.num_items, dtype=torch.float64, device=self.device
            )
        return score_probabilities(self.scores, "proportional", 1.0, self.smoothing)

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, None]:
        p = self.probabilities()
        self.log_distribution(step, p)
        idx, _ = draw_unchecked(p, self.subset_size, False, self.generator)
        return self._in_batches(idx, None)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prob_sum": self.prob_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prob_sum = state["prob_sum"].to(self.device)


def percentile_in(values: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """The fraction of ``history`` that is at most each of ``values`` (the empirical CDF at each value)."""
    if history.numel() == 0:
        raise ValueError("history is empty: record some losses before asking for percentiles")
    ordered = torch.sort(history).values
    return (
        torch.searchsorted(ordered, values.to(ordered.dtype), right=True).to(torch.float32)
        / history.numel()
    )


def selective_backprop_keep(
    losses: torch.Tensor,
    history: torch.Tensor,
    beta: float = 3.0,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Selective backprop's decision (Jiang et al. 2019): keep each sample with probability
    :math:`\\mathrm{percentile}(L_i)^\\beta` among the recent losses ``history``. Returns a bool mask."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    keep_probability = percentile_in(losses, history).pow(beta)
    u = torch.rand(losses.shape, device=losses.device, generator=generator)
    return u < keep_probability


class LossWindow:
    """The last ``size`` losses seen, in a ring on the device: selective backprop's reference for
    percentiles (Jiang et al. 2019). Shared by :class:`~ismod.strategies.SelectiveBackprop` and
    :class:`ismod.adapters.SelectiveBackpropLoss`."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size, self.device = self.check_size(size), device
        self.values = torch.zeros(size, device=device)
        self.filled = 0
        self.next = 0

    @staticmethod
    def check_size(size: int) -> int:
        """``size`` if it is a positive integer, else a ``ValueError`` naming ``history``."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"history must be a positive integer, got {size!r}")
        return size

    def remember(self, losses: torch.Tensor) -> None:
        k = losses.numel()
        slots = (torch.arange(k, device=self.device) + self.next) % self.size
        self.values.index_put_((slots,), losses.detach().float())
        self.next = (self.next + k) % self.size
        self.filled = min(self.filled + k, self.size)

    def keep(
        self, losses: torch.Tensor, beta: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Remember ``losses``, then keep each with probability percentile(loss)^β (a bool mask)."""
        self.remember(losses)
        return selective_backprop_keep(
            losses, self.values[: self.filled], beta, generator=generator
        )

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.values, "window_filled": self.filled, "window_next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = state["window"].to(self.device)
        self.filled, self.next = int(state["window_filled"]), int(state["window_next"])


class SelectiveBackprop(ScoredStrategy):
    """Selective backprop (Jiang et al. 2019; Arazo et al. 2021's β = 3).

    Candidates come in uniformly shuffled epochs, ``batch_size`` at a time; each chunk is scored by an
    extra forward pass (``score_fn``, no autograd), its losses enter a window of the last ``history``
    losses, and each candidate is kept with probability percentile(loss)^β. Kept samples queue up until
    a full batch is ready; that batch is trained on unweighted. About :math:`(\\beta + 1)` candidates are
    scored per trained sample. Knowing when a batch is full needs one host read per scored chunk: the
    only synchronisation this strategy makes.
    """

    name = "selective_backprop"
    own_loop_adapter = "SelectiveBackpropLoss"

    @property
    def scoring_passes_per_sample(self) -> float:
        """About β + 1 candidates scored per trained sample, since a candidate is kept with
        probability percentile^β, whose mean over a uniform percentile is 1/(β + 1)."""
        return self.beta + 1.0

    def __init__(self, beta: float = 3.0, history: int = 1024) -> None:
        super().__init__("last", 0.0, 0)
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.beta, self.history_size = float(beta), LossWindow.check_size(history)

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        if score_fn is None:
            raise ValueError(
                "SelectiveBackprop needs score_fn (extra forward passes); run it under ismod.train.fit"
            )
        self.window = LossWindow(self.history_size, device)
        self.pool = torch.empty(0, dtype=torch.long, device=device)
        self.candidates = torch.empty(0, dtype=torch.long, device=device)
        self.candidate_position = 0
        self.scored = torch.zeros((), dtype=torch.long, device=device)

    def _next_candidates(self) -> torch.Tensor:
        b = self.batch_size
        if self.candidate_position + b > self.candidates.numel():
            self.candidates, _ = self._uniform_epoch()
            self.candidate_position = 0
        start, self.candidate_position = self.candidate_position, self.candidate_position + b
        return self.candidates[start : start + b]

    def select(self, step: int) -> tuple[torch.Tensor, None]:
        b = self.batch_size
        while (
            self.pool.numel() < b
        ):  # pool.numel() is known on the host once the mask is read below
            idx = self._next_candidates()
            losses, _ = self.score_fn(idx)
            keep = self.window.keep(losses, self.beta, self.generator)
            self.pool = torch.cat([self.pool, idx[keep]])  # boolean indexing: the host read
            self.scored += b
        batch, self.pool = self.pool[:b], self.pool[b:]
        return batch, None

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        trained = max(int(self.visits.sum()), 1)
        out["scored_per_trained"] = float(self.scored) / trained
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(), **self.window.state_dict(), "pool": self.pool, "candidates": self.candidates,
            "candidate_position": self.candidate_position, "scored": self.scored,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.window.load_state_dict(state)
        self.pool = state["pool"].to(self.device)
        self.candidates = state["candidates"].to(self.device)
        self.candidate_position = int(state["candidate_position"])
        self.scored = state["scored"].to(self.device)


def hardest(losses: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the ``keep`` largest ``losses`` (airbench96_faster's selection: train on the
    highest-loss part of each batch, unweighted)."""
    return torch.topk(losses.detach().float(), keep, sorted=False).indices


class HardSelection(Strategy):
    """Hard-example selection as in airbench96_faster (Keller Jordan): score a uniform candidate batch
    of ``round(b / keep)`` without autograd and train on the ``b`` with the highest loss, with no
    reweighting (biased on purpose). airbench scores with a small proxy network; here the model
    scores itself (``score_fn``), one forward pass of the candidates per step.
    """

    name = "hard_selection"
    uses_observations = False
    own_loop_adapter = "HardExampleLoss"

    @property
    def scoring_passes_per_sample(self) -> float:
        """About 1/keep candidates scored per trained sample (round(b / keep) for each step of b)."""
        return 1.0 / self.keep

    def __init__(self, keep: float = 0.5) -> None:
        if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
            raise ValueError(f"keep (the fraction of each candidate batch trained on) must lie in (0, 1], got {keep!r}")  # fmt: skip
        self.keep = float(keep)

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        if score_fn is None:
            raise ValueError("HardSelection needs score_fn (a forward pass of the candidates); run it under ismod.train.fit")  # fmt: skip
        self.candidates = min(num_items, round(batch_size / self.keep))
        self.stream = EpochStream(
            lambda _: torch.randperm(num_items, device=device, generator=generator), device
        )

    def select(self, step: int) -> tuple[torch.Tensor, None]:
        idx = self.stream.take(self.candidates)
        losses, _ = self.score_fn(idx)
        return idx[hardest(losses, self.batch_size)], None

    def state_dict(self) -> dict[str, Any]:
        return {"stream": self.stream.order, "position": self.stream.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.order = state["stream"].to(self.device)
        self.stream.position = int(state["position"])
