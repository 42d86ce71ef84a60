"""Katharopoulos & Fleuret's (2018) Algorithm 1: presample, resample, and the τ switch rule (Chapter 5).

While the equivalent batch increment τ is at most the threshold τ_th, train on uniform batches of b
(weights 1) and score that same batch for free, from the logits its forward pass already made, to
update τ. Once τ > τ_th, draw a presample U of B points uniformly, score it without autograd (the
upper bound :math:`\\lVert\\mathrm{softmax}(z_i) - e_{y_i}\\rVert` or the loss), set
:math:`g_i = s_i / \\sum_{j\\in U} s_j`, resample the batch of b from U with replacement with
probabilities g, weight each by :math:`1/(B g_i)`, and update τ from g. Always
:math:`\\tau \\leftarrow a_\\tau\\tau + (1-a_\\tau)\\tau_{new}`, :math:`\\tau_{new} = |U|\\sum_i g_i^2`
(or its square root, as in the authors' library). Katharopoulos & Fleuret (2018), Algorithm 1; slides 8–9.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..bounds import upper_bound_unchecked
from ..sampling import EpochStream, draw_unchecked
from ..tau import switch_threshold
from .base import Selection, Strategy

__all__ = [
    "Presample",
    "PresampleCore",
    "TauSwitch",
    "THRESHOLDS",
    "normalize_scores",
    "check_presample_options",
]

THRESHOLDS: tuple[str, ...] = ("measured", "fixed")
# How an importance step's batch norm is computed: from the trained (importance-drawn) batch, as any
# train-mode step does, or from the uniform presample it was drawn from (ismod.train.normalized_by).
BATCH_NORM_MODES: tuple[str, ...] = ("train", "presample", "weighted")

# On CUDA the phase decision reads τ as it was this many steps ago, so the host never waits for the
# step in flight (the copy of an older value has long finished).
TAU_LAG = 2


def check_presample_options(
    presample: float, score: str, threshold: str | float, tau_momentum: float
) -> None:
    """Raise ``ValueError`` naming the first bad option of Algorithm 1 (shared by the strategy and
    :class:`ismod.adapters.TauSwitchSampler`)."""
    if not (isinstance(presample, (int, float)) and math.isfinite(presample) and presample >= 1):
        raise ValueError(
            f"presample (B as a multiple of the batch size) must be >= 1, got {presample!r}"
        )
    if score not in ("bound", "loss"):
        raise ValueError(f"score must be 'bound' or 'loss', got {score!r}")
    if isinstance(threshold, str):
        if threshold not in THRESHOLDS:
            raise ValueError(
                f"threshold must be one of {THRESHOLDS} or a number, got {threshold!r}"
            )
    elif not (isinstance(threshold, (int, float)) and threshold >= 1):
        raise ValueError(
            f"a numeric threshold must be >= 1, got {threshold!r}: each batch's τ is at least 1, so a "
            "threshold below 1 would switch importance sampling on from the first step"
        )
    if not (isinstance(tau_momentum, (int, float)) and 0 <= tau_momentum < 1):
        raise ValueError(f"tau_momentum must lie in [0, 1), got {tau_momentum!r}")


def switches_on(
    tau: float, tau_threshold: float, batch_size: int, presample_size: int, presample_cap: bool
) -> bool:
    r"""Katharopoulos & Fleuret's rule :math:`\tau > \tau_{th}`, or with ``presample_cap``
    :math:`\tau_{\text{eff}} = 1/(1/\tau + b/B) > \tau_{th}` (what an importance step is worth against the
    full gradient, :func:`ismod.tau.presample_increment`)."""
    if presample_cap:
        if tau <= 0:
            return False
        tau = 1.0 / (1.0 / tau + batch_size / presample_size)
    return tau > tau_threshold


class TauSwitch:
    """The equivalent batch increment τ, smoothed, and the rule that switches importance sampling on.

    :math:`\\tau \\leftarrow a_\\tau\\tau + (1-a_\\tau)\\,B\\sum_i g_i^2` for each scored presample (or uniform
    batch) g; importance sampling is used while :math:`\\tau > \\tau_{th}`. The threshold is
    :math:`(B + 3b)/(3b)` (``"fixed"``: :math:`t_b = 2t_f`), a number, or, once costs are measured
    (``"measured"``), :math:`1 + B t_f/(b(t_f + t_b))` (Katharopoulos & Fleuret 2018, Algorithm 1, §3.3).
    On CUDA the decision reads τ as it was ``TAU_LAG`` updates ago from pinned memory, so the host
    never waits for the device. Shared by the harness's :class:`~ismod.strategies.Presample` and
    :class:`ismod.adapters.TauSwitchSampler`.
    """

    def __init__(self, presample_size: int, batch_size: int, device: torch.device,
                 threshold: str | float = "measured", momentum: float = 0.9, sqrt: bool = False,
                 presample_cap: bool = False) -> None:  # fmt: skip
        self.presample_size, self.batch_size, self.device = presample_size, batch_size, device
        self.presample_cap = bool(presample_cap)
        self.threshold, self.momentum, self.sqrt = threshold, float(momentum), bool(sqrt)
        b, big_b = batch_size, presample_size
        self.fixed_threshold = (big_b + 3 * b) / (3 * b)
        self.tau_threshold = (
            float(threshold) if not isinstance(threshold, str) else self.fixed_threshold
        )
        self.measured_times: tuple[float, float] | None = None
        self.tau = torch.zeros((), dtype=torch.float64, device=device)
        self._ring = [(torch.zeros((), dtype=torch.float64, pin_memory=device.type == "cuda"), None)
                      for _ in range(TAU_LAG + 1)]  # fmt: skip

    def set_step_times(self, forward: float, backward: float) -> None:
        """Measured seconds of a batch's forward and backward pass (``"measured"`` thresholds)."""
        if forward <= 0 or backward <= 0:
            return
        self.measured_times = (forward, backward)
        if self.threshold == "measured":
            b = self.batch_size
            self.tau_threshold = switch_threshold(self.presample_size, b, forward / b, backward / b)

    def update(self, g: torch.Tensor, step: int) -> None:
        """Fold in :math:`\\tau_{new} = |g|\\sum_i g_i^2` (its root with ``sqrt``) of a distribution ``g``
        made at ``step`` (one update a step; the host reads it back ``TAU_LAG`` steps later)."""
        tau_new = g.numel() * (g * g).sum()
        if self.sqrt:
            tau_new = tau_new.sqrt()
        self.tau = self.momentum * self.tau + (1.0 - self.momentum) * tau_new
        slot = step % len(self._ring)
        host, _ = self._ring[slot]
        host.copy_(self.tau, non_blocking=self.device.type == "cuda")
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._ring[slot] = (host, event)

    def switches_on(self, tau: float) -> bool:
        """The rule at a τ the host has read (:func:`switches_on`)."""
        return switches_on(
            tau, self.tau_threshold, self.batch_size, self.presample_size, self.presample_cap
        )

    def tau_for_decision(self, steps: int) -> float:
        """τ as the host may read it without waiting (on CUDA, ``TAU_LAG`` steps old)."""
        if self.device.type != "cuda":
            return float(self.tau)
        host, event = self._ring[(steps - TAU_LAG) % len(self._ring)]
        if event is None:
            return 0.0
        if not event.query():  # rarely: the device is more than TAU_LAG steps behind
            event.synchronize()
        return float(host)

    def ring_values(self) -> list[float]:
        return [float(h) for h, _ in self._ring]

    def restore_ring(self, values: list[float]) -> None:
        for (host, _), value in zip(self._ring, values):
            host.fill_(value)
        # a restored ring counts as settled: mark each slot usable
        if self.device.type == "cuda":
            self._ring = [(h, torch.cuda.Event()) for h, _ in self._ring]
            for _, e in self._ring:
                e.record()


