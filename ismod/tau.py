r"""The equivalent batch increment τ and the switch threshold of Katharopoulos & Fleuret (2018).

For a presample of :math:`B` points scored :math:`g_i` (normalised to a probability vector) and a
batch resampled from it with weights :math:`1/(B g_i)`, the variance gain over uniform sampling is
:math:`\operatorname{tr} V_u - \operatorname{tr} V_g = \frac{S^2}{B}\sum_i (g_i - u)^2` with
:math:`u = 1/B`, and an importance-sampled batch of :math:`b` is worth a uniform batch of :math:`\tau b`,

.. math:: \tau = \Big(1 - \frac{\sum_i (g_i - u)^2}{\sum_i g_i^2}\Big)^{-1} = B \sum_i g_i^2 .

Importance sampling pays when :math:`\tau > \tau_{th} = 1 + \frac{B t_f}{b (t_f + t_b)}`
(Katharopoulos & Fleuret 2018, §3.3; slides 8–9). The authors' library takes a square root of the first expression; the
``sqrt`` option reproduces it for comparison.

Two terms the rule leaves out complete it (Chapter 5):

- the presample caps the gain: against the full gradient an importance-sampled batch is worth
  :math:`\tau_{\text{eff}} = 1/(1/\tau + b/B) \le B/b` uniform batches (:func:`presample_increment`);
- a larger batch buys proportionally fewer steps only below the critical batch size: with
  McCandlish et al.'s (2018) :math:`S(b) = S_{\min}(1 + B_{\text{noise}}/b)` steps to a target,
  importance sampling pays iff :math:`(1 + B_{\text{noise}}/(\tau_{\text{eff}} b))\,\tau_{th}
  < 1 + B_{\text{noise}}/b` (:func:`required_increment`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "equivalent_batch_increment",
    "switch_threshold",
    "presample_increment",
    "required_increment",
    "InTimeBar",
    "in_time_bar",
    "SpeedupPrediction",
    "predict_speedup",
    "variance_ratio",
    "sampled_sq_errors",
]


def equivalent_batch_increment(probs: torch.Tensor, *, sqrt: bool = False) -> float:
    r""":math:`\tau = (1 - \sum_i (g_i - u)^2 / \sum_i g_i^2)^{-1} = B\sum_i g_i^2` for a distribution
    :math:`g` over :math:`B` presampled points: 1 for uniform, :math:`B` for a point mass.

    ``sqrt=True`` returns :math:`1/\sqrt{1 - \sum_i (g_i - u)^2/\sum_i g_i^2}`, the authors' library's form.
    """
    g = torch.as_tensor(probs, dtype=torch.float64)
    if g.dim() != 1 or g.numel() == 0:
        raise ValueError(f"probs must be a non-empty 1-D tensor, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all() or (g < 0).any():
        raise ValueError("probs must be finite and non-negative")
    total = float(g.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"probs must sum to 1 (a distribution over the presample), got {total:.6g}"
        )
    tau = g.numel() * float((g**2).sum())
    return math.sqrt(tau) if sqrt else tau


def switch_threshold(presample: int, batch: int, t_forward: float, t_backward: float) -> float:
    r""":math:`\tau_{th} = 1 + B t_f / (b (t_f + t_b))`: the τ above which scoring a presample of
    :math:`B` to train on :math:`b` is cheaper than a uniform batch of :math:`\tau b`.
    Equals :math:`(B + 3b)/(3b)` when :math:`t_b = 2 t_f`."""
    for name, value in (("presample", presample), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if presample < batch:
        raise ValueError(f"presample B = {presample} must be at least the batch b = {batch}")
    for name, value in (("t_forward", t_forward), ("t_backward", t_backward)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive time, got {value!r}")
    return 1.0 + presample * t_forward / (batch * (t_forward + t_backward))


def _positive_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def presample_increment(tau: float, b: int, B: int) -> float:
    r""":math:`\tau_{\text{eff}} = 1/(1/\tau + b/B)`: what an importance-sampled batch of ``b`` drawn
    from a uniform presample of ``B`` is worth in uniform batches of ``b``, against the *full* gradient.

    τ compares the resampled batch with the presample's own mean; that mean is itself a uniform
    estimate with variance :math:`\operatorname{tr}\Sigma/B`, so the batch's error is
    :math:`\operatorname{tr}\Sigma\,(1/B + 1/(\tau b))` and :math:`\tau_{\text{eff}} < \min(\tau, B/b)`.
    ``tau`` may be ``math.inf`` (a perfect resampling): :math:`\tau_{\text{eff}} = B/b`."""
    b, B = _positive_count("b", b), _positive_count("B", B)
    if B < b:
        raise ValueError(f"the presample B = {B} must hold at least the batch b = {b}")
    if not (isinstance(tau, numbers.Real) and tau > 0 and not math.isnan(tau)):
        raise ValueError(f"tau must be a positive number (τ ≥ 1 for any scores), got {tau!r}")
    return 1.0 / (1.0 / float(tau) + b / B)


def required_increment(tau_threshold: float, noise_scale: float, b: int) -> float:
    r"""The smallest :math:`\tau_{\text{eff}}` at which importance steps reach a target loss sooner
    than uniform ones, when steps to a target follow :math:`S(b) = S_{\min}(1 + B_{\text{noise}}/b)`
    (McCandlish et al. 2018) and an importance step costs ``tau_threshold`` uniform steps.

    Importance sampling pays iff :math:`(1 + B_{\text{noise}}/(\tau_{\text{eff}} b))\,\tau_{th} <
    1 + B_{\text{noise}}/b`; with :math:`r = B_{\text{noise}}/b` the boundary is
    :math:`\tau_{\text{eff}} = r\tau_{th}/(1 + r - \tau_{th})`, which tends to :math:`\tau_{th}` as
    :math:`B_{\text{noise}} \gg b` (the rule as Katharopoulos & Fleuret state it) and is ``math.inf``
    when :math:`1 + r \le \tau_{th}`: above the critical batch size a bigger effective batch saves too
    few steps to pay for the scoring, at any τ."""
    b = _positive_count("b", b)
    if not (
        isinstance(tau_threshold, numbers.Real)
        and tau_threshold >= 1
        and math.isfinite(tau_threshold)
    ):
        raise ValueError(f"tau_threshold must be a finite number >= 1 (the cost of an importance step in uniform steps), got {tau_threshold!r}")  # fmt: skip
    if not (
        isinstance(noise_scale, numbers.Real) and noise_scale >= 0 and not math.isnan(noise_scale)
    ):
        raise ValueError(f"noise_scale (B_noise) must be a number >= 0, got {noise_scale!r}")
    if math.isinf(noise_scale):
        return float(tau_threshold)
    r = noise_scale / b
    margin = 1.0 + r - tau_threshold
    if margin <= 0:
        return math.inf
    return r * tau_threshold / margin


class InTimeBar(NamedTuple):
    """:func:`in_time_bar`'s answer: the smallest τ that pays and the presample size B/b where it does."""

    tau: float
    presample_ratio: float


