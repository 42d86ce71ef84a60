"""Importance sampling of training indices (Chapter 2).

Minibatch SGD with indices drawn with probabilities :math:`p_i` and each sample's loss weighted by
:math:`w_i = 1/(N p_i)` keeps the gradient estimate unbiased:
:math:`\\mathbb{E}[w_I \\nabla L_I] = \\frac1N\\sum_i \\nabla L_i` (Needell et al. 2014; the
loss-sampling report, eqs. 1–2).

- :func:`probabilities` turns per-sample scores into a distribution (softmax, proportional, rank).
- :func:`draw` draws ``k`` indices from a probability vector, with their weights.
- :class:`SumTree` keeps a distribution that changes a few entries per step: draws and updates
  cost :math:`O(k \\log N)` tensor work, on CPU or CUDA, with no host-device synchronisation.
- :class:`ImportanceSampler` is a :class:`torch.utils.data.Sampler` built on it, for ordinary
  ``DataLoader`` loops.

``torch.multinomial`` refuses more than :math:`2^{24}` categories; nothing here uses it: draws are
inverse-CDF lookups (:func:`draw`) or tree descents (:class:`SumTree`) in float64, for any N.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from .process_group import replica_layout

__all__ = [
    "METHODS",
    "probabilities",
    "check_scores",
    "draw",
    "SumTree",
    "ScoreTree",
    "ImportanceSampler",
    "IndexedDataset",
]

METHODS: tuple[str, ...] = ("softmax", "proportional", "rank")

# Softmax masses are exp((s - c) / T) for a reference c refreshed at each rebuild; between rebuilds an
# exponent is capped here so float64 cannot overflow (exp(700) ~ 1e304).
_MAX_EXPONENT = 700.0

# The forms of SumTree (None: compiled on the CPU, tensor elsewhere).
SUM_TREE_BACKENDS: tuple[str | None, ...] = (None, "compiled", "tensor", "cumsum")

# Children per tree node at most: wider rows mean fewer levels but more work per level.
_MAX_CHILDREN = 128

# The compiled CPU tree's branching: draw+update of 128 at N = 5·10^4 / 10^6 / 10^7 measured 13 / 20 / 32 µs
# with 4 children, 16 / 25 / 36 with 8 and 18 / 28 / 40 with 16 (2-core CPU): fewer sums per level win.
_COMPILED_BRANCHING = 4


# Indices are drawn ahead in chunks of this many: large enough to amortise a draw, small enough that
# updates made during an epoch reach the draws within about one batch.
_ITER_CHUNK = 128

# Uniforms fetched from the sampler's torch generator per call on the CPU (128 KiB of float64).
_UNIFORM_BUFFER = 1 << 14

# --- validation -----------------------------------------------------------------------------------


# What to do about a bad score, named in every message: one validation serves the samplers, the
# in-loop adapters and the strategies they drive (check_scores).
_SCORE_FIX = (
    "importance scores must be finite and >= 0: clamp them (losses.clamp_min(0)), shift them "
    "(losses - losses.min()), or use a loss that is >= 0 such as cross-entropy; a NaN or inf loss "
    "usually means training diverged (lower the learning rate)"
)


def check_scores(scores: Any, name: str = "scores") -> torch.Tensor:
    """``scores`` as a floating tensor if every value is finite and non-negative, else a ``ValueError``
    that counts the NaN, infinite or negative values and names the fix (clamp, shift, or a loss that is
    >= 0). Reads the values on the host: callers on CUDA check a host copy (see ismod.adapters)."""
    s = torch.as_tensor(scores)
    if not s.is_floating_point():
        s = s.to(torch.get_default_dtype())
    if s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(s.shape)}")
    nan = torch.isnan(s)
    if nan.any():
        raise ValueError(f"{name} contain NaN at {int(nan.sum())} positions; {_SCORE_FIX}")
    inf = torch.isinf(s)
    if inf.any():
        raise ValueError(
            f"{name} contain infinite values at {int(inf.sum())} positions; {_SCORE_FIX}"
        )
    neg = s < 0
    if neg.any():
        raise ValueError(
            f"{name} must be non-negative (losses, gradient norms), got {int(neg.sum())} negative "
            f"values; {_SCORE_FIX}"
        )
    return s


def _check_options(method: str, temperature: float, smoothing: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not (
        isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not (isinstance(smoothing, numbers.Real) and 0.0 <= smoothing <= 1.0):
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing!r}")


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive integer number of draws, got {k!r}")
    return int(k)


def check_probs(probs: Any) -> torch.Tensor:
    p = torch.as_tensor(probs)
    if not p.is_floating_point():
        raise ValueError(f"probs must be a floating-point tensor, got dtype {p.dtype}")
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"probs must be a non-empty 1-D tensor, got shape {tuple(p.shape)}")
    bad = ~torch.isfinite(p)
    if bad.any():
        raise ValueError(f"probs contain NaN or infinite values at {int(bad.sum())} positions")
    if (p < 0).any():
        raise ValueError(f"probs contain {int((p < 0).sum())} negative values")
    total = float(p.sum(dtype=torch.float64))
    if abs(total - 1.0) > 1e-4:
        raise ValueError(f"probs must sum to 1, got {total:.6g}; normalise them (probabilities())")
    return p


# --- scores to probabilities ------------------------------------------------------------------------


def unnormalized_masses(
    scores: torch.Tensor,
    method: str,
    temperature: float,
    pressure: float,
    reference: torch.Tensor | float,
) -> torch.Tensor:
    """Masses proportional to the method's probabilities (before smoothing), in float64."""
    s = scores.to(torch.float64)
    if method == "softmax":
        return torch.exp(((s - reference) / temperature).clamp(max=_MAX_EXPONENT))
    if method == "proportional":
        ratio = (
            s / reference
        )  # scaled by the largest score, so that s^(1/T) neither over- nor underflows
        return (
            ratio
            if temperature == 1.0
            else torch.exp((ratio.log() / temperature).clamp(max=_MAX_EXPONENT))
        )
    # rank: r_i = how many scores are strictly larger (ties share a rank); p ∝ pressure^(-r/((N-1)T))
    n = s.numel()
    ranks = n - torch.searchsorted(torch.sort(s).values, s, right=True)
    step = math.log(pressure) / (temperature * max(n - 1, 1))
    return torch.exp(-step * ranks.to(torch.float64))


