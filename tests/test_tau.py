import math

import pytest
import torch

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
    from ismod.suites import tau_log_error, tau_points
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
