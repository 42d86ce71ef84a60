"""Any strategy that learns from the losses of what was trained on, as a ``DataLoader`` batch sampler:
:class:`StrategyBatchSampler`, and its two settings the book recommends, :class:`LossSampler` and
:class:`InfoBatchSampler`."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from ..process_group import replica_layout
from ..sampling import check_scores
from ..strategies import STRATEGIES, Strategy, build_strategy
from ..strategies.base import Selection
from ..strategies.pruning import InfoBatch
from ..strategies.scored import LossSampling, ScoredStrategy
from ._common import (
    LOSSES_ARGUMENT,
    HostCopies,
    check_dataset,
    checked_losses,
    cloned_state,
    positive_int,
    require_keys,
    unwrapped_state,
    wrapped_state,
)
from ._epochs import EpochPosition, Pairing

# --- score-driven strategies as batch samplers -------------------------------------------------------


def _batch_sampler_strategy(strategy: Strategy | str, options: dict[str, Any]) -> Strategy:
    """``strategy`` built from its name and options, and checked to run in a batch sampler: what it
    declares, never its name, decides (no extra scoring passes, no logits needed)."""
    if isinstance(strategy, str):
        strategy = build_strategy(strategy, options)
    elif options:
        raise TypeError(
            f"options {sorted(options)} are for a strategy given by name; set them on the object"
        )
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a Strategy or one of {sorted(STRATEGIES)}, got {type(strategy).__name__}")  # fmt: skip
    if strategy.scoring_passes_per_sample > 0 or strategy.observes_logits:
        need = ("scores samples with extra forward passes" if strategy.scoring_passes_per_sample > 0
                else "needs the logits of what was trained on, which loss() does not see")  # fmt: skip
        fix = (f"use ismod.{strategy.own_loop_adapter}" if strategy.own_loop_adapter
               else "run it under ismod.train.fit")  # fmt: skip
        raise ValueError(
            f"strategy {strategy.name!r} {need}, which a batch sampler cannot do: {fix}"
        )
    return strategy


def _keep_partial_batches(strategy: Strategy, num_replicas: int) -> None:
    """``drop_last=False``: the strategy keeps an epoch's last partial batch, where it can."""
    if not strategy.cuts_epochs_into_batches:
        raise ValueError(
            f"drop_last=False keeps an epoch's last partial batch, which strategy {strategy.name!r} "
            "does not have (it draws whole batches): leave drop_last=True"
        )
    if num_replicas > 1:
        raise ValueError(
            "drop_last=False would give the replicas batches of different sizes: leave "
            "drop_last=True under torch.distributed"
        )
    strategy.keep_partial_batch = True


