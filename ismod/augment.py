"""Batched augmentation on the training device, with per-sample randomness and no Python loop over samples.

- random crop with reflect padding and horizontal flip (the standard CIFAR pair);
- mixup (Zhang et al. 2018): :math:`\\tilde x = \\lambda x + (1-\\lambda) x_{\\pi}`, :math:`\\lambda\\sim\\mathrm{Beta}(\\alpha,\\alpha)`;
- RICAP (Takahashi et al. 2018): four crops from four shuffles of the batch patched into one image,
  boundary :math:`(w, h)` from :math:`\\mathrm{Beta}(\\beta,\\beta)`, targets mixed by area.

Mixing returns soft targets (probability vectors summing to 1), so per-sample losses stay defined;
otherwise targets stay class indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import CIFAR_MEAN, CIFAR_STD

__all__ = ["normalize", "random_crop", "random_flip", "mixup", "ricap", "Augment"]


def normalize(
    images: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, 3, H, W) on the 0–255 scale → float, per-channel standardised."""
    m = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    return (images.to(dtype) - m) / s


def random_crop(
    x: torch.Tensor, padding: int = 4, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad by ``padding`` (reflect) and cut a random H×W window per sample, by one gather."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    oy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    rows = (oy + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(
        0, 3, 1, 2
    )  # (B, H, W, C) → (B, C, H, W), channels_last


def random_flip(x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample left–right with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(labels, num_classes).to(dtype)


def mixup(
    x: torch.Tensor, targets: torch.Tensor, lam: float, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each sample with a random partner: weights ``lam`` and ``1 - lam`` (``targets`` soft)."""
    perm = torch.randperm(x.shape[0], device=x.device, generator=generator)
    return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


def ricap(
    x: torch.Tensor,
    targets: torch.Tensor,
    boundary: tuple[int, int],
    offsets: list[tuple[int, int]],
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch four crops of four shuffles of the batch into each image (RICAP); mix targets by area.

    ``boundary = (w, h)`` splits the image; ``offsets`` gives, per region (top-left, top-right,
    bottom-left, bottom-right), where its crop is cut from the source images.
    """
    b, _, hh, ww = x.shape
    w, h = boundary
    sizes = [(w, h), (ww - w, h), (w, hh - h), (ww - w, hh - h)]
    out = torch.empty_like(x)
    mixed = torch.zeros_like(targets)
    for (rw, rh), (ox, oy), (px, py) in zip(sizes, offsets, [(0, 0), (w, 0), (0, h), (w, h)]):
        if rw == 0 or rh == 0:
            continue
        perm = torch.randperm(b, device=x.device, generator=generator)
        out[:, :, py : py + rh, px : px + rw] = x[perm, :, oy : oy + rh, ox : ox + rw]
        mixed += (rw * rh / (ww * hh)) * targets[perm]
    return out, mixed


@dataclass
class Augment:
    """The augmentation pipeline of a training step: normalise, crop, flip, then mixup or RICAP.

    Call it on a uint8 batch and its labels; per-sample randomness comes from ``generator`` (on the
    batch's device), per-batch scalars (mixup's λ, RICAP's boundary) from a NumPy generator whose state
    is part of ``state_dict()``, so a resumed run augments exactly as an uninterrupted one.
    """

    num_classes: int = 10
    crop: bool = True
    flip: bool = True
    padding: int = 4
    mixup_alpha: float = 0.0
    ricap_beta: float = 0.0
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.ricap_beta < 0:
            raise ValueError("mixup_alpha and ricap_beta must be >= 0 (0 switches them off)")
        if self.mixup_alpha > 0 and self.ricap_beta > 0:
            raise ValueError("choose mixup_alpha or ricap_beta, not both")
        self.rng = np.random.default_rng(self.seed)

    @property
    def soft_targets(self) -> bool:
        return self.mixup_alpha > 0 or self.ricap_beta > 0

    def __call__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        train: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(images)
        if not train:
            return x, labels
        if self.crop:
            x = random_crop(x, self.padding, generator=generator)
        if self.flip:
            x = random_flip(x, generator=generator)
        if not self.soft_targets:
            return x, labels
        targets = _one_hot(labels, self.num_classes, x.dtype)
        if self.mixup_alpha > 0:
            return mixup(
                x,
                targets,
                float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)),
                generator=generator,
            )
        h, w = x.shape[2:]
        bw = int(round(w * self.rng.beta(self.ricap_beta, self.ricap_beta)))
        bh = int(round(h * self.rng.beta(self.ricap_beta, self.ricap_beta)))
        sizes = [(bw, bh), (w - bw, bh), (bw, h - bh), (w - bw, h - bh)]
        offsets = [
            (int(self.rng.integers(0, w - rw + 1)), int(self.rng.integers(0, h - rh + 1)))
            for rw, rh in sizes
        ]
        return ricap(x, targets, (bw, bh), offsets, generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
