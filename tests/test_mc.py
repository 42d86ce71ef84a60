"""Statistical tests of ismod.mc: fixed seeds, tolerances from the standard error."""

import math

import pytest
import torch
from torch.distributions import Categorical, Exponential, Independent, Normal, Uniform

from ismod import mc

TAIL = 4.0
TAIL_EXACT = 0.5 * math.erfc(TAIL / math.sqrt(2))  # P(X > 4), X ~ N(0, 1)


def tail_indicator(x):
    return (x > TAIL).to(torch.float64)


def square(x):
    return x**2


P = Normal(0.0, 1.0)


# --- plain Monte Carlo -----------------------------------------------------------------------


def test_monte_carlo_mean_within_four_standard_errors():
    est = mc.monte_carlo(square, P, 20_000, seed=0)
    # E[X^2] = 1, Var[X^2] = 2, so the exact standard error is sqrt(2/n).
    exact_se = math.sqrt(2 / 20_000)
    assert abs(est.value - 1.0) < 4 * exact_se
    assert est.stderr == pytest.approx(exact_se, rel=0.1)
    assert est.ess == 20_000 and est.n == 20_000


def test_monte_carlo_stderr_matches_spread_over_repetitions():
    # 200 independent estimates: the spread of their values is the true standard error; the
    # relative standard error of a sample std from 200 values is ~1/sqrt(2*199) = 5%, so 20% is 4 SE.
    values, stderrs = [], []
    for s in range(200):
        est = mc.monte_carlo(square, P, 500, seed=s)
        values.append(est.value)
        stderrs.append(est.stderr)
    spread = torch.tensor(values).std().item()
    assert spread == pytest.approx(sum(stderrs) / len(stderrs), rel=0.2)


def test_seed_reproducible_and_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = mc.monte_carlo(square, P, 1000, seed=7)
    b = mc.monte_carlo(square, P, 1000, seed=7)
    c = mc.monte_carlo(square, P, 1000, seed=8)
    assert a == b
    assert a.value != c.value
    assert torch.equal(torch.get_rng_state(), state)


def test_seed_none_uses_global_rng():
    torch.manual_seed(5)
    a = mc.monte_carlo(square, P, 100)
    torch.manual_seed(5)
    b = mc.monte_carlo(square, P, 100)
    assert a == b


def test_single_draw_has_undefined_stderr():
    est = mc.monte_carlo(square, P, 1, seed=0)
    assert est.n == 1 and math.isnan(est.stderr)


# --- importance sampling: the rare event --------------------------------------------------------


def test_tail_probability_with_shifted_proposal():
    n = 100_000
    est = mc.importance_sampling(tail_indicator, P, Normal(TAIL, 1.0), n, seed=0)
    assert abs(est.value - TAIL_EXACT) < 4 * est.stderr
    assert est.relative_stderr < 0.02
    # Plain MC's exact standard error at the same n, sqrt(p(1-p)/n), is at least 50x larger.
    plain_se = math.sqrt(TAIL_EXACT * (1 - TAIL_EXACT) / n)
    assert est.stderr * 50 < plain_se
    # ... and so is what plain MC reports for itself when it sees a few hits.
    plain = mc.monte_carlo(tail_indicator, P, n, seed=0)
    assert plain.stderr == 0 or est.stderr * 50 < plain.stderr


def test_importance_stderr_matches_spread_over_repetitions():
    q = Normal(3.0, 1.5)
    values = []
    stderrs = []
    for s in range(200):
        est = mc.importance_sampling(tail_indicator, P, q, 2000, seed=s)
        values.append(est.value)
        stderrs.append(est.stderr)
    values = torch.tensor(values, dtype=torch.float64)
    # unbiased: the mean of 200 estimates is within 4 of its standard errors of the exact value
    assert abs(values.mean().item() - TAIL_EXACT) < 4 * values.std().item() / math.sqrt(200)
    assert values.std().item() == pytest.approx(sum(stderrs) / len(stderrs), rel=0.2)


