"""The book's one rule for "significant": paired per-seed differences, a t-interval, Holm's correction.

Every chapter that compares arms calls :func:`paired_difference` on the seeds two arms share, with
:func:`holm` and :func:`tost` over its declared primary comparisons, through :mod:`ismod.verdicts`. Student's t
distribution is computed here in closed form (integer degrees of freedom), so the package needs no
SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "t_cdf",
    "t_quantile",
    "PairedDifference",
    "paired_difference",
    "holm",
    "tost",
    "detectable_difference",
    "verdict",
]


def t_cdf(t: float, df: int) -> float:
    r"""P(T ≤ t) for Student's t with ``df`` (a positive integer) degrees of freedom.

    Abramowitz & Stegun 26.7.3–4: with θ = atan(t/√ν), :math:`P(|T| \le |t|)` is a finite series in
    cos θ.
    """
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"df must be a positive integer, got {df!r}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c, s = math.cos(theta), math.sin(theta)
    if df % 2 == 1:
        term, total = c, 0.0
        if df > 1:
            total = c
            for k in range(3, df - 1, 2):  # c + (2/3)c³ + (2·4)/(3·5)c⁵ + … up to c^(ν−2)
                term *= c * c * (k - 1) / k
                total += term
        inside = 2.0 / math.pi * (theta + s * total)
    else:
        term, total = 1.0, 1.0
        for k in range(2, df - 1, 2):  # 1 + (1/2)c² + (1·3)/(2·4)c⁴ + … up to c^(ν−2)
            term *= c * c * (k - 1) / k
            total += term
        inside = s * total
    inside = min(max(inside, 0.0), 1.0)
    return 0.5 + 0.5 * inside if t >= 0 else 0.5 - 0.5 * inside


def t_quantile(p: float, df: int) -> float:
    """The t such that :func:`t_cdf` (t, df) = ``p`` (bisection to 1e-12), for p in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie in (0, 1), got {p!r}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of the per-seed differences a − b, its t-interval and the two-sided p-value of 'no difference'."""

    mean: float
    low: float
    high: float
    p_value: float
    seeds: int

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (p = {self.p_value:.3g}, {self.seeds} seeds)"


def paired_difference(
    a: list[float], b: list[float], *, confidence: float = 0.95
) -> PairedDifference:
    r"""Paired comparison of two arms measured on the same seeds (``a[i]`` and ``b[i]`` share seed i):
    :math:`d_i = a_i - b_i`, mean :math:`\bar d \pm t_{n-1} s_d/\sqrt{n}`, and
    :math:`p = 2 P(T_{n-1} > |\bar d| / (s_d/\sqrt{n}))`.

    Needs at least two pairs; a zero spread gives p = 0 (or 1 when the mean is 0 as well)."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up seed by seed; got {len(a)} and {len(b)} values")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 seeds, got {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = 2.0 * (1.0 - t_cdf(abs(mean) / se, n - 1))
    return PairedDifference(mean, mean - half, mean + half, min(max(p, 0.0), 1.0), n)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (family-wise error control, any dependence):
    sorted ascending, adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)); returned in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _paired_moments(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean and standard error of the per-seed differences a − b, and the number of pairs."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up seed by seed; got {len(a)} and {len(b)} values")
    n = len(a)
    if n < 2:
        raise ValueError(f"a paired test needs at least 2 seeds, got {n}")
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return mean, sd / math.sqrt(n), n


def tost(a: list[float], b: list[float], margin: float) -> float:
    r"""Two one-sided paired t-tests (Schuirmann's TOST) of equivalence, :math:`|\mathbb{E}(a - b)| <`
    ``margin``: the larger of :math:`P(T_{n-1} \ge (\bar d + m)/\mathrm{se})` (against
    :math:`\mu \le -m`) and :math:`P(T_{n-1} \le (\bar d - m)/\mathrm{se})` (against :math:`\mu \ge m`).
    Small means equivalent within ±m; a wide interval never is, whatever its mean."""
    if not (isinstance(margin, (int, float)) and margin > 0 and math.isfinite(margin)):
        raise ValueError(
            f"margin must be a positive number (in the measurement's units), got {margin!r}"
        )
    mean, se, n = _paired_moments(a, b)
    if se == 0:
        return 0.0 if abs(mean) < margin else 1.0
    p_lower = 1.0 - t_cdf((mean + margin) / se, n - 1)
    p_upper = t_cdf((mean - margin) / se, n - 1)
    return min(max(p_lower, p_upper, 0.0), 1.0)


def detectable_difference(
    sd: float, seeds: int, *, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> float:
    r"""The smallest true difference a paired t-test on ``seeds`` pairs with spread ``sd`` detects with
    probability ``power`` at two-sided level ``alpha``/``comparisons`` (Bonferroni, the conservative
    bound on Holm): :math:`(t_{1-\alpha/(2k),\,n-1} + t_{\text{power},\,n-1})\,s/\sqrt n`."""
    if not (isinstance(seeds, int) and seeds >= 2):
        raise ValueError(f"seeds must be an integer >= 2, got {seeds!r}")
    if not (sd >= 0 and math.isfinite(sd)):
        raise ValueError(f"sd must be a finite spread >= 0, got {sd!r}")
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    if not (isinstance(comparisons, int) and comparisons >= 1):
        raise ValueError(f"comparisons must be a positive integer, got {comparisons!r}")
    df = seeds - 1
    crit = t_quantile(1 - alpha / (2 * comparisons), df) + t_quantile(power, df)
    return crit * sd / math.sqrt(seeds)


def verdict(difference_p: float, mean: float, equivalence_p: float, margin: float,
            *, alpha: float = 0.05) -> str:  # fmt: skip
    """The book's words for a comparison, from its (Holm-adjusted) p-values: ``"higher"`` or
    ``"lower"`` when the difference test rejects, ``"equivalent within ±m"`` when the TOST does,
    else ``"inconclusive"``. "No detected difference" is never "the same": only the TOST says that."""
    if difference_p < alpha:
        return "higher" if mean > 0 else "lower"
    if equivalence_p < alpha:
        return f"equivalent within ±{margin:g}"
    return "inconclusive"
