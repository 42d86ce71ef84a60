import math

import pytest
import torch

from ismod.diagnostics import distribution_summary, weighted_mean_bias
from ismod.sampling import probabilities


def test_summary_of_uniform():
    s = distribution_summary(torch.full((8,), 1 / 8))
    assert s["max_weight"] == pytest.approx(1.0)
    assert s["effective_fraction"] == pytest.approx(1.0)
    assert s["entropy"] == pytest.approx(math.log(8))
    assert s["kl_from_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_summary_of_skewed():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    s = distribution_summary(p)
    assert s["max_weight"] == pytest.approx(1 / (4 * 0.25))
    assert s["effective_fraction"] == pytest.approx(1 / (4 * 0.375))
    assert s["kl_from_uniform"] == pytest.approx(math.log(4) - 1.5 * math.log(2))


def test_bias_with_replacement_is_within_noise():
    g = torch.Generator().manual_seed(0)
    values = torch.rand(50, generator=g, dtype=torch.float64)
    p = probabilities(torch.rand(50, generator=g, dtype=torch.float64) + 0.05, "proportional")
    bias, se = weighted_mean_bias(values, p, 10, replacement=True, repeats=3000, generator=g)
    assert bias < 4 * se


def test_bias_without_replacement_is_detected():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.3, 0.3] + [0.05] * 8, dtype=torch.float64)
    values = torch.tensor([1.0, 1.0] + [0.0] * 8, dtype=torch.float64)
    bias, se = weighted_mean_bias(values, p, 5, replacement=False, repeats=3000, generator=g)
    assert bias > 10 * se


def test_variance_from_norms_matches_sampling():
    from ismod.diagnostics import variance_from_norms
    from ismod.sampling import draw

    g = torch.Generator().manual_seed(0)
    grads = torch.randn(200, 5, generator=g, dtype=torch.float64) * torch.rand(
        200, 1, generator=g, dtype=torch.float64
    )
    p = probabilities(grads.norm(dim=1) + 0.1, "proportional")
    reps, b = 20_000, 8
    idx, w = draw(p, reps * b, generator=g)
    est = (w[:, None] * grads[idx]).view(reps, b, -1).mean(1)
    empirical = float(((est - grads.mean(0)) ** 2).sum(1).mean())
    exact = variance_from_norms((grads**2).sum(1), float((grads.mean(0) ** 2).sum()), p, b)
    assert exact == pytest.approx(empirical, rel=0.1)


def test_spearman():
    from ismod.diagnostics import spearman

    x = torch.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="1-D of one length"):
        spearman(x, x[:3])


def test_negligible_fraction_counts_norms_below_a_fraction_of_the_largest():
    from ismod.diagnostics import negligible_fraction

    norms = torch.tensor([10.0, 0.05, 0.2, 0.09, 5.0])  # 1% of the largest is 0.1: two below it
    assert negligible_fraction(norms) == 0.4
    assert negligible_fraction(norms, relative=0.5) == 0.6  # 5.0 is not below 5.0
    with pytest.raises(ValueError, match="relative"):
        negligible_fraction(norms, relative=1.5)
    with pytest.raises(ValueError, match="norms"):
        negligible_fraction(torch.zeros(2, 2))


def test_gradient_noise_scale_recovers_a_known_covariance():
    """Per-sample gradients N(μ, diag(σ²)): |G|² = |μ|², tr Σ = Σσ². Squared norms of batch means at two
    sizes, over many batches, give both within 4 standard errors (from a bootstrap of the batches)."""
    from ismod.diagnostics import gradient_noise_scale

    gen = torch.Generator().manual_seed(1)
    mu = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    sigma = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    reps, small, big = 4000, 8, 64

    def sq_norms(b: int) -> torch.Tensor:
        x = mu + sigma * torch.randn(reps, b, 3, generator=gen, dtype=torch.float64)
        return (x.mean(1) ** 2).sum(1)

    s, g = sq_norms(small), sq_norms(big)
    est = gradient_noise_scale(s, g, small, big)
    boot = []
    for _ in range(200):
        i = torch.randint(reps, (reps,), generator=gen)
        boot.append(gradient_noise_scale(s[i], g[i], small, big))
    se_g = float(torch.tensor([e.grad_sq for e in boot]).std())
    se_t = float(torch.tensor([e.trace for e in boot]).std())
    assert abs(est.grad_sq - float((mu**2).sum())) < 4 * se_g
    assert abs(est.trace - float((sigma**2).sum())) < 4 * se_t
    assert est.b_simple == pytest.approx(est.trace / est.grad_sq)


def test_gradient_noise_scale_exact_and_errors():
    from ismod.diagnostics import gradient_noise_scale

    # E|G_b|² = |G|² + tr Σ / b exactly: |G|² = 1, tr Σ = 10
    est = gradient_noise_scale(1 + 10 / 4, 1 + 10 / 40, 4, 40)
    assert (est.grad_sq, est.trace, est.b_simple) == pytest.approx((1.0, 10.0, 10.0))
    assert gradient_noise_scale(2.0, 0.1, 4, 40).b_simple == math.inf  # no signal above the noise
    with pytest.raises(ValueError, match="b_big must exceed b_small"):
        gradient_noise_scale(1.0, 1.0, 8, 8)
    with pytest.raises(ValueError, match="sq_norm_small must be finite"):
        gradient_noise_scale(float("nan"), 1.0, 4, 8)
