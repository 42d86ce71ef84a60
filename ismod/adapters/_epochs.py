"""The epoch bookkeeping of the batch samplers: which yielded batch each ``loss()`` call pairs with,
the position within an epoch, and the epoch's end."""

from __future__ import annotations

import os
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ..sampling import check_epoch


class Pairing:
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
    """The ``stacklevel`` of the first caller outside ``ismod.adapters`` and ``torch.utils.data``, so
    that a warning points at the user's loop rather than into the DataLoader."""
    frame, level = sys._getframe(1), 1
    inside = (os.path.dirname(__file__) + os.sep, os.path.join("torch", "utils", "data"))
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


class EpochPosition:
    """Where a batch sampler stands in its epoch, for :meth:`state_dict`: how many batches it has
    yielded of how many, and the batches yielded but not yet trained on (``_pairing``). ``epoch`` is
    the epoch of the next batch: it moves on once the epoch's iteration has ended and its last batch
    has had its ``loss()``. The iteration ends when the loader asks for a batch past the last one, as
    a loader's own epoch does: a checkpoint taken inside the loop after the last batch resumes in that
    epoch, with nothing left to yield in it (as torchdata's ``StatefulDataLoader`` does for any
    sampler)."""

    epoch: int
    _pairing: Pairing
    _in_epoch: dict[str, int] | None  # count, length (-1 until known) of the epoch being yielded
    _resume: dict[str, Any] | None
    _iteration_over = False  # the epoch's iterator has returned

    def __iter__(self) -> Iterator[list[int]]:
        _refuse_batch_sampler_as_sampler(self)
        return self._batches()

    def _batches(self) -> Iterator[list[int]]:
        raise NotImplementedError

    def _yield_epoch(self, count: int, length: int, pending: list[Any], draw: Callable[[int], Any],
                     shown: Callable[[Any], list[int]]) -> Iterator[list[int]]:  # fmt: skip
        """An epoch's batches from batch ``count`` of ``length``: first the ``pending`` batches of a
        resumed epoch (yielded before the interruption, not yet trained on), then ``draw(count)`` for
        each batch left; each is paired with its ``loss()`` and yielded as ``shown(batch)``."""
        for batch in pending:
            self._pairing.yielded(batch)
            yield shown(batch)
        self._in_epoch = {"count": count, "length": length}
        while count < length:
            batch = draw(count)
            count += 1
            self._in_epoch = {"count": count, "length": length}
            self._pairing.yielded(batch)
            if count == length:
                self._pairing.exhausted = True
            yield shown(batch)
        self._pairing.exhausted = self._iteration_over = True
        self._end_epoch_if_done()

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
