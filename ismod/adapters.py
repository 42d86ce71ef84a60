"""Importance sampling in your own training loop: each method as a ``DataLoader`` batch sampler, a loss,
or both, in at most three changed lines (the book's page "Importance sampling in your own training loop").

- :class:`LossSampler` (and :class:`InfoBatchSampler` alike): ``s = LossSampler(len(train), 128)``;
  ``DataLoader(train, batch_sampler=s)``; ``loss = s.loss(F.cross_entropy(out, y, reduction="none"))``.
- :class:`TauSwitchSampler`: ``s = TauSwitchSampler(model, len(train), 128)``; ``batch_sampler=s``;
  ``loss = s.loss(x, y)`` (it runs the forward pass).
- :class:`SelectiveBackpropLoss`, :class:`HardExampleLoss`: ``m = SelectiveBackpropLoss(model)``; a
  larger loader batch (the candidates); ``loss = m.loss(x, y)``.

They are the harness's strategies (:mod:`ismod.strategies`), not copies of them: the samplers drive the
same strategy objects (:class:`StrategyBatchSampler` runs any strategy that learns from the losses of
what was trained on), and the in-loop methods call the same pieces (:class:`~ismod.strategies.presample.TauSwitch`,
:class:`~ismod.strategies.budgeted.LossWindow`, :func:`~ismod.strategies.budgeted.hardest`).

Devices come from the tensors: samplers yield host indices (a ``DataLoader`` needs them) and send
weights to the losses' device; on CUDA they read losses back through pinned memory once the copy has
finished, so a step never waits for the device. Under ``torch.distributed`` the samplers behave like
``DistributedSampler`` (``num_replicas``, ``rank``, ``set_epoch``).
"""

from __future__ import annotations

import copy
import numbers
import os
import sys
import statistics
import time
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from .bounds import _upper_bound
from .sampling import _draw, check_epoch, check_scores
from .strategies import STRATEGIES, Strategy, build_strategy
from .strategies.budgeted import LossWindow, hardest
from .strategies.presample import (
    TAU_LAG,
    TauSwitch,
    check_presample_options,
    normalize_scores,
    switches_on,
)
from .strategies.pruning import InfoBatch
from .strategies.scored import LossSampling, ScoredStrategy
from .train import PerSampleLoss, cross_entropy_loss, per_sample_losses

__all__ = [
    "StrategyBatchSampler",
    "LossSampler",
    "InfoBatchSampler",
    "TauSwitchSampler",
    "SelectiveBackpropLoss",
    "HardExampleLoss",
    "select_by_loss",
]

# --- checks shared by every adapter ------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _per_sample(losses: Any, expected: int, where: str) -> torch.Tensor:
    """``losses`` as a 1-D tensor of ``expected`` per-sample values, or an error that says how to fix it."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"{where} takes a tensor of per-sample losses, got {type(losses).__name__}")
    if losses.dim() == 0:
        raise ValueError(
            f"{where} needs one loss per sample, got a single number (a reduced loss): compute the "
            "losses with reduction='none', e.g. F.cross_entropy(out, y, reduction='none')"
        )
    if losses.dim() != 1 or losses.shape[0] != expected:
        raise ValueError(
            f"{where} expected {expected} per-sample losses (the batch this sampler yielded), got shape "
            f"{tuple(losses.shape)}: pass reduction='none' losses of the whole batch, once per batch, in "
            "the order the DataLoader returned the batches"
        )
    if not losses.is_floating_point():
        raise TypeError(f"{where} needs floating-point losses, got dtype {losses.dtype}")
    return losses


def _distributed_layout(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    import torch.distributed as dist

    grouped = dist.is_available() and dist.is_initialized()
    replicas = (
        num_replicas if num_replicas is not None else (dist.get_world_size() if grouped else 1)
    )
    this_rank = rank if rank is not None else (dist.get_rank() if grouped else 0)
    replicas = _positive_int("num_replicas", replicas)
    if not (isinstance(this_rank, numbers.Integral) and 0 <= this_rank < replicas):
        raise ValueError(f"rank must lie in [0, num_replicas={replicas}), got {this_rank!r}")
    return replicas, int(this_rank)


class _HostCopies:
    """Per-sample losses on their way to the host without a synchronisation: copied into pinned memory
    behind a CUDA event, handed over once the event has completed (CPU tensors at once)."""

    def __init__(self) -> None:
        self.pending: deque[tuple[Any, torch.Tensor, Any]] = deque()

    def put(self, key: Any, values: torch.Tensor) -> None:
        values = values.detach()
        if values.device.type != "cuda":
            self.pending.append((key, values.to(torch.float32), None))
            return
        host = torch.empty(values.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(values, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((key, host, event))

    def ready(self, wait: bool = False) -> Iterator[tuple[Any, torch.Tensor]]:
        """The copies that have arrived, oldest first (all of them, waiting, when ``wait``)."""
        while self.pending:
            key, host, event = self.pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self.pending.popleft()
            yield key, host


def _check_dataset(dataset: Any, num_items: int) -> None:
    """With ``dataset=`` given, its length must be ``num_items`` (else some samples are never drawn, or
    indices run past its end)."""
    if dataset is not None and len(dataset) != num_items:
        raise ValueError(
            f"num_items = {num_items} but len(dataset) = {len(dataset)}: pass num_items=len(dataset) "
            "(the sampler draws indices in [0, num_items))"
        )


def _cloned(state: Any) -> Any:
    """A copy of a state whose tensors no later step can change (strategies update theirs in place)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _cloned(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cloned(v) for v in state)
    return state


_LOSSES = "loss() losses"

STATE_FORMAT = 2
"""The version of the samplers' :meth:`state_dict` layout. 2: the class, ``num_items``, ``batch_size``
and the strategy are checked on load, and the state the losses change is read when it is saved
(:class:`_AsSaved`). States without a ``"format"`` key (version 1) still load."""


class _AsSaved:
    """The part of a sampler's state that training keeps changing (scores, the epoch in progress, the
    generators), read when the state is saved (pickled, ``torch.save``) or copied (``copy.deepcopy``),
    not when :meth:`state_dict` was called.

    Why: torchdata's ``StatefulDataLoader`` with workers asks the batch sampler for its state when it
    *prefetches* a batch, a few batches before the loop trains it, and hands that state out at the
    checkpoint. Read then, it would list the prefetched batches as untrained (a resumed run trains them
    twice) and miss their losses; and it would copy O(N) scores at every prefetch. Like the tensors of
    ``nn.Module.state_dict``, which are the live ones, it is frozen by saving or copying it."""

    def __init__(self, read: Any) -> None:
        self._read = read

    def value(self) -> dict[str, Any]:
        return self._read()

    def __reduce__(self) -> Any:
        # pickled as the plain OrderedDict it stands for, which torch.load(weights_only=True) accepts
        return OrderedDict(self.value()).__reduce__()

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return copy.deepcopy(dict(self.value()), memo)

    def __repr__(self) -> str:
        return "<sampler state, read when saved or copied>"


def _wrapped_state(sampler: Any, identity: dict[str, Any], read: Any) -> dict[str, Any]:
    """A sampler's :meth:`state_dict`: what it must match to be loaded, the epoch when the state was asked
    for, and the rest read when saved (:class:`_AsSaved`)."""
    return {"format": STATE_FORMAT, "class": type(sampler).__name__, **identity,
            "epoch_asked": sampler.epoch, "saved": _AsSaved(read)}  # fmt: skip


