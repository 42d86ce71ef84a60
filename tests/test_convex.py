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


def test_the_completed_rule_predicts_steps_to_target_on_least_squares():
    """Least squares, where B_noise and τ have closed forms: McCandlish et al.'s S(b) = S_min(1 + B/b)
    fitted to uniform SGD finds the closed-form noise scale, and importance sampling takes the steps of
    a uniform batch τ times larger over all N, τ_eff = 1/(1/τ + b/B) times larger from a presample (the
    presample's cap). Medians of 16 runs at each batch size's best learning rate; 25% in log terms is
    about three standard errors of a median of 16 step counts here."""
    problem = convex.least_squares_problem(n=2000, dim=20, norm_spread=100.0, noise=1.0, seed=0)
    check = convex.rule_check(problem, 27.0, batch_sizes=(1, 4, 16, 64))
    assert abs(math.log(check.b_crit / check.b_simple)) < 0.25, (check.b_crit, check.b_simple)
    assert check.b_simple < check.b_noise < 1.5 * check.b_simple
    assert check.tau > 5 and check.tau_eff == pytest.approx(1 / (1 / check.tau + 1 / 3))
    for i, b in enumerate(check.batch_sizes[:3]):
        for measured, increment in ((check.steps_uniform[i], 1.0), (check.steps_importance[i], check.tau),
                                    (check.steps_presample[i], check.tau_eff)):  # fmt: skip
            predicted = check.predicted(increment, b)
            assert abs(math.log(measured / predicted)) < 0.25, (b, increment, measured, predicted)
    # the cap is real: with τ in place of τ_eff the presample's steps would be predicted 3× too few
    assert check.steps_presample[0] > 2 * check.predicted(check.tau, 1)


def test_steps_to_target_refuses_bad_input_and_stops_a_diverged_run(ls):
    with pytest.raises(ValueError, match="presample"):
        convex.steps_to_target(ls, 4, 0.01, 1.0, presample=8)
    with pytest.raises(ValueError, match="lr"):
        convex.steps_to_target(ls, 4, [0.01, -1.0], 1.0)
    steps = convex.steps_to_target(ls, 4, [1e3], 1e-9, repeats=2, max_steps=50)
    assert torch.isinf(steps).all()
