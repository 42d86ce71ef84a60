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
    g = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
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
    [(torch.tensor([0.5, 0.6]), "sum to 1"), (torch.tensor([1.5, -0.5]), "non-negative"), (torch.ones(2, 2) / 4, "1-D")],
)
def test_tau_errors(probs, match):
    with pytest.raises(ValueError, match=match):
        equivalent_batch_increment(probs)