def _unwrapped_state(sampler: Any, state: Any, identity: dict[str, Any]) -> dict[str, Any]:
    """The saved part of ``state``, after checking it was made by a sampler like this one; a state of
    format 1 (before the check existed) is returned as it is, after the same check on what it holds."""
    where = f"{type(sampler).__name__}.load_state_dict"
    if isinstance(state, _AsSaved) or not isinstance(state, dict):
        raise TypeError(
            f"{where} takes the dict that state_dict() returned, got {type(state).__name__}"
        )
    version = state.get("format", 1)
    if version not in (1, STATE_FORMAT):
        raise ValueError(
            f"{where}: the state has format {version!r}, this ismod reads formats 1 and {STATE_FORMAT}: "
            "load it with the ismod version that saved it"
        )
    if version == 1:
        return dict(state)
    made_by = {"class": state.get("class"), **{k: state.get(k) for k in identity}}
    mine = {"class": type(sampler).__name__, **identity}
    wrong = [
        f"{k} {made_by[k]!r} (this sampler: {v!r})" for k, v in mine.items() if made_by[k] != v
    ]
    if wrong:
        raise ValueError(
            f"{where}: the state belongs to another sampler: {'; '.join(wrong)}. Build the sampler as "
            "the saved run built it (same class, num_items, batch_size and method), then load"
        )
    saved = state["saved"]
    saved = saved.value() if isinstance(saved, _AsSaved) else dict(saved)
    asked = state.get("epoch_asked")
    if asked is not None and int(saved["epoch"]) > int(asked) and saved.get("in_epoch") is None:
        # asked for while prefetching an epoch's last batches, saved once the loop had trained them: the
        # loader that asked is still in that epoch, with nothing left to yield in it
        saved["epoch"] = int(asked)
        saved["in_epoch"] = {"count": 0, "length": 0, "epoch": int(asked), "pending": []}
    return saved


def _required(state: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{where}: the state lacks {missing}: pass the dict that this sampler's state_dict() "
            "returned (or that a StatefulDataLoader saved), not a part of it"
        )


class _HostScoreCheck:
    """:func:`ismod.sampling.check_scores` without a host synchronisation: CPU scores are checked at
    once; on CUDA each call counts its bad values on the device and sends the count home through
    :class:`_HostCopies`, and the check raises once a count has landed, a step or two later."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.counts = _HostCopies()

    def __call__(self, scores: torch.Tensor) -> None:
        self.raise_if_bad()
        scores = scores.detach()
        if scores.device.type != "cuda":
            check_scores(scores.reshape(-1), self.where)
            return
        self.counts.put(scores, (~torch.isfinite(scores) | (scores < 0)).sum().view(1))

    def raise_if_bad(self, wait: bool = False) -> None:
        for scores, bad in self.counts.ready(wait):
            if bad.item():
                check_scores(scores.reshape(-1).cpu(), self.where)  # names what is wrong


class _Pairing:
    """Which batch a ``loss()`` call belongs to: the batches a sampler has yielded and not yet seen
    losses for, oldest first, and the checks that catch a second ``loss()`` for one batch.

    A ``DataLoader`` takes one batch from its sampler each time it hands one to the loop (after filling
    its prefetch queue), so between two ``loss()`` calls the sampler yields at least once, until its
    epoch's batches have all been taken."""

    def __init__(self) -> None:
        self.batches: deque[Any] = deque()
        self.yields_since_loss = 0
        self.exhausted = False  # every batch of the epoch has been yielded
        self.losses_this_epoch = 0
        self.epoch = 0  # the epoch being paired, for the warning
        self.warned = False

    def new_epoch(self, epoch: int = 0) -> None:
        self.batches.clear()  # batches of an abandoned epoch are never trained on
        self.yields_since_loss, self.exhausted, self.losses_this_epoch = 0, False, 0
        self.epoch, self.warned = epoch, False

    def yielded(self, batch: Any) -> None:
        self.batches.append(batch)
        self.yields_since_loss += 1

    def take(self) -> Any:
        if self.losses_this_epoch and not self.yields_since_loss and not self.exhausted:
            raise RuntimeError(
                "loss() was called twice for one batch: the loader has handed out no batch since the "
                "last call. Call loss() once per batch, on that batch's per-sample losses"
            )
        if not self.batches:
            raise RuntimeError(
                "loss() was called for a batch this sampler has not yielded: build the DataLoader with "
                "batch_sampler=<this sampler> and call loss() once per batch"
            )
        return self.batches[0]

    def done(self) -> None:
        """The batch :meth:`take` returned has its losses."""
        self.batches.popleft()
        self.yields_since_loss, self.losses_this_epoch = 0, self.losses_this_epoch + 1

    def warn_if_unused(self) -> None:
        """Warn once if the epoch was yielded whole with no ``loss()`` call: when the next epoch starts,
        or when the sampler is garbage-collected or the program ends (a one-epoch run)."""
        if self.exhausted and self.losses_this_epoch == 0 and not self.warned:
            self.warned = True
            warnings.warn(
                f"epoch {self.epoch} ended with no loss() call: the sampler learnt nothing and stays "
                "uniform. Return sampler.loss(...) from each step (the per-sample losses, or x and y)",
                RuntimeWarning,
                stacklevel=_user_stacklevel(),
            )


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside this module and ``torch.utils.data``, so that a
    warning points at the user's loop rather than into the DataLoader."""
    frame, level = sys._getframe(1), 1
    inside = (__file__, os.path.join("torch", "utils", "data"))
    while frame.f_back is not None and any(p in frame.f_code.co_filename for p in inside):
        frame, level = frame.f_back, level + 1
    return level


def _refuse_batch_sampler_as_sampler(sampler: Any) -> None:
    """A batch sampler passed as ``DataLoader(sampler=...)`` is iterated by torch's ``BatchSampler``,
    which would group whole batches into batches of batches: refuse it, naming the fix."""
    from torch.utils.data import BatchSampler

    caller = sys._getframe(2)  # the frame that called iter() on this sampler
    if isinstance(caller.f_locals.get("self"), BatchSampler):
        raise TypeError(
            f"{type(sampler).__name__} yields whole batches: pass it as "
            "DataLoader(dataset, batch_sampler=sampler), not sampler=sampler"
        )


class _EpochPosition:
    """Where a batch sampler stands in its epoch, for :meth:`state_dict`: how many batches it has
    yielded of how many, and the batches yielded but not yet trained on (``_pairing``). ``epoch`` is
    the epoch of the next batch: it moves on once the epoch's iteration has ended and its last batch
    has had its ``loss()``. The iteration ends when the loader asks for a batch past the last one, as
    a loader's own epoch does: a checkpoint taken inside the loop after the last batch resumes in that
    epoch, with nothing left to yield in it (as torchdata's ``StatefulDataLoader`` does for any
    sampler)."""

    epoch: int
    _pairing: _Pairing
    _in_epoch: dict[str, int] | None  # count, length (-1 until known) of the epoch being yielded
    _resume: dict[str, Any] | None
    _iteration_over = False  # the epoch's iterator has returned

    def __iter__(self) -> Iterator[list[int]]:
        _refuse_batch_sampler_as_sampler(self)
        return self._batches()

    def _batches(self) -> Iterator[list[int]]:
        raise NotImplementedError

    def _set_epoch(self, epoch: int) -> None:
        """After :meth:`load_state_dict`, the resumed epoch's own number keeps the resume; another
        drops it (as DistributedSampler.set_epoch, the caller chooses the epoch)."""
        self.epoch = check_epoch(epoch)
        if self._resume is not None and self._resume["epoch"] != self.epoch:
            self._resume = None

    def _epoch_state(self) -> dict[str, Any] | None:
        if self._in_epoch is None:
            return None
        return {**self._in_epoch, "epoch": self.epoch, "pending": list(self._pairing.batches)}

    def _end_epoch_if_done(self) -> None:
        """Once every batch of the epoch has been yielded and trained on, the next is the next epoch's."""
        epoch = self._in_epoch
        if (
            epoch is not None
            and self._iteration_over
            and epoch["count"] >= epoch["length"] >= 0
            and not self._pairing.batches
        ):
            self._in_epoch = None
            self.epoch += 1


