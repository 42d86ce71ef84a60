import math

import pytest
import torch

from ismod import tau
from ismod.tau import equivalent_batch_increment, switch_threshold


def test_tau_uniform_and_point_mass():
    assert equivalent_batch_increment(torch.full((8,), 1 / 8)) == pytest.approx(1.0)
    point = torch.zeros(8, dtype=torch.float64)
    point[3] = 1
    assert equivalent_batch_increment(point) == pytest.approx(8.0)
    assert equivalent_batch_increment(point, sqrt=True) == pytest.approx(math.sqrt(8.0))


def test_tau_identity_with_the_variance_form():
    g = torch.softmax(
        torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0
    )
    u = 1 / 50
    form = 1 / (1 - float(((g - u) ** 2).sum() / (g**2).sum()))
    assert equivalent_batch_increment(g) == pytest.approx(form)
    assert equivalent_batch_increment(g) == pytest.approx(50 * float((g**2).sum()))


def test_tau_hand_computed():
    # B = 4, g = (0.4, 0.4, 0.1, 0.1): B Σ g² = 4 × 0.34 = 1.36
    assert equivalent_batch_increment(torch.tensor([0.4, 0.4, 0.1, 0.1])) == pytest.approx(1.36)


def test_threshold():
    assert switch_threshold(384, 128, 1.0, 2.0) == pytest.approx((384 + 3 * 128) / (3 * 128))
    assert switch_threshold(384, 128, 1.0, 2.0) == pytest.approx(2.0)
    assert switch_threshold(256, 128, 1.0, 1.0) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((64, 128, 1.0, 2.0), "at least the batch"),
        ((128, 0, 1.0, 2.0), "batch must be"),
        ((128, 64, 0.0, 2.0), "t_forward must be"),
        ((128, 64, 1.0, -1.0), "t_backward must be"),
    ],
)
def test_threshold_errors(args, match):
    with pytest.raises(ValueError, match=match):
        switch_threshold(*args)


@pytest.mark.parametrize(
    "probs, match",
    [
        (torch.tensor([0.5, 0.6]), "sum to 1"),
        (torch.tensor([1.5, -0.5]), "non-negative"),
        (torch.ones(2, 2) / 4, "1-D"),
    ],
)
def test_tau_errors(probs, match):
    with pytest.raises(ValueError, match=match):
        equivalent_batch_increment(probs)


# --- measured τ: the variance ratio from per-sample gradients ------------------------------------


def _presample_gradients(b_size=24, dim=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, b_size, dtype=torch.float64)[:, None]
    grads = torch.randn(b_size, dim, generator=g, dtype=torch.float64) * scales + 0.05
    return grads


def test_variance_ratio_closed_form_matches_sampled_minibatches():
    from ismod.tau import sampled_sq_errors, variance_ratio

    grads = _presample_gradients()
    gram = grads @ grads.T
    norms = grads.norm(dim=1)
    g = norms / norms.sum()
    u = torch.full_like(g, 1 / len(g))
    gen = torch.Generator().manual_seed(1)
    err_g, se_g = sampled_sq_errors(gram, g, batch=6, repeats=20000, generator=gen)
    err_u, se_u = sampled_sq_errors(gram, u, batch=6, repeats=20000, generator=gen)
    mean = grads.mean(0)
    expected_g = float(((norms**2 / g).sum() / len(g) ** 2 - mean @ mean) / 6)
    expected_u = float(((norms**2).mean() - mean @ mean) / 6)
    assert abs(err_g - expected_g) < 4 * se_g and abs(err_u - expected_u) < 4 * se_u
    assert variance_ratio(gram, g) == pytest.approx(expected_u / expected_g, rel=1e-12)
    assert variance_ratio(gram, u) == pytest.approx(1.0)


def test_tau_without_sqrt_is_the_variance_ratio_when_scores_are_exact_norms_and_mean_is_negligible():
    """The derivation: g ∝ ||G_i|| and ||mean G|| → 0 give tr V_u / tr V_g = B Σ g_i² exactly."""
    from ismod.tau import variance_ratio

    grads = _presample_gradients()
    grads = grads - grads.mean(0)  # zero mean gradient: the term the derivation drops
    norms = grads.norm(dim=1)
    g = norms / norms.sum()
    measured = variance_ratio(grads @ grads.T, g)
    assert measured == pytest.approx(equivalent_batch_increment(g), rel=1e-9)
    assert measured != pytest.approx(equivalent_batch_increment(g, sqrt=True), rel=1e-2)


def test_variance_ratio_rejects_bad_input():
    from ismod.tau import variance_ratio

    with pytest.raises(ValueError, match="gram must be"):
        variance_ratio(torch.eye(3), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="positive and sum to 1"):
        variance_ratio(torch.eye(2), torch.tensor([1.0, 0.0]))