def _indices_and_weights(strategy: Strategy, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch ``strategy.select`` draws, refused where the strategy asks the step for more than a
    batch sampler gives (its own inputs, or batch-norm statistics other than the batch's own)."""
    selection = Selection.of(strategy.select(step))
    if selection.inputs is not None or selection.norm_inputs is not None or selection.weighted_norm:
        raise ValueError(
            f"strategy {strategy.name!r} asked the step to train on inputs it made, or to normalise "
            "with other batch-norm statistics, which a batch sampler cannot do (your loop runs the "
            "forward pass): run it under ismod.train.fit, or build it with batch_norm='train'"
        )
    return selection.indices, selection.weights


def _whole_batch(losses: torch.Tensor, num_replicas: int) -> torch.Tensor:
    """This replica's ``losses``, or under ``torch.distributed`` every replica's, back in the order of
    the global batch (rank r trained on positions r, r + R, ...)."""
    if num_replicas == 1:
        return losses
    from ..process_group import World

    world = World.current()
    if world is None or world.size != num_replicas:
        raise RuntimeError(f"a sampler with num_replicas={num_replicas} needs an initialised process group of that size")  # fmt: skip
    gathered = world.all_gather_cat(losses.detach().float())
    return gathered.view(num_replicas, -1).t().reshape(-1)


class StrategyBatchSampler(EpochPosition, Sampler[list[int]]):
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
        strategy = _batch_sampler_strategy(strategy, options)
        self.num_items = positive_int("num_items", num_items)
        check_dataset(dataset, self.num_items)
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_epochs = None if num_epochs is None else positive_int("num_epochs", num_epochs)
        self.num_replicas, self.rank = replica_layout(num_replicas, rank)
        self.drop_last = bool(drop_last)
        if not self.drop_last:
            _keep_partial_batches(strategy, self.num_replicas)
        global_batch = self.batch_size * self.num_replicas
        if global_batch > self.num_items:
            raise ValueError(f"batch_size × num_replicas = {global_batch} exceeds num_items = {self.num_items}")  # fmt: skip
        self.strategy = strategy
        self.epoch = 0  # the epoch of the next batch
        self.step = 0
        self._generator = torch.Generator().manual_seed(int(seed))
        cpu = torch.device("cpu")
        strategy.setup(self.num_items, global_batch, cpu, self._generator)
        strategy.set_planned_epochs(self.num_epochs)  # InfoBatch's annealing epoch needs E
        self._pairing = Pairing()
        weakref.finalize(
            self, self._pairing.warn_if_unused
        )  # a one-epoch run that never called loss()
        self._losses = HostCopies()
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
                check_scores(losses, LOSSES_ARGUMENT)
            self.strategy.observe(indices, losses, None)  # type: ignore[arg-type]

    def _set_progress(self, count: int, length: int) -> None:
        """Progress through the run at this step, from the epochs: it reaches 1 at the last step."""
        strategy = self.strategy
        if self.num_epochs is not None:
            within = (count + 1) / length if length > 0 else 0.0
            strategy.progress = min((self.epoch + within) / self.num_epochs, 1.0)
        strategy.set_current_epoch(self.epoch)

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
            resume = {"count": 0, "length": self._begin_epoch(), "pending": []}
            self._next_length = self._before_next = None
        length = resume["length"]

        def draw(count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            self._observe_ready()
            if count or not fresh:  # the first one's progress was set when the epoch began
                self._set_progress(count, length)
            batch = _indices_and_weights(strategy, self.step)
            self.step += 1
            return batch

        yield from self._yield_epoch(resume["count"], length, [tuple(p) for p in resume["pending"]], draw,
                                     lambda batch: batch[0][mine].tolist())  # fmt: skip

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
        losses = checked_losses(losses, indices.numel() // self.num_replicas, "loss()")
        if not losses.is_cuda:  # CUDA losses are checked on their host copy (_observe_ready)
            check_scores(losses.detach(), LOSSES_ARGUMENT)
        self._pairing.done()
        self._losses.put(indices, _whole_batch(losses, self.num_replicas))
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
        return wrapped_state(self, self._identity(), self._saved_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next iteration finishes the interrupted epoch, if any. A state
        made by another sampler class, N, b or method is refused, naming what differs."""
        state = cloned_state(unwrapped_state(self, state, self._identity()))
        require_keys(state, ("strategy", "epoch", "step"), f"{type(self).__name__}.load_state_dict")
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
        num_items: N, the dataset's length.
        batch_size: b per replica.
        method: ``"proportional"`` (:math:`p_i \\propto s_i`) or ``"softmax"``
            (:math:`p_i \\propto e^{s_i/T}`, the report's Algorithm 1).
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
        num_items: N, the dataset's length.
        batch_size: b per replica.
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
        replicas, _ = replica_layout(num_replicas, rank)
        if (
            drop_last is None
        ):  # the authors' sampler keeps the partial batch; replicas need equal ones
            drop_last = replicas > 1
        super().__init__(InfoBatch(prune_ratio, delta), num_items, batch_size, num_epochs=num_epochs,
                         drop_last=drop_last, dataset=dataset, seed=seed, num_replicas=num_replicas,
                         rank=rank)  # fmt: skip
