"""The environment is sane: torch and torchvision import together (a broken pair fails here)."""

import ismod


def test_torch_and_torchvision_import_together():
    import torch
    import torchvision
    from torchvision.transforms import v2  # noqa: F401

    x = torchvision.transforms.functional.hflip(torch.arange(6.0).reshape(1, 2, 3))
    assert x[0, 0].tolist() == [2.0, 1.0, 0.0]


def test_version():
    assert isinstance(ismod.__version__, str) and ismod.__version__.count(".") >= 2
