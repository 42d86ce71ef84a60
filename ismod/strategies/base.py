"""The strategy interface: the extension point of the training loop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

# (indices) -> (per-sample losses, logits), computed without autograd, of the un-augmented samples;
# with ``augmented=True``, of a fresh training augmentation of them, returned as a third value, the
# inputs (x, y) scored, so that a strategy can train on those very inputs (``Selection.inputs``).
# Time spent in it is counted as scoring by the trainer.
ScoreFn = Callable[..., tuple[torch.Tensor, ...]]

# (indices, epochs) -> a function of training indices giving their per-sample losses under a fresh
# model of the run's architecture trained, uniformly, on the training samples ``indices`` for
# ``epochs`` epochs (without autograd, un-augmented). The trainer charges its passes to the run.
ReferenceTrainer = Callable[[torch.Tensor, float], Callable[[torch.Tensor], torch.Tensor]]


class Selection(tuple):
    """What a strategy's ``select`` returns, ``(indices, weights)`` unpacked as a pair, and
    ``inputs``, the ``(x, y)`` to train on where the strategy trained on the very inputs it scored
    (``score_fn(..., augmented=True)``), else ``None`` (the trainer augments ``indices`` afresh);
    ``norm_inputs``, inputs whose batch-norm statistics the step's forward and backward passes
    use instead of the trained batch's own (:func:`ismod.train.normalized_by`), else ``None``; and
    ``weighted_norm``: ``True`` where the step's batch-norm layers normalise with the batch's statistics
    weighted by ``weights`` (:func:`ismod.batchnorm.weighted_statistics`).

    One value object, so nothing passes between a strategy and the trainer by the side. A plain
    ``(indices, weights)`` pair is accepted too (:meth:`of`)."""

    def __new__(cls, indices: torch.Tensor, weights: torch.Tensor | None = None,
                inputs: tuple[torch.Tensor, torch.Tensor] | None = None,
                norm_inputs: torch.Tensor | None = None, weighted_norm: bool = False) -> Selection:  # fmt: skip
        if weighted_norm and weights is None:
            raise ValueError(
                "weighted_norm=True needs weights: the batch's statistics are weighted by them"
            )
        self = super().__new__(cls, (indices, weights))
        self.inputs, self.norm_inputs, self.weighted_norm = inputs, norm_inputs, bool(weighted_norm)
        return self

    def __reduce__(self) -> tuple[type[Selection], tuple[Any, ...]]:
        # tuple's own reduction would rebuild from tuple(self) alone, as Selection((i, w)): wrong
        # arguments, and `inputs` lost (a selection sent between processes, or deep-copied)
        return (type(self), (self[0], self[1], self.inputs, self.norm_inputs, self.weighted_norm))

    @property
    def indices(self) -> torch.Tensor:
        return self[0]

    @property
    def weights(self) -> torch.Tensor | None:
        return self[1]

    @classmethod
    def of(cls, value: Any) -> Selection:
        """``value`` as a :class:`Selection` (a strategy may return a plain pair)."""
        if isinstance(value, Selection):
            return value
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError(
                f"select() must return a Selection or an (indices, weights) pair, got {value!r:.80}"
            )
        return cls(*value)


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

    def setup(self, num_items: int, batch_size: int, device: torch.device, generator: torch.Generator,
              score_fn: ScoreFn | None = None, labels: torch.Tensor | None = None) -> None:  # fmt: skip
        """Called once before training; ``score_fn`` scores arbitrary indices (extra forward passes),
        ``labels`` are the training labels (on the device)."""
        self.num_items, self.batch_size, self.device = num_items, batch_size, device
        self.generator, self.score_fn, self.labels = generator, score_fn, labels

    @abstractmethod
    def select(self, step: int) -> Selection | tuple[torch.Tensor, torch.Tensor | None]:
        """Indices (int64, on the device) to train on at ``step``, their loss weights or ``None``, and,
        where the strategy trains on the inputs it scored, those (a :class:`Selection`)."""

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:  # noqa: B027
        """See the per-sample losses (unweighted, detached) and logits of the samples ``indices`` just
        trained on: those of the training pass, or, when the batch was mixed, of a clean scoring pass of
        the same samples (see ``uses_observations``)."""

    def set_reference_trainer(self, train_reference: ReferenceTrainer) -> None:  # noqa: B027
        """Hear how to train a reference model on part of the training set (called once, after
        :meth:`setup`): ``train_reference(indices, epochs)`` trains a fresh model of the run's
        architecture and settings on those samples and returns a function giving the per-sample loss
        of any training indices under it. RHO-LOSS's irreducible-loss model is one; the other
        strategies ignore it. Its passes count in the run's budget, so call it from :meth:`select`."""

    def set_planned_epochs(self, num_epochs: int | None) -> None:  # noqa: B027
        """Hear the planned number of epochs where the caller knows it (a batch sampler's
        ``num_epochs``), for a strategy whose schedule is set in epochs (InfoBatch's annealing);
        without it a strategy reads its schedule from ``progress``."""

    def set_current_epoch(self, epoch: int) -> None:  # noqa: B027
        """Hear the number (from 0) of the epoch being drawn, where the caller counts epochs."""

    def set_step_times(self, forward: float, backward: float) -> None:  # noqa: B027
        """Hear the trainer's measured seconds per step of the forward and the backward pass (at step 10
        and at every evaluation point), for strategies whose decisions weigh cost."""

    # --- what the rest of the package asks of a strategy: declared here, never read off its name ----

    @property
    def scoring_passes_per_sample(self) -> float:
        """The forward passes it spends scoring per trained sample, at most (none for a strategy
        that scores only what it trains on, from the training pass itself). The cost model charges them
        (:func:`ismod.runner.estimate_seconds`), and a batch sampler, which cannot score, refuses a
        strategy that spends any."""
        return 0.0

    def epochs_done(self) -> float | None:
        """Passes through its own epochs so far, the current one's done fraction included, for a
        strategy that queues epochs (an InfoBatch epoch, pruned, is shorter than N samples); ``None``
        for one that does not. A ``"strategy_epochs"`` budget ends on it: InfoBatch's claim is the
        same epochs as uniform's in fewer steps."""
        return None

    # Whether observe() needs the logits of what was trained on (a batch sampler sees only losses).
    observes_logits: bool = False
    # The own-loop adapter (a name in ismod) that runs it where a plain batch sampler cannot, named in
    # the batch sampler's refusal; None: only the harness (ismod.train.fit) runs it.
    own_loop_adapter: str | None = None
    # Whether it cuts a drawn epoch into batches, so that an epoch's last partial batch can be kept
    # (a batch sampler's drop_last=False); strategies that draw each batch afresh cannot.
    cuts_epochs_into_batches: bool = False

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
