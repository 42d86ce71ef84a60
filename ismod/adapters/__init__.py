"""Importance sampling in your own training loop: each method as a ``DataLoader`` batch sampler, a loss,
or both, in at most three changed lines (the book's page "Importance sampling in your own training loop").

- :class:`LossSampler` (and :class:`InfoBatchSampler` alike): ``s = LossSampler(len(train), 128)``;
  ``DataLoader(train, batch_sampler=s)``; ``loss = s.loss(F.cross_entropy(out, y, reduction="none"))``.
- :class:`TauSwitchSampler`: ``s = TauSwitchSampler(model, len(train), 128)``; ``batch_sampler=s``;
  ``loss = s.loss(x, y)`` (it runs the forward pass; on a model with batch norm it stays uniform
  unless given ``batch_norm="train"``).
- :class:`SelectiveBackpropLoss`, :class:`HardExampleLoss`, :class:`ReducibleLossSelection`
  (RHO-LOSS): ``m = SelectiveBackpropLoss(model)``; a larger loader batch (the candidates);
  ``loss = m.loss(x, y)``.

They are the harness's strategies (:mod:`ismod.strategies`), not copies of them: the samplers drive the
same strategy objects (:class:`StrategyBatchSampler` runs any strategy that learns from the losses of
what was trained on), and the in-loop methods call the same pieces (:class:`~ismod.strategies.presample.PresampleCore`,
:class:`~ismod.strategies.budgeted.LossWindow`, :func:`~ismod.strategies.budgeted.hardest`).

Devices come from the tensors: samplers yield host indices (a ``DataLoader`` needs them) and send
weights to the losses' device; on CUDA they read losses back through pinned memory once the copy has
finished, so a step never waits for the device. Under ``torch.distributed`` the samplers behave like
``DistributedSampler`` (``num_replicas``, ``rank``, ``set_epoch``).
"""

from ._common import STATE_FORMAT, Logits  # noqa: F401  (the state version and the logits option's type, named here)
from .batch_samplers import InfoBatchSampler, LossSampler, StrategyBatchSampler
from .losses import (
    HardExampleLoss,
    ReducibleLossSelection,
    SelectiveBackpropLoss,
    select_by_loss,
)
from .presample import TauSwitchSampler

__all__ = [
    "StrategyBatchSampler",
    "LossSampler",
    "InfoBatchSampler",
    "TauSwitchSampler",
    "SelectiveBackpropLoss",
    "HardExampleLoss",
    "ReducibleLossSelection",
    "select_by_loss",
]
