"""Monte Carlo and importance sampling estimators (Chapter 1).

Plain Monte Carlo estimates :math:`\\mathbb{E}_p[f]` by :math:`\\frac1n\\sum_k f(X_k)`, :math:`X_k \\sim p`,
with error variance :math:`\\mathrm{Var}_p[f]/n`. Importance sampling draws :math:`Y_k \\sim q` instead and
weights each term by :math:`w = p/q`:
:math:`\\mathbb{E}_p[f] = \\mathbb{E}_q[w f] \\approx \\frac1n\\sum_k w(Y_k) f(Y_k)`, unbiased wherever
:math:`q > 0` on the support of :math:`p f` (Tokdar & Kass 2010; the loss-sampling report, §2.1).

Distributions are :class:`torch.distributions.Distribution` objects with an empty batch shape; ``f`` maps
a batch of ``n`` samples to a tensor of shape ``(n,)``. All statistics are accumulated in float64.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

__all__ = [
    "Estimate",
    "monte_carlo",
    "importance_sampling",
    "importance_draws",
    "estimate_from_draws",
    "log_importance_weights",
    "effective_sample_size",
    "seeded",
]


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its standard error and effective sample size.

    Attributes:
        value: the estimate of :math:`\\mathbb{E}_p[f]`.
        stderr: its estimated standard error (``nan`` when ``n == 1``: one draw says nothing
            about the spread).
        ess: effective sample size of the weights, :math:`(\\sum w)^2 / \\sum w^2`; equals ``n`` for
            plain Monte Carlo.
        n: the number of draws.
    """

    value: float
    stderr: float
    ess: float
    n: int

    @property
    def relative_stderr(self) -> float:
        """``stderr / |value|`` (``inf`` when the value is 0)."""
        return self.stderr / abs(self.value) if self.value != 0 else math.inf

    def __str__(self) -> str:
        return f"{self.value:.6g} ± {self.stderr:.2g} (n={self.n:,}, ESS={self.ess:,.0f})"


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the body with torch's RNGs seeded by ``seed``, restoring the global RNG state after.

    ``seed=None`` does nothing: draws then come from (and advance) the global RNG as usual.
    """
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError(f"n must be a positive integer number of draws, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return int(n)


def _check_distribution(name: str, dist: object) -> Distribution:
    if not isinstance(dist, Distribution):
        raise ValueError(
            f"{name} must be a torch.distributions.Distribution, got {type(dist).__name__}"
        )
    if dist.batch_shape != torch.Size():
        raise ValueError(
            f"{name} must be a single distribution (empty batch_shape), got batch_shape "
            f"{tuple(dist.batch_shape)}; wrap it in torch.distributions.Independent to make a "
            "multivariate distribution"
        )
    return dist


def _evaluate(
    f: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor, n: int
) -> torch.Tensor:
    values = f(samples)
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    if values.shape != (n,):
        raise ValueError(
            f"f must return a 1-D tensor with one value per sample, shape ({n},); got shape "
            f"{tuple(values.shape)}"
        )
    values = values.to(torch.float64)
    nan = torch.isnan(values)
    if nan.any():
        raise ValueError(f"f returned NaN at {int(nan.sum())} of {n} samples")
    inf = torch.isinf(values)
    if inf.any():
        raise ValueError(f"f returned an infinite value at {int(inf.sum())} of {n} samples")
    return values


def log_importance_weights(p: Distribution, q: Distribution, samples: torch.Tensor) -> torch.Tensor:
    """Log importance weights :math:`\\log w = \\log p(y) - \\log q(y)` of samples ``y`` (float64).

    A sample outside the support of ``p`` gets :math:`\\log w = -\\infty` (weight 0) instead of the
    error that ``p.log_prob`` would raise for it.
    """
    p = _check_distribution("p", p)
    q = _check_distribution("q", q)
    inside = p.support.check(samples)
    p_unchecked = copy.copy(p)
    p_unchecked._validate_args = False  # samples outside p's support are handled just below
    log_p = p_unchecked.log_prob(samples).to(torch.float64)
    log_p = torch.where(inside, log_p, torch.full_like(log_p, -math.inf))
    return log_p - q.log_prob(samples).to(torch.float64)


def importance_draws(
    f: Callable[[torch.Tensor], torch.Tensor],
    p: Distribution,
    q: Distribution,
    n: int,
    *,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` samples :math:`y_k \\sim q`; return ``(f(y), log w(y))``, both float64 of shape ``(n,)``.

    The raw material of :func:`importance_sampling`, for readers who want the individual terms
    (a running estimate, a histogram of weights).
    """
    n = _check_n(n)
    p = _check_distribution("p", p)
    q = _check_distribution("q", q)
    if p.event_shape != q.event_shape:
        raise ValueError(
            f"q must have the event shape of p, {tuple(p.event_shape)}; got {tuple(q.event_shape)}"
        )
    with seeded(seed):
        samples = q.sample((n,))
    values = _evaluate(f, samples, n)
    log_w = log_importance_weights(p, q, samples).reshape(n)
    bad = torch.isnan(log_w) | (log_w == math.inf)
    if bad.any():
        raise ValueError(
            f"q: importance weights p/q are not finite at {int(bad.sum())} of {n} samples; "
            "q must have positive density wherever p does"
        )
    if (log_w == -math.inf).all():
        raise ValueError(
            f"q: importance weights p/q are zero at all {n} samples: q puts its mass where p has "
            "none; choose a proposal that overlaps p"
        )
    return values, log_w


