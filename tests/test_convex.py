import math

import pytest
import torch

from ismod import convex
from ismod.sampling import draw, probabilities


@pytest.fixture(scope="module")
def ls():
    return convex.least_squares_problem(n=300, dim=5, seed=1)


@pytest.fixture(scope="module")
def digits():
    return convex.digits_logistic_problem()


@pytest.mark.parametrize("name", ["ls", "digits"])
def test_closed_form_grads_match_autograd(name, request):
    problem = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.1
    idx = torch.tensor([0, 7, 42])
    closed = problem.grads(x, idx)
    for row, i in zip(closed, idx):
        xr = x.clone().requires_grad_(True)
        problem.losses(xr, i.view(1)).sum().backward()
        assert torch.allclose(row, xr.grad, atol=1e-10)


def test_gradient_variance_matches_empirical(ls):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ls.dim, generator=g, dtype=torch.float64)
    grads = ls.grads(x)
    p = probabilities(ls.lipschitz(), "proportional", smoothing=0.2)
    reps, b = 20_000, 4
    idx, w = draw(p, reps * b, generator=g)
    est = (w[:, None] * grads[idx]).view(reps, b, -1).mean(1)
    empirical = float(((est - grads.mean(0)) ** 2).sum(1).mean())
    # the empirical mean of a squared norm over 20000 repetitions: a few % relative error
    assert convex.gradient_variance(grads, p, b) == pytest.approx(empirical, rel=0.1)


def test_optimal_probabilities_minimise_variance(ls):
    x = torch.zeros(ls.dim, dtype=torch.float64)
    grads = ls.grads(x)
    norms = grads.norm(dim=1)
    uniform = torch.full((ls.n,), 1 / ls.n, dtype=torch.float64)
    v_opt = convex.gradient_variance(grads, norms / norms.sum())
    assert v_opt < convex.gradient_variance(grads, probabilities(ls.lipschitz(), "proportional"))
    assert v_opt < convex.gradient_variance(grads, uniform)
    # closed form of the optimum: (mean ||G||)^2 - ||mean G||^2
    assert v_opt == pytest.approx(float(norms.mean() ** 2 - (grads.mean(0) ** 2).sum()), rel=1e-9)


def test_variance_infinite_when_support_missed(ls):
    grads = ls.grads(torch.zeros(ls.dim, dtype=torch.float64))
    p = torch.zeros(ls.n, dtype=torch.float64)
    p[0] = 1.0
    assert math.isinf(convex.gradient_variance(grads, p))


def test_minimum_is_a_minimum(ls, digits):
    x = torch.linalg.lstsq(ls.features, ls.targets[:, None]).solution[:, 0]
    assert ls.minimum() == pytest.approx(ls.objective(x))
    assert digits.minimum() < digits.objective(digits.init())


@pytest.mark.parametrize("strategy", convex.STRATEGIES)
def test_run_sgd_converges(ls, strategy):
    lr = 0.5 / float(ls.lipschitz().max())
    hist = convex.run_sgd(ls, strategy, lr=lr, epochs=30, evaluations=5, smoothing=0.1, seed=0)
    assert len(hist.epochs) == 5 and hist.epochs[-1] == pytest.approx(30, rel=0.01)
    assert hist.suboptimality[-1] < 0.02 * hist.suboptimality[0]
    assert all(v >= 0 for v in hist.variance) and hist.seconds == sorted(hist.seconds)


def test_importance_sampling_reduces_variance_on_heterogeneous_rows(ls):
    lr = 0.5 / float(ls.lipschitz().max())
    u = convex.run_sgd(ls, "uniform", lr=lr, epochs=1, evaluations=2)
    k = convex.run_sgd(ls, "lipschitz", lr=lr, epochs=1, evaluations=2)
    assert k.variance[0] < u.variance[0] / 2  # same starting point, exact variances


def test_run_sgd_errors(ls):
    with pytest.raises(ValueError, match="strategy must be one of"):
        convex.run_sgd(ls, "greedy", lr=0.1)
    with pytest.raises(ValueError, match="must be positive"):
        convex.run_sgd(ls, "uniform", lr=0.0)
    with pytest.raises(ValueError, match="grads must be"):
        convex.gradient_variance(torch.zeros(3, 2), torch.ones(4) / 4)