def test_tau_probe_checks_smaller_presamples_on_their_own_gradients():
    """The smaller presample's numbers are those of its first B' samples alone: τ from their exact
    gradient norms, and the measured ratio from their own Gram matrix."""
    from ismod.augment import Augment
    from ismod.bounds import per_sample_grads
    from ismod.data import ImageData
    from ismod.experiments import tau_probe
    from ismod.models import build_model
    from ismod.findings import tau_log_error, tau_points
    from ismod.tau import variance_ratio

    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g),
                     torch.arange(40) % 10, [str(i) for i in range(10)], "synthetic")  # fmt: skip
    torch.manual_seed(0)
    model = build_model("small_cnn").eval()
    augment = Augment()
    entry = tau_probe(data, augment, 1, 4, sizes=(6,), chunk=4)(model)[0]
    assert set(entry["smaller"]) == {"6"}
    sets = torch.randperm(40, generator=torch.Generator().manual_seed(54321))[:6]
    x, y = augment(data.images[sets], data.labels[sets], train=False)
    ce = lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none")  # noqa: E731
    grads = per_sample_grads(model, ce, x, y, chunk_size=3).double()
    gram = grads @ grads.T
    norms = gram.diagonal().sqrt()
    p = (norms + 1e-12) / (norms + 1e-12).sum()
    small = entry["smaller"]["6"]["exact"]
    assert small["tau"] == pytest.approx(equivalent_batch_increment(p), rel=1e-6)
    assert small["measured"] == pytest.approx(variance_ratio(gram, p), rel=1e-6)
    with pytest.raises(ValueError, match="tau_probe_sizes"):
        tau_probe(data, augment, 1, 4, sizes=(7,))

    class Run:  # the fields tau_points reads from a Result
        config = {"tau_probe_batch": 4, "seed": 0}
        history = [{"epoch": 1.0, "probe": {"tau": [entry]}}]

    points = tau_points([Run()])
    assert sorted(p["B"] for p in points) == [6, 12]
    by_hand = (
        sum(
            abs(math.log(p["entry"]["exact"]["tau"] / p["entry"]["exact"]["measured"]))
            for p in points
        )
        / 2
    )
    assert tau_log_error(points, "exact") == pytest.approx(by_hand)


# --- the rule's missing terms: the presample cap and the critical batch size ------------------------


def test_presample_increment_is_the_full_gradient_worth_of_an_importance_sampled_batch():
    """Monte Carlo over presamples U of B drawn uniformly from N per-sample gradients, then b drawn from
    g ∝ |G_i| with weights 1/(B g_i): E|ĝ - G|² = tr Σ / (b τ_eff), with τ = tr Σ / E_U[tr V_g(U)]
    (the increment measured against the uniform variance tr Σ)."""
    from ismod.tau import presample_increment

    gen = torch.Generator().manual_seed(0)
    n, dim, B, b, reps = 400, 5, 32, 4, 20000
    scale = torch.exp(1.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64))
    grads = scale * torch.randn(n, dim, generator=gen, dtype=torch.float64) + 0.3
    full = grads.mean(0)
    trace = float(((grads - full) ** 2).sum(1).mean())  # population tr Σ
    presamples = torch.randint(n, (reps, B), generator=gen)
    g_pres = grads[presamples]  # (reps, B, dim)
    norms = g_pres.norm(dim=2)
    g = norms / norms.sum(1, keepdim=True)
    draws = torch.multinomial(g, b, replacement=True, generator=gen)
    w = 1.0 / (B * g.gather(1, draws))
    est = (w[..., None] * g_pres.gather(1, draws[..., None].expand(-1, -1, dim))).mean(1)
    errors = ((est - full) ** 2).sum(1)
    # within-presample variance of one weighted draw: (1/B²) Σ |G_i|²/g_i - |Ḡ_U|²
    mean_u = g_pres.mean(1)
    tr_vg = float((((g_pres**2).sum(2) / g).sum(1) / B**2 - (mean_u**2).sum(1)).mean())
    tau = trace / tr_vg
    predicted = trace / (b * presample_increment(tau, b, B))
    se = float(errors.std()) / math.sqrt(reps)
    assert abs(float(errors.mean()) - predicted) < 4 * se
    assert presample_increment(tau, b, B) < min(tau, B / b)


def test_presample_increment_limits_and_errors():
    from ismod.tau import presample_increment

    assert presample_increment(1.0, 8, 8) == pytest.approx(
        0.5
    )  # B = b: the presample adds its own noise
    assert presample_increment(math.inf, 1024, 3072) == pytest.approx(3.0)  # the cap B/b
    assert presample_increment(2.0, 1024, 3072) == pytest.approx(1 / (0.5 + 1 / 3))
    with pytest.raises(ValueError, match="presample B = 4 must hold at least the batch b = 8"):
        presample_increment(2.0, 8, 4)
    with pytest.raises(ValueError, match="tau must be a positive number"):
        presample_increment(-1.0, 8, 24)


