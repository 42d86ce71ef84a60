"""Katharopoulos & Fleuret's (2018) presampling with the τ switch in your own loop:
:class:`TauSwitchSampler`, over the same :class:`~ismod.strategies.presample.PresampleCore` as the
harness's ``Presample``."""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler

from ..batchnorm import weighted_statistics
from ..process_group import replica_layout
from ..sampling import EpochStream
from ..strategies.presample import (
    TAU_LAG,
    PresampleCore,
    TauSwitch,
    check_presample_options,
    switches_on,
)
from ..train import PerSampleLoss, cross_entropy_loss, per_sample_losses
from ._common import (
    HostScoreCheck,
    Logits,
    check_batch,
    check_dataset,
    check_logits_option,
    check_replicated,
    cloned_state,
    pick_logits,
    positive_int,
    require_keys,
    score_without_grad,
    unwrapped_state,
    wrapped_state,
)
from ._epochs import EpochPosition, Pairing

# Calls of TauSwitchSampler.loss, on uniform steps, whose batch also times a forward and a backward
# pass for threshold="measured": the median of the five sets τ_th once.
_PROBE_CALLS = range(10, 15)

# How an importance step in one's own loop can normalise its batch (TauSwitchSampler's batch_norm);
# "auto" takes no importance step on a network with batch norm (Chapter 5c's batch-norm test).
OWN_LOOP_BATCH_NORM: tuple[str, ...] = ("auto", "train", "weighted")


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch-norm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, lazy ones)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Times a forward pass without autograd and a backward pass of a batch, in inference mode on the
    unwrapped module with the gradients returned rather than accumulated, so training is untouched;
    after ``probes`` of them, the medians are the machine's step times (``threshold="measured"``).
    Each probe synchronises with the device four times."""

    def __init__(self, probes: int) -> None:
        self.wanted = probes
        self.probes: list[tuple[float, float]] = []  # (forward, backward) seconds of a batch

    @property
    def done(self) -> bool:
        return len(self.probes) >= self.wanted

    def time_step(self, switch: TauSwitch, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  loss_fn: PerSampleLoss, logits: Logits) -> None:  # fmt: skip
        """Probe this batch, unless every probe is in; the last probe sets ``switch``'s step times to the
        medians."""
        if self.done:
            return
        times = self.probe(model, x, y, loss_fn, logits)
        if times is not None:
            switch.set_step_times(*times)

    def probe(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: PerSampleLoss,
              logits: Logits) -> tuple[float, float] | None:  # fmt: skip
        """Time one batch; the median (forward, backward) seconds once the last probe is in, else None."""
        module = getattr(model, "module", model)  # DDP's hooks expect a real backward
        was_training = module.training
        module.eval()
        try:
            _synchronize(x.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                module(x)
            _synchronize(x.device)
            t1 = time.perf_counter()
            loss = per_sample_losses(loss_fn, pick_logits(module(x), logits, "loss()"), y).mean()
            _synchronize(x.device)
            t2 = time.perf_counter()
            torch.autograd.grad(loss, [p for p in module.parameters() if p.requires_grad])
            _synchronize(x.device)
            t3 = time.perf_counter()
        finally:
            module.train(was_training)
        self.probes.append((t1 - t0, t3 - t2))
        if not self.done:
            return None
        return statistics.median(f for f, _ in self.probes), statistics.median(
            b for _, b in self.probes
        )


class TauSwitchSampler(EpochPosition, Sampler[list[int]]):
    """Katharopoulos & Fleuret's (2018) upper-bound presampling with the τ switch, in your own loop.

    While :math:`\\tau \\le \\tau_{th}` the sampler yields uniform batches of b and :meth:`loss` trains on
    them, scoring each batch for free from its own logits to update τ. Once :math:`\\tau > \\tau_{th}`
    it yields presamples of B; :meth:`loss` scores them without autograd (the upper bound
    :math:`\\lVert\\mathrm{softmax}(z_i) - t_i\\rVert`, hard or soft targets), draws b of them with
    replacement with :math:`g_i \\propto` score and returns the mean of :math:`L_i/(B g_i)` over the b.
    The same :class:`~ismod.strategies.presample.PresampleCore` (score, draw, τ update) as the
    harness's ``Presample``.

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

    **Why no importance step under batch norm by default.** The method's variance reduction assumes
    that a sample's gradient does not depend on the batch it is drawn into. A train-mode batch-norm
    layer breaks that: an importance batch is skewed towards high scores, so its statistics, and
    every gradient through them, differ from a uniform batch's. In Chapter 5c's batch-norm test (cpu
    scale, a small convolutional network on CIFAR-10, 5 seeds an arm, b = 64, B = 6b, importance
    steps throughout) importance batches normalised by their own statistics ended with a higher
    training loss than uniform batches in every seed without augmentation; with crop and flip the
    test could not tell their training losses apart, and they ended about a point lower in test
    accuracy in every seed. Weighting the statistics did worse: several of its runs collapsed when
    one heavy weight took over a batch's statistics. The same network with GroupNorm in place of
    batch norm ended with a lower training loss than uniform in every seed of both regimes. If your
    batch-norm layers are frozen (eval mode throughout), or you want the authors' behaviour, pass
    ``batch_norm="train"``; to use the method, replace the layers
    (:func:`ismod.models.replace_batch_norm` with ``"group"``), and check that the replacement costs
    your network less than the steps save (it did not here: Chapter 5c).

    Args:
        model: the network, returning logits (its last layer linear, for the bound).
        num_items: N, the dataset's length.
        batch_size: b, the samples each step trains on.
        presample: B as a multiple of b (the authors' default 3).
        score: ``"bound"`` or ``"loss"`` (for losses other than softmax cross-entropy).
        threshold: ``"fixed"``, ``"measured"`` or a number.
        tau_momentum: :math:`a_\\tau`, the momentum of τ's running average (0.9 in the authors' code).
        sqrt: the authors' library's square root of τ (Chapter 5 shows the bound fits better without).
        presample_cap: switch on when :math:`\\tau_{\\text{eff}} = 1/(1/\\tau + b/B)` exceeds τ_th, not τ
            (Chapter 5, §5.6: the presample's own variance caps what a step is worth).
        batch_norm: what an importance step does about batch norm. ``"auto"`` (default): on a model
            with a batch-norm layer the sampler never switches (it keeps yielding uniform batches and
            tracking τ) and warns once; on a model without one, importance steps run as the authors'
            method. ``"train"`` switches anyway and normalises the b drawn samples with their own
            statistics (PyTorch's train mode, the authors' library); ``"weighted"`` with statistics
            weighted by the importance weights (:func:`ismod.batchnorm.weighted_statistics`).
            Uniform steps are plain in every mode.
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
        batch_norm: str = "auto",
        loss_fn: PerSampleLoss | None = None,
        logits: Logits = None,
        dataset: Any = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.num_items = positive_int("num_items", num_items)
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_replicas, self.rank = replica_layout(num_replicas, rank)
        self.shard_size = -(-self.num_items // self.num_replicas)
        self.presample_size = round(presample * self.batch_size)
        _check_arguments(model, dataset, self, presample, score, threshold, tau_momentum,
                         presample_cap, batch_norm)  # fmt: skip
        self.batch_norm = batch_norm
        # False: "auto" on a network with batch norm, whose importance batches trained worse than
        # uniform ones in Chapter 5c's test (see the class docstring)
        self.importance_allowed = batch_norm != "auto" or not has_batch_norm(model)
        if not self.importance_allowed:
            warnings.warn(
                "TauSwitchSampler: the model has batch-norm layers, so batch_norm='auto' trains on "
                "uniform batches only (the class docstring says why). To use the method, use "
                "ismod.models.replace_batch_norm(model, 'group'), or pass batch_norm='train'.",
                stacklevel=2,
            )
        self.model, self.score, self.loss_fn = model, score, loss_fn or cross_entropy_loss()
        self.logits = check_logits_option(logits)
        self.threshold, self.tau_momentum, self.sqrt = threshold, float(tau_momentum), bool(sqrt)
        self.presample_cap = presample_cap
        self.seed, self.epoch = int(seed), 0
        self.core: PresampleCore | None = None  # made at the first loss(), on the tensors' device
        self.calls = 0
        self.importance_steps = 0
        self.last_logits: torch.Tensor | None = None  # of the samples trained on at the last step
        self.last_targets: torch.Tensor | None = None
        self.timer = StepTimer(len(_PROBE_CALLS))
        # each epoch's permutations seeded by (seed, epoch, pass), this replica's share of each
        self._stream = EpochStream(self._permutation)
        self._generator: torch.Generator | None = None
        self._pairing = Pairing()
        weakref.finalize(
            self, self._pairing.warn_if_unused
        )  # a one-epoch run that never called loss()
        self._iterated = False  # loss() pairs its batch with a yielded one once the loader iterates
        self._check = HostScoreCheck("loss() scores")
        self._in_epoch: dict[str, int] | None = None
        self._resume: dict[str, Any] | None = None
        self._restored: dict[str, Any] | None = None

    # --- what the loader loads -----------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Seed the next epoch's permutations with ``seed + epoch`` (as ``DistributedSampler``)."""
        self._set_epoch(epoch)

    def _permutation(self, refill: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch + refill)
        return torch.randperm(self.num_items, generator=gen)[self.rank :: self.num_replicas]

    @property
    def switch(self) -> TauSwitch | None:
        """The τ switch (None until the first :meth:`loss`)."""
        return None if self.core is None else self.core.switch

    def importance_on(self) -> bool:
        """Whether the next batch is a presample: τ (as the host can read it without waiting) > τ_th,
        and importance steps allowed (never with ``batch_norm="auto"`` on a batch-normalised model)."""
        if not self.importance_allowed:
            return False
        if self.core is None and self._restored is not None:  # resumed, before the first loss()
            return _saved_switch_on(self._restored, self.calls, self.batch_size, self.presample_size,
                                    self.presample_cap)  # fmt: skip
        return self.core is not None and self.core.importance_next(self.calls)

    def _batches(self) -> Iterator[list[int]]:
        self._iterated = True
        self._pairing.warn_if_unused()
        resume, self._resume = self._resume, None
        self._pairing.new_epoch(self.epoch)
        self._iteration_over = False
        if resume is None:
            self._stream.restart()  # a fresh permutation
            resume = {"count": 0, "length": len(self), "pending": []}

        def draw(count: int) -> list[int]:
            size = self.presample_size if self.importance_on() else self.batch_size
            return self._stream.take(size).tolist()

        yield from self._yield_epoch(
            resume["count"], resume["length"], resume["pending"], draw, list
        )

    def __len__(self) -> int:
        return self.shard_size // self.batch_size

    # --- the step ------------------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward ``x`` (a uniform batch or a presample, as yielded) and return the loss to backpropagate."""
        check_batch(x, y, "loss()")
        paired = self._iterated  # a sampler never iterated scores batches of the caller's own
        batch = self._pairing.take() if paired else list(range(x.shape[0]))
        if paired and x.shape[0] != len(batch):
            raise ValueError(
                f"loss() got {x.shape[0]} samples but the sampler yielded a batch of {len(batch)}: pass "
                "each batch the loader returns, whole and in order"
            )
        if self.core is None:
            self.core = PresampleCore(self.presample_size, self.batch_size, x.device, score=self.score,
                                      threshold=self.threshold, momentum=self.tau_momentum,
                                      sqrt=self.sqrt, presample_cap=self.presample_cap)  # fmt: skip
            self._generator = torch.Generator(device=x.device).manual_seed(
                self.seed + 7919 * self.rank
            )
            self._restore()
        core = self.core
        step, b = self.calls, self.batch_size
        if x.shape[0] > b and not self.importance_allowed:
            raise ValueError(
                f"loss() got {x.shape[0]} samples, more than batch_size {b}, but this sampler takes no "
                "importance step (batch_norm='auto' on a model with batch norm): pass batches of "
                "batch_size, or batch_norm='train' to allow presamples"
            )
        if x.shape[0] > b:  # a presample: score, resample b, weight 1/(B g)
            logits, losses = score_without_grad(self.model, x, y, self.loss_fn, self.logits)
            scores = core.scores(logits, y, losses)
            self._check(scores)
            chosen, weights = core.resample(scores, self._generator, step)  # 1/(B g_i)
            x, y = x[chosen], y[chosen]
            with (weighted_statistics(self.model, weights) if self.batch_norm == "weighted"
                  else contextlib.nullcontext()):  # fmt: skip
                logits = pick_logits(self.model(x), self.logits, "loss()")
            loss = (
                weights.to(logits.device, torch.float32)
                * per_sample_losses(self.loss_fn, logits, y)
            ).mean()
            self.importance_steps += 1
        else:
            if self.threshold == "measured" and step in _PROBE_CALLS:
                self.timer.time_step(core.switch, self.model, x, y, self.loss_fn, self.logits)
            logits = pick_logits(self.model(x), self.logits, "loss()")
            losses = per_sample_losses(self.loss_fn, logits, y)
            scores = core.scores(logits.detach(), y, losses.detach())
            self._check(scores)
            core.observe_uniform(scores, step)
            loss = losses.mean()
        if paired:
            self._pairing.done()
        self.last_logits, self.last_targets = logits.detach(), y
        self.calls += 1
        self._end_epoch_if_done()
        return loss

    @property
    def probes(self) -> list[tuple[float, float]]:
        """The (forward, backward) seconds of each timing probe so far (``threshold="measured"``)."""
        return self.timer.probes

    @property
    def tau(self) -> float:
        """The current τ, a running mean of each batch's τ (each at least 1) with momentum
        ``tau_momentum``, started at 0 as in the authors' library: it reads below 1 for the first few
        dozen steps while it rises (synchronises on CUDA; for logging)."""
        return 0.0 if self.core is None else float(self.core.switch.tau)

    @property
    def tau_threshold(self) -> float:
        if self.core is None:
            return (self.presample_size + 3 * self.batch_size) / (3 * self.batch_size)
        return self.core.switch.tau_threshold

    def _identity(self) -> dict[str, Any]:
        return {"num_items": self.num_items, "batch_size": self.batch_size,
                "presample_size": self.presample_size, "num_replicas": self.num_replicas,
                "importance_allowed": self.importance_allowed}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state: its class, N, b, B, replicas and whether it takes importance steps
        (checked on load), and, read when the
        state is saved or copied, τ and its lagged copies, the threshold and probes, the counters, the
        permutation, the resampling generator and the epoch in progress (batches yielded but not yet
        trained on). Costs O(1), as ``StatefulDataLoader`` calls it at every prefetch: save or copy it
        at the checkpoint (see :meth:`StrategyBatchSampler.state_dict`)."""
        return wrapped_state(self, self._identity(), self._saved_state)

    def _saved_state(self) -> dict[str, Any]:
        self._check.raise_if_bad(wait=True)
        return {
            **_switch_state(self.core, self._generator, self._restored), **_stream_state(self._stream),
            "calls": self.calls, "importance_steps": self.importance_steps, "epoch": self.epoch,
            "probes": list(self.timer.probes), "in_epoch": self._epoch_state(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; τ takes effect at the next :meth:`loss` (on its device), and the
        next iteration finishes the interrupted epoch, if any. A state made by another sampler class, N,
        b, B or number of replicas is refused, naming what differs."""
        state = cloned_state(unwrapped_state(self, state, self._identity()))
        require_keys(
            state, ("tau", "calls", "importance_steps", "epoch"), "TauSwitchSampler.load_state_dict"
        )
        _load_stream(self._stream, state, len(range(self.rank, self.num_items, self.num_replicas)))
        self.calls, self.importance_steps = int(state["calls"]), int(state["importance_steps"])
        self.epoch = int(state["epoch"])
        self.timer.probes = [tuple(p) for p in state.get("probes", [])]
        self._resume = state.get("in_epoch")
        self._in_epoch = None
        self._pairing.new_epoch(self.epoch)
        self._restored = state if state["tau"] is not None else None
        if self.core is not None and self._restored is not None:
            self._restore()

    def _restore(self) -> None:
        state, core = self._restored, self.core
        if state is None or core is None:
            return
        core.load_state_dict(state)
        if state.get("generator") is not None and self._generator is not None:
            self._generator.set_state(state["generator"])
        self._restored = None


def _check_arguments(model: Any, dataset: Any, sampler: TauSwitchSampler, presample: float, score: str,
                     threshold: Any, tau_momentum: float, presample_cap: Any, batch_norm: Any) -> None:  # fmt: skip
    """TauSwitchSampler's arguments, each refused with an error naming it and the fix."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_dataset(dataset, sampler.num_items)
    check_presample_options(presample, score, threshold, tau_momentum)
    check_replicated(model)
    if sampler.presample_size > sampler.shard_size:
        raise ValueError(f"presample B = {sampler.presample_size} exceeds the {sampler.shard_size} samples of a replica")  # fmt: skip
    if not isinstance(presample_cap, bool):
        raise ValueError(f"presample_cap must be True or False, got {presample_cap!r}")
    if batch_norm not in OWN_LOOP_BATCH_NORM:
        raise ValueError(f"batch_norm must be one of {OWN_LOOP_BATCH_NORM}, got {batch_norm!r} (the "
                         "presample's statistics, 'presample', need ismod.train.fit)")  # fmt: skip


# The τ switch's part of a saved TauSwitchSampler state.
_SWITCH_KEYS = ("tau", "ring", "tau_threshold", "measured_times", "generator", "device_type")


def _switch_state(core: PresampleCore | None, generator: torch.Generator | None,
                  restored: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The switch's state: as loaded while not yet applied (the core is made at the first loss(), on
    the tensors' device), empty before the first loss(), else the core's and the resampling generator's."""
    if restored is not None:
        return {k: restored.get(k) for k in _SWITCH_KEYS}
    if core is None:
        return dict.fromkeys(_SWITCH_KEYS)
    return {**core.state_dict(), "generator": None if generator is None else generator.get_state(),
            "device_type": core.device.type}  # fmt: skip


def _saved_switch_on(saved: dict[str, Any], calls: int, batch_size: int, presample_size: int,
                     presample_cap: bool) -> bool:  # fmt: skip
    """Whether a loaded switch state, not yet applied, makes the next batch a presample: τ as the core
    would read it at call ``calls`` (on CUDA the lagged copy, as ``tau_for_decision``)."""
    ring = saved["ring"]
    tau = (
        ring[(calls - TAU_LAG) % len(ring)]
        if saved.get("device_type") == "cuda"
        else float(saved["tau"])
    )
    return switches_on(tau, saved["tau_threshold"], batch_size, presample_size, presample_cap)


def _stream_state(stream: EpochStream) -> dict[str, Any]:
    return {"stream": stream.order, "stream_position": stream.position, "passes": stream.refills}


def _load_stream(stream: EpochStream, state: dict[str, Any], share: int) -> None:
    """Restore :func:`_stream_state` (absent from older states), refusing a permutation that is not
    this replica's ``share`` of the items."""
    if "stream" not in state:
        return
    if state["stream"].numel() not in (0, share):
        raise ValueError(
            f"TauSwitchSampler.load_state_dict: the state's permutation has {state['stream'].numel()} "
            f"items, this replica's share of num_items {share}: build the sampler with the saved run's "
            "num_items and num_replicas"
        )
    stream.order = state["stream"]
    stream.position, stream.refills = int(state["stream_position"]), int(state["passes"])