def probabilities(
    scores: torch.Tensor,
    method: str = "softmax",
    *,
    temperature: float = 1.0,
    smoothing: float = 0.0,
    pressure: float = 100.0,
) -> torch.Tensor:
    """Turn non-negative per-sample scores into a sampling distribution over their indices.

    - ``"softmax"``: :math:`p_i \\propto \\exp(s_i/T)` (the loss-sampling report's choice), computed
      stably for any finite scores.
    - ``"proportional"``: :math:`p_i \\propto s_i^{1/T}` (at :math:`T = 1`, proportional to the score,
      the variance-optimal form when :math:`s_i = \\lVert G_i\\rVert`; prioritised replay's
      :math:`\\alpha = 1/T`). Needs a positive score somewhere.
    - ``"rank"``: :math:`p_i \\propto \\text{pressure}^{-r_i/((N-1)T)}` with :math:`r_i` the rank of
      :math:`s_i` (0 for the largest): the top sample is ``pressure`` times likelier than the last
      (online batch selection, Loshchilov & Hutter 2015).

    Then smoothing towards uniform: :math:`p \\leftarrow (1-\\varepsilon)\\,p + \\varepsilon/N`, which bounds
    every weight :math:`1/(N p_i)` by :math:`1/\\varepsilon`.

    Returns a 1-D tensor that sums to 1, in the scores' floating dtype (float32 for integer scores).
    """
    s = check_scores(scores)
    _check_options(method, temperature, smoothing)
    if method == "rank" and not (isinstance(pressure, numbers.Real) and pressure >= 1):
        raise ValueError(f"pressure must be a number >= 1 for method='rank', got {pressure!r}")
    if method == "proportional" and not (s > 0).any():
        raise ValueError("scores are all zero: method='proportional' needs a positive score")
    masses = unnormalized_masses(
        s, method, float(temperature), float(pressure), s.max().to(torch.float64)
    )
    p = masses / masses.sum()
    if smoothing:
        p = (1.0 - smoothing) * p + smoothing / p.numel()
    return p.to(s.dtype)


# --- drawing from a fixed vector --------------------------------------------------------------------


