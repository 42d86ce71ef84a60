import pytest
import torch
import torch.nn.functional as F

from ismod.bounds import logit_grad_norms, per_sample_grad_norms, upper_bound
from ismod.models import build_model


def autograd_logit_norms(logits, targets):
    z = logits.detach().clone().requires_grad_(True)
    F.cross_entropy(z, targets, reduction="sum").backward()
    return z.grad.norm(dim=1)


@pytest.mark.parametrize("soft", [False, True])
def test_upper_bound_equals_autograd(soft):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g) * 3
    targets = torch.randint(10, (64,), generator=g)
    if soft:
        targets = torch.softmax(torch.randn(64, 10, generator=g), 1)
    assert torch.allclose(
        upper_bound(logits, targets), autograd_logit_norms(logits, targets), atol=1e-5
    )
    ce = lambda z, t: F.cross_entropy(z, t, reduction="none")  # noqa: E731
    assert torch.allclose(
        logit_grad_norms(logits, targets, ce), upper_bound(logits, targets), atol=1e-5
    )


def test_upper_bound_in_float32_under_low_precision():
    logits = torch.randn(8, 5).bfloat16()
    out = upper_bound(logits, torch.zeros(8, dtype=torch.long))
    assert out.dtype == torch.float32 and (out <= 2**0.5 + 1e-6).all()


def test_logit_grad_norms_for_another_loss():
    logits = torch.randn(6, 3)
    targets = torch.randn(6, 3).softmax(1)
    mse = lambda z, t: ((z - t) ** 2).sum(1)  # noqa: E731
    assert torch.allclose(
        logit_grad_norms(logits, targets, mse), (2 * (logits - targets)).norm(dim=1)
    )


def test_per_sample_grad_norms_match_a_loop_of_backward_passes():
    torch.manual_seed(0)
    model = build_model("small_cnn", 4)
    model.train()  # the function must switch to eval itself, and restore
    x, y = torch.randn(6, 3, 32, 32), torch.randint(4, (6,))
    ce = lambda z, t: F.cross_entropy(z, t, reduction="none")  # noqa: E731
    fast = per_sample_grad_norms(model, ce, x, y, chunk_size=4)
    assert model.training
    model.eval()
    loop = []
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        loop.append(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())))
    assert torch.allclose(fast, torch.stack(loop), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "logits, targets, match",
    [
        (torch.randn(4, 3), torch.randint(3, (5,)), "5 entries for 4 rows"),
        (torch.randn(4, 3), torch.tensor([0, 1, 3, 2]), r"out of range \[0, 3\) at 1"),
        (torch.randn(4, 3), torch.full((4, 3), 0.5), "must sum to 1; 4 rows"),
        (torch.randn(4, 3), torch.zeros(4, 2), "class indices"),
        (torch.randn(4), torch.zeros(4, dtype=torch.long), r"\(batch, classes\)"),
        (torch.randn(4, 3), torch.zeros(4), "must be integers"),
    ],
)
def test_bad_input(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        upper_bound(logits, targets)