def in_time_bar(backward_over_forward: float = 2.0, scoring_cost: float = 1.0) -> InTimeBar:
    r"""The smallest τ at which an importance step pays at equal time for *some* presample size, far
    below the critical batch size, and the presample ratio :math:`k = B/b` that attains it.

    Scoring a presample of :math:`B = kb` costs :math:`s\,t_f` per sample (``scoring_cost`` = s: 1 for
    a forward pass as costly as training's, less without autograd, 0 for scores the training step
    already computed), so :math:`\tau_{th} = 1 + ak` with :math:`a = s\,t_f/(t_f + t_b) = s/(1 + r)`
    and :math:`r` = ``backward_over_forward``. The step pays iff :math:`\tau_{\text{eff}} = 1/(1/\tau
    + 1/k) > \tau_{th}`, i.e. :math:`\tau > k\tau_{th}/(k - \tau_{th})`. Minimised over :math:`k`:
    :math:`k^* = 1/(\sqrt a\,(1 - \sqrt a))` and

    .. math:: \tau_{\min} = \frac{1}{(1 - \sqrt a)^2},

    which is :math:`3(2 + \sqrt 3)/2 \approx 5.6` at :math:`r = 2, s = 1` (Katharopoulos & Fleuret's
    cost model), 1 (with :math:`k^* = \infty`) for free scores, and ``math.inf`` when :math:`a \ge 1`:
    scoring a sample then costs as much as training it, and no presample pays."""
    for name, value in (
        ("backward_over_forward", backward_over_forward),
        ("scoring_cost", scoring_cost),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"{name} must be a finite number >= 0 (a time in forward passes), got {value!r}")  # fmt: skip
    a = scoring_cost / (1.0 + backward_over_forward)
    if a == 0:
        return InTimeBar(1.0, math.inf)
    if a >= 1:
        return InTimeBar(math.inf, math.nan)
    root = math.sqrt(a)
    return InTimeBar(1.0 / (1.0 - root) ** 2, 1.0 / (root * (1.0 - root)))


@dataclass(frozen=True)
class SpeedupPrediction:
    """:func:`predict_speedup`'s answer: what an importance step is worth (``tau_eff``) and costs
    (``tau_threshold``), both in uniform steps; the least ``tau_eff`` that pays (``required``); and
    the predicted ``speedup`` in time to a target loss over uniform sampling (above 1: it pays)."""

    tau_eff: float
    tau_threshold: float
    required: float
    speedup: float

    @property
    def pays(self) -> bool:
        """True when importance steps reach the target sooner than uniform ones (``speedup > 1``)."""
        return self.speedup > 1.0