# --- score-driven strategies as batch samplers -------------------------------------------------------


class StrategyBatchSampler(_EpochPosition, Sampler[list[int]]):
    """A harness strategy that learns from training losses, as a ``DataLoader`` batch sampler.

    Each batch it yields comes from ``strategy.select``; :meth:`loss` takes that batch's per-sample
    losses, hands them to ``strategy.observe`` and returns the weighted mean
    :math:`\\frac1b\\sum_j w_j L_j` (weights 1 for unweighted strategies)::

        sampler = StrategyBatchSampler("loss", len(train), batch_size=128, method="proportional")
        loader = DataLoader(train, batch_sampler=sampler, num_workers=4)
        for x, y in loader:
            loss = sampler.loss(F.cross_entropy(model(x), y, reduction="none"))

    :meth:`loss` must be called once per batch, in the order the loader returns them (a ``DataLoader``
    keeps that order unless ``in_order=False``); a second call for one batch is an error, and an epoch
    with no call at all warns. Losses must be finite and non-negative
    (:func:`ismod.sampling.check_scores`). An epoch is one pass of the strategy's queue (for InfoBatch,
    the pruned epoch). Strategies that score extra samples (presampling, selective backprop, hard
    selection) need the model: see :class:`TauSwitchSampler`, :class:`SelectiveBackpropLoss`,
    :class:`HardExampleLoss`.

    **Resuming.** :meth:`state_dict` holds the strategy, its generator and the epoch in progress (the
    batches yielded but not yet trained on, which a prefetching loader has taken ahead). After
    :meth:`load_state_dict`, iterating the loader continues the interrupted run batch for batch, and
    ``epoch`` is the epoch of the next batch, so a loop resumes with
    ``for epoch in range(sampler.epoch, num_epochs)``.

    Args:
        strategy: a :class:`~ismod.strategies.base.Strategy` or the registry name of one.
        num_items: N, the dataset's length.
        batch_size: b per replica.
        num_epochs: the planned number of epochs; strategies that anneal (InfoBatch, online batch
            selection, prioritised replay) read their progress from it, step by step.
        drop_last: drop the epoch's last partial batch (``False`` keeps it, for the strategies that
            cut an epoch into batches, ``"loss"`` and ``"infobatch"``, on one process).
        dataset: optional; checked to have ``num_items`` items.
        seed: seeds the strategy's generator (identical on every replica).
        num_replicas, rank: the distributed layout (default: the initialised process group, else 1, 0).
        **options: the strategy's options, when ``strategy`` is a name.
    """

    def __init__(
        self,
        strategy: Strategy | str,
        num_items: int,
        batch_size: int,
        *,
        num_epochs: int | None = None,
        drop_last: bool = True,
        dataset: Any = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        **options: Any,
    ) -> None:
        if isinstance(strategy, str):
            strategy = build_strategy(strategy, options)
        elif options:
            raise TypeError(
                f"options {sorted(options)} are for a strategy given by name; set them on the object"
            )
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a Strategy or one of {sorted(STRATEGIES)}, got {type(strategy).__name__}")  # fmt: skip
        # what the strategy declares, never its name, says whether a batch sampler can run it
        if strategy.scoring_passes_per_sample > 0 or strategy.observes_logits:
            need = ("scores samples with extra forward passes" if strategy.scoring_passes_per_sample > 0
                    else "needs the logits of what was trained on, which loss() does not see")  # fmt: skip
            fix = (f"use ismod.{strategy.own_loop_adapter}" if strategy.own_loop_adapter
                   else "run it under ismod.train.fit")  # fmt: skip
            raise ValueError(
                f"strategy {strategy.name!r} {need}, which a batch sampler cannot do: {fix}"
            )
        self.num_items = _positive_int("num_items", num_items)
        _check_dataset(dataset, self.num_items)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_epochs = None if num_epochs is None else _positive_int("num_epochs", num_epochs)
        self.num_replicas, self.rank = _distributed_layout(num_replicas, rank)
        self.drop_last = bool(drop_last)
        if not self.drop_last:
            if not strategy.cuts_epochs_into_batches:
                raise ValueError(
                    f"drop_last=False keeps an epoch's last partial batch, which strategy {strategy.name!r} "
                    "does not have (it draws whole batches): leave drop_last=True"
                )
            if self.num_replicas > 1:
                raise ValueError(
                    "drop_last=False would give the replicas batches of different sizes: leave "
                    "drop_last=True under torch.distributed"
                )
            strategy.keep_partial_batch = True
        global_batch = self.batch_size * self.num_replicas
        if global_batch > self.num_items:
            raise ValueError(f"batch_size × num_replicas = {global_batch} exceeds num_items = {self.num_items}")  # fmt: skip
        self.strategy = strategy
        self.epoch = 0  # the epoch of the next batch
        self.step = 0
        self._generator = torch.Generator().manual_seed(int(seed))
        cpu = torch.device("cpu")
        strategy.setup(self.num_items, global_batch, cpu, self._generator)
        if isinstance(strategy, InfoBatch):  # the authors' annealing epoch needs E
            strategy.num_epochs = self.num_epochs
        self._pairing = _Pairing()
        weakref.finalize(
            self, self._pairing.warn_if_unused
        )  # a one-epoch run that never called loss()
        self._losses = _HostCopies()
        self._in_epoch: dict[str, int] | None = None  # count, length of the epoch being yielded
        self._resume: dict[str, Any] | None = None
        # the next epoch, started early by len(): its length, and what to restore if set_epoch renames it
        self._next_length: int | None = None
        self._before_next: tuple[int, dict[str, Any], torch.Tensor] | None = None

    # --- the epoch -----------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The epoch about to start (as ``DistributedSampler.set_epoch``): sets the strategies' progress.
        After :meth:`load_state_dict`, the resumed epoch's own number keeps the resume; another drops it.
        An epoch that ``len()`` started early under another number is drawn again under this one."""
        self._set_epoch(epoch)
        before = self._before_next
        if before is not None and before[0] != self.epoch:
            self.strategy.load_state_dict(before[1])
            self._generator.set_state(before[2])
            self._next_length = self._before_next = None

    def _observe_ready(self, wait: bool = False) -> None:
        for indices, losses in self._losses.ready(wait):
            if losses.is_pinned():  # a CUDA batch's copy (CPU losses were checked in loss())
                check_scores(losses, _LOSSES)
            self.strategy.observe(indices, losses, None)  # type: ignore[arg-type]

    def _set_progress(self, count: int, length: int) -> None:
        """Progress through the run at this step, from the epochs: it reaches 1 at the last step."""
        strategy = self.strategy
        if self.num_epochs is not None:
            within = (count + 1) / length if length > 0 else 0.0
            strategy.progress = min((self.epoch + within) / self.num_epochs, 1.0)
        if isinstance(strategy, InfoBatch):
            strategy.current_epoch = self.epoch

    def _begin_epoch(self) -> int:
        """Start the epoch about to be yielded, once, and return its length in batches: a scored
        strategy draws its queue now, as the epoch's first ``select`` would have (same scores, progress
        and generator), so that ``len()`` before an epoch is that epoch's (InfoBatch's pruned one)."""
        if self._next_length is not None:
            return self._next_length
        strategy = self.strategy
        if isinstance(strategy, ScoredStrategy):
            self._observe_ready()
            self._before_next = (self.epoch, strategy.state_dict(), self._generator.get_state())
            self._set_progress(0, self._queued_length())
            strategy.start_epoch(self.step)
            queued, b = strategy.queue.numel(), strategy.batch_size
            self._next_length = -(-queued // b) if not self.drop_last else queued // b
        else:
            self._set_progress(0, self.num_items // strategy.batch_size)
            self._next_length = self.num_items // strategy.batch_size
        return self._next_length

    def _queued_length(self) -> int:
        """Batches in the strategy's current queue (the epoch being yielded or just ended)."""
        strategy = self.strategy
        if isinstance(strategy, ScoredStrategy) and strategy.queue.numel():
            queued, b = strategy.queue.numel(), strategy.batch_size
            return max(queued // b if self.drop_last else -(-queued // b), 1)
        return self.num_items // (self.batch_size * self.num_replicas)

    def _batches(self) -> Iterator[list[int]]:
        self._pairing.warn_if_unused()
        strategy, mine = self.strategy, slice(self.rank, None, self.num_replicas)
        resume, self._resume = self._resume, None
        self._pairing.new_epoch(self.epoch)
        self._iteration_over = False
        fresh = (
            resume is None or resume["length"] < 0
        )  # (a format-1 state saved before its first batch)
        if fresh:
            count, length = 0, self._begin_epoch()
            self._next_length = self._before_next = None
        else:
            count, length = resume["count"], resume["length"]
            for indices, weights in resume["pending"]:
                self._pairing.yielded((indices, weights))
                yield indices[mine].tolist()
        self._in_epoch = {"count": count, "length": length}
        while count < length:
            self._observe_ready()
            if count or not fresh:  # the first one's progress was set when the epoch began
                self._set_progress(count, length)
            indices, weights = strategy.select(self.step)
            self.step += 1
            count += 1
            self._in_epoch = {"count": count, "length": length}
            self._pairing.yielded((indices, weights))
            if count == length:
                self._pairing.exhausted = True
            yield indices[mine].tolist()
        self._pairing.exhausted = self._iteration_over = True
        self._end_epoch_if_done()

    def __len__(self) -> int:
        """Batches in the epoch being yielded or, between epochs, in the next one (started early:
        :meth:`_begin_epoch`), so that a progress bar or a step-based schedule gets its true length."""
        if self._resume is not None and self._resume["length"] >= 0:
            return int(self._resume["length"])
        if self._in_epoch is not None and self._in_epoch["length"] >= 0:
            return int(self._in_epoch["length"])
        return self._begin_epoch()

    # --- the loss ------------------------------------------------------------------------------------

    def loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The weighted mean of this batch's per-sample ``losses`` (``reduction='none'``); records them.

        Weights (1/(N p) for importance sampling, 1/(1-r) for InfoBatch's kept samples) are those the
        batch was drawn with, sent to the losses' device."""
        indices, weights = self._pairing.take()
        losses = _per_sample(losses, indices.numel() // self.num_replicas, "loss()")
        if not losses.is_cuda:  # CUDA losses are checked on their host copy (_observe_ready)
            check_scores(losses.detach(), _LOSSES)
        self._pairing.done()
        if self.num_replicas > 1:
            from .process_group import World

            world = World.current()
            if world is None or world.size != self.num_replicas:
                raise RuntimeError(f"a sampler with num_replicas={self.num_replicas} needs an initialised process group of that size")  # fmt: skip
            gathered = world.all_gather_cat(losses.detach().float())
            # rank r trained on positions r, r + R, ...: put every rank's losses back in batch order
            ordered = gathered.view(self.num_replicas, -1).t().reshape(-1)
            self._losses.put(indices, ordered)
        else:
            self._losses.put(indices, losses)
        self._observe_ready()  # at once on the CPU; on CUDA once the copy has landed
        self._end_epoch_if_done()
        if weights is None:
            return losses.mean()
        mine = weights[self.rank :: self.num_replicas]
        if losses.is_cuda:  # from pinned memory the copy is queued, not waited for
            mine = mine.pin_memory()
        return (mine.to(losses.device, non_blocking=True) * losses).mean()

    def _identity(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "batch_size": self.batch_size,
                "strategy": self.strategy.name}  # fmt: skip

    def _saved_state(self) -> dict[str, Any]:
        """The strategy, its generator, the epoch and step, and the epoch in progress (losses in flight
        recorded first): read when the state is saved."""
        self._observe_ready(wait=True)
        return {"strategy": self.strategy.state_dict(), "generator": self._generator.get_state(),
                "epoch": self.epoch, "step": self.step, "in_epoch": self._epoch_state(),
                "next_length": self._next_length}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its class, N, b and method (checked on load), and, read when the state
        is saved or copied, the strategy, its generator, the epoch and step and the epoch in progress
        (how far it has been yielded and the batches yielded but not yet trained on).

        Costs O(1): torchdata's ``StatefulDataLoader`` calls it at every prefetch. As with
        ``nn.Module.state_dict``, save (``torch.save``) or copy (``copy.deepcopy``) it at the
        checkpoint; that is when its contents are read, since the loader asks at every prefetch, a few
        batches before the loop trains them."""
        return _wrapped_state(self, self._identity(), self._saved_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next iteration finishes the interrupted epoch, if any. A state
        made by another sampler class, N, b or method is refused, naming what differs."""
        state = _cloned(_unwrapped_state(self, state, self._identity()))
        _required(state, ("strategy", "epoch", "step"), f"{type(self).__name__}.load_state_dict")
        self.strategy.load_state_dict(state["strategy"])
        if "generator" in state:
            self._generator.set_state(state["generator"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._resume = state.get("in_epoch")
        self._in_epoch = None
        self._next_length, self._before_next = state.get("next_length"), None
        self._pairing.new_epoch(self.epoch)


class LossSampler(StrategyBatchSampler):
    """Loss-based importance sampling in your own loop, with the settings Chapter 3 recommends.

    Scores are each sample's last loss (after ``warmup_epochs`` uniform epochs that record them);
    each epoch draws N indices with replacement from :math:`p_i \\propto s_i` mixed with ``smoothing``
    of uniform, and :meth:`~StrategyBatchSampler.loss` weights each loss by :math:`1/(N p_i)`, which
    keeps the gradient unbiased and every weight at most :math:`1/\\text{smoothing}` (5 by default).
    Unbounded softmax weights at a fast learning rate diverged in Chapter 3; these do not. It is
    :class:`~ismod.strategies.LossSampling` (the loss-sampling report's Algorithm 1 and variants).
    Everything else (``loss()``, ``set_epoch``, ``state_dict``, resuming) is
    :class:`StrategyBatchSampler`'s.

    Args:
        num_items: N, the dataset's length. batch_size: b per replica.
        method: ``"proportional"`` (:math:`p_i \propto s_i`) or ``"softmax"``
            (:math:`p_i \propto e^{s_i/T}`, the report's Algorithm 1).
        temperature: T of the softmax.
        smoothing: ε, the share of uniform mixed in, :math:`p = (1-ε)p_s + ε/N`; weights stay
            at most :math:`1/ε`.
        score: ``"last"`` (each sample's last loss) or ``"running"`` (an exponential average of them).
        warmup_epochs: uniform epochs first, which record every sample's loss.
        replacement: draw each epoch's N indices with replacement (unbiased with the weights).
        drop_last, dataset, seed, num_replicas, rank: as :class:`StrategyBatchSampler`.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        method: str = "proportional",
        temperature: float = 1.0,
        smoothing: float = 0.2,
        score: str = "last",
        warmup_epochs: int = 1,
        replacement: bool = True,
        drop_last: bool = True,
        dataset: Any = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        strategy = LossSampling(score=score, warmup_epochs=warmup_epochs, subset=1.0, replacement=replacement,
                                method=method, temperature=temperature, smoothing=smoothing)  # fmt: skip
        super().__init__(strategy, num_items, batch_size, drop_last=drop_last, dataset=dataset,
                         seed=seed, num_replicas=num_replicas, rank=rank)  # fmt: skip


class InfoBatchSampler(StrategyBatchSampler):
    """InfoBatch (Qin et al., ICLR 2024) without patching the ``DataLoader``: each epoch drops
    well-learned samples (last loss below the mean) with probability ``prune_ratio`` (at most 0.9, as
    the authors' code bounds it) and scales the kept ones' losses by :math:`1/(1 - r)`; epoch e (from 0)
    trains on everything once :math:`e + 1 > E\\delta` (the authors' rule: with E = 6 and δ = 0.875,
    the last epoch). Like the authors' sampler it keeps each epoch's last partial batch
    (``drop_last=False``). It is :class:`~ismod.strategies.InfoBatch`. Everything else (``loss()``,
    ``set_epoch``, ``state_dict``, resuming) is :class:`StrategyBatchSampler`'s; ``len()`` before an
    epoch is that epoch's pruned length.

    Args:
        num_items: N, the dataset's length. batch_size: b per replica.
        num_epochs: E, the planned epochs; the last :math:`E(1-δ)` of them train on everything.
        prune_ratio: r, the chance that a well-learned sample is left out of an epoch (at most 0.9).
        delta: δ, the share of the epochs that prune (the authors' 0.875).
        drop_last: default ``False`` on one process (the authors' sampler keeps the last partial
            batch), ``True`` under ``torch.distributed`` (replicas need equal batches).
        dataset, seed, num_replicas, rank: as :class:`StrategyBatchSampler`.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        num_epochs: int,
        *,
        prune_ratio: float = 0.5,
        delta: float = 0.875,
        drop_last: bool | None = None,
        dataset: Any = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        replicas, _ = _distributed_layout(num_replicas, rank)
        if (
            drop_last is None
        ):  # the authors' sampler keeps the partial batch; replicas need equal ones
            drop_last = replicas > 1
        super().__init__(InfoBatch(prune_ratio, delta), num_items, batch_size, num_epochs=num_epochs,
                         drop_last=drop_last, dataset=dataset, seed=seed, num_replicas=num_replicas,
                         rank=rank)  # fmt: skip


# --- methods that score with the model ---------------------------------------------------------------


def _check_batch(x: Any, y: Any, where: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{where} takes the batch's inputs and targets as tensors, got {type(x).__name__} and {type(y).__name__}")  # fmt: skip
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: inputs hold {x.shape[0]} samples but targets {y.shape[0]}")
    if x.device != y.device:
        raise ValueError(f"{where}: inputs are on {x.device} but targets on {y.device}; move both to the model's device")  # fmt: skip


# Where the logits are in a model's output: None (the output is the logits), a key (a dict output,
# e.g. "logits"), an index (a tuple or list output, e.g. 0) or a function of the output.
Logits = str | int | Callable[[Any], torch.Tensor] | None


def _check_logits_option(logits: Any) -> Logits:
    if logits is None or isinstance(logits, (str, int)) or callable(logits):
        return logits
    raise TypeError(
        f"logits must be None, a key, an index or a function of the model's output, got {logits!r}"
    )


def _pick_logits(output: Any, logits: Logits, where: str) -> torch.Tensor:
    """The logits in ``output`` as ``logits`` says, or an error naming the fix."""
    if logits is None:
        picked = output
    elif callable(logits):
        picked = logits(output)
    else:
        try:
            picked = output[logits]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"{where}: logits={logits!r} picks nothing in the model's {type(output).__name__} "
                f"output ({err!r}): name a key or an index it has"
            ) from err
    if not isinstance(picked, torch.Tensor):
        raise TypeError(
            f"{where}: the model's output {'' if logits is None else f'at logits={logits!r} '}is a "
            f"{type(picked).__name__}, not a tensor of logits: pass logits= a key (a dict output, e.g. "
            "logits='logits'), an index (a tuple output, e.g. logits=0) or a function of the output"
        )
    return picked


def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: PerSampleLoss,
           logits: Logits = None, where: str = "loss()") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Logits and per-sample losses without autograd, in inference mode (BatchNorm's running statistics,
    as the harness scores): no buffer moves and a sample's score does not depend on its batch."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _pick_logits(model(x), logits, where)
            return out, per_sample_losses(loss_fn, out, y)
    finally:
        model.train(was_training)


def select_by_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    keep: float = 0.5,
    *,
    sample: bool = False,
    loss_fn: PerSampleLoss | None = None,
    logits: Logits = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples of the batch ``x, y`` to train on, for any forward pass: scores the batch without
    autograd (inference mode, as the adapters score) and returns ``(positions, weights)`` in the batch.

    - ``sample=False``: the ``max(1, round(keep · n))`` samples with the highest loss, weights 1
      (hard-example selection as airbench96; biased on purpose).
    - ``sample=True``: that many drawn with replacement with :math:`p_i \\propto L_i`, weights
      :math:`1/(n p_i)`, so that :math:`\\frac1k\\sum_j w_j L_j` is an unbiased estimate of the batch's
      mean loss (Katharopoulos & Fleuret 2018, with the loss as the score).

    Then train on the subset::

        pos, w = ismod.select_by_loss(model, x, y, keep=0.5)
        loss = (w * F.cross_entropy(model(x[pos]), y[pos], reduction="none")).mean()

    ``logits`` says where the logits are in the model's output: a key, an index or a function of the
    output (default: the output is the logits); ``generator`` draws
    when ``sample`` (default: torch's global RNG, as torch's own random functions)."""
    _check_batch(x, y, "select_by_loss")
    if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
        raise ValueError(
            f"keep (the fraction of the batch trained on) must lie in (0, 1], got {keep!r}"
        )
    _, losses = _score(model, x, y, loss_fn or cross_entropy_loss(), _check_logits_option(logits),
                       "select_by_loss")  # fmt: skip
    check_scores(losses.detach().reshape(-1), "select_by_loss losses")
    k = max(1, round(keep * losses.shape[0]))
    if not sample:
        positions = hardest(losses, k)
        return positions, torch.ones(k, dtype=torch.float32, device=losses.device)
    return _draw(normalize_scores(losses.float()), k, True, generator)


# Calls of TauSwitchSampler.loss, on uniform steps, whose batch also times a forward and a backward
# pass for threshold="measured": the median of the five sets τ_th once.
_PROBE_CALLS = range(10, 15)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TauSwitchSampler(_EpochPosition, Sampler[list[int]]):
    """Katharopoulos & Fleuret's (2018) upper-bound presampling with the τ switch, in your own loop.

    While :math:`\\tau \\le \\tau_{th}` the sampler yields uniform batches of b and :meth:`loss` trains on
    them, scoring each batch for free from its own logits to update τ. Once :math:`\\tau > \\tau_{th}`
    it yields presamples of B; :meth:`loss` scores them without autograd (the upper bound
    :math:`\\lVert\\mathrm{softmax}(z_i) - t_i\\rVert`, hard or soft targets), draws b of them with
    replacement with :math:`g_i \\propto` score and returns the mean of :math:`L_i/(B g_i)` over the b.
    The same :class:`~ismod.strategies.presample.TauSwitch` as the harness's ``Presample``.

    The threshold is by default the authors' library's rule, :math:`\\tau_{th} = (B + 3b)/(3b)` (their
    eq. 29 with :math:`t_b = 2t_f`), so identically seeded runs make identical switch decisions.
    ``threshold="measured"`` sets :math:`\\tau_{th} = 1 + B t_f/(b(t_f + t_b))` once, from the medians of
    five probes (calls 10–14 of :meth:`loss`, each timing a forward pass without autograd and, apart, a
    backward pass of the batch, in inference mode and without touching the gradients): a cost model of
    this machine, which timing noise can move between runs. A number fixes τ_th.

    Which batches are presamples is decided when the loader takes a batch from the sampler, from τ as
    it stands then: a loader with workers takes batches ahead of the loop (``prefetch_factor`` ×
    ``num_workers`` of them), so the decisions, and the run, depend on ``num_workers``; identically
    configured runs decide alike.

    An epoch is N/b steps, as with uniform batches, so schedules keep their length. A sampler that is
    never iterated scores batches of the caller's own (b or B samples) in :meth:`loss`. Under
    ``torch.distributed`` each replica draws from its share of a permutation seeded by
    ``seed + epoch`` and keeps its own τ; ``model`` must then be the ``DistributedDataParallel``
    wrapper, so that importance steps average their gradients.

    **Resuming.** :meth:`state_dict` holds τ and its lagged copies, the threshold, the permutation and
    position, the resampling generator and the batches yielded but not yet trained on; after
    :meth:`load_state_dict` the loader continues the interrupted run batch for batch, and
    ``epoch`` is the epoch of the next batch.

    Args:
        model: the network, returning logits (its last layer linear, for the bound).
        num_items: N. batch_size: b.
        presample: B as a multiple of b (the authors' default 3).
        score: ``"bound"`` or ``"loss"`` (for losses other than softmax cross-entropy).
        threshold: ``"fixed"``, ``"measured"`` or a number. tau_momentum: :math:`a_\\tau`.
        sqrt: the authors' library's square root of τ (Chapter 5 shows the bound fits better without).
        presample_cap: switch on when :math:`\\tau_{\\text{eff}} = 1/(1/\\tau + b/B)` exceeds τ_th, not τ
            (Chapter 5, §5.6: the presample's own variance caps what a step is worth).
        loss_fn: per-sample loss, ``(logits, targets) -> (b,)``; softmax cross-entropy by default.
        logits: where the logits are in the model's output, for models that return a tuple or a dict:
            a key, an index or a function of the output (default: the output is the logits).
        dataset: optional; checked to have ``num_items`` items.
        seed, num_replicas, rank: as ``DistributedSampler``.
    """

    def __init__(
        self,
        model: nn.Module,
        num_items: int,
        batch_size: int,
        *,
        presample: float = 3.0,
        score: str = "bound",
        threshold: str | float = "fixed",
        tau_momentum: float = 0.9,
        sqrt: bool = False,
        presample_cap: bool = False,
        loss_fn: PerSampleLoss | None = None,
        logits: Logits = None,
        dataset: Any = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.num_items = _positive_int("num_items", num_items)
        _check_dataset(dataset, self.num_items)
        self.batch_size = _positive_int("batch_size", batch_size)
        check_presample_options(presample, score, threshold, tau_momentum)
        self.num_replicas, self.rank = _distributed_layout(num_replicas, rank)
        _check_replicated(model)
        self.shard_size = -(-self.num_items // self.num_replicas)
        self.presample_size = round(presample * self.batch_size)
        if self.presample_size > self.shard_size:
            raise ValueError(f"presample B = {self.presample_size} exceeds the {self.shard_size} samples of a replica")  # fmt: skip
        self.model, self.score, self.loss_fn = model, score, loss_fn or cross_entropy_loss()
        self.logits = _check_logits_option(logits)
        self.threshold, self.tau_momentum, self.sqrt = threshold, float(tau_momentum), bool(sqrt)
        if not isinstance(presample_cap, bool):
            raise ValueError(f"presample_cap must be True or False, got {presample_cap!r}")
        self.presample_cap = presample_cap
        self.seed, self.epoch = int(seed), 0
        self.switch: TauSwitch | None = None  # made at the first loss(), on the tensors' device
        self.calls = 0
        self.importance_steps = 0
        self.last_logits: torch.Tensor | None = None  # of the samples trained on at the last step
        self.last_targets: torch.Tensor | None = None
        self.probes: list[tuple[float, float]] = []  # (forward, backward) seconds of a batch
        self._stream = torch.empty(0, dtype=torch.long)
        self._stream_position = 0
        self._passes = 0
        self._generator: torch.Generator | None = None
        self._pairing = _Pairing()
        weakref.finalize(
            self, self._pairing.warn_if_unused
        )  # a one-epoch run that never called loss()
        self._iterated = False  # loss() pairs its batch with a yielded one once the loader iterates
        self._check = _HostScoreCheck("loss() scores")
        self._in_epoch: dict[str, int] | None = None
        self._resume: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None

    # --- what the loader loads -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Seed the next epoch's permutations with ``seed + epoch`` (as ``DistributedSampler``)."""
        self._set_epoch(epoch)

    def _take(self, k: int) -> list[int]:
        if self._stream_position + k > self._stream.numel():
            gen = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + self._passes)
            order = torch.randperm(self.num_items, generator=gen)
            self._stream = order[self.rank :: self.num_replicas]
            self._stream_position, self._passes = 0, self._passes + 1
        start, self._stream_position = self._stream_position, self._stream_position + k
        return self._stream[start : start + k].tolist()

    def importance_on(self) -> bool:
        """Whether the next batch is a presample: τ (as the host can read it without waiting) > τ_th."""
        switch, restored = self.switch, self._restored
        if switch is None and restored is not None:  # resumed, before the first loss(): τ as saved
            ring = restored["ring"]  # on CUDA, the lagged copy tau_for_decision would read
            tau = (
                ring[(self.calls - TAU_LAG) % len(ring)]
                if restored.get("device_type") == "cuda"
                else float(restored["tau"])
            )
            return switches_on(
                tau,
                restored["tau_threshold"],
                self.batch_size,
                self.presample_size,
                self.presample_cap,
            )
        return switch is not None and switch.switches_on(switch.tau_for_decision(self.calls))

    def _batches(self) -> Iterator[list[int]]:
        self._iterated = True
        self._pairing.warn_if_unused()
        resume, self._resume = self._resume, None
        self._pairing.new_epoch(self.epoch)
        self._iteration_over = False
        count = 0
        if resume is None:
            self._stream_position, self._passes = self._stream.numel(), 0  # a fresh permutation
        else:
            count = resume["count"]
            for batch in resume["pending"]:
                self._pairing.yielded(batch)
                yield batch
        length = len(self) if resume is None else resume["length"]
        self._in_epoch = {"count": count, "length": length}
        while count < length:
            batch = self._take(self.presample_size if self.importance_on() else self.batch_size)
            count += 1
            self._in_epoch = {"count": count, "length": length}
            self._pairing.yielded(batch)
            if count == length:
                self._pairing.exhausted = True
            yield batch
        self._pairing.exhausted = self._iteration_over = True
        self._end_epoch_if_done()

    def __len__(self) -> int:
        return self.shard_size // self.batch_size

    # --- the step ------------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward ``x`` (a uniform batch or a presample, as yielded) and return the loss to backpropagate."""
        _check_batch(x, y, "loss()")
        paired = self._iterated  # a sampler never iterated scores batches of the caller's own
        batch = self._pairing.take() if paired else list(range(x.shape[0]))
        if paired and x.shape[0] != len(batch):
            raise ValueError(
                f"loss() got {x.shape[0]} samples but the sampler yielded a batch of {len(batch)}: pass "
                "each batch the loader returns, whole and in order"
            )
        if self.switch is None:
            self.switch = TauSwitch(self.presample_size, self.batch_size, x.device, self.threshold,
                                    self.tau_momentum, self.sqrt, self.presample_cap)  # fmt: skip
            self._generator = torch.Generator(device=x.device).manual_seed(
                self.seed + 7919 * self.rank
            )
            self._restore(self.switch)
        step, b = self.calls, self.batch_size
        if x.shape[0] > b:  # a presample: score, resample b, weight 1/(B g)
            logits, losses = _score(self.model, x, y, self.loss_fn, self.logits)
            scores = self._scores(logits, y, losses)
            self._check(scores)
            g = normalize_scores(scores)
            chosen, weights = _draw(g, b, True, self._generator)
            self.switch.update(g, step)
            x, y = x[chosen], y[chosen]
            logits = _pick_logits(self.model(x), self.logits, "loss()")
            loss = (
                weights.to(logits.device, torch.float32)
                * per_sample_losses(self.loss_fn, logits, y)
            ).mean()
            self.importance_steps += 1
        else:
            if (
                self.threshold == "measured"
                and step in _PROBE_CALLS
                and len(self.probes) < len(_PROBE_CALLS)
            ):
                self._probe(x, y)
            logits = _pick_logits(self.model(x), self.logits, "loss()")
            losses = per_sample_losses(self.loss_fn, logits, y)
            scores = self._scores(logits.detach(), y, losses.detach())
            self._check(scores)
            self.switch.update(normalize_scores(scores), step)
            loss = losses.mean()
        if paired:
            self._pairing.done()
        self.last_logits, self.last_targets = logits.detach(), y
        self.calls += 1
        self._end_epoch_if_done()
        return loss

    def _scores(self, logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        return _upper_bound(logits, y) if self.score == "bound" else losses.float()

    def _probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Time a forward pass without autograd and a backward pass of this batch (inference mode, the
        unwrapped module, gradients returned rather than accumulated: training is untouched); after
        five, set τ_th from their medians. Five host synchronisations in a run."""
        module = getattr(self.model, "module", self.model)  # DDP's hooks expect a real backward
        was_training = module.training
        module.eval()
        try:
            _synchronize(x.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                module(x)
            _synchronize(x.device)
            t1 = time.perf_counter()
            logits = _pick_logits(module(x), self.logits, "loss()")
            loss = per_sample_losses(self.loss_fn, logits, y).mean()
            _synchronize(x.device)
            t2 = time.perf_counter()
            torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad])
            _synchronize(x.device)
            t3 = time.perf_counter()
        finally:
            module.train(was_training)
        self.probes.append((t1 - t0, t3 - t2))
        if len(self.probes) == len(_PROBE_CALLS):
            forward = statistics.median(f for f, _ in self.probes)
            backward = statistics.median(b for _, b in self.probes)
            self.switch.set_step_times(forward, backward)  # type: ignore[union-attr]

    @property
    def tau(self) -> float:
        """The current τ, a running mean of each batch's τ (each at least 1) with momentum
        ``tau_momentum``, started at 0 as in the authors' library: it reads below 1 for the first few
        dozen steps while it rises (synchronises on CUDA; for logging)."""
        return 0.0 if self.switch is None else float(self.switch.tau)

    @property
    def tau_threshold(self) -> float:
        return (self.presample_size + 3 * self.batch_size) / (3 * self.batch_size) if self.switch is None else self.switch.tau_threshold  # fmt: skip

    def _identity(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "batch_size": self.batch_size,
                "presample_size": self.presample_size, "num_replicas": self.num_replicas}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its class, N, b, B and replicas (checked on load), and, read when the
        state is saved or copied, τ and its lagged copies, the threshold and probes, the counters, the
        permutation, the resampling generator and the epoch in progress (batches yielded but not yet
        trained on). Costs O(1), as ``StatefulDataLoader`` calls it at every prefetch: save or copy it
        at the checkpoint (see :meth:`StrategyBatchSampler.state_dict`)."""
        return _wrapped_state(self, self._identity(), self._saved_state)

    def _saved_state(self) -> dict[str, Any]:
        self._check.raise_if_bad(wait=True)
        switch, gen = self.switch, self._generator
        if self._restored is not None:  # loaded, not yet applied: pass it on as it is
            switch_state = {k: self._restored.get(k) for k in ("tau", "ring", "tau_threshold", "measured_times", "generator", "device_type")}  # fmt: skip
        elif switch is None:
            switch_state = {"tau": None, "ring": None, "tau_threshold": None, "measured_times": None, "generator": None, "device_type": None}  # fmt: skip
        else:
            switch_state = {"tau": switch.tau, "ring": switch.ring_values(), "tau_threshold": switch.tau_threshold,
                            "measured_times": switch.measured_times, "generator": None if gen is None else gen.get_state(),
                            "device_type": switch.device.type}  # fmt: skip
        return {
            **switch_state, "calls": self.calls, "importance_steps": self.importance_steps,
            "epoch": self.epoch, "probes": list(self.probes), "stream": self._stream,
            "stream_position": self._stream_position, "passes": self._passes,
            "in_epoch": self._epoch_state(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; τ takes effect at the next :meth:`loss` (on its device), and the
        next iteration finishes the interrupted epoch, if any. A state made by another sampler class, N,
        b, B or number of replicas is refused, naming what differs."""
        state = _cloned(_unwrapped_state(self, state, self._identity()))
        _required(
            state, ("tau", "calls", "importance_steps", "epoch"), "TauSwitchSampler.load_state_dict"
        )
        mine = len(range(self.rank, self.num_items, self.num_replicas))
        if "stream" in state and state["stream"].numel() not in (0, mine):
            raise ValueError(
                f"TauSwitchSampler.load_state_dict: the state's permutation has "
                f"{state['stream'].numel()} items, this replica's share of num_items {mine}: build "
                "the sampler with the saved run's num_items and num_replicas"
            )
        self.calls, self.importance_steps = int(state["calls"]), int(state["importance_steps"])
        self.epoch = int(state["epoch"])
        self.probes = [tuple(p) for p in state.get("probes", [])]
        if "stream" in state:
            self._stream = state["stream"]
            self._stream_position, self._passes = (
                int(state["stream_position"]),
                int(state["passes"]),
            )
        self._resume = state.get("in_epoch")
        self._in_epoch = None
        self._pairing.new_epoch(self.epoch)
        self._restored = state if state["tau"] is not None else None
        if self.switch is not None and self._restored is not None:
            self._restore(self.switch)

    def _restore(self, switch: TauSwitch) -> None:
        state = self._restored
        if state is None:
            return
        tau = torch.as_tensor(state["tau"], dtype=torch.float64)
        switch.tau = tau.to(switch.device)
        switch.tau_threshold = float(state["tau_threshold"])
        switch.measured_times = state["measured_times"]
        switch.restore_ring(state.get("ring") or [float(tau)] * len(switch.ring_values()))
        if state.get("generator") is not None and self._generator is not None:
            self._generator.set_state(state["generator"])
        self._restored = None


def _check_replicated(model: nn.Module) -> None:
    """Under a process group of several ranks, importance steps must average gradients: the model must
    be the DistributedDataParallel wrapper, or the replicas drift apart without an error."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    from torch.nn.parallel import DistributedDataParallel

    wrapped = isinstance(model, DistributedDataParallel)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = wrapped or isinstance(model, FullyShardedDataParallel)
    except ImportError:  # pragma: no cover - older torch
        pass
    if not wrapped:
        raise ValueError(
            f"the process group has {dist.get_world_size()} ranks but model is a plain "
            f"{type(model).__name__}: pass the DistributedDataParallel-wrapped model "
            "(TauSwitchSampler(ddp_model, ...)), so that every replica trains on averaged gradients"
        )


class _ScoredSubsetLoss:
    """Score a batch without autograd, keep some of it, train on those (selective backprop, hard
    selection). The loader's batch is the candidate batch. For a model whose output is a tuple or a
    dict, ``logits=`` names where its logits are (a key, an index or a function of the output)."""

    where = "loss()"

    def __init__(self, model: nn.Module, loss_fn: PerSampleLoss | None, seed: int,
                 logits: Logits = None) -> None:  # fmt: skip
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.loss_fn, self.seed = model, loss_fn or cross_entropy_loss(), int(seed)
        self.logits = _check_logits_option(logits)
        self.last_logits: torch.Tensor | None = None
        self.last_targets: torch.Tensor | None = None
        self.candidates = 0
        self.trained = 0
        self._check = _HostScoreCheck("loss() scores")

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The counters (and, for selective backprop, the loss window and the generator): with the
        model, the optimiser and the loader's own position, a resumed run keeps the same samples."""
        self._check.raise_if_bad(wait=True)
        return {"candidates": self.candidates, "trained": self.trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the counters (and, for selective backprop, the window and the
        generator, applied at the next ``loss()``)."""
        _required(state, ("candidates", "trained"), f"{type(self).__name__}.load_state_dict")
        self.candidates, self.trained = int(state["candidates"]), int(state["trained"])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score the batch ``x, y``, forward the samples kept, return their mean loss."""
        _check_batch(x, y, self.where)
        scoring_model = self.model if self.score_model is self.model else None
        _, losses = _score(self.score_model, x, y, self.loss_fn,
                           self.logits if scoring_model is not None else None)  # fmt: skip
        self._check(losses)
        keep = self._positions(losses)
        x, y = x[keep], y[keep]
        logits = _pick_logits(self.model(x), self.logits, self.where)
        self.last_logits, self.last_targets = logits.detach(), y
        self.candidates += losses.shape[0]
        self.trained += keep.shape[0]
        return per_sample_losses(self.loss_fn, logits, y).mean()

    @property
    def score_model(self) -> nn.Module:
        return self.model


class SelectiveBackpropLoss(_ScoredSubsetLoss):
    """Selective backprop (Jiang et al. 2019) in your own loop: each candidate batch is scored without
    autograd, each sample kept with probability :math:`\\mathrm{percentile}(L_i)^\\beta` among the last
    ``history`` losses, and only the kept ones are forwarded and backpropagated (unweighted).

    With β = 3 about a quarter of the candidates are kept, so load candidate batches of about 4b for
    batches of b; unlike Jiang et al.'s implementation, kept samples are not pooled across steps (a
    step trains on what its candidates yield, at least one sample). Knowing how many were kept is one
    host read per step. The same :class:`~ismod.strategies.budgeted.LossWindow` as the harness's
    ``SelectiveBackprop``.
    """

    def __init__(self, model: nn.Module, *, beta: float = 3.0, history: int = 1024,
                 loss_fn: PerSampleLoss | None = None, seed: int = 0, logits: Logits = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, seed, logits)
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.beta, self.history = float(beta), LossWindow.check_size(history)
        self.window: LossWindow | None = None
        self._generator: torch.Generator | None = None
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The counters, the loss window of the last ``history`` losses and the keep-draw generator
        (a copy: later steps do not change it)."""
        state = super().state_dict()
        if self._restored is not None:  # loaded, not yet applied
            return {**state, **{k: self._restored[k] for k in ("window", "generator")}}
        window, gen = self.window, self._generator
        return _cloned({**state, "window": None if window is None else window.state_dict(),
                        "generator": None if gen is None else gen.get_state()})  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the window and generator take effect at the next ``loss()``,
        on its device."""
        super().load_state_dict(state)
        self._restored = _cloned(state) if state.get("window") is not None else None
        self.window = self._generator = None

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = LossWindow(self.history, losses.device)
            self._generator = torch.Generator(device=losses.device).manual_seed(self.seed)
            if self._restored is not None:
                self.window.load_state_dict(self._restored["window"])
                self._generator.set_state(self._restored["generator"])
                self._restored = None
        kept = self.window.keep(losses, self.beta, self._generator).nonzero().squeeze(1)
        if kept.numel() == 0:  # the host read: train on the hardest candidate rather than nothing
            kept = losses.argmax().view(1)
        return kept


class HardExampleLoss(_ScoredSubsetLoss):
    """Hard-example selection as in airbench96_faster: score each candidate batch without autograd and
    train on the fraction ``keep`` with the highest loss, unweighted (biased on purpose). ``proxy``
    scores instead of the model (airbench uses a small proxy network). No host synchronisation. The
    same :func:`~ismod.strategies.budgeted.hardest` as the harness's ``HardSelection``."""

    def __init__(self, model: nn.Module, *, keep: float = 0.5, proxy: nn.Module | None = None,
                 loss_fn: PerSampleLoss | None = None, logits: Logits = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, 0, logits)
        if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
            raise ValueError(
                f"keep (the fraction of each batch trained on) must lie in (0, 1], got {keep!r}"
            )
        if proxy is not None and not isinstance(proxy, nn.Module):
            raise TypeError(f"proxy must be a torch.nn.Module or None, got {type(proxy).__name__}")
        self.keep, self.proxy = float(keep), proxy

    @property
    def score_model(self) -> nn.Module:
        return self.proxy if self.proxy is not None else self.model

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        return hardest(losses, max(1, round(self.keep * losses.shape[0])))
