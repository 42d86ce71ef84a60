"""ismod.batchnorm: importance-weighted batch statistics (Chapter 5's batch-norm test)."""

import copy

import pytest
import torch
from torch import nn

from ismod.batchnorm import tracked_norms, weighted_statistics


def _net(momentum: float | None = 0.4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))  # fmt: skip


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("momentum", [0.4, None])
def test_equal_weights_are_ordinary_train_mode_batch_norm(momentum):
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    plain, weighted = _net(momentum), _net(momentum)
    with weighted_statistics(weighted, torch.full((6,), 0.37)):
        out = weighted(x)
    expected = plain(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(_grads(weighted), _grads(plain), rtol=1e-4, atol=1e-6)
    bn_w, bn_p = weighted[1], plain[1]
    torch.testing.assert_close(bn_w.running_mean, bn_p.running_mean)
    torch.testing.assert_close(bn_w.running_var, bn_p.running_var)
    assert int(bn_w.num_batches_tracked) == int(bn_p.num_batches_tracked) == 1


def test_integer_weights_normalise_as_repeated_samples():
    # weight 3 on sample 0 and 1 elsewhere: the statistics of a batch holding sample 0 three times
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    weighted, repeated = _net(), _net()
    with weighted_statistics(weighted, torch.tensor([3.0, 1, 1, 1, 1])):
        out = weighted(x)
    full = repeated(torch.cat([x[:1], x[:1], x]))
    expected = full[2:]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted[1].running_mean, repeated[1].running_mean)
    # the gradient of the weighted loss through the weighted statistics equals the repeated batch's
    w = torch.tensor([3.0, 1, 1, 1, 1])
    (w * out.square().sum(1)).sum().backward()
    full.square().sum(
        1
    ).sum().backward()  # every copy of sample 0 in the loss, as its weight 3 says
    torch.testing.assert_close(_grads(weighted), _grads(repeated), rtol=1e-4, atol=1e-5)


def test_skewed_weights_move_the_statistics_toward_the_heavy_sample():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x[0] += 5.0
    heavy, even = _net(momentum=1.0), _net(momentum=1.0)
    with weighted_statistics(heavy, torch.tensor([10.0, 1, 1, 1])):
        heavy(x)
    even(x)
    first = heavy[0](x[:1]).mean((0, 2, 3))
    gap_heavy = (heavy[1].running_mean - first).abs().sum()
    gap_even = (even[1].running_mean - first).abs().sum()
    assert gap_heavy < 0.5 * gap_even


def test_eval_mode_layers_and_the_model_are_left_as_they_were():
    model = _net()
    model.eval()
    x = torch.randn(4, 3, 8, 8)
    before = model(x)
    with weighted_statistics(model, torch.tensor([5.0, 1, 1, 1])):
        during = model(x)
    torch.testing.assert_close(during, before)
    assert "forward" not in vars(model[1])  # the layer's own forward is back
    assert tracked_norms(model) == [model[1]]


def test_bad_weights_are_refused_with_the_argument_named():
    model = _net()
    with pytest.raises(ValueError, match="weights must be a 1-D tensor"):
        with weighted_statistics(model, torch.ones(4, 1)):
            pass
    with pytest.raises(ValueError, match="weights has 3 entries, the batch 4"):
        with weighted_statistics(model, torch.ones(3)):
            model(torch.randn(4, 3, 8, 8))
    assert "forward" not in vars(model[1])  # restored after the error too