def normalize_scores(scores: torch.Tensor) -> torch.Tensor:
    """:math:`g_i = s_i / \\sum_j s_j` in float64 (uniform when every score is 0), no host sync."""
    s = scores.to(torch.float64).clamp_min(0)
    total = s.sum()
    return torch.where(total > 0, s / total.clamp_min(1e-300), torch.full_like(s, 1.0 / s.numel()))


class PresampleCore:
    """One step of Algorithm 1 (Katharopoulos & Fleuret 2018), shared by the harness's
    :class:`Presample` and :class:`ismod.adapters.TauSwitchSampler`, so the two cannot drift apart.

    - :meth:`importance_next`: whether the next step is an importance step, :math:`\\tau > \\tau_{th}`
      (the :class:`TauSwitch` rule, τ read without waiting for the device);
    - :meth:`scores`: each sample's score, the upper bound
      :math:`\\lVert\\mathrm{softmax}(z_i) - t_i\\rVert` or the loss;
    - :meth:`resample`: from a scored presample of B, :math:`g_i = s_i/\\sum_j s_j` (mixed with uniform
      where ``max_weight`` caps :math:`1/(Bg_i)`), b draws with replacement with probabilities g and
      weights :math:`1/(Bg_i)`, and the τ update from g;
    - :meth:`observe_uniform`: the τ update from a uniform batch's own scores.

    Its state (τ, its lagged copies, the threshold and the measured times) is :meth:`state_dict`.
    """

    def __init__(self, presample_size: int, batch_size: int, device: torch.device, *,
                 score: str = "bound", threshold: str | float = "measured", momentum: float = 0.9,
                 sqrt: bool = False, presample_cap: bool = False,
                 max_weight: float | None = None) -> None:  # fmt: skip
        self.switch = TauSwitch(presample_size, batch_size, device, threshold, momentum, sqrt,
                                presample_cap)  # fmt: skip
        self.presample_size, self.batch_size, self.device = presample_size, batch_size, device
        self.score, self.max_weight = score, max_weight

    def importance_next(self, steps: int) -> bool:
        """Whether step number ``steps`` (updates so far) is an importance step."""
        return self.switch.switches_on(self.switch.tau_for_decision(steps))

    def scores(
        self, logits: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor
    ) -> torch.Tensor:
        """Each sample's score: the bound from the logits, or the loss."""
        return upper_bound_unchecked(logits, targets) if self.score == "bound" else losses.float()

    def capped(self, g: torch.Tensor) -> torch.Tensor:
        """g mixed with uniform just enough that no weight :math:`1/(B g_i)` exceeds ``max_weight``."""
        if self.max_weight is None:
            return g
        n = g.numel()
        floor, smallest = 1.0 / (self.max_weight * n), g.min()
        share = ((floor - smallest) / (1.0 / n - smallest).clamp_min(1e-300)).clamp(0.0, 1.0)
        return (1.0 - share) * g + share / n

    def resample(self, scores: torch.Tensor, generator: torch.Generator | None,
                 step: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Positions of the b draws in the presample, and their weights :math:`1/(Bg_i)` (float64);
        folds g into τ as update number ``step``."""
        g = self.capped(normalize_scores(scores))
        chosen, weights = draw_unchecked(g, self.batch_size, True, generator)
        self.switch.update(g, step)
        return chosen, weights

    def observe_uniform(self, scores: torch.Tensor, step: int) -> None:
        """Fold a uniform batch's own scores into τ as update number ``step``."""
        self.switch.update(normalize_scores(scores), step)

    def state_dict(self) -> dict[str, Any]:
        """τ, its lagged copies, the threshold and the measured forward and backward times."""
        switch = self.switch
        return {"tau": switch.tau, "ring": switch.ring_values(), "tau_threshold": switch.tau_threshold,
                "measured_times": switch.measured_times}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        switch = self.switch
        tau = torch.as_tensor(state["tau"], dtype=torch.float64)
        switch.tau = tau.to(self.device)
        switch.tau_threshold = float(state["tau_threshold"])
        switch.measured_times = state["measured_times"]
        switch.restore_ring(state.get("ring") or [float(tau)] * len(switch.ring_values()))


class Presample(Strategy):
    """Algorithm 1 of Katharopoulos & Fleuret (2018).

    Args:
        presample: B as a multiple of the batch size b (the library's default, B = 3b).
        score: ``"bound"`` (the gradient-norm upper bound) or ``"loss"``.
        threshold: ``"measured"`` — :math:`\\tau_{th} = 1 + B t_f / (b(t_f + t_b))` from the trainer's
            measured forward and backward times (the fixed rule until they arrive); ``"fixed"`` —
            assume :math:`t_b = 2t_f`, :math:`\\tau_{th} = (B + 3b)/(3b)`; or a number.
        tau_momentum: :math:`a_\\tau` (0.9 in the authors' code).
        sqrt: take the square root of τ_new, as the authors' library does (Chapter 5 compares both).
        importance: ``False`` never switches (scores and τ are still tracked): uniform with the τ log.
        weighted: ``False`` trains on the resampled batch with weights 1 instead of :math:`1/(B g_i)`
            (biased toward high scores: the dissection's variant, not the method).
        score_augmented: ``True`` (default) scores a fresh training augmentation of the presample and
            trains on those very images, as the authors' library does; ``False`` scores the clean
            images and trains on a new augmentation of those chosen, so a weight :math:`1/(Bg_i)` can
            meet a gradient its score did not predict — Chapter 5's dissection found this behind the
            importance steps' harm. Mixup and RICAP mix images after the draw: pass ``False`` there.
        presample_cap: switch on when :math:`\\tau_{\\text{eff}} = 1/(1/\\tau + b/B)` exceeds τ_th instead of
            τ: the presample's own variance counted (Chapter 5, §5.6).
        batch_norm: ``"train"`` normalises an importance step's batch with its own statistics, as
            any train-mode step does; ``"presample"`` with those of the uniform presample it was drawn
            from (one more forward pass of the presample), so that a sample's gradient does not depend
            on the skewed batch it was drawn into, and the running statistics move with the presample
            (:func:`ismod.train.normalized_by`; those statistics are held constant, and Chapter 5
            found this network does not train so); ``"weighted"`` with the batch's own statistics
            weighted by its importance weights :math:`1/(Bg_i)`, an estimate of the presample's, with
            gradients through them as in any train-mode step, at no extra cost
            (:func:`ismod.batchnorm.weighted_statistics`; Chapter 5's batch-norm test).
        max_weight: if set (≥ 1), g is mixed with uniform, :math:`g \\leftarrow (1-\\lambda)g + \\lambda/B`
            with the smallest λ that keeps every weight :math:`1/(B g_i)` at or below it (unbiased; τ
            is computed from the mixed g).

    At each evaluation point the summary also gives, over the interval's importance steps,
    ``max_weight`` (the largest weight a step applied) and ``duplicate_fraction`` (the mean share of
    a batch's draws that repeat an index already drawn), or None where the interval had none.
    """

    name = "presample"
    observes_logits = True  # the bound of a uniform batch comes from its own logits
    own_loop_adapter = "TauSwitchSampler"

    @property
    def scoring_passes_per_sample(self) -> float:
        """B/b presample forward passes per trained sample, when every step is an importance step
        (2B/b with ``batch_norm="presample"``: one more pass of the presample, for its statistics)."""
        return self.ratio * (2 if self.batch_norm == "presample" else 1)

    def __init__(self, presample: float = 3.0, score: str = "bound", threshold: str | float = "measured",
                 tau_momentum: float = 0.9, sqrt: bool = False, importance: bool = True, weighted: bool = True,
                 max_weight: float | None = None, score_augmented: bool = True,
                 presample_cap: bool = False, batch_norm: str = "train") -> None:  # fmt: skip
        check_presample_options(presample, score, threshold, tau_momentum)
        for name, flag in (
            ("weighted", weighted),
            ("score_augmented", score_augmented),
            ("presample_cap", presample_cap),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, got {flag!r}")
        self.score_augmented, self.presample_cap = score_augmented, presample_cap
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {BATCH_NORM_MODES}, got {batch_norm!r}")
        if batch_norm == "presample" and not score_augmented:
            raise ValueError("batch_norm='presample' takes its statistics from the augmented presample it "
                             "scores: it needs score_augmented=True")  # fmt: skip
        if batch_norm == "weighted" and not weighted:
            raise ValueError("batch_norm='weighted' weights the batch's statistics by its importance weights: "
                             "it needs weighted=True")  # fmt: skip
        self.batch_norm = batch_norm
        if max_weight is not None and not (
            isinstance(max_weight, (int, float)) and max_weight >= 1
        ):
            raise ValueError(f"max_weight must be None or a number >= 1 (a weight 1/(B g) of uniform g is 1), got {max_weight!r}")  # fmt: skip
        self.weighted, self.max_weight = weighted, None if max_weight is None else float(max_weight)
        self.ratio, self.score, self.threshold = float(presample), score, threshold
        self.tau_momentum, self.sqrt, self.importance = (
            float(tau_momentum),
            bool(sqrt),
            bool(importance),
        )

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        self.presample_size = round(self.ratio * batch_size)
        if self.presample_size > num_items:
            raise ValueError(
                f"presample B = {self.presample_size} exceeds the {num_items} training samples"
            )
        if score_fn is None or labels is None:
            raise ValueError("Presample needs score_fn and labels; run it under ismod.train.fit")
        self.core = PresampleCore(self.presample_size, batch_size, device, score=self.score,
                                  threshold=self.threshold, momentum=self.tau_momentum, sqrt=self.sqrt,
                                  presample_cap=self.presample_cap, max_weight=self.max_weight)  # fmt: skip
        self.stream = EpochStream(
            lambda _: torch.randperm(num_items, device=device, generator=generator), device
        )
        self.steps = 0
        self.importance_steps = 0
        self.switch_step: int | None = None
        self.visits = torch.zeros(num_items, dtype=torch.long, device=device)
        self.log: list[torch.Tensor] = []
        self.log_every = max(1, num_items // batch_size // 25)  # about 25 τ points per epoch
        self._last_was_uniform = False
        self._pending_log: int | None = None  # the step whose τ observe() should log
        self._fresh_interval()

    def _fresh_interval(self) -> None:
        # the instrumentation of the importance steps since the last summary, kept on the device
        self.interval_max_weight = torch.zeros((), dtype=torch.float64, device=self.device)
        self.interval_duplicates = torch.zeros((), dtype=torch.float64, device=self.device)
        self.interval_importance_steps = 0

    # τ, its threshold and the measured times live in the shared core's switch
    @property
    def switch(self) -> TauSwitch:
        return self.core.switch

    @property
    def tau(self) -> torch.Tensor:
        return self.switch.tau

    @tau.setter
    def tau(self, value: torch.Tensor) -> None:
        self.switch.tau = value

    @property
    def tau_threshold(self) -> float:
        return self.switch.tau_threshold

    @property
    def fixed_threshold(self) -> float:
        return self.switch.fixed_threshold

    @property
    def measured_times(self) -> tuple[float, float] | None:
        return self.switch.measured_times

    def capped(self, g: torch.Tensor) -> torch.Tensor:
        """:meth:`~ismod.strategies.presample.PresampleCore.capped`."""
        return self.core.capped(g)

    # --- the strategy ------------------------------------------------------------------------------

    def set_step_times(self, forward: float, backward: float) -> None:
        self.switch.set_step_times(forward, backward)

    def select(self, step: int) -> Selection:
        b = self.batch_size
        use_importance = self.importance and self.core.importance_next(self.steps)
        inputs = norm_inputs = None  # the scored inputs to train on, from an augmented presample
        if not use_importance:
            self._last_was_uniform = True
            idx, weights = self.stream.take(b), None
        else:
            self._last_was_uniform = False
            presample = self.stream.take(self.presample_size)
            scored = None
            if self.score_augmented:  # the authors' library trains on the images it scored
                losses, logits, scored = self.score_fn(presample, augmented=True)
            else:
                losses, logits = self.score_fn(presample)
            scores = self.core.scores(logits, self.labels[presample], losses)
            chosen, weights = self.core.resample(scores, self.generator, self.steps)  # 1/(B g_i)
            weights = (
                weights.float() if self.weighted else torch.ones_like(weights, dtype=torch.float32)
            )
            idx = presample[chosen]
            inputs = None if scored is None else (scored[0][chosen], scored[1][chosen])
            norm_inputs = (
                scored[0] if self.batch_norm == "presample" and scored is not None else None
            )
            self._instrument(chosen, weights)
            self.importance_steps += 1
            if self.switch_step is None:
                self.switch_step = step
        if step % self.log_every == 0:
            self._pending_log = step
        return Selection(idx, weights, inputs, norm_inputs,
                         weighted_norm=use_importance and self.batch_norm == "weighted")  # fmt: skip

    def _instrument(self, chosen: torch.Tensor, weights: torch.Tensor) -> None:
        drawn = torch.zeros(self.presample_size, dtype=torch.float64, device=self.device)
        drawn.index_fill_(0, chosen, 1.0)
        self.interval_duplicates += 1.0 - drawn.sum() / chosen.numel()
        self.interval_max_weight = torch.maximum(self.interval_max_weight, weights.max().double())
        self.interval_importance_steps += 1

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        if self._last_was_uniform:  # score the uniform batch for free, from its own forward pass
            self.core.observe_uniform(
                self.core.scores(logits, self.labels[indices], losses), self.steps
            )
        self.visits.index_add_(0, indices, torch.ones_like(indices))
        pending = self._pending_log
        if pending is not None:
            phase = 0.0 if self._last_was_uniform else 1.0
            self.log.append(torch.stack([torch.tensor(float(pending), dtype=torch.float64, device=self.device),
                                         self.tau, torch.tensor(phase, dtype=torch.float64, device=self.device)]))  # fmt: skip
            self._pending_log = None
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        rows = torch.stack(self.log).cpu().tolist() if self.log else []
        self.log = []
        out: dict[str, Any] = {
            "tau": float(self.tau), "tau_threshold": self.tau_threshold, "fixed_threshold": self.fixed_threshold,
            "importance_steps": self.importance_steps, "steps": self.steps, "switch_step": self.switch_step,
            "tau_log": [[int(r[0]), r[1], int(r[2])] for r in rows],
        }  # fmt: skip
        count = self.interval_importance_steps
        out["max_weight"] = float(self.interval_max_weight) if count else None
        out["duplicate_fraction"] = float(self.interval_duplicates) / count if count else None
        self._fresh_interval()
        if self.measured_times is not None:
            out["t_forward"], out["t_backward"] = self.measured_times
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "tau": self.tau, "tau_threshold": self.tau_threshold, "measured_times": self.measured_times,
            "stream": self.stream.order, "stream_position": self.stream.position, "steps": self.steps,
            "importance_steps": self.importance_steps, "switch_step": self.switch_step, "visits": self.visits,
            "log": list(self.log), "ring": self.switch.ring_values(),
            "interval": (self.interval_max_weight, self.interval_duplicates, self.interval_importance_steps),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.switch.tau = state["tau"].to(self.device)
        self.switch.tau_threshold = float(state["tau_threshold"])
        self.switch.measured_times = state["measured_times"]
        self.stream.order = state["stream"].to(self.device)
        self.stream.position = int(state["stream_position"])
        self.steps, self.importance_steps = int(state["steps"]), int(state["importance_steps"])
        self.switch_step = state["switch_step"]
        self.visits = state["visits"].to(self.device)
        self.log = [t.to(self.device) for t in state["log"]]
        self.switch.restore_ring(state["ring"])
        if "interval" in state:  # absent from checkpoints written before the instrumentation
            max_weight, duplicates, count = state["interval"]
            self.interval_max_weight, self.interval_duplicates = (
                max_weight.to(self.device),
                duplicates.to(self.device),
            )
            self.interval_importance_steps = int(count)
