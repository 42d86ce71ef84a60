"""Strategies driven by per-sample scores learnt from the training losses (Chapter 3).

- :class:`LossSampling`: the loss-sampling report's Algorithm 1 (last-loss or running-loss scores,
  warm-up epochs, a distribution over all N scores, a subset Z per epoch, weights :math:`1/(N p_i)`),
  with the variants that address its drift to uniform (temperature, proportional scores with
  smoothing, draws with replacement).
- :class:`OnlineBatchSelection`: Loshchilov & Hutter (2015), rank-based probabilities with an annealed
  selection pressure.
- :class:`PrioritizedReplay`: Schaul et al. (2015), :math:`P \\propto s^\\alpha`, weights
  :math:`(N P)^{-\\beta}` normalised by their maximum, :math:`\\beta` annealed to 1.
- :class:`StaleBoundSampling`: Katharopoulos & Fleuret's (2018) upper bound as the score, taken free
  from the training step and kept over all N, drawn from a defensive mixture with uniform.

All keep their state in tensors on the training device; a step never waits for the device. Each logs,
once per epoch, how far its distribution is from uniform (:func:`ismod.diagnostics.distribution_stats`)
and the quantiles of its scores; :meth:`ScoredStrategy.summary` hands the log to the result history.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..bounds import upper_bound_unchecked
from ..diagnostics import STAT_NAMES, coverage, distribution_stats
from ..sampling import METHODS, SumTree, draw_unchecked, unnormalized_masses
from .base import Selection, Strategy

__all__ = [
    "ScoredStrategy",
    "LossSampling",
    "OnlineBatchSelection",
    "PrioritizedReplay",
    "StaleBoundSampling",
    "SCORE_QUANTILES",
]

# Levels at which score quantiles are logged each epoch (the report's Appendix B figures).
SCORE_QUANTILES: tuple[float, ...] = tuple(i / 20 for i in range(21))


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}"
        )
    return float(value)


def check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 <= value < 1):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def score_probabilities(
    scores: torch.Tensor, method: str, temperature: float, smoothing: float, pressure: float = 100.0
) -> torch.Tensor:
    """:func:`ismod.sampling.probabilities` without validation or host synchronisation (float64).

    All-zero scores (nothing observed yet) give the uniform distribution, for every method."""
    s = scores.to(torch.float64)
    masses = unnormalized_masses(s, method, temperature, pressure, s.max().clamp_min(1e-30))
    total = masses.sum()
    p = torch.where(
        total > 0, masses / total.clamp_min(1e-300), torch.full_like(masses, 1.0 / s.numel())
    )
    return (1.0 - smoothing) * p + smoothing / s.numel() if smoothing else p


class ScoredStrategy(Strategy):
    """Shared machinery: a score per sample updated from observed losses, visit counts, uniform
    warm-up epochs, and the per-epoch diagnostics log.

    Args:
        score: ``"last"`` (:math:`S_i = L_i`, the loss when ``i`` was last trained on) or ``"running"``
            (:math:`S_i \\leftarrow \\beta S_i + (1-\\beta) L_i`). Scores start at 0.
        beta: the running-loss weight :math:`\\beta` (the report uses 0.2).
        warmup_epochs: epochs of uniform shuffled passes over all N samples that only record scores.

    ``observe`` does not validate its losses: a user's losses reach a strategy through the in-loop
    samplers (:mod:`ismod.adapters`), which refuse NaN, infinite and negative values with
    :func:`ismod.sampling.check_scores`; under the harness the losses are ismod's own cross-entropy,
    and a non-finite one is a divergence, which the trainer records as a result (Chapter 3) rather than
    raises.
    """

    name = "scored"
    # Keep an epoch's last partial batch (a DataLoader's drop_last=False; the in-loop samplers set it).
    keep_partial_batch: bool = False

    def __init__(self, score: str = "last", beta: float = 0.2, warmup_epochs: int = 0) -> None:
        if score not in ("last", "running"):
            raise ValueError(f"score must be 'last' or 'running', got {score!r}")
        if not (isinstance(beta, (int, float)) and 0 <= beta <= 1):
            raise ValueError(f"beta (the running-loss weight) must lie in [0, 1], got {beta!r}")
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ValueError(f"warmup_epochs must be a non-negative integer, got {warmup_epochs!r}")
        self.score, self.beta, self.warmup_epochs = score, float(beta), warmup_epochs

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        self.scores = torch.zeros(num_items, device=device)
        self.visits = torch.zeros(num_items, dtype=torch.long, device=device)
        self.epochs_started = 0
        self.queue = torch.empty(0, dtype=torch.long, device=device)
        self.queue_weights: torch.Tensor | None = None
        self.position = 0
        self._in_warmup_queue = True
        self.log: list[torch.Tensor] = []

    # --- what subclasses define ------------------------------------------------------------------

    def probabilities(self) -> torch.Tensor:
        """The distribution the strategy samples from now (float64, length N)."""
        raise NotImplementedError

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The indices (and weights) of the next epoch after warm-up, in training order; logs the
        distribution it uses. By default a uniform pass, for strategies that draw in ``per_step``
        (its length only sets when the next log entry is due)."""
        self.log_distribution(step, self.probabilities())
        return self._uniform_epoch()

    def per_step(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Strategies that draw every step return the batch here; ``None`` means use the epoch queue."""
        return None

    # --- the loop --------------------------------------------------------------------------------

    @property
    def warming_up(self) -> bool:
        """Whether the current epoch is a uniform warm-up epoch."""
        return self._in_warmup_queue

    def _whole_batches(self, count: int) -> int:
        """How many of ``count`` queued samples an epoch trains on."""
        return count if self.keep_partial_batch else count // self.batch_size * self.batch_size

    def _uniform_epoch(self) -> tuple[torch.Tensor, None]:
        perm = torch.randperm(self.num_items, device=self.device, generator=self.generator)
        return perm[: self._whole_batches(self.num_items)], None

    def _in_batches(
        self, indices: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A drawn subset shuffled into whole batches (a last partial batch is dropped, unless
        ``keep_partial_batch``)."""
        order = torch.randperm(indices.numel(), device=self.device, generator=self.generator)[
            : self._whole_batches(indices.numel())
        ]
        return indices[order], (None if weights is None else weights[order])

    def start_epoch(self, step: int) -> None:
        """Draw the next epoch's queue now (a uniform one while warming up), as the first
        :meth:`select` after the current queue runs out would: a batch sampler calls it before an epoch,
        so that the epoch's length is known before its first batch."""
        self._in_warmup_queue = self.epochs_started < self.warmup_epochs
        if self._in_warmup_queue:
            self.queue, self.queue_weights = self._uniform_epoch()
        else:
            self.queue, self.queue_weights = self.epoch_queue(step)
        self.position = 0
        self.epochs_started += 1

    def epochs_done(self) -> float:
        """Epochs started, less the part of the current one still queued (host integers: no sync)."""
        if self.epochs_started == 0:
            return 0.0
        return self.epochs_started - 1 + min(self.position / max(self.queue.numel(), 1), 1.0)

    def select(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.batch_size
        queued = self.queue.numel()
        if self.position >= queued or (self.position + b > queued and not self.keep_partial_batch):
            self.start_epoch(step)
        if not self._in_warmup_queue:
            drawn = self.per_step()
            if drawn is not None:
                self.position += b
                return drawn
        start, self.position = self.position, self.position + b
        weights = None if self.queue_weights is None else self.queue_weights[start : start + b]
        return self.queue[start : start + b], weights

    def update_scores(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        new = losses.to(self.scores.dtype)
        if self.score == "running":
            new = self.beta * self.scores[indices] + (1.0 - self.beta) * new
        self.scores.index_put_((indices,), new)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        self.update_scores(indices, losses)
        self.visits.index_add_(0, indices, torch.ones_like(indices))

    # --- diagnostics -----------------------------------------------------------------------------

    def log_distribution(self, step: int, probs: torch.Tensor) -> None:
        """Append ``[step, *distribution_stats(probs), *score quantiles]`` to the log (no sync)."""
        levels = torch.tensor(SCORE_QUANTILES, dtype=torch.float64, device=self.device)
        quantiles = torch.quantile(self.scores.to(torch.float64), levels)
        head = torch.tensor([float(step)], dtype=torch.float64, device=self.device)
        self.log.append(torch.cat([head, distribution_stats(probs), quantiles]))

    def summary(self) -> dict[str, Any]:
        rows = torch.stack(self.log).cpu().tolist() if self.log else []
        self.log = []
        k = len(STAT_NAMES)
        entries = [
            {
                "step": int(r[0]),
                **dict(zip(STAT_NAMES, r[1 : 1 + k])),
                "score_quantiles": r[1 + k :],
            }
            for r in rows
        ]
        return {**coverage(self.visits), "sampling": entries}

    def state_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores, "visits": self.visits, "epochs_started": self.epochs_started,
            "queue": self.queue, "queue_weights": self.queue_weights, "position": self.position,
            "in_warmup_queue": self._in_warmup_queue, "log": list(self.log),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = state["scores"].to(self.device)
        self.visits = state["visits"].to(self.device)
        self.epochs_started = int(state["epochs_started"])
        self.queue = state["queue"].to(self.device)
        weights = state["queue_weights"]
        self.queue_weights = None if weights is None else weights.to(self.device)
        self.position = int(state["position"])
        self._in_warmup_queue = bool(state["in_warmup_queue"])
        self.log = [t.to(self.device) for t in state["log"]]


class LossSampling(ScoredStrategy):
    """The loss-sampling report's Algorithm 1 and its variants.

    After ``warmup_epochs`` uniform epochs, each epoch computes :math:`p` from all N scores
    (``method``: ``"softmax"`` :math:`p_i \\propto e^{S_i/T}` as in the report, ``"proportional"``
    :math:`p_i \\propto S_i^{1/T}`, or ``"rank"``), mixes in ``smoothing`` of uniform, draws a subset Z of
    ``round(subset * N)`` indices (``replacement`` a hyper-parameter; the report uses ``False``, which
    makes the weighted gradient biased — Chapter 2), shuffles it into batches and weights each sample
    by :math:`w_i = 1/(N p_i)` (``reweight=False`` trains unweighted). The report's settings:
    last-loss ``subset=8192/50000, warmup_epochs=5``; running-loss ``subset=30000/50000, beta=0.2``.
    """

    name = "loss"
    cuts_epochs_into_batches = True

    def __init__(
        self,
        score: str = "last",
        beta: float = 0.2,
        warmup_epochs: int = 0,
        subset: float = 1.0,
        replacement: bool = False,
        method: str = "softmax",
        temperature: float = 1.0,
        smoothing: float = 0.0,
        pressure: float = 100.0,
        reweight: bool = True,
    ) -> None:
        super().__init__(score, beta, warmup_epochs)
        if not (isinstance(subset, (int, float)) and 0 < subset <= 1):
            raise ValueError(f"subset (|Z| as a fraction of N) must lie in (0, 1], got {subset!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.subset, self.replacement, self.method = float(subset), bool(replacement), method
        self.temperature = _positive("temperature", temperature)
        self.smoothing = check_fraction("smoothing", smoothing)
        self.pressure = _positive("pressure", pressure)
        self.reweight = bool(reweight)

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        self.subset_size = max(1, round(self.subset * num_items))
        if self.subset_size < batch_size:
            raise ValueError(
                f"subset {self.subset} of N = {num_items} gives |Z| = {self.subset_size} < batch_size {batch_size}; "
                "raise subset or lower batch_size"
            )

    def probabilities(self) -> torch.Tensor:
        """The distribution the next epoch would draw from (float64, length N)."""
        return score_probabilities(
            self.scores, self.method, self.temperature, self.smoothing, self.pressure
        )

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = self.probabilities()
        self.log_distribution(step, p)
        idx, w = draw_unchecked(p, self.subset_size, self.replacement, self.generator)
        return self._in_batches(idx, w.float() if self.reweight else None)


class OnlineBatchSelection(ScoredStrategy):
    """Online batch selection (Loshchilov & Hutter 2015): each step draws ``b`` indices with replacement
    with :math:`p(r) \\propto s_e^{-r/(N-1)}` over the ranks :math:`r` of the latest losses (rank 0 the
    largest), so the top sample is :math:`s_e` times likelier than the last. :math:`s_e` is annealed
    geometrically from ``pressure_start`` to ``pressure_end`` over the budget. Unweighted by default, as
    in the paper (a deliberate bias towards hard samples); ``reweight=True`` applies :math:`1/(N p_i)`.
    The paper's periodic re-scoring of the whole dataset is not done: unseen samples keep score 0, and
    ``warmup_epochs`` (default 1) scores every sample once first.

    Ranking is an O(N log N) sort. The ranks are those of each sample's *latest known* loss, which for
    most samples is already up to an epoch old, and a step changes only b of N of them; so the
    distribution is recomputed every ``rerank_every`` steps (default: once per epoch, N/b steps, as
    Loshchilov & Hutter re-sort periodically rather than per step; ``1`` re-ranks every step, which is
    what the saved chapter runs used). Draws between re-ranks use the latest ranking.
    """

    name = "obs"

    def __init__(self, pressure_start: float = 100.0, pressure_end: float = 100.0, warmup_epochs: int = 1,
                 reweight: bool = False, rerank_every: int | None = None) -> None:  # fmt: skip
        super().__init__("last", 0.0, warmup_epochs)
        if rerank_every is not None and (
            isinstance(rerank_every, bool) or not isinstance(rerank_every, int) or rerank_every < 1
        ):
            raise ValueError(f"rerank_every must be a positive number of steps or None (once per epoch), got {rerank_every!r}")  # fmt: skip
        self.rerank_every = rerank_every
        self.pressure_start = _positive("pressure_start", pressure_start)
        self.pressure_end = _positive("pressure_end", pressure_end)
        if min(self.pressure_start, self.pressure_end) < 1:
            raise ValueError("pressure_start and pressure_end must be >= 1 (1 is uniform)")
        self.reweight = bool(reweight)

    def pressure(self) -> float:
        """:math:`s_e` at the current progress through the budget."""
        p = min(max(self.progress, 0.0), 1.0)
        return self.pressure_start * (self.pressure_end / self.pressure_start) ** p

    def probabilities(self) -> torch.Tensor:
        return score_probabilities(self.scores, "rank", 1.0, 0.0, self.pressure())

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        self.rerank_steps = self.rerank_every or max(num_items // batch_size, 1)
        self.ranked: torch.Tensor | None = None  # the distribution of the last re-rank
        self.draws_since_rerank = 0

    def per_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.ranked is None or self.draws_since_rerank >= self.rerank_steps:
            self.ranked, self.draws_since_rerank = self.probabilities(), 0
        self.draws_since_rerank += 1
        idx, w = draw_unchecked(self.ranked, self.batch_size, True, self.generator)
        return idx, (w.float() if self.reweight else None)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "ranked": self.ranked, "draws_since_rerank": self.draws_since_rerank}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        ranked = state.get("ranked")
        self.ranked = None if ranked is None else ranked.to(self.device)
        self.draws_since_rerank = int(state.get("draws_since_rerank", 0))


class PrioritizedReplay(ScoredStrategy):
    """Prioritised-replay sampling (Schaul et al. 2015) over a fixed dataset.

    Priority :math:`s_i = L_i + \\epsilon` (latest loss), :math:`P(i) = s_i^\\alpha/\\sum_k s_k^\\alpha` kept in a
    :class:`~ismod.sampling.SumTree`; ``b`` draws with replacement per step, weights
    :math:`w_i = (N P(i))^{-\\beta}` divided by the largest weight over all N (so every weight is at most
    1 and the lowest-priority sample's is exactly 1), with :math:`\\beta` annealed linearly from
    ``beta_start`` to 1 over the budget.

    Samples not yet trained on have ``new_priority``: ``"max"``, the largest priority seen so far, as
    Schaul et al. give new transitions (and torchrl's ``PrioritizedSampler``), so every sample is
    drawn soon; or ``"one"``, a fixed mass of 1 (what the saved chapter runs used: samples with a low
    first draw can wait epochs). With ``"max"`` the unseen samples' masses are raised to the maximum
    once per epoch (N/b steps), an O(N) refresh that costs O(b) a step on average.
    """

    name = "per"

    def __init__(
        self,
        alpha: float = 0.6,
        beta_start: float = 0.4,
        epsilon: float = 1e-3,
        warmup_epochs: int = 0,
        new_priority: str = "max",
    ) -> None:
        super().__init__("last", 0.0, warmup_epochs)
        if new_priority not in ("max", "one"):
            raise ValueError(
                f"new_priority must be 'max' (Schaul et al.) or 'one', got {new_priority!r}"
            )
        self.new_priority = new_priority
        self.alpha = _positive("alpha", alpha, allow_zero=True)
        if not (isinstance(beta_start, (int, float)) and 0 <= beta_start <= 1):
            raise ValueError(f"beta_start must lie in [0, 1], got {beta_start!r}")
        self.beta_start = float(beta_start)
        self.epsilon = _positive("epsilon", epsilon)

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        # the tensor tree on every device: cpu and gpu runs of the harness share one code path
        self.tree = SumTree(
            torch.ones(num_items, dtype=torch.float64, device=device), backend="tensor"
        )
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)
        self.refresh_steps = max(num_items // batch_size, 1)
        self.draws_since_refresh = 0

    def importance_beta(self) -> float:
        p = min(max(self.progress, 0.0), 1.0)
        return self.beta_start + (1.0 - self.beta_start) * p

    def probabilities(self) -> torch.Tensor:
        return self.tree.masses() / self.tree.total

    def normalized_weights(self, masses: torch.Tensor) -> torch.Tensor:
        """:math:`(N P)^{-\\beta} / \\max_k (N P_k)^{-\\beta}` for the given priorities :math:`s^\\alpha`."""
        beta = self.importance_beta()
        smallest = self.tree.masses().min()
        return (smallest / masses).pow(beta)

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        super().observe(indices, losses, logits)
        masses = (losses.to(torch.float64) + self.epsilon).pow(self.alpha)
        self.tree.update(indices, masses)
        if self.new_priority == "max":
            self.max_priority = torch.maximum(self.max_priority, masses.max())

    def refresh_unseen(self) -> None:
        """Give every sample not yet trained on the largest priority seen so far (``"max"``)."""
        unseen = (self.visits == 0).nonzero().squeeze(1)  # one host read, once per epoch
        if unseen.numel():
            self.tree.update(unseen, self.max_priority.expand(unseen.numel()))

    def per_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.new_priority == "max":
            if self.draws_since_refresh >= self.refresh_steps:
                self.refresh_unseen()
                self.draws_since_refresh = 0
            self.draws_since_refresh += 1
        idx, masses = self.tree.sample_with_masses(self.batch_size, generator=self.generator)
        return idx, self.normalized_weights(masses).float()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tree_masses": self.tree.masses().clone(),
                "max_priority": self.max_priority, "draws_since_refresh": self.draws_since_refresh}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree = SumTree(state["tree_masses"].to(self.device), backend="tensor")
        self.max_priority = torch.as_tensor(state.get("max_priority", 1.0), dtype=torch.float64).to(
            self.device
        )
        self.draws_since_refresh = int(state.get("draws_since_refresh", 0))


class StaleBoundSampling(ScoredStrategy):
    """Importance sampling by the upper bound with free scores (Chapter 5's equal-time race).

    Katharopoulos & Fleuret (2018) score a presample with an extra forward pass, which is why their
    method needs :math:`\\tau > \\tau_{th} > 1` to pay in time. Here each trained sample's bound
    :math:`\\hat G_i = \\lVert \\mathrm{softmax}(z_i) - e_{y_i} \\rVert` is read off the training step's own
    logits and kept over all N in a :class:`~ismod.sampling.SumTree`: the scores of samples not drawn
    since are stale, but cost nothing, so :math:`\\tau_{th} = 1`. Each step draws b with replacement
    from the defensive mixture :math:`p_i = (1-\\lambda)\\,\\hat G_i/\\sum_k \\hat G_k + \\lambda/N`
    (Hesterberg 1995: every sample keeps a chance of being drawn, and so of having its score renewed)
    and weights it by :math:`w_i = 1/(N p_i) \\le 1/\\lambda`, which keeps the gradient unbiased for the
    scores held when it was drawn.

    Args:
        mixture: :math:`\\lambda`, the uniform share (0.2: weights at most 5, the cap Chapter 5's
            dissection tried).
        warmup_epochs: uniform epochs first, which give every sample a score (default 1; an unscored
            sample holds a mass of 1, within the bound's range :math:`[0, \\sqrt 2]`).
        batch_norm: ``"train"`` normalises a drawn batch with its own statistics, as any train-mode
            step does; ``"weighted"`` with its statistics weighted by the weights :math:`1/(Np_i)`, an
            estimate of the data's (:func:`ismod.batchnorm.weighted_statistics`; Chapter 5, §5.10).
    """

    name = "stale_bound"
    observes_logits = True

    def __init__(
        self, mixture: float = 0.2, warmup_epochs: int = 1, batch_norm: str = "train"
    ) -> None:
        super().__init__("last", 0.0, warmup_epochs)
        if not (
            isinstance(mixture, (int, float)) and not isinstance(mixture, bool) and 0 < mixture <= 1
        ):
            raise ValueError(f"mixture (the uniform share λ) must lie in (0, 1], got {mixture!r}")
        if batch_norm not in ("train", "weighted"):
            raise ValueError(f"batch_norm must be 'train' or 'weighted', got {batch_norm!r}")
        self.mixture, self.batch_norm = float(mixture), batch_norm

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        if labels is None:
            raise ValueError(
                "StaleBoundSampling needs the training labels (setup's labels=) to take the bound"
            )
        self.tree = SumTree(
            torch.ones(num_items, dtype=torch.float64, device=device), backend="tensor"
        )

    def probabilities(self) -> torch.Tensor:
        lam = self.mixture
        return (1 - lam) * self.tree.masses() / self.tree.total + lam / self.num_items

    def observe(self, indices: torch.Tensor, losses: torch.Tensor, logits: torch.Tensor) -> None:
        bound = upper_bound_unchecked(logits, self.labels[indices])
        self.scores.index_put_((indices,), bound.to(self.scores.dtype))
        self.visits.index_add_(0, indices, torch.ones_like(indices))
        # a floor keeps the tree's total positive once every sample is fitted (then p is uniform-like)
        self.tree.update(indices, bound.double().clamp_min(1e-6))

    def epoch_queue(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.log_distribution(
            step, self.probabilities()
        )  # once per epoch (O(N)); the draws are per step
        return self._uniform_epoch()

    def per_step(self) -> Selection:
        b, n, lam = self.batch_size, self.num_items, self.mixture
        drawn = self.tree.sample(b, generator=self.generator)
        uniform = torch.randint(n, (b,), device=self.device, generator=self.generator)
        take_uniform = torch.rand(b, device=self.device, generator=self.generator) < lam
        idx = torch.where(take_uniform, uniform, drawn)
        p = (1 - lam) * self.tree.masses(idx) / self.tree.total + lam / n
        return Selection(idx, (1.0 / (n * p)).float(), weighted_norm=self.batch_norm == "weighted")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tree_masses": self.tree.masses().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree = SumTree(state["tree_masses"].to(self.device), backend="tensor")