def test_identity_proposal_equals_plain_monte_carlo():
    a = mc.monte_carlo(square, P, 1000, seed=3)
    b = mc.importance_sampling(square, P, Normal(0.0, 1.0), 1000, seed=3)
    assert b.value == pytest.approx(a.value, rel=1e-12)
    assert b.ess == pytest.approx(1000)


class ShiftedLogNormal(Normal):
    """A normal whose log density is off by +5: p known only up to a constant factor e^5."""

    def log_prob(self, value):
        return super().log_prob(value) + 5.0


def test_self_normalized_ignores_unknown_constant():
    p_unnormalized = ShiftedLogNormal(0.0, 1.0)
    q = Normal(0.5, 1.5)
    sn = mc.importance_sampling(square, p_unnormalized, q, 50_000, self_normalized=True, seed=1)
    assert abs(sn.value - 1.0) < 4 * sn.stderr
    plain = mc.importance_sampling(square, p_unnormalized, q, 50_000, seed=1)
    assert plain.value == pytest.approx(math.exp(5.0) * sn.value, rel=0.05)


def test_self_normalized_stderr_matches_spread():
    q = Normal(0.5, 1.5)
    values, stderrs = [], []
    for s in range(200):
        est = mc.importance_sampling(square, P, q, 1000, self_normalized=True, seed=s)
        values.append(est.value)
        stderrs.append(est.stderr)
    spread = torch.tensor(values).std().item()
    assert spread == pytest.approx(sum(stderrs) / len(stderrs), rel=0.2)


def test_discrete_mean_with_weights_one_over_n_p():
    # The bridge to SGD: the mean of N numbers from indices drawn with probabilities pi.
    g = torch.Generator().manual_seed(0)
    values = torch.rand(50, generator=g, dtype=torch.float64) * 10
    pi = values / values.sum()  # proportional to |f|: the zero-variance proposal
    uniform = Categorical(probs=torch.full((50,), 1 / 50, dtype=torch.float64))
    est = mc.importance_sampling(lambda i: values[i], uniform, Categorical(probs=pi), 100, seed=0)
    assert est.value == pytest.approx(values.mean().item(), rel=1e-9)
    assert est.stderr < 1e-9
    rough = mc.importance_sampling(
        lambda i: values[i], uniform, Categorical(probs=pi.flip(0) / pi.sum()), 20_000, seed=0
    )
    assert abs(rough.value - values.mean().item()) < 4 * rough.stderr


def test_multivariate_distributions():
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    q = Independent(Normal(torch.full((3,), 0.2), torch.full((3,), 1.3)), 1)
    est = mc.importance_sampling(lambda x: (x**2).sum(-1), p, q, 20_000, seed=0)
    assert abs(est.value - 3.0) < 4 * est.stderr


def test_samples_outside_target_support_get_zero_weight():
    # q = N(0.5, 1) covers [0, 1]; the half of its samples outside get weight 0, not an error.
    est = mc.importance_sampling(lambda x: x, Uniform(0.0, 1.0), Normal(0.5, 1.0), 50_000, seed=0)
    assert abs(est.value - 0.5) < 4 * est.stderr
    # Exponential's log_prob would be finite (and wrong) at negative x; the support check masks it.
    est = mc.importance_sampling(lambda x: x, Exponential(1.0), Normal(1.0, 2.0), 50_000, seed=0)
    assert abs(est.value - 1.0) < 4 * est.stderr


# --- effective sample size ----------------------------------------------------------------------


def test_ess_of_equal_weights_is_n():
    assert mc.effective_sample_size(torch.zeros(37)) == pytest.approx(37)
    assert mc.effective_sample_size(torch.full((10,), 800.0)) == pytest.approx(10)


def test_ess_of_one_dominant_weight_is_one():
    lw = torch.tensor([0.0, -math.inf, -math.inf, -math.inf])
    assert mc.effective_sample_size(lw) == pytest.approx(1.0)


def test_ess_matches_definition():
    lw = torch.tensor([0.1, -1.0, 2.0, 0.5], dtype=torch.float64)
    w = lw.exp()
    assert mc.effective_sample_size(lw) == pytest.approx((w.sum() ** 2 / (w**2).sum()).item())
    assert mc.effective_sample_size([0.1, -1.0, 2.0, 0.5]) == pytest.approx(
        (w.sum() ** 2 / (w**2).sum()).item()
    )


