"""Convex test beds for importance-sampled SGD (Chapter 2): closed-form per-sample gradients.

For an objective :math:`F(x) = \\frac1N\\sum_i f_i(x)` and a minibatch of ``b`` indices drawn with
replacement with probabilities :math:`p`, the weighted estimate
:math:`\\hat g = \\frac1b\\sum_j \\frac{G_{I_j}}{N p_{I_j}}` is unbiased, and the trace of its covariance is

.. math:: \\operatorname{tr}\\operatorname{Cov}[\\hat g] = \\frac1b\\Big(\\frac1{N^2}\\sum_i
   \\frac{\\lVert G_i\\rVert^2}{p_i} - \\lVert \\bar G\\rVert^2\\Big),

minimised by :math:`p_i \\propto \\lVert G_i\\rVert` (Needell et al. 2014; Zhao & Zhang 2015).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .diagnostics import variance_from_norms
from .sampling import ImportanceSampler, draw, probabilities

__all__ = [
    "Problem",
    "least_squares_problem",
    "digits_logistic_problem",
    "gradient_variance",
    "STRATEGIES",
    "SGDHistory",
    "run_sgd",
    "noise_scale_at",
    "steps_to_target",
    "RuleCheck",
    "rule_check",
]


@dataclass(frozen=True)
class Problem:
    """:math:`F(x) = \\frac1N\\sum_i f_i(x)` for least squares or multinomial logistic regression.

    ``kind="least_squares"``: :math:`f_i = \\frac12 (a_i^\\top x - y_i)^2`, ``targets`` real.
    ``kind="logistic"``: :math:`f_i = \\mathrm{CE}(W a_i, y_i) + \\frac{\\lambda}2\\lVert W\\rVert^2`,
    ``targets`` class indices, :math:`x = \\mathrm{vec}(W)`.
    """

    features: torch.Tensor
    targets: torch.Tensor
    kind: str
    num_classes: int = 1
    l2: float = 0.0
    name: str = ""

    @property
    def n(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1] * (self.num_classes if self.kind == "logistic" else 1)

    def init(self) -> torch.Tensor:
        return torch.zeros(self.dim, dtype=self.features.dtype)

    def losses(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample losses :math:`f_i(x)` (of ``idx``, or all)."""
        a = self.features if idx is None else self.features[idx]
        y = self.targets if idx is None else self.targets[idx]
        if self.kind == "least_squares":
            return 0.5 * (a @ x - y) ** 2
        w = x.view(self.num_classes, -1)
        ce = torch.nn.functional.cross_entropy(a @ w.T, y, reduction="none")
        return ce + 0.5 * self.l2 * (x @ x)

    def grads(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample gradients :math:`G_i = \\nabla f_i(x)`, shape (len(idx) or N, dim), closed form."""
        a = self.features if idx is None else self.features[idx]
        y = self.targets if idx is None else self.targets[idx]
        if self.kind == "least_squares":
            return (a @ x - y)[:, None] * a
        w = x.view(self.num_classes, -1)
        err = torch.softmax(a @ w.T, 1)
        err[torch.arange(len(y)), y] -= 1.0
        return (err[:, :, None] * a[:, None, :]).flatten(1) + self.l2 * x

    def objective(self, x: torch.Tensor) -> float:
        return float(self.losses(x).mean())

    def lipschitz(self) -> torch.Tensor:
        """Per-sample smoothness constants: :math:`\\lVert a_i\\rVert^2` (least squares),
        :math:`\\frac12\\lVert a_i\\rVert^2 + \\lambda` (softmax cross-entropy)."""
        sq = (self.features**2).sum(1)
        return sq if self.kind == "least_squares" else 0.5 * sq + self.l2

    def minimum(self) -> float:
        """:math:`F(x^*)`: exact for least squares, by L-BFGS for logistic regression."""
        if self.kind == "least_squares":
            x = torch.linalg.lstsq(self.features, self.targets[:, None]).solution[:, 0]
            return self.objective(x)
        x = self.init().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure():
            opt.zero_grad()
            loss = self.losses(x).mean()
            loss.backward()
            return loss

        opt.step(closure)
        return self.objective(x.detach())


def least_squares_problem(
    n: int = 2000, dim: int = 20, *, norm_spread: float = 100.0, noise: float = 0.1, seed: int = 0
) -> Problem:
    """Least squares whose row norms :math:`\\lVert a_i\\rVert` spread log-uniformly over a factor
    ``norm_spread``: the case where p ∝ ||a_i||² (randomised Kaczmarz) helps."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, dim, generator=g, dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    norms = norm_spread ** torch.rand(n, 1, generator=g, dtype=torch.float64)
    a = directions * norms
    x_true = torch.randn(dim, generator=g, dtype=torch.float64)
    y = a @ x_true + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return Problem(
        a, y, "least_squares", name=f"least squares, N={n}, row norms spread ×{norm_spread:g}"
    )


def digits_logistic_problem(*, l2: float = 1e-3) -> Problem:
    """Multinomial logistic regression on scikit-learn's bundled digits (1797 images, 8×8, 10 classes).

    Features are scaled to [0, 1] with a constant 1 appended for the bias.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "digits_logistic_problem needs scikit-learn: pip install scikit-learn"
        ) from err
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float64) / 16.0
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    y = torch.tensor(data.target, dtype=torch.long)
    return Problem(x, y, "logistic", num_classes=10, l2=l2, name="logistic regression, digits")


def gradient_variance(grads: torch.Tensor, probs: torch.Tensor, batch_size: int = 1) -> float:
    """Trace of the covariance of :math:`\\frac1b\\sum_j G_{I_j}/(N p_{I_j})`, draws with replacement.

    :math:`\\frac1b\\big(\\frac1{N^2}\\sum_i \\lVert G_i\\rVert^2/p_i - \\lVert\\bar G\\rVert^2\\big)`.
    """
    if grads.dim() != 2 or probs.shape != grads.shape[:1]:
        raise ValueError(
            f"grads must be (N, dim) and probs (N,), got {tuple(grads.shape)} and {tuple(probs.shape)}"
        )
    mean_sq = float((grads.mean(0).to(torch.float64) ** 2).sum())
    return variance_from_norms((grads.to(torch.float64) ** 2).sum(1), mean_sq, probs, batch_size)


STRATEGIES: tuple[str, ...] = ("uniform", "lipschitz", "loss", "oracle")


@dataclass
class SGDHistory:
    """What :func:`run_sgd` recorded at each evaluation point."""

    strategy: str
    epochs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    suboptimality: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)


class _SamplingRule:
    """:func:`run_sgd`'s sampling for ``strategy``: its probabilities at an iterate, a batch drawn with
    its weights :math:`1/(Np)`, and, for ``"loss"``, the losses of the batch recorded after the draw."""

    def __init__(self, problem: Problem, strategy: str, smoothing: float, gen: torch.Generator,
                 x: torch.Tensor) -> None:  # fmt: skip
        self.problem, self.strategy, self.smoothing, self.gen = problem, strategy, smoothing, gen
        n = problem.n
        self.uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
        self.fixed: torch.Tensor | None = None
        self.sampler: ImportanceSampler | None = None
        if strategy == "lipschitz":
            self.fixed = probabilities(problem.lipschitz(), "proportional", smoothing=smoothing)
        elif strategy == "loss":
            self.sampler = ImportanceSampler(n, method="proportional", smoothing=smoothing, generator=gen,
                                             initial_score=1.0, dtype=torch.float64)  # fmt: skip
            self.sampler.update(torch.arange(n), problem.losses(x).clamp_min(1e-12))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        if self.strategy == "uniform":
            return self.uniform
        if self.fixed is not None:
            return self.fixed
        if self.sampler is not None:
            return self.sampler.probabilities()
        norms = self.problem.grads(x).norm(dim=1)  # the oracle: every per-sample gradient
        return probabilities(norms.clamp_min(1e-300), "proportional", smoothing=self.smoothing)

    def batch(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampler is not None:
            return self.sampler.sample(batch_size)
        if self.strategy == "uniform":
            idx = torch.randint(self.problem.n, (batch_size,), generator=self.gen)
            return idx, torch.ones(batch_size, dtype=torch.float64)
        return draw(self.probs(x), batch_size, generator=self.gen)

    def observe(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        if self.sampler is not None:
            self.sampler.update(idx, self.problem.losses(x, idx).clamp_min(1e-12))


def run_sgd(
    problem: Problem,
    strategy: str,
    *,
    lr: float,
    batch_size: int = 16,
    epochs: float = 10.0,
    smoothing: float = 0.0,
    evaluations: int = 30,
    minimum: float | None = None,
    seed: int = 0,
) -> SGDHistory:
    """Importance-sampled minibatch SGD, :math:`x \\leftarrow x - \\eta\\,\\frac1b\\sum_j G_{I_j}/(N p_{I_j})`.

    Strategies: ``"uniform"``; ``"lipschitz"`` (fixed :math:`p \\propto L_i`); ``"loss"``
    (:math:`p \\propto` each sample's latest seen loss, kept in an :class:`~ismod.sampling.ImportanceSampler`,
    all losses computed once at the start); ``"oracle"`` (:math:`p \\propto \\lVert G_i\\rVert` at the
    current iterate: every per-sample gradient, every step — the unaffordable optimum). All draw with
    replacement; ``smoothing`` mixes in the uniform distribution. Wall-clock time counts sampling and
    steps, not the evaluations.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if lr <= 0 or batch_size < 1 or epochs <= 0:
        raise ValueError(
            f"lr, batch_size and epochs must be positive; got {lr}, {batch_size}, {epochs}"
        )
    n = problem.n
    steps = max(1, round(epochs * n / batch_size))
    eval_at = set(torch.linspace(0, steps, evaluations).round().long().tolist())
    minimum = problem.minimum() if minimum is None else minimum
    gen = torch.Generator().manual_seed(seed)
    x = problem.init()
    hist = SGDHistory(strategy)
    start = time.perf_counter()
    rule = _SamplingRule(problem, strategy, smoothing, gen, x)
    elapsed = time.perf_counter() - start
    for step in range(steps + 1):
        if step in eval_at:
            hist.epochs.append(step * batch_size / n)
            hist.seconds.append(elapsed)
            hist.suboptimality.append(max(problem.objective(x) - minimum, 1e-16))
            hist.variance.append(gradient_variance(problem.grads(x), rule.probs(x), batch_size))
        if step == steps:
            break
        start = time.perf_counter()
        idx, w = rule.batch(x, batch_size)
        g = problem.grads(x, idx)
        rule.observe(x, idx)  # the losses a forward pass would give, before the step
        x = x - lr * (w[:, None] * g).mean(0)
        elapsed += time.perf_counter() - start
    return hist


# --- the completed switch rule, checked where the noise scale is known (Chapter 5) ------------------


def noise_scale_at(
    problem: Problem, x: torch.Tensor, probs: torch.Tensor | None = None
) -> dict[str, float]:
    r"""The closed-form gradient noise at ``x``: :math:`|G|^2`, the trace of the per-sample gradient
    covariance under sampling ``probs`` (uniform by default; draws weighted by :math:`1/(Np_i)`),
    :math:`B_{\text{simple}} = \operatorname{tr}\Sigma/|G|^2` and McCandlish et al.'s (2018)
    Hessian-weighted :math:`B_{\text{noise}} = \operatorname{tr}(H\Sigma)/(G^\top H G)` (least squares:
    :math:`H = A^\top A/N`)."""
    if problem.kind != "least_squares":
        raise ValueError(
            f"noise_scale_at needs a least-squares problem (its Hessian is constant), got {problem.kind!r}"
        )
    grads = problem.grads(x)
    n = problem.n
    p = torch.full((n,), 1.0 / n, dtype=grads.dtype) if probs is None else probs.to(grads.dtype)
    mean = grads.mean(0)
    scaled = grads / (n * p)[:, None]  # the weighted per-sample estimates of G
    centred = scaled - mean
    cov = (p[:, None] * centred).T @ centred
    hessian = problem.features.T @ problem.features / n
    grad_sq = float(mean @ mean)
    trace = float(torch.trace(cov))
    return {"grad_sq": grad_sq, "trace": trace, "b_simple": trace / grad_sq if grad_sq > 0 else math.inf,
            "b_noise": float(torch.trace(hessian @ cov)) / float(mean @ hessian @ mean)}  # fmt: skip


def steps_to_target(problem: Problem, batch_size: int, lr: float | Sequence[float], target: float, *,
                    importance: bool = False, presample: int | None = None, repeats: int = 16,
                    max_steps: int = 20_000, seed: int = 0, minimum: float | None = None,
                    first: bool = False) -> torch.Tensor:  # fmt: skip
    r"""Steps each of ``repeats`` independent SGD runs from :meth:`Problem.init` takes to bring
    :math:`F(x) - F^*` to ``target`` or below (``inf`` if not within ``max_steps``, or diverged), for each
    learning rate in ``lr``: a tensor (len(lr), repeats), all runs advanced together.

    Uniform: :math:`b` indices drawn with replacement. ``importance``: :math:`p_i \propto \lVert G_i(x)\rVert`
    at the current iterate, over all :math:`N` points, or, with ``presample`` = B, over a uniform
    presample of :math:`B` (with replacement) from which the batch of :math:`b` is resampled —
    Katharopoulos & Fleuret's scheme with exact scores; weights :math:`1/(Np_i)` resp. :math:`1/(Bg_i)`.
    ``first=True`` stops once some learning rate's median has reached the target: the smallest median
    over learning rates is then exact, and every run still going reads ``inf``."""
    if problem.kind != "least_squares":
        raise ValueError(f"steps_to_target needs a least-squares problem, got {problem.kind!r}")
    rates = torch.as_tensor(
        [lr] if isinstance(lr, (int, float)) else list(lr), dtype=problem.features.dtype
    )
    if batch_size < 1 or target <= 0 or repeats < 1 or rates.numel() == 0 or (rates <= 0).any():
        raise ValueError(f"batch_size, every lr, target and repeats must be positive; got {batch_size}, {lr}, {target}, {repeats}")  # fmt: skip
    if presample is not None and (not importance or presample < batch_size):
        raise ValueError(
            f"presample (B = {presample}) needs importance=True and B >= batch_size = {batch_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    a, y = problem.features, problem.targets
    n, runs = problem.n, rates.numel() * repeats
    minimum = problem.minimum() if minimum is None else minimum
    step_size = rates.repeat_interleave(repeats)[:, None]
    x = problem.init().repeat(runs, 1)
    steps = torch.full((runs,), math.inf, dtype=torch.float64)
    live = torch.ones(runs, dtype=torch.bool)
    start_gap = problem.objective(problem.init()) - minimum
    for step in range(max_steps + 1):
        gap = 0.5 * ((x @ a.T - y) ** 2).mean(1) - minimum
        reached = (gap <= target) & live
        steps[reached] = step
        live &= (
            ~reached & torch.isfinite(gap) & (gap < 1e6 * start_gap)
        )  # a diverged run stops, at inf
        if not live.any() or step == max_steps:
            break
        if first and torch.isfinite(steps.view(rates.numel(), repeats).median(1).values).any():
            break
        if not importance:
            idx = torch.randint(n, (runs, batch_size), generator=gen)
            weight = torch.ones(runs, batch_size, dtype=x.dtype)
        else:
            pool = torch.randint(n, (runs, presample), generator=gen) if presample else None
            feats = a.expand(runs, n, a.shape[1]) if pool is None else a[pool]  # (R, N or B, d)
            targets = y.expand(runs, n) if pool is None else y[pool]
            norms = ((feats @ x[:, :, None])[..., 0] - targets).abs() * feats.norm(dim=-1)
            norms = torch.where(live[:, None], norms, torch.ones_like(norms)) + 1e-300
            probs = norms / norms.sum(1, keepdim=True)
            pick = torch.multinomial(probs, batch_size, replacement=True, generator=gen)
            weight = 1.0 / (probs.shape[1] * probs.gather(1, pick))
            idx = pick if pool is None else pool.gather(1, pick)
        feats, targets = a[idx], y[idx]  # (R, b, d), (R, b)
        resid = (feats @ x[:, :, None])[..., 0] - targets
        grad = ((weight * resid)[:, :, None] * feats).mean(1)
        x = torch.where(live[:, None], x - step_size * grad, x)
    return steps.view(rates.numel(), repeats)


@dataclass(frozen=True)
class RuleCheck:
    """:func:`rule_check`'s measurements and predictions, per batch size in ``batch_sizes``."""

    batch_sizes: tuple[int, ...]
    steps_uniform: tuple[float, ...]  # measured (median over repeats, best learning rate)
    steps_importance: tuple[float, ...]  # p ∝ |G_i| over all N
    steps_presample: tuple[float, ...]  # p ∝ |G_i| within a uniform presample of B = ratio · b
    s_min: float  # fitted from the uniform steps, S(b) = S_min (1 + B_crit / b)
    b_crit: float
    b_simple: float  # closed form at the target, on the full-gradient path
    b_noise: float
    tau: float  # variance ratio uniform / p ∝ |G_i| at the target
    presample_ratio: int

    def predicted(self, increment: float, b: int) -> float:
        """Steps an importance-sampled batch of ``b`` worth ``increment`` uniform batches should take."""
        return self.s_min * (1.0 + self.b_crit / (increment * b))

    @property
    def tau_eff(self) -> float:
        from .tau import presample_increment

        return presample_increment(self.tau, 1, self.presample_ratio)


def rule_check(problem: Problem, target: float, *, batch_sizes: tuple[int, ...] = (1, 4, 16, 64),
               lrs: Sequence[float] | None = None, presample_ratio: int = 3, repeats: int = 16,
               max_steps: int = 800, seed: int = 0) -> RuleCheck:  # fmt: skip
    r"""The completed switch rule against SGD on least squares, where every term has a closed form.

    Steps to ``target`` are measured (:func:`steps_to_target`, each at its best learning rate of
    ``lrs``) for uniform batches, importance sampling over all N and over a presample of B = ratio·b.
    McCandlish et al.'s :math:`S(b) = S_{\min}(1 + B_{\text{crit}}/b)` is fitted to the uniform steps
    (least squares in 1/b), and the closed-form :math:`B_{\text{simple}}`, :math:`B_{\text{noise}}` and τ
    (:func:`noise_scale_at` with and without :math:`p \propto \lVert G_i\rVert`) are taken where
    full-gradient descent first reaches the target. The rule predicts :math:`S_{\min}(1 +
    B_{\text{crit}}/(\tau b))` steps with importance sampling and :math:`S_{\min}(1 + B_{\text{crit}}/(\tau_{\text{eff}} b))`
    with the presample, :math:`\tau_{\text{eff}} = 1/(1/\tau + 1/\text{ratio})`."""
    minimum = problem.minimum()
    curvature = float(
        torch.linalg.eigvalsh(problem.features.T @ problem.features / problem.n).max()
    )
    if lrs is None:  # from the full-gradient stability limit 2/λ_max down by 0.6 a time
        lrs = [2.0 / curvature * 0.6**k for k in range(12)]
    measured: dict[str, list[float]] = {"u": [], "is": [], "pre": []}
    for b in batch_sizes:
        for key, options in (("u", {}), ("is", {"importance": True}),
                             ("pre", {"importance": True, "presample": presample_ratio * b})):  # fmt: skip
            steps = steps_to_target(problem, b, lrs, target, repeats=repeats, max_steps=max_steps, seed=seed,
                                    minimum=minimum, first=True, **options)  # fmt: skip
            measured[key].append(float(steps.median(1).values.min()))
    # S = S_min + (S_min B_crit)/b, fitted in relative terms (rows divided by S): every b counts alike
    inverse = torch.tensor([1.0 / b for b in batch_sizes], dtype=torch.float64)
    observed = torch.tensor(measured["u"], dtype=torch.float64)
    design = torch.stack([torch.ones_like(inverse), inverse], 1) / observed[:, None]
    coef = torch.linalg.lstsq(design, torch.ones_like(observed)[:, None]).solution[:, 0]
    s_min, slope = float(coef[0]), float(coef[1])
    # the closed-form terms where full-gradient descent first reaches the target
    x = problem.init()
    while problem.objective(x) - minimum > target:
        x = x - problem.grads(x).mean(0) / curvature
    norms = problem.grads(x).norm(dim=1)
    uniform = noise_scale_at(problem, x)
    weighted = noise_scale_at(problem, x, norms / norms.sum())
    return RuleCheck(tuple(batch_sizes), tuple(measured["u"]), tuple(measured["is"]), tuple(measured["pre"]),
                     s_min, slope / s_min, uniform["b_simple"], uniform["b_noise"],
                     uniform["trace"] / weighted["trace"], presample_ratio)  # fmt: skip