def test_required_increment_is_the_break_even_of_the_steps_model():
    from ismod.tau import required_increment

    tau_th, b = 1.8, 128
    for noise in (200.0, 1000.0, 5000.0):
        need = required_increment(tau_th, noise, b)
        steps = lambda batch: 1 + noise / batch  # noqa: E731  S(b)/S_min
        assert tau_th * steps(need * b) == pytest.approx(steps(b))  # break-even exactly
        assert tau_th * steps(1.01 * need * b) < steps(b) < tau_th * steps(0.99 * need * b)
    assert required_increment(tau_th, 1e12, b) == pytest.approx(
        tau_th, rel=1e-6
    )  # B_noise ≫ b: τ_th
    assert required_increment(tau_th, math.inf, b) == tau_th
    assert required_increment(2.1, 100.0, 1024) == math.inf  # b far above B_noise: never pays
    assert required_increment(2.0, 128.0, 128) == math.inf  # 1 + r = τ_th: the boundary, never
    with pytest.raises(ValueError, match="tau_threshold must be a finite number >= 1"):
        required_increment(0.5, 10.0, 8)
    with pytest.raises(ValueError, match="noise_scale"):
        required_increment(2.0, -1.0, 8)


def test_in_time_bar_is_the_smallest_tau_that_pays_for_any_presample_size():
    # Katharopoulos & Fleuret's cost model (t_b = 2 t_f, scoring a training forward): 3(2 + √3)/2 at B ≈ 4.1 b
    bar = tau.in_time_bar()
    assert bar.tau == pytest.approx(3 * (2 + math.sqrt(3)) / 2)
    assert bar.presample_ratio == pytest.approx(3 * (math.sqrt(3) + 1) / 2)
    # against the pieces it is made of, on a grid of presample sizes: just above the bar some B pays,
    # just below it none does (b = 1000 so that B = k b is fine-grained)
    b, r = 1000, 1.3
    bar = tau.in_time_bar(r)

    def pays(t, size):
        return tau.presample_increment(t, b, size) > tau.switch_threshold(size, b, 1.0, r)

    sizes = range(b + 1, 40 * b, 7)
    assert any(pays(bar.tau * 1.001, size) for size in sizes)
    assert not any(pays(bar.tau * 0.999, size) for size in sizes)
    assert pays(bar.tau * 1.001, round(bar.presample_ratio * b))
    # free scores: any τ > 1, with as large a presample as one likes; scoring as costly as training: never
    assert tau.in_time_bar(1.3, 0.0) == (1.0, math.inf)
    assert math.isinf(tau.in_time_bar(0.5, 1.5).tau)
    for kwargs in (
        {"backward_over_forward": -1.0},
        {"scoring_cost": float("nan")},
        {"scoring_cost": True},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            tau.in_time_bar(**kwargs)


def test_predict_speedup_with_a_presample_against_hand_computed_values():
    from ismod.tau import predict_speedup, required_increment

    # B = 3b, t_b = 2t_f: τ_th = 2; τ = 4 gives τ_eff = 1/(1/4 + 1/3) = 12/7, worth less than it costs
    p = predict_speedup(4.0, 128, presample=384)
    assert p.tau_threshold == pytest.approx(2.0) and p.tau_eff == pytest.approx(12 / 7)
    assert p.speedup == pytest.approx(6 / 7) and p.required == pytest.approx(2.0) and not p.pays
    # r = B_noise/b = 1 halves what a bigger effective batch buys: (1 + 1)/((1 + 7/12)·2) = 12/19
    q = predict_speedup(4.0, 128, presample=384, noise_scale=128.0)
    assert q.speedup == pytest.approx(12 / 19)
    assert q.required == pytest.approx(required_increment(2.0, 128.0, 128))


def test_predict_speedup_with_free_scores_and_its_boundary_agrees_with_required_increment():
    from ismod.tau import predict_speedup

    free = predict_speedup(2.0, 64, presample=None)
    assert (free.tau_eff, free.tau_threshold, free.speedup) == (2.0, 1.0, 2.0) and free.pays
    # far above the critical batch size a bigger effective batch buys almost nothing: (1 + 0.5)/(1 + 0.25)
    assert predict_speedup(2.0, 64, presample=None, noise_scale=32.0).speedup == pytest.approx(1.2)
    # pays exactly when τ_eff exceeds the required increment, over a grid of settings
    for tau in (1.0, 1.5, 3.0, 8.0, 40.0):
        for ratio in (1, 2, 4, 8):
            for noise in (16.0, 256.0, 4096.0, math.inf):
                p = predict_speedup(
                    tau, 64, presample=64 * ratio, t_backward=1.25, noise_scale=noise
                )
                assert p.pays == (p.tau_eff > p.required), (tau, ratio, noise)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tau=0.0, b=64, presample=192), "tau must be a positive number"),
        (dict(tau=2.0, b=0, presample=192), "b must be a positive integer"),
        (dict(tau=2.0, b=64, presample=32), "presample B = 32 must hold at least the batch"),
        (dict(tau=2.0, b=64, presample=192, noise_scale=-1.0), "noise_scale"),
    ],
)
def test_predict_speedup_refuses_bad_input_naming_the_argument(kwargs, match):
    from ismod.tau import predict_speedup

    with pytest.raises(ValueError, match=match):
        predict_speedup(**kwargs)
