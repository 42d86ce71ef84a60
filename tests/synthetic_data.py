"""Synthetic CIFAR-shaped data for tests of the training loop (importable: conftest puts tests/ on the path)."""

import torch

from ismod.data import ImageData


def synthetic_images(n: int, seed: int = 0) -> ImageData:
    """``n`` random 32×32 images in 10 classes, the class written into the red channel (learnable)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[:, 0] += (labels * 12).to(torch.uint8)[:, None, None]
    return ImageData(images, labels, [str(i) for i in range(10)], "synthetic")