def test_heavy_tail_failure_shows_in_ess():
    # q = N(0, 0.5^2) has lighter tails than p|f| for f = x^2: infinite variance, tiny ESS.
    good = mc.importance_sampling(square, P, Normal(0.0, 1.5), 10_000, seed=0)
    bad = mc.importance_sampling(square, P, Normal(0.0, 0.5), 10_000, seed=0)
    assert bad.ess < good.ess / 5


# --- error paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must"):
        mc.monte_carlo(square, P, n)
    with pytest.raises(ValueError, match="n must"):
        mc.importance_sampling(square, P, P, n)


def test_f_returning_nan():
    with pytest.raises(ValueError, match=r"f returned NaN at 100 of 100"):
        mc.monte_carlo(lambda x: x * math.nan, P, 100, seed=0)


def test_f_returning_inf():
    with pytest.raises(ValueError, match="f returned an infinite value"):
        mc.importance_sampling(lambda x: 1 / (x - x), P, P, 100, seed=0)


def test_f_returning_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(10,\); got shape \(10, 2\)"):
        mc.monte_carlo(lambda x: torch.stack([x, x], 1), P, 10, seed=0)


def test_proposal_with_all_zero_weights():
    with pytest.raises(ValueError, match="q: importance weights p/q are zero at all"):
        mc.importance_sampling(lambda x: x, Uniform(0.0, 1.0), Uniform(2.0, 3.0), 100, seed=0)


def test_proposal_with_infinite_weights():
    class ZeroDensity(Normal):
        def log_prob(self, value):
            return torch.full_like(value, -math.inf)

    with pytest.raises(ValueError, match="q: importance weights p/q are not finite"):
        mc.importance_sampling(square, P, ZeroDensity(0.0, 1.0), 100, seed=0)


def test_overflowing_weights_suggest_self_normalising():
    class Huge(Normal):
        def log_prob(self, value):
            return super().log_prob(value) + 1000.0

    with pytest.raises(ValueError, match="self_normalized=True"):
        mc.importance_sampling(square, Huge(0.0, 1.0), P, 100, seed=0)
    est = mc.importance_sampling(square, Huge(0.0, 1.0), P, 10_000, self_normalized=True, seed=0)
    assert abs(est.value - 1.0) < 4 * est.stderr


def test_not_a_distribution():
    with pytest.raises(ValueError, match="p must be a torch.distributions.Distribution"):
        mc.monte_carlo(square, "normal", 10)
    with pytest.raises(ValueError, match="q must be a torch.distributions.Distribution"):
        mc.importance_sampling(square, P, None, 10)


def test_batched_distribution_rejected():
    with pytest.raises(ValueError, match="p must be a single distribution"):
        mc.monte_carlo(square, Normal(torch.zeros(2), 1.0), 10)


def test_event_shape_mismatch():
    q = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    with pytest.raises(ValueError, match="q must have the event shape of p"):
        mc.importance_sampling(square, P, q, 10)


@pytest.mark.parametrize(
    "lw, match",
    [
        (torch.tensor([0.0, math.nan, math.nan, 1.0]), "NaN at 2 positions"),
        (torch.tensor([0.0, math.inf]), r"\+inf at 1 positions"),
        (torch.full((3,), -math.inf), "all -inf"),
        (torch.zeros(2, 2), "1-D"),
        (torch.zeros(0), "non-empty"),
    ],
)
def test_ess_errors(lw, match):
    with pytest.raises(ValueError, match=match):
        mc.effective_sample_size(lw)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed must be an int"):
        mc.monte_carlo(square, P, 10, seed=1.5)


def test_estimate_from_draws_matches_and_validates():
    q = Normal(1.0, 1.2)
    values, log_w = mc.importance_draws(square, P, q, 500, seed=4)
    assert mc.estimate_from_draws(values, log_w) == mc.importance_sampling(
        square, P, q, 500, seed=4
    )
    with pytest.raises(ValueError, match="same length"):
        mc.estimate_from_draws(values, log_w[:-1])
