import numpy as np
import pytest
import torch

from ismod.augment import Augment, mixup, normalize, random_crop, random_flip, ricap


def test_normalize_shape_dtype_and_values():
    x = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    out = normalize(x, mean=(128, 0, 255), std=(2, 1, 1))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out[:, 0].eq(0).all() and out[:, 1].eq(128).all() and out[:, 2].eq(-127).all()


def test_random_crop_is_a_window_of_the_padded_image_per_sample():
    g = torch.Generator().manual_seed(0)
    base = torch.arange(3 * 8 * 8, dtype=torch.float32).view(1, 3, 8, 8)
    batch = base.repeat(64, 1, 1, 1)
    out = random_crop(batch, 2, generator=g)
    assert out.shape == batch.shape
    padded = torch.nn.functional.pad(base, (2,) * 4, mode="reflect")[0]
    windows = {(dy, dx): padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)}
    found = set()
    for img in out:
        match = [k for k, w in windows.items() if torch.equal(img, w)]
        assert match, "a crop is not a window of the padded image"
        found.add(match[0])
    assert len(found) > 10, "crops are not independent per sample"


def test_random_flip_flips_about_half_independently():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(2000, 1, 1, 1)
    out = random_flip(x, generator=g)
    flipped = out[:, 0, 0, 0].eq(3)
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 4 * (0.25 / 2000) ** 0.5


def test_mixup_soft_targets():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    t = torch.nn.functional.one_hot(torch.randint(10, (16,), generator=g), 10).float()
    xm, tm = mixup(x, t, 0.7, generator=g)
    assert xm.shape == x.shape and torch.allclose(tm.sum(1), torch.ones(16))
    assert (tm.max(1).values >= 0.7 - 1e-6).all()


def test_ricap_targets_are_area_weights():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(8)
    x = (
        labels.float().view(8, 1, 1, 1).repeat(1, 3, 32, 32)
    )  # each image is its own label, everywhere
    t = torch.nn.functional.one_hot(labels, 8).float()
    out, soft = ricap(x, t, (10, 20), [(0, 0), (5, 3), (7, 0), (0, 1)], generator=g)
    assert torch.allclose(soft.sum(1), torch.ones(8))
    # the label mass of each class equals the share of pixels showing that image
    pixel_share = torch.stack([(out[:, 0] == c).float().mean((1, 2)) for c in range(8)], 1)
    assert torch.allclose(soft, pixel_share)


@pytest.mark.parametrize("kwargs", [{}, {"mixup_alpha": 0.3}, {"ricap_beta": 0.3}])
def test_augment_pipeline_and_state(kwargs):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(10, (32,))
    aug = Augment(num_classes=10, **kwargs)
    state = aug.state_dict()
    x1, t1 = aug(images, labels, generator=torch.Generator().manual_seed(1))
    assert x1.dtype == torch.float32 and x1.shape == (32, 3, 32, 32)
    if aug.soft_targets:
        assert t1.shape == (32, 10) and torch.allclose(t1.sum(1), torch.ones(32))
    else:
        assert torch.equal(t1, labels)
    aug.load_state_dict(state)
    x2, t2 = aug(images, labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and torch.equal(t1, t2)
    x_eval, t_eval = aug(images, labels, train=False)
    assert torch.equal(t_eval, labels) and torch.equal(x_eval, normalize(images))


def test_augment_rejects_bad_options():
    with pytest.raises(ValueError, match="not both"):
        Augment(mixup_alpha=0.2, ricap_beta=0.3)
    with pytest.raises(ValueError, match=">= 0"):
        Augment(mixup_alpha=-1)
    assert isinstance(Augment().rng, np.random.Generator)
