"""The strategy interface: the extension point of the training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

# (indices) -> (per-sample losses, logits), computed without autograd, of the un-augmented samples;
# the trainer's also accepts ``augmented=True`` (see ``Strategy.train_on_scored``). Time spent in it
# is counted as scoring by the trainer.
ScoreFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class Strategy(ABC):
    """How each training step picks the samples it trains on, and what it learns from them.

    The trainer calls :meth:`setup` once, then per step :meth:`select` → train on the indices,
    weighting per-sample losses by the weights (``None`` means all 1) → :meth:`observe` with the
    unweighted per-sample losses and the logits of what was trained on. State lives in tensors on the
    device (no host synchronisation per step) and round-trips through ``state_dict()``.
    """

    name: str = "strategy"

    progress: float = 0.0  # fraction of the budget done, set by the trainer before each select()
    # Whether observe() uses the losses and logits it is given. When the trainer mixes images (mixup,
    # RICAP) an output holds several samples, so for such strategies it scores the batch's samples
    # once more, un-mixed and without autograd, and passes those: each recorded score then comes
    # from the sample itself (the "clean pass" attribution), at the cost of one forward pass per step.
    uses_observations: bool = True
    # Set by select() to positions within the inputs of this step's ``score_fn(..., augmented=True)``
    # call: the trainer then trains on those augmented inputs, the ones the strategy scored, instead of
    # augmenting the selected indices afresh (Katharopoulos & Fleuret's library trains on the images it
    # scored). The trainer resets it to None.
    train_on_scored: torch.Tensor | None = None

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
        """See the per-sample losses (unweighted, detached) and logits of the samples ``indices`` just
        trained on: those of the training pass, or, when the batch was mixed, of a clean scoring pass of
        the same samples (see ``uses_observations``)."""

    def set_step_times(self, forward: float, backward: float) -> None:  # noqa: B027
        """Hear the trainer's measured seconds per step of the forward and the backward pass (at step 10
        and at every evaluation point), for strategies whose decisions weigh cost."""

    # A strategy without state between steps says so; any other must implement state_dict() and
    # load_state_dict(), or checkpointing it fails loudly instead of resuming into a different run.
    stateless: bool = False

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as an uninterrupted one (tensors may stay
        on the device). Required unless ``stateless`` is True."""
        if self.stateless:
            return {}
        raise NotImplementedError(
            f"{type(self).__name__} does not implement state_dict(): a resumed run could not continue as an "
            "uninterrupted one. Implement state_dict() and load_state_dict(), or set stateless = True if it "
            "keeps nothing between steps"
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not self.stateless:
            raise NotImplementedError(f"{type(self).__name__} does not implement load_state_dict()")

    def summary(self) -> dict[str, Any]:
        """Scalars to record in the result's history at evaluation points (may synchronise)."""
        return {}
