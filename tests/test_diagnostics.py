import copy
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


# --- the error of a batch gradient --------------------------------------------------------------


def _per_sample_ce(logits, y):
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


def _linear_problem(n: int = 64, d: int = 5, classes: int = 3):
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(n, d, generator=g, dtype=torch.float64)
        * torch.linspace(0.2, 3.0, n)[:, None].double()
    )
    y = torch.randint(classes, (n,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(d, classes).double()
    return model, x, y


def test_batch_gradient_error_matches_the_closed_form_and_importance_lowers_it_without_batch_coupling():
    """A linear softmax model: no batch coupling, so with b draws with replacement, p and w = 1/(N p),
    E||ĝ − ḡ||² = (Σ ||G_i||²/(N² p_i) − ||ḡ||²)/b (§5.1), lowest at p ∝ ||G_i||. 3,000 draws each,
    4 standard errors."""
    from ismod.diagnostics import batch_gradient, batch_gradient_error
    from ismod.sampling import draw

    model, x, y = _linear_problem()
    n, b = x.shape[0], 8
    per_sample = torch.stack([batch_gradient(model, _per_sample_ce, x, y, torch.tensor([i]), mode="eval")
                              for i in range(n)])  # fmt: skip
    mean = per_sample.mean(0)
    everything = batch_gradient(model, _per_sample_ce, x, y, torch.arange(n), mode="eval")
    assert torch.allclose(everything, mean, rtol=1e-10, atol=1e-12)
    norms = per_sample.norm(dim=1)
    for probs in (torch.full((n,), 1.0 / n, dtype=torch.float64), norms / norms.sum()):
        predicted = float(
            ((per_sample.norm(dim=1) ** 2 / (n**2 * probs)).sum() - mean.norm() ** 2) / b
        )
        out = batch_gradient_error(model, _per_sample_ce, x, y,
                                   lambda gen, p=probs: draw(p, b, generator=gen), reference=mean,
                                   draws=3000, mode="eval", generator=torch.Generator().manual_seed(1))  # fmt: skip
        assert abs(out.mse - predicted) < 4 * out.standard_error, (out, predicted)
        if probs.std() > 0:
            assert out.mse < uniform_mse - 4 * (out.standard_error + uniform_se)
        else:
            uniform_mse, uniform_se = out.mse, out.standard_error


def test_batch_gradient_leaves_the_model_as_it_was_and_couples_the_batch_only_in_train_mode():
    from ismod.diagnostics import batch_gradient, batch_gradient_error

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    model.eval()
    x, y = torch.randn(32, 5), torch.randint(3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = torch.arange(4)
    pair = {m: batch_gradient(model, _per_sample_ce, x, y, one, mode=m) for m in ("train", "eval")}
    assert not model.training and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )
    assert all(p.grad is None for p in model.parameters())
    # sample 0's share of a batch's gradient: in train mode it changes with the rest of the batch
    others = torch.tensor([0, 5, 6, 7])
    for mode, coupled in (("train", True), ("eval", False)):
        alone = (
            batch_gradient(model, _per_sample_ce, x, y, torch.tensor([0, 1, 2, 3]), mode=mode) * 4
        )
        rest = batch_gradient(model, _per_sample_ce, x, y, torch.tensor([1, 2, 3]), mode=mode) * 3
        alone2 = batch_gradient(model, _per_sample_ce, x, y, others, mode=mode) * 4
        rest2 = batch_gradient(model, _per_sample_ce, x, y, torch.tensor([5, 6, 7]), mode=mode) * 3
        differs = not torch.allclose(alone - rest, alone2 - rest2, atol=1e-5)
        assert differs == coupled, mode
    assert not torch.equal(pair["train"], pair["eval"])
    with pytest.raises(ValueError, match="mode must be one of"):
        batch_gradient(model, _per_sample_ce, x, y, one, mode="batch")
    with pytest.raises(ValueError, match="draws must be an integer >= 2"):
        batch_gradient_error(
            model, _per_sample_ce, x, y, lambda g: (one, None), reference=pair["eval"], draws=1
        )


def test_presample_mode_normalises_with_the_presample_and_decouples_the_batch():
    """mode='presample': the batch normalised with the statistics of a train-mode pass of its presample.
    A sample's share of the gradient then does not depend on the rest of its batch, and equals the
    eval-mode gradient of a network whose running statistics are the presample's."""
    from ismod.diagnostics import batch_gradient

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    x, y = torch.randn(32, 5), torch.randint(3, (32,))
    pre = torch.arange(8, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def grad(indices):
        return batch_gradient(
            model, _per_sample_ce, x, y, torch.tensor(indices), mode="presample", presample=pre
        )

    share = grad([8, 9, 10, 11]) * 4 - grad([9, 10, 11]) * 3
    share2 = grad([8, 20, 21, 22]) * 4 - grad([20, 21, 22]) * 3
    assert torch.allclose(share, share2, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    held = copy.deepcopy(model)
    held[1].momentum = 1.0
    with torch.no_grad():
        held(x[pre])
    held.eval()
    expected = batch_gradient(held, _per_sample_ce, x, y, torch.tensor([8, 9, 10, 11]), mode="eval")
    assert torch.allclose(grad([8, 9, 10, 11]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="presample .* is needed with mode='presample'"):
        batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), mode="presample")
    with pytest.raises(ValueError, match="presample .* is needed with mode='presample'"):
        batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), mode="train", presample=pre)


def test_weighted_mode_normalises_with_the_weighted_batch_statistics():
    """mode='weighted': a uniform batch (no weights) is normalised as in train mode; integer weights
    give the gradient of the batch holding each sample that many times, normalised by its own
    statistics, with gradients through them."""
    from ismod.diagnostics import batch_gradient

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    x, y = torch.randn(32, 5), torch.randint(3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), mode="train")
    assert torch.allclose(
        batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), mode="weighted"), plain
    )
    weighted = batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), torch.tensor([2.0, 1, 1, 1]),
                              mode="weighted")  # fmt: skip
    repeated = batch_gradient(
        model, _per_sample_ce, x, y, torch.tensor([0, 0, 1, 2, 3]), mode="train"
    )
    assert torch.allclose(weighted * 4, repeated * 5, atol=1e-6)
    skewed_plain = batch_gradient(model, _per_sample_ce, x, y, torch.arange(4), torch.tensor([2.0, 1, 1, 1]),
                                  mode="train")  # fmt: skip
    assert not torch.allclose(weighted, skewed_plain, atol=1e-4)  # the statistics did change
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