def draw(
    probs: torch.Tensor,
    k: int,
    *,
    replacement: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``k`` indices from ``probs``; return ``(indices, weights)`` with :math:`w_i = 1/(N p_i)`.

    With replacement (the default) the draws are independent, and the weighted minibatch mean
    :math:`\\frac1k\\sum_j w_{I_j} f_{I_j}` is an unbiased estimate of :math:`\\frac1N\\sum_i f_i`.

    Without replacement the ``k`` indices are distinct, drawn by successive sampling (each next index
    with probability proportional to :math:`p_i` among those left; Efraimidis–Spirakis keys), and the
    weights are still :math:`1/(N p_i)`: this is what the loss-sampling report does. The weighted mean is
    then *biased* — an index's chance of being in the batch is not :math:`k p_i` — by an amount that
    Chapter 2 measures; use ``replacement=True`` when unbiasedness matters.

    Works for any N (no :math:`2^{24}` limit) on the device of ``probs``; indices are int64, weights
    float64.
    """
    p = check_probs(probs)
    k = _check_k(k)
    n = p.numel()
    if not replacement:
        if k > n:
            raise ValueError(f"k = {k} draws without replacement exceed the N = {n} indices")
        support = int((p > 0).sum())
        if k > support:
            raise ValueError(
                f"k = {k} draws without replacement, but probs has only {support} positive entries"
            )
    return draw_unchecked(p, k, replacement, generator)


def draw_unchecked(
    probs: torch.Tensor, k: int, replacement: bool, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draw` without the checks, so a training step never waits for the device to validate."""
    n = probs.numel()
    p64 = probs.to(torch.float64)
    if replacement:
        cdf = torch.cumsum(p64, 0)
        u = torch.rand(k, dtype=torch.float64, device=p64.device, generator=generator) * cdf[-1]
        idx = torch.searchsorted(cdf, u, right=True).clamp_(max=n - 1)
    else:
        e = torch.empty(n, dtype=torch.float64, device=p64.device).exponential_(generator=generator)
        idx = torch.topk(
            e / p64, k, largest=False
        ).indices  # zero probability: key inf, never taken
    return idx, 1.0 / (n * p64[idx])


# --- a distribution that changes a few entries at a time ------------------------------------------


class SumTree:
    """A tree of partial sums over non-negative masses: draw ``k`` indices with probability
    ``mass_i / total`` and change ``k`` masses, each in :math:`O(k \\log N)` (sum-tree sampling as in
    prioritised replay, Schaul et al. 2015).

    Two forms, chosen by the masses' device:

    - **CPU** (``backend="compiled"``): a flat ``branching``-ary tree (4 by default) walked by compiled
      loops (``numba``), its levels walked for all draws at once.
    - **CUDA**, or ``backend="tensor"``: the leaves grouped ``branching`` at a time, the group sums again,
      until at most ``top_size`` sums are left; a top row shared by every draw (one cumulative sum, one
      1-D search) and each level below a search within ``k`` rows of children. A draw or an update is a
      fixed number of batched tensor operations and never synchronises with the host.
    - ``backend="cumsum"``: no tree, the leaves alone. An update writes ``k`` leaves; the next draw takes
      one cumulative sum over all N and one search for its ``k`` targets. O(N) per draw, but a fixed
      handful of kernels whatever N, where the tensor tree launches several per level for a draw and
      for an update: a candidate for a GPU at CIFAR's N, if kernel launches rather than memory traffic
      set the cost there (``benchmarks/sampler_step.py`` measures both forms). Never synchronises with
      the host either.

    Args:
        masses: the initial non-negative masses, 1-D.
        branching: children per node; by default 4 (compiled) or chosen from N so that the tensor tree
            is as shallow as possible.
        top_size: the largest top row of the tensor tree.
        backend: ``"compiled"`` (CPU only), ``"tensor"`` or ``"cumsum"``; default: compiled on the CPU,
            tensor on CUDA.
    """

    def __init__(
        self,
        masses: torch.Tensor,
        *,
        branching: int | None = None,
        top_size: int = 4096,
        backend: str | None = None,
    ) -> None:
        if branching is not None and branching < 2:
            raise ValueError(f"branching must be at least 2, got {branching}")
        if top_size < 1:
            raise ValueError(f"top_size must be at least 1, got {top_size}")
        if backend not in SUM_TREE_BACKENDS:
            raise ValueError(f"backend must be one of {SUM_TREE_BACKENDS}, got {backend!r}")
        self._branching_arg, self.top_size, self._backend_arg = branching, int(top_size), backend
        self.rebuild(masses)

    def _shape(self, n: int) -> tuple[int, int]:
        """(branching, number of levels below the top) for n leaves of the tensor tree."""
        if self._branching_arg is not None:
            b, depth = self._branching_arg, 0
            while -(-n // b**depth) > self.top_size:
                depth += 1
            return b, depth
        depth = 0
        while -(-n // _MAX_CHILDREN**depth) > self.top_size:
            depth += 1
        if depth == 0:
            return 2, 0
        return max(16, math.ceil((n / self.top_size) ** (1 / depth))), depth

    def rebuild(self, masses: torch.Tensor) -> None:
        """Recompute every level from ``masses`` (1-D, non-negative), exactly."""
        m = torch.as_tensor(masses)
        if m.dim() != 1 or m.numel() == 0:
            raise ValueError(f"masses must be a non-empty 1-D tensor, got shape {tuple(m.shape)}")
        self.n = m.numel()
        self._device = m.device
        if self._backend_arg == "compiled" and m.device.type != "cpu":
            raise ValueError("backend='compiled' runs on the CPU; use backend='tensor' on CUDA")
        self.compiled = m.device.type == "cpu" and self._backend_arg in (None, "compiled")
        self.cumsum_only = self._backend_arg == "cumsum"
        if self.compiled:
            from . import _sumtree_kernels as kernels

            self.branching = self._branching_arg or _COMPILED_BRANCHING
            self.offsets, self.depth = kernels.layout(self.n, self.branching)
            self.nodes = np.zeros(int(self.offsets[-1]), dtype=np.float64)
            self.nodes[: self.n] = m.detach().to(torch.float64).numpy()
            kernels.build(self.nodes, self.offsets, self.depth, self.branching)
            self._leaves = torch.from_numpy(self.nodes[: self.n])  # a view: masses() costs nothing
            return
        if self.cumsum_only:
            self.branching = self.n  # one row of N leaves
            self.levels, self._rows = [m.to(torch.float64).clone()], []
            self._cumulative = None  # recomputed by the next draw after an update
            return
        self.branching, depth = self._shape(self.n)
        b = self.branching
        level = m.to(torch.float64)
        self.levels = []  # levels[0]: leaves; levels[-1]: the top row
        for _ in range(depth):
            padded = -(-level.numel() // b) * b
            level = torch.nn.functional.pad(level, (0, padded - level.numel()))
            self.levels.append(level)
            level = level.view(-1, b).sum(1)
        self.levels.append(level)
        self._rows = [level.view(-1, b) for level in self.levels[:-1]]

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def total(self) -> torch.Tensor:
        """Sum of all masses (a 0-d float64 tensor on the tree's device)."""
        if self.compiled:
            return torch.tensor(self.nodes[self.offsets[self.depth]], dtype=torch.float64)
        # after a draw, the total is the end of its prefix sums: no second O(N) pass
        if self.cumsum_only and self._cumulative is not None:
            return self._cumulative[0][-1]
        return self.levels[-1].sum()

    def masses(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The masses at ``indices`` (all N when ``None``)."""
        leaves = self._leaves if self.compiled else self.levels[0][: self.n]
        return leaves if indices is None else leaves[indices]

    def update(self, indices: torch.Tensor, masses: torch.Tensor) -> None:
        """Set ``mass[indices] = masses`` and refresh their ancestors. A repeated index keeps one value."""
        if self.compiled:
            from . import _sumtree_kernels as kernels

            idx = torch.as_tensor(indices).to(torch.long).reshape(-1).numpy()
            new = torch.as_tensor(masses).to(torch.float64).reshape(-1).numpy()
            kernels.update(self.nodes, self.offsets, self.depth, self.branching, idx, new)
            return
        b = self.branching
        node = indices.to(device=self.device, dtype=torch.long)
        self.levels[0].index_put_((node,), masses.to(device=self.device, dtype=torch.float64))
        if self.cumsum_only:
            self._cumulative = None
            return
        for lower, upper in zip(self._rows, self.levels[1:]):
            node = node.div(b, rounding_mode="floor")
            upper.index_put_((node,), lower.index_select(0, node).sum(1))

    def sample(self, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``k`` indices independently with probability ``mass_i / total`` (int64, on the device)."""
        return self.sample_with_masses(k, generator=generator)[0]

    def sample_with_masses(
        self, k: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`sample`, also returning each drawn index's mass (float64), read during the descent."""
        if self.compiled:
            from . import _sumtree_kernels as kernels

            u = torch.rand(k, dtype=torch.float64, generator=generator).numpy()
            idx, mass = np.empty(k, dtype=np.int64), np.empty(k, dtype=np.float64)
            kernels.sample(self.nodes, self.offsets, self.depth, self.branching, u, idx, mass)
            return torch.from_numpy(idx), torch.from_numpy(mass)
        if self.cumsum_only:
            return self._sample_cumsum(k, generator)
        b = self.branching
        # v is where each draw falls inside its current node, as a fraction of that node's mass, so
        # rounding differences between a parent and the sum of its children cannot pick an empty child.
        v = torch.rand(k, dtype=torch.float64, device=self.device, generator=generator)
        top = self.levels[-1]  # one row shared by every draw: one cumsum, a 1-D search
        cum = top.cumsum(0)
        target = v * cum[-1]
        node = torch.searchsorted(cum, target, right=True)
        mass = top[node]
        v = (target - cum[node]).add_(mass).div_(mass).clamp_(0.0, 1.0 - 1e-12).view(-1, 1)
        mass = mass.view(-1, 1)
        for rows_of_level in reversed(self._rows):
            rows = rows_of_level.index_select(0, node)  # (k, b): the children of each draw's node
            cum = rows.cumsum(1)
            target = v * cum[:, -1:]
            child = torch.searchsorted(cum, target, right=True)  # < b, since v < 1
            mass = rows.gather(1, child)
            v = (target - cum.gather(1, child)).add_(mass).div_(mass).clamp_(0.0, 1.0 - 1e-12)
            node = node.mul_(b).add_(child.view(-1))
        return node, mass.view(-1)

    def _sample_cumsum(
        self, k: int, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The draw of ``backend="cumsum"``: the leaf whose prefix interval holds ``u·total``."""
        leaves = self.levels[0]
        if self._cumulative is None:
            cum = leaves.cumsum(0)
            # the last leaf with mass: where the prefix first reaches the total. A target rounded onto
            # the total, or a parallel scan's prefix a rounding step out of order, could otherwise
            # land past it or on an empty leaf, whose weight would be infinite.
            self._cumulative = cum, torch.searchsorted(cum, cum[-1:])
        cum, last = self._cumulative
        target = torch.rand(k, dtype=torch.float64, device=self.device, generator=generator)
        node = torch.searchsorted(cum, target.mul_(cum[-1]), right=True)
        node = torch.minimum(node, last)
        mass = leaves[node]
        node = torch.where(mass > 0, node, last)
        return node, leaves[node]


class EpochStream:
    """Indices from a stream of shuffled epochs: :meth:`take` returns the next ``k`` of the current
    permutation, and when fewer than ``k`` remain it skips them and draws a fresh permutation, so ``k``
    indices never straddle two epochs. Each index appears at most once in ``k``, and over a
    permutation every index is equally likely at every position (a uniform presample or batch).

    ``permutation(refill)`` makes each permutation, ``refill`` counting those made since the stream
    started or :meth:`restart` (a seeded sampler derives its seed from it). The one shuffled stream of
    the uniform strategy, the presample strategy, :class:`ismod.adapters.TauSwitchSampler` and hard
    selection's candidates.
    """

    def __init__(self, permutation: Callable[[int], torch.Tensor],
                 device: torch.device | str | None = None) -> None:  # fmt: skip
        self.permutation = permutation
        self.order = torch.empty(0, dtype=torch.long, device=device)
        self.position = 0
        self.refills = 0

    def take(self, k: int) -> torch.Tensor:
        """The next ``k`` indices (a view of the current permutation)."""
        if self.position + k > self.order.numel():
            self.order, self.position = self.permutation(self.refills), 0
            self.refills += 1
        start, self.position = self.position, self.position + k
        return self.order[start : start + k]

    def restart(self) -> None:
        """Start afresh: the next :meth:`take` draws a new permutation, counted as the first."""
        self.position, self.refills = self.order.numel(), 0


def check_epoch(epoch: Any) -> int:
    """``epoch`` as an int, for a sampler's ``set_epoch``, or an error naming what it takes."""
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        raise ValueError(f"set_epoch takes the epoch's number, an integer >= 0, got {epoch!r}")
    return int(epoch)


class ScoreTree:
    """Per-sample scores as a sampling distribution: the scores, a :class:`SumTree` over their masses
    (``unnormalized_masses``), the probabilities :math:`p_i = (1-\\epsilon)\\,m_i/\\sum_k m_k + \\epsilon/N`
    (:func:`probabilities`), draws with replacement with their weights :math:`1/(Np_i)`, recorded at
    draw, and updates in :math:`O(k\\log N)`, with an exact :math:`O(N)` rebuild every
    ``rebuild_every`` updated entries. The distribution half of :class:`ImportanceSampler`, which adds
    the ``Sampler`` protocol, distributed draws and resume; its arguments are that class's."""

    def __init__(self, num_items: int, *, method: str, temperature: float, smoothing: float, pressure: float,
                 initial_score: float, device: torch.device, rebuild_every: int, dtype: torch.dtype,
                 backend: str | None) -> None:  # fmt: skip
        self.num_items, self.method, self.temperature = num_items, method, temperature
        self.smoothing, self.pressure, self.device = smoothing, pressure, device
        self.rebuild_every, self.dtype, self.backend = rebuild_every, dtype, backend
        self.scores = torch.full(
            (num_items,), float(initial_score), dtype=torch.float64, device=device
        )
        self._weight_at_draw = torch.ones(num_items, dtype=dtype, device=device)
        # CPU draws take their uniforms from this buffer, refilled from the generator (_uniforms)
        self._uniform_buffer, self._uniform_source, self._uniform_position = np.empty(0), None, 0
        self._rebuild()

    @property
    def compiled(self) -> bool:
        """Whether draws and updates run as compiled kernels (the CPU's default tree)."""
        return self._tree.compiled

    # the tree holds masses proportional to the probabilities before smoothing
    def _rebuild(self, leaves: torch.Tensor | None = None, reference: Any = None) -> None:
        """The tree from the scores (or, resuming, from saved ``leaves`` and ``reference``, so that a
        resumed sampler draws bit for bit as the one it was saved from)."""
        check_scores(self.scores, "scores (as updated)")
        self._reference = self.scores.max() if reference is None else torch.as_tensor(reference)
        if self.method == "proportional" and self._reference == 0:
            raise ValueError("scores are all zero: method='proportional' needs a positive score")
        masses = self._masses(self.scores) if leaves is None else leaves.to(self.device)
        self._tree = SumTree(masses, backend=self.backend)  # O(N), once per rebuild_every updates
        self._updated = 0
        # On the CPU a step is two compiled calls on numpy views of the sampler's tensors.
        self._compiled = self._tree.compiled and self.dtype in (torch.float32, torch.float64)
        if self._compiled:
            from . import _sumtree_kernels

            self._kernels = _sumtree_kernels
            self._scores_np = self.scores.numpy()
            self._weight_at_draw_np = self._weight_at_draw.numpy()
            self._np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
            self._method_code = {"softmax": 0, "proportional": 1}.get(self.method, -1)
            self._reference_value = float(self._reference)

    def _masses(self, scores: torch.Tensor) -> torch.Tensor:
        return unnormalized_masses(
            scores, self.method, self.temperature, self.pressure, self._reference
        )

    def probabilities(self) -> torch.Tensor:
        """The current probability of every index (float64, length N)."""
        p = self._tree.masses() / self._tree.total
        return (1 - self.smoothing) * p + self.smoothing / self.num_items

    def _weights(self, masses: torch.Tensor) -> torch.Tensor:
        """1/(N p) from tree masses: p = (1 - ε) mass/total + ε/N."""
        if not self.smoothing:
            return (self._tree.total / (self.num_items * masses)).to(self.dtype)
        p = (1 - self.smoothing) * masses / self._tree.total + self.smoothing / self.num_items
        return (1.0 / (self.num_items * p)).to(self.dtype)

    def sample(
        self, k: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``k`` indices with replacement; return ``(indices, weights)`` on ``device``, no host sync.
        ``generator``: the random generator to draw from."""
        if type(k) is not int or k < 1:
            k = _check_k(k)
        gen = generator
        if self._compiled:  # one compiled call: tree or uniform draw, weight, record
            tree = self._tree
            u = self._uniforms(2 * k, gen)
            idx, weights = np.empty(k, dtype=np.int64), np.empty(k, dtype=self._np_dtype)
            self._kernels.sampler_draw(tree.nodes, tree.offsets, tree.depth, tree.branching,
                                       self.num_items, u, self.smoothing, self._weight_at_draw_np,
                                       idx, weights)  # fmt: skip
            return torch.from_numpy(idx), torch.from_numpy(weights)
        idx, masses = self._tree.sample_with_masses(k, generator=gen)
        if self.smoothing:
            u = torch.rand(k, device=self.device, generator=gen)
            uniform = torch.randint(self.num_items, (k,), device=self.device, generator=gen)
            idx = torch.where(u < self.smoothing, uniform, idx)
            masses = self._tree.masses(idx)
        weights = self._weights(masses)
        self._weight_at_draw.index_put_((idx,), weights)
        return idx, weights

    def _uniforms(self, count: int, gen: torch.Generator | None) -> np.ndarray:
        """``count`` uniforms from ``gen``, taken from a buffer filled _UNIFORM_BUFFER at a time: one
        ``torch.rand`` call costs as much as a whole compiled draw."""
        if gen is not self._uniform_source or self._uniform_position + count > len(
            self._uniform_buffer
        ):
            size = max(_UNIFORM_BUFFER, count)
            self._uniform_buffer = torch.rand(size, dtype=torch.float64, generator=gen).numpy()
            self._uniform_source, self._uniform_position = gen, 0
        start = self._uniform_position
        self._uniform_position += count
        return self._uniform_buffer[start : start + count]

    def weights_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Weights :math:`1/(N p_i)` that ``indices`` had when last drawn, on the device of ``indices``
        (so that a batch moved to the GPU gets its weights there)."""
        target = indices.device if isinstance(indices, torch.Tensor) else self.device
        weights = self._weight_at_draw[torch.as_tensor(indices, device=self.device)]
        if target == self.device:
            return weights
        if target.type == "cuda" and self.device.type == "cpu":
            weights = weights.pin_memory()  # from pinned memory the copy is queued, not waited for
        return weights.to(target, non_blocking=True)

    def store(self, idx: torch.Tensor, new: torch.Tensor) -> None:
        """Set the scores of ``idx`` (int64, on ``device``) to ``new`` (floating, on ``device``), checked;
        a repeated index keeps one value."""
        if self._compiled and self.method != "rank":  # check, store, re-weigh: one compiled call
            tree = self._tree
            bad = self._kernels.sampler_update(
                tree.nodes, tree.offsets, tree.depth, tree.branching, self.num_items,
                self._scores_np, idx.contiguous().numpy(), new.contiguous().numpy(),
                self._method_code, self.temperature,
                self._reference_value,
            )  # fmt: skip
            if bad >= 0:
                self._raise_bad_update(idx, new)
            self._updated += idx.numel()
            if self._updated >= self.rebuild_every:
                self._rebuild()
            return
        if self.device.type == "cpu":
            low, high = torch.aminmax(new)  # one cheap pass; the full check names the problem
            if not (low >= 0 and high < math.inf):
                check_scores(new)
            if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < self.num_items):
                self._raise_bad_update(idx, new)
        self.scores.index_put_((idx,), new.to(torch.float64))
        self._updated += idx.numel()
        if self.method == "rank" or self._updated >= self.rebuild_every:
            self._rebuild()  # ranks change globally; otherwise a periodic exact refresh
        else:
            self._tree.update(idx, self._masses(self.scores[idx]))

    def _raise_bad_update(self, idx: torch.Tensor, new: torch.Tensor) -> None:
        outside = (idx < 0) | (idx >= self.num_items)
        if outside.any():
            first = int(idx[outside][0])
            raise IndexError(
                f"indices must lie in [0, num_items={self.num_items}), got {first}: pass the dataset "
                "positions the sampler yielded (IndexedDataset returns them), not positions in the batch"
            )
        check_scores(new)

    def state_dict(self) -> dict[str, Any]:
        return {"scores": self.scores.clone(), "weight_at_draw": self._weight_at_draw.clone(),
                "leaves": self._tree.masses().clone(), "reference": self._reference.clone(),
                "updated": self._updated,
                "uniforms": torch.from_numpy(self._uniform_buffer[self._uniform_position :].copy())}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        scores = torch.as_tensor(state["scores"], dtype=torch.float64, device=self.device)
        if scores.shape != (self.num_items,):
            raise ValueError(
                f"state has scores for {scores.numel()} items, this sampler has {self.num_items}"
            )
        self.scores = scores.clone()
        self._weight_at_draw = torch.as_tensor(
            state["weight_at_draw"], dtype=self.dtype, device=self.device
        ).clone()
        # a state with scores alone (as older checkpoints hold) rebuilds from the scores
        leaves = state.get("leaves")
        self._rebuild(None if leaves is None else leaves.to(torch.float64), state.get("reference"))
        self._updated = int(state.get("updated", 0))
        uniforms = state.get("uniforms")
        self._uniform_buffer = np.empty(0) if uniforms is None else uniforms.numpy().copy()
        self._uniform_position = 0


def _check_sampler_arguments(num_items: Any, num_samples: Any, method: str, temperature: float,
                             smoothing: float, initial_score: float) -> None:  # fmt: skip
    """:class:`ImportanceSampler`'s arguments, each refused with an error naming it."""
    if isinstance(num_items, bool) or not isinstance(num_items, numbers.Integral) or num_items < 1:
        raise ValueError(f"num_items must be a positive integer, got {num_items!r}")
    if num_samples is not None and (
        not isinstance(num_samples, numbers.Integral) or num_samples < 1
    ):
        raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
    _check_options(method, temperature, smoothing)
    if not (math.isfinite(initial_score) and initial_score >= 0):
        raise ValueError(
            f"initial_score must be a non-negative finite number, got {initial_score!r}"
        )
    if method == "proportional" and initial_score == 0:
        raise ValueError(
            "initial_score=0 with method='proportional' gives all-zero probabilities; "
            "start from a small positive score"
        )


class ImportanceSampler(Sampler[int]):
    """A :class:`~torch.utils.data.Sampler` drawing indices with probabilities from per-sample scores.

    Indices are drawn with replacement from :func:`probabilities` of the current scores, kept in a
    :class:`SumTree`, so that :meth:`update` after each step costs :math:`O(k\\log N)`, not
    :math:`O(N)`. Use it with a ``DataLoader`` whose dataset also returns the index (see
    :class:`IndexedDataset`)::

        sampler = ImportanceSampler(len(train))
        loader = DataLoader(IndexedDataset(train), batch_size=128, sampler=sampler)
        for x, y, idx in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            (sampler.weights_for(idx) * losses).mean().backward()
            sampler.update(idx, losses.detach())

    Under ``torch.distributed`` (``num_replicas`` > 1, by default the process group's size), every
    replica draws the same global sequence — from a generator seeded with ``seed + epoch``, so call
    :meth:`set_epoch` at each epoch as with ``DistributedSampler`` — and yields every
    ``num_replicas``-th index starting at ``rank``; :meth:`update` gathers all replicas' indices and
    scores, so every replica keeps the same scores and the same distribution (global weights
    :math:`1/(N p_i)`). Each replica's loop must call :meth:`update` with equally many indices.

    ``weights_for(idx)`` returns :math:`1/(N p_i)` as it was when each index was last yielded, so a
    ``DataLoader`` that prefetches (workers) still gets the weights its batch was drawn with, unless the
    same index was drawn again in between. For loops without a ``DataLoader``, :meth:`sample` returns
    indices and weights as tensors on ``device`` without any host synchronisation.

    Args:
        num_items: N, the size of the dataset.
        num_samples: indices per pass of ``iter(sampler)`` (an "epoch"); default N.
        method, temperature, smoothing, pressure: as in :func:`probabilities`. The defaults are the
            settings Chapter 3 recommends: proportional to the score with 20% of uniform mixed in, so
            no weight exceeds 5 (unbounded softmax weights diverged there at a fast learning rate).
        initial_score: every item's score before its first update (equal scores: uniform).
        device: where scores and the tree live.
        generator: the random generator for draws (on ``device``); default, on one process: the
            sampler's own, seeded with ``seed``. torch's global RNG is never drawn from.
        rebuild_every: recompute the tree exactly (and check all scores) after this many updated
            entries; default N, so the O(N) rebuild costs O(1) per updated entry on average.
        dtype: the dtype of the weights returned (float32 by default, to multiply float32 losses).
        num_replicas, rank: the distributed layout (default: the initialised process group, else 1, 0);
            ``num_samples`` then counts one replica's indices per epoch.
        seed: seeds the sampler's own generator (one process, ``generator`` None), or the per-epoch
            generator in distributed mode (``generator`` must then be None).
        backend: the :class:`SumTree` form (``"compiled"``, ``"tensor"`` or ``"cumsum"``); default:
            compiled on the CPU, tensor on CUDA. The forms draw the same distribution; a resumed sampler
            draws bit for bit as the saved one when it is built with the same backend.
    """

    def __init__(
        self,
        num_items: int,
        num_samples: int | None = None,
        *,
        method: str = "proportional",
        temperature: float = 1.0,
        smoothing: float = 0.2,
        pressure: float = 100.0,
        initial_score: float = 1.0,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        rebuild_every: int | None = None,
        dtype: torch.dtype = torch.float32,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        backend: str | None = None,
    ) -> None:
        _check_sampler_arguments(
            num_items, num_samples, method, temperature, smoothing, initial_score
        )
        replicas, this_rank = replica_layout(num_replicas, rank)
        if replicas > 1 and generator is not None:
            raise ValueError("in distributed mode (num_replicas > 1) the sampler seeds its own generator from "
                             "seed + epoch so that every replica draws alike; pass seed=..., not generator=")  # fmt: skip
        self.num_replicas, self.rank, self.seed, self.epoch = (
            int(replicas),
            int(this_rank),
            int(seed),
            0,
        )
        self.num_items = int(num_items)
        # like DistributedSampler: ceil(N / replicas)
        default = -(-self.num_items // self.num_replicas)
        self.num_samples = int(num_samples) if num_samples is not None else default
        self.method, self.temperature, self.smoothing = method, float(temperature), float(smoothing)
        self.pressure = float(pressure)
        self.device = torch.device(device)
        # one process draws from its own generator, seeded by ``seed`` (never from torch's global RNG,
        # so runs with different seeds differ and a resumed sampler needs nothing but its state)
        if generator is None and self.num_replicas == 1:
            generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.generator = generator
        self.dtype = dtype
        # the scores and their tree; the backend is checked by SumTree when the table builds it
        self.table = ScoreTree(self.num_items, method=method, temperature=self.temperature,
                               smoothing=self.smoothing, pressure=self.pressure, initial_score=initial_score,
                               device=self.device, rebuild_every=int(rebuild_every) if rebuild_every else self.num_items,
                               dtype=dtype, backend=backend)  # fmt: skip
        # the pass of __iter__ in progress, so that state_dict() can resume it mid-epoch (_Pass)
        self._pass: _Pass | None = None
        self._resume: _Pass | None = None

    @property
    def scores(self) -> torch.Tensor:
        """Every item's current score (float64, length N)."""
        return self.table.scores

    def probabilities(self) -> torch.Tensor:
        """The current probability of every index (float64, length N)."""
        return self.table.probabilities()

    def sample(
        self, k: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``k`` indices with replacement; return ``(indices, weights)`` on ``device``, no host sync.
        ``generator`` overrides the sampler's own for this draw."""
        return self.table.sample(
            k, generator=generator if generator is not None else self.generator
        )

    def weights_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Weights :math:`1/(N p_i)` that ``indices`` had when last drawn, on the device of ``indices``
        (so that a batch moved to the GPU gets its weights there)."""
        return self.table.weights_for(indices)

    def update(self, indices: torch.Tensor, scores: torch.Tensor) -> None:
        """Set the scores of ``indices`` (e.g. their latest losses). A repeated index keeps one value.

        CPU scores are checked at once; CUDA scores are checked at the next rebuild, so that a training
        step never waits for the device. In distributed mode, each replica passes its own indices and
        scores and receives everyone's (one all-gather).
        """
        idx, new = self._as_update(indices, scores)
        if idx.shape != new.shape:
            raise ValueError(
                f"indices and scores must have the same length, got {idx.numel()} and {new.numel()}"
            )
        if self._pass is not None:  # these were trained on: a resume starts after them
            self._pass.trained += idx.numel()
        if self.num_replicas > 1:
            from .process_group import World

            world = World.current()
            if world is None or world.size != self.num_replicas:
                raise RuntimeError(f"update in distributed mode needs an initialised process group of "
                                   f"{self.num_replicas} ranks (torch.distributed.init_process_group)")  # fmt: skip
            idx, new = world.all_gather_cat(idx), world.all_gather_cat(new.to(torch.float64))
        self.table.store(idx, new)

    def _as_update(self, indices: Any, scores: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices (int64) and scores (floating, detached) as 1-D tensors on the sampler's device.
        Cheap when they already are (the common case: a batch's indices and its per-sample losses)."""
        if type(indices) is not torch.Tensor:
            indices = torch.as_tensor(indices)
        if type(scores) is not torch.Tensor:
            scores = torch.as_tensor(scores)
        if scores.dim() != 1:
            if scores.dim() == 0:
                raise ValueError(
                    "scores must hold one value per index, got a single number: compute per-sample "
                    "losses with reduction='none' (e.g. F.cross_entropy(out, y, reduction='none'))"
                )
            if scores.numel() != indices.numel():
                raise ValueError(
                    f"scores must hold one value per index ({indices.numel()}), got shape "
                    f"{tuple(scores.shape)}: pass per-sample losses (reduction='none')"
                )
            scores = scores.reshape(-1)
        if indices.dim() != 1:
            indices = indices.reshape(-1)
        if indices.dtype != torch.long:
            indices = indices.long()
        if indices.device != self.device:
            indices = indices.to(self.device)
        if scores.dtype not in (torch.float32, torch.float64):
            scores = scores.to(torch.float64)
        if scores.device != self.device:
            scores = scores.to(self.device)
        return indices, scores.detach()

    def set_epoch(self, epoch: int) -> None:
        """Seed the next pass with ``seed + epoch`` (distributed mode), as ``DistributedSampler.set_epoch``."""
        self.epoch = check_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        """One pass of ``num_samples`` indices (this replica's share). After :meth:`load_state_dict`
        the first pass finishes the interrupted one: the indices drawn but not yet passed to
        :meth:`update`, then the draws that were still to come."""
        state, self._resume = self._resume, None
        if state is None:
            state = _Pass(drawn=[], trained=0, remaining=self.num_samples * self.num_replicas)
            if self.num_replicas > 1:  # every replica draws the same global chunks
                state.generator = torch.Generator(device=self.device).manual_seed(
                    self.seed + self.epoch
                )
        self._pass = state
        pending = state.pending()
        if pending.numel():
            state.drawn, state.trained = [pending], 0
            yield from pending.tolist()
        chunk = (
            _ITER_CHUNK
            if self.num_replicas == 1
            else max(_ITER_CHUNK // self.num_replicas, 1) * self.num_replicas
        )
        while state.remaining > 0:
            k = min(state.remaining, chunk)
            idx, _ = self.sample(k, generator=state.generator)
            state.remaining -= k
            mine = idx if self.num_replicas == 1 else idx[self.rank :: self.num_replicas]
            state.drawn.append(mine)
            yield from mine.tolist()

    def __len__(self) -> int:
        return self.num_samples

    @property
    def resumes_mid_pass(self) -> bool:
        """Whether the next pass finishes one interrupted by a checkpoint (``load_state_dict``);
        ``False`` when the checkpoint came after the pass's last index was trained on."""
        return self._resume is not None

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed sampler needs to draw exactly as this one would: scores, the tree's
        masses, the weights at draw, the generators and the uniforms already fetched, and the pass in
        progress (its indices drawn but not yet passed to :meth:`update` are yielded again first)."""
        gen = self.generator
        return {**self.table.state_dict(), "epoch": self.epoch,
                "generator": None if gen is None else gen.get_state(),
                "pass": None if self._pass is None else self._pass.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next pass finishes the interrupted one, if any."""
        self.table.load_state_dict(state)
        self.epoch = int(state.get("epoch", self.epoch))
        if state.get("generator") is not None and self.generator is not None:
            self.generator.set_state(state["generator"])
        self._pass = self._resume = None
        if state.get("pass") is not None:
            self._resume = _Pass.from_state(state["pass"], self.device)
            if self._resume.finished():
                self._resume = None  # saved at a pass boundary: the next pass is a new one
        pass_gen = None if self._resume is None else self._resume.generator
        self.table._uniform_source = pass_gen if pass_gen is not None else self.generator


@dataclass
class _Pass:
    """One pass of :meth:`ImportanceSampler.__iter__`: the indices drawn so far, how many of them
    :meth:`~ImportanceSampler.update` has seen (trained on), the global draws still to come and, in
    distributed mode, the pass's own generator."""

    drawn: list[torch.Tensor]
    trained: int
    remaining: int
    generator: torch.Generator | None = None

    def pending(self) -> torch.Tensor:
        drawn = torch.cat(self.drawn) if self.drawn else torch.empty(0, dtype=torch.long)
        return drawn[min(self.trained, drawn.numel()) :]

    def finished(self) -> bool:
        return self.remaining == 0 and self.pending().numel() == 0

    def state_dict(self) -> dict[str, Any]:
        gen = self.generator
        return {"pending": self.pending().clone(), "remaining": self.remaining,
                "generator": None if gen is None else gen.get_state(),
                "generator_device": None if gen is None else str(gen.device)}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> _Pass:
        gen = None
        if state["generator"] is not None:
            gen = torch.Generator(device=state["generator_device"])
            gen.set_state(state["generator"])
        return cls([state["pending"].to(device)], 0, int(state["remaining"]), gen)


class IndexedDataset(torch.utils.data.Dataset):
    """Wrap a dataset so each item also returns its index: ``(*item, index)``.

    The index is what :meth:`ImportanceSampler.update` and :meth:`ImportanceSampler.weights_for` need.
    """

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (*item, index) if isinstance(item, tuple) else (item, index)