def effective_sample_size(log_weights: torch.Tensor | Sequence[float]) -> float:
    """Effective sample size :math:`(\\sum_k w_k)^2 / \\sum_k w_k^2` from log weights.

    Computed in log space, so weights that would overflow are fine. Equals ``n`` for equal weights
    and 1 when a single weight dominates (Kong 1992; Owen 2013, §9.3).
    """
    lw = torch.as_tensor(log_weights, dtype=torch.float64)
    if lw.dim() != 1 or lw.numel() == 0:
        raise ValueError(f"log_weights must be a non-empty 1-D tensor, got shape {tuple(lw.shape)}")
    nan = torch.isnan(lw)
    if nan.any():
        raise ValueError(f"log_weights contain NaN at {int(nan.sum())} positions")
    if (lw == math.inf).any():
        raise ValueError(
            f"log_weights contain +inf at {int((lw == math.inf).sum())} positions (infinite weights)"
        )
    if (lw == -math.inf).all():
        raise ValueError("log_weights are all -inf: every weight is zero, so the ESS is undefined")
    return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))


def _stderr_of_mean(terms: torch.Tensor) -> float:
    n = terms.numel()
    return float(terms.std(correction=1) / math.sqrt(n)) if n > 1 else math.nan


def monte_carlo(
    f: Callable[[torch.Tensor], torch.Tensor],
    p: Distribution,
    n: int,
    *,
    seed: int | None = None,
) -> Estimate:
    """Plain Monte Carlo: :math:`\\hat\\mu = \\frac1n\\sum_k f(X_k)`, :math:`X_k \\sim p`.

    ``stderr`` is the sample standard deviation of :math:`f(X_k)` over :math:`\\sqrt n`;
    ``ess`` is ``n``. ``seed`` makes the call reproducible without touching the global RNG.
    """
    n = _check_n(n)
    p = _check_distribution("p", p)
    with seeded(seed):
        samples = p.sample((n,))
    values = _evaluate(f, samples, n)
    return Estimate(value=float(values.mean()), stderr=_stderr_of_mean(values), ess=float(n), n=n)


def importance_sampling(
    f: Callable[[torch.Tensor], torch.Tensor],
    p: Distribution,
    q: Distribution,
    n: int,
    *,
    self_normalized: bool = False,
    seed: int | None = None,
) -> Estimate:
    """Importance sampling estimate of :math:`\\mathbb{E}_p[f]` from ``n`` draws of the proposal ``q``.

    Standard: :math:`\\hat\\mu = \\frac1n\\sum_k w_k f(y_k)`, :math:`w = p/q`, unbiased; ``stderr`` is
    the sample standard deviation of :math:`w f` over :math:`\\sqrt n`.

    Self-normalised (``self_normalized=True``): :math:`\\hat\\mu = \\sum_k w_k f_k / \\sum_k w_k`, which
    needs ``p`` only up to a constant; biased, consistent. ``stderr`` is the delta-method
    :math:`\\sqrt{\\sum_k w_k^2 (f_k - \\hat\\mu)^2} / \\sum_k w_k` (Owen 2013, §9.2).

    ``ess`` is :func:`effective_sample_size` of the weights in both cases.
    """
    values, log_w = importance_draws(f, p, q, n, seed=seed)
    return estimate_from_draws(values, log_w, self_normalized=self_normalized)


def estimate_from_draws(
    values: torch.Tensor, log_weights: torch.Tensor, *, self_normalized: bool = False
) -> Estimate:
    """The :func:`importance_sampling` estimate from draws already made by :func:`importance_draws`."""
    values = torch.as_tensor(values, dtype=torch.float64)
    log_w = torch.as_tensor(log_weights, dtype=torch.float64)
    if values.dim() != 1 or values.shape != log_w.shape:
        raise ValueError(
            "values and log_weights must be 1-D tensors of the same length; got shapes "
            f"{tuple(values.shape)} and {tuple(log_w.shape)}"
        )
    n = values.numel()
    ess = effective_sample_size(log_w)
    if self_normalized:
        w = torch.exp(log_w - log_w.max())  # a common factor cancels in the ratio
        total = w.sum()
        value = (w * values).sum() / total
        stderr = torch.sqrt((w.square() * (values - value).square()).sum()) / total
        return Estimate(value=float(value), stderr=float(stderr), ess=ess, n=n)
    w = torch.exp(log_w)
    if torch.isinf(w).any():
        raise ValueError(
            "q: importance weights p/q overflow float64; if p is known only up to a constant, "
            "use self_normalized=True"
        )
    terms = w * values
    return Estimate(value=float(terms.mean()), stderr=_stderr_of_mean(terms), ess=ess, n=n)