def predict_speedup(
    tau: float,
    b: int,
    *,
    presample: int | None,
    t_forward: float = 1.0,
    t_backward: float = 2.0,
    noise_scale: float = math.inf,
) -> SpeedupPrediction:
    r"""Whether importance sampling pays in time, by the completed switch rule (Chapter 5, §5.6).

    With a ``presample`` of :math:`B` scored by a forward pass (Katharopoulos & Fleuret's
    Algorithm 1) an importance step on :math:`b` is worth :math:`\tau_{\text{eff}} = 1/(1/\tau + b/B)`
    uniform steps (:func:`presample_increment`) and costs
    :math:`\tau_{th} = 1 + B t_f/(b(t_f + t_b))` (:func:`switch_threshold`). With ``presample=None``
    the scores are free — read from earlier steps' logits, as
    :class:`~ismod.strategies.StaleBoundSampling` does, over all :math:`N` — so
    :math:`\tau_{\text{eff}} = \tau` and :math:`\tau_{th} = 1`.

    Steps to a target follow :math:`S(b) = S_{\min}(1 + B_{\text{noise}}/b)` (McCandlish et al.
    2018); with :math:`r = B_{\text{noise}}/b` the time to the target shrinks by

    .. math:: \text{speedup} = \frac{1 + r}{(1 + r/\tau_{\text{eff}})\,\tau_{th}}
              \;\to\; \frac{\tau_{\text{eff}}}{\tau_{th}} \quad (B_{\text{noise}} \gg b),

    which exceeds 1 exactly when :math:`\tau_{\text{eff}}` exceeds :func:`required_increment`.
    ``noise_scale`` (:math:`B_{\text{noise}}`, in samples) defaults to infinity, the rule as its
    authors state it; ``t_forward`` and ``t_backward`` matter only through their ratio."""
    # a running estimate of τ may dip below 1, the least that τ = BΣg² of one presample can be
    if not (isinstance(tau, numbers.Real) and tau > 0 and not math.isnan(tau)):
        raise ValueError(
            f"tau must be a positive number (τ = BΣg² of one presample is at least 1), got {tau!r}"
        )
    b = _positive_count("b", b)
    if presample is None:
        tau_eff, threshold = float(tau), 1.0
    else:
        tau_eff = presample_increment(tau, b, presample)
        threshold = switch_threshold(presample, b, t_forward, t_backward)
    required = required_increment(threshold, noise_scale, b)
    if math.isinf(noise_scale):
        speedup = tau_eff / threshold
    else:
        r = noise_scale / b
        speedup = (1.0 + r) / ((1.0 + r / tau_eff) * threshold)
    return SpeedupPrediction(tau_eff, threshold, required, speedup)


def _check_gram(gram: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.as_tensor(gram, dtype=torch.float64)
    g = torch.as_tensor(probs, dtype=torch.float64, device=k.device)
    if k.dim() != 2 or k.shape[0] != k.shape[1] or g.shape != k.shape[:1]:
        raise ValueError(
            f"gram must be (B, B) and probs (B,), got {tuple(k.shape)} and {tuple(g.shape)}"
        )
    if (g <= 0).any() or abs(float(g.sum()) - 1.0) > 1e-6:
        raise ValueError(
            "probs must be positive and sum to 1 (every presampled point must be drawable)"
        )
    return k, g


def variance_ratio(gram: torch.Tensor, probs: torch.Tensor) -> float:
    r"""The measured equivalent batch increment :math:`\operatorname{tr}V_u/\operatorname{tr}V_g`.

    For a presample of :math:`B` points with per-sample gradients :math:`G_i` (given by their Gram
    matrix :math:`K_{ij} = G_i\cdot G_j`) and a batch of :math:`b` drawn from it with replacement,
    with probabilities :math:`g` and weights :math:`1/(B g_i)`, the estimate of :math:`\bar G_U` has
    :math:`\operatorname{tr}V_g = \frac1b\big(\frac1{B^2}\sum_i K_{ii}/g_i - \lVert\bar G_U\rVert^2\big)`;
    uniform draws (:math:`g = u`) give :math:`\operatorname{tr}V_u`. Their ratio (independent of :math:`b`)
    is how many times larger a uniform batch must be to match the importance-sampled one: the quantity
    τ estimates.
    """
    k, g = _check_gram(gram, probs)
    n = g.numel()
    mean_sq = float(k.sum()) / n**2
    diag = torch.diagonal(k)
    uniform = float(diag.sum()) / n - mean_sq
    weighted = float((diag / g).sum()) / n**2 - mean_sq
    return uniform / weighted


def sampled_sq_errors(
    gram: torch.Tensor,
    probs: torch.Tensor,
    batch: int,
    repeats: int = 2000,
    *,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""Mean and standard error of :math:`\lVert \hat g - \bar G_U\rVert^2` over ``repeats`` batches of
    ``batch`` drawn with replacement from ``probs`` and weighted by :math:`1/(B g_i)` — the Monte Carlo
    check of the closed form in :func:`variance_ratio`, computed through the Gram matrix."""
    k, g = _check_gram(gram, probs)
    n = g.numel()
    draws = torch.multinomial(g.cpu(), repeats * batch, replacement=True, generator=generator).view(
        repeats, batch
    )
    counts = torch.zeros(repeats, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(repeats, batch, dtype=torch.float64)
    )
    coef = counts.to(k.device) / (batch * n * g) - 1.0 / n
    errors = ((coef @ k) * coef).sum(1)
    return float(errors.mean()), float(errors.std() / math.sqrt(repeats))
