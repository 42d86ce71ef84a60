"""What every adapter shares: argument checks, losses on their way to the host, the logits of a
model's output, a forward pass without autograd, and states read when they are saved."""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..sampling import check_scores
from ..train import PerSampleLoss, per_sample_losses

# --- checks shared by every adapter ------------------------------------------------------------------


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def checked_losses(losses: Any, expected: int, where: str) -> torch.Tensor:
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


class HostCopies:
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


def check_dataset(dataset: Any, num_items: int) -> None:
    """With ``dataset=`` given, its length must be ``num_items`` (else some samples are never drawn, or
    indices run past its end)."""
    if dataset is not None and len(dataset) != num_items:
        raise ValueError(
            f"num_items = {num_items} but len(dataset) = {len(dataset)}: pass num_items=len(dataset) "
            "(the sampler draws indices in [0, num_items))"
        )


def cloned_state(state: Any) -> Any:
    """A copy of a state whose tensors no later step can change (strategies update theirs in place)."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: cloned_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cloned_state(v) for v in state)
    return state


LOSSES_ARGUMENT = "loss() losses"

STATE_FORMAT = 2
"""The version of the samplers' :meth:`state_dict` layout. 2: the class, ``num_items``, ``batch_size``
and the strategy are checked on load, and the state the losses change is read when it is saved
(:class:`AsSaved`). States without a ``"format"`` key (version 1) still load."""


class AsSaved:
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


def wrapped_state(sampler: Any, identity: dict[str, Any], read: Any) -> dict[str, Any]:
    """A sampler's :meth:`state_dict`: what it must match to be loaded, the epoch when the state was asked
    for, and the rest read when saved (:class:`AsSaved`)."""
    return {"format": STATE_FORMAT, "class": type(sampler).__name__, **identity,
            "epoch_asked": sampler.epoch, "saved": AsSaved(read)}  # fmt: skip


def unwrapped_state(sampler: Any, state: Any, identity: dict[str, Any]) -> dict[str, Any]:
    """The saved part of ``state``, after checking it was made by a sampler like this one; a state of
    format 1 (before the check existed) is returned as it is, after the same check on what it holds."""
    where = f"{type(sampler).__name__}.load_state_dict"
    if isinstance(state, AsSaved) or not isinstance(state, dict):
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
    saved = saved.value() if isinstance(saved, AsSaved) else dict(saved)
    asked = state.get("epoch_asked")
    if asked is not None and int(saved["epoch"]) > int(asked) and saved.get("in_epoch") is None:
        # asked for while prefetching an epoch's last batches, saved once the loop had trained them: the
        # loader that asked is still in that epoch, with nothing left to yield in it
        saved["epoch"] = int(asked)
        saved["in_epoch"] = {"count": 0, "length": 0, "epoch": int(asked), "pending": []}
    return saved


def require_keys(state: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(
            f"{where}: the state lacks {missing}: pass the dict that this sampler's state_dict() "
            "returned (or that a StatefulDataLoader saved), not a part of it"
        )


class HostScoreCheck:
    """:func:`ismod.sampling.check_scores` without a host synchronisation: CPU scores are checked at
    once; on CUDA each call counts its bad values on the device and sends the count home through
    :class:`HostCopies`, and the check raises once a count has landed, a step or two later."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.counts = HostCopies()

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


# --- methods that score with the model ---------------------------------------------------------------


def check_batch(x: Any, y: Any, where: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{where} takes the batch's inputs and targets as tensors, got {type(x).__name__} and {type(y).__name__}")  # fmt: skip
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: inputs hold {x.shape[0]} samples but targets {y.shape[0]}")
    if x.device != y.device:
        raise ValueError(f"{where}: inputs are on {x.device} but targets on {y.device}; move both to the model's device")  # fmt: skip


# Where the logits are in a model's output: None (the output is the logits), a key (a dict output,
# e.g. "logits"), an index (a tuple or list output, e.g. 0) or a function of the output.
Logits = str | int | Callable[[Any], torch.Tensor] | None


def check_logits_option(logits: Any) -> Logits:
    if logits is None or isinstance(logits, (str, int)) or callable(logits):
        return logits
    raise TypeError(
        f"logits must be None, a key, an index or a function of the model's output, got {logits!r}"
    )


def pick_logits(output: Any, logits: Logits, where: str) -> torch.Tensor:
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


def score_without_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: PerSampleLoss,
           logits: Logits = None, where: str = "loss()") -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Logits and per-sample losses without autograd, in inference mode (BatchNorm's running statistics,
    as the harness scores): no buffer moves and a sample's score does not depend on its batch."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = pick_logits(model(x), logits, where)
            return out, per_sample_losses(loss_fn, out, y)
    finally:
        model.train(was_training)


def check_replicated(model: nn.Module) -> None:
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
