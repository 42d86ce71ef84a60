"""The strategy interface: the extension point of the training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

# (indices) -> (per-sample losses, logits), computed without autograd; time spent in it is counted
# as scoring by the trainer.
ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Strategy(ABC):
    """How each training step picks the samples it trains on, and what it learns from them.

    The trainer calls :meth:`setup` once, then per step :meth:`select` → train on the indices,
    weighting per-sample losses by the weights (``None`` means all 1) → :meth:`observe` with the
    unweighted per-sample losses and the logits of what was trained on. State lives in tensors on the
    device (no host synchronisation per step) and round-trips through ``state_dict()``.
    """

    name: str = "strategy"

    progress: float = 0.0  # fraction of the budget done, set by the trainer before each select()

    def setup(self, num_items: int, batch_size: int, device: torch.device, generator: torch.Generator,
              score_fn: ScoreFn | None = None, labels: torch.Tensor | None = None) -> None:  # fmt: skip
        """Called once before training; ``score_fn`` scores arbitrary indices (extra forward passes),
        ``labels`` are the training labels (on the device)."""
        self.num_items, self.batch_size, self.device = num_items, batch_size, device
        self.generator, self.score_fn, self.labels = generator, score_fn, labels

    @abstractmethod
    def select(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Indices (int64, on the device) to train on at ``step``, and their loss weights or ``None``."""

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:  # noqa: B027
        """See the per-sample losses (unweighted, detached) and logits of the step just taken."""

    def set_step_times(self, forward: float, backward: float) -> None:  # noqa: B027
        """Hear the trainer's measured seconds per step of the forward and the backward pass (at step 10
        and at every evaluation point), for strategies whose decisions weigh cost."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass

    def summary(self) -> dict[str, Any]:
        """Scalars to record in the result's history at evaluation points (may synchronise)."""
        return {}
