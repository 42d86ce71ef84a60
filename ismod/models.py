"""Networks for CIFAR-sized images (32×32): the fast GPU network, a small CPU CNN, ResNet-18 and WideResNet-28-k.

- :func:`fast_cnn`: the gpu scale's network, in the manner of airbench94 (Jordan 2024, "94% on
  CIFAR-10 in 3.29 seconds on a single GPU"): a frozen 2×2 patch-whitening first layer initialised
  from the data, three conv groups with identity-initialised convolutions and batch norm without a
  learnable scale, a bias-free linear head scaled by 1/9. Written for this course, not copied.
- :func:`small_cnn`: three conv blocks with batch norm and GELU in the style of airbench
  (Keller Jordan's fast CIFAR-10 training), small enough for a 2-core CPU.
- :func:`resnet18`: He et al.'s ResNet-18 adapted to CIFAR as is customary (3×3 stem, stride 1, no
  max-pool), the loss-sampling report's and Arazo et al.'s network.
- :func:`wide_resnet`: Zagoruyko & Komodakis's WRN-depth-k, Katharopoulos & Fleuret's CIFAR network
  (WRN-28-2).

All return logits; the last layer is a ``Linear`` named ``classifier``, whose inputs are the
pre-activation features that Chapter 4's bound differentiates through.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "MODELS",
    "NORMS",
    "build_model",
    "replace_batch_norm",
    "initialize_from_data",
    "FastCNN",
    "fast_cnn",
    "small_cnn",
    "resnet18",
    "wide_resnet",
]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]


class SmallCNN(nn.Module):
    """Three blocks of (conv, max-pool 2, BN, GELU, conv, BN, GELU), global max-pool, linear.

    No full-resolution stem: on a CPU it would cost a third of the time for little accuracy in short
    runs.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, padding=1, bias=False),
                nn.MaxPool2d(2),
                nn.BatchNorm2d(w),
                nn.GELU(),
            ]
            layers += [*_conv_bn(w, w), nn.GELU()]
            cin = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.features(x), dim=(2, 3)))


class _IdentityConv(nn.Conv2d):
    """3×3 'same' convolution whose first ``in_channels`` filters start as the identity (Dirac)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[: min(self.in_channels, self.out_channels)])


def _norm(channels: int) -> nn.BatchNorm2d:
    """Batch norm with a fixed unit scale (only the shift learns) and fast-moving running statistics
    (PyTorch momentum 0.4), as short runs need."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


class _FastGroup(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_IdentityConv(cin, cout), nn.MaxPool2d(2), _norm(cout), nn.GELU(),
                         _IdentityConv(cout, cout), _norm(cout), nn.GELU())  # fmt: skip


class FastCNN(nn.Module):
    """The gpu scale's network (about 2 M parameters; airbench94's layout).

    ``whiten`` is a 2×2 convolution (no padding, 2·12 filters) whose weights are fixed to the
    whitening transform of the training set's 2×2 patches and their negatives
    (:meth:`initialize_from_data`; only its bias learns), then GELU, three groups of (conv, max-pool 2,
    BN, GELU, conv, BN, GELU) of widths 64/256/256, a 3×3 max-pool, and ``classifier``, a bias-free
    linear layer whose output is multiplied by ``logit_scale`` = 1/9.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 logit_scale: float = 1 / 9) -> None:  # fmt: skip
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        groups: list[nn.Module] = [nn.GELU()]
        cin = 24
        for w in widths:
            groups.append(_FastGroup(cin, w))
            cin = w
        groups.append(nn.MaxPool2d(3))
        self.features = nn.Sequential(*groups)
        self.classifier = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = logit_scale

    @torch.no_grad()
    def initialize_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set ``whiten`` from normalised training images (B, 3, 32, 32): the eigenvectors V of the
        2×2-patch covariance Σ = V Λ Vᵀ, scaled to V Λ^(-1/2), and their negatives."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (B, 3, 31, 31, 2, 2)
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        cov = flat.T @ flat / flat.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
        filters = (eigenvectors.T / torch.sqrt(eigenvalues[:, None] + eps)).flip(0).float()
        weight = torch.cat([filters, -filters]).view(24, 3, 2, 2)
        self.whiten.weight.copy_(weight.to(self.whiten.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised images (B, 3, 32, 32)."""
        h = self.features(self.whiten(x)).flatten(1)
        return self.classifier(h) * self.logit_scale


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout)
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 64), nn.ReLU(inplace=True)]
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


class _WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-conv, with a 1×1 shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, width: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (e.g. 16, 22, 28), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)]
        cin = widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(_WideBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(
            torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
        )


def fast_cnn(num_classes: int = 10) -> nn.Module:
    """The airbench94-style network of the ``"gpu"`` scale (call :func:`initialize_from_data` before training)."""
    return FastCNN(num_classes)


def initialize_from_data(model: nn.Module, images: torch.Tensor) -> None:
    """Data-dependent initialisation, for models that define ``initialize_from_data(images)`` (such as
    ``FastCNN``'s whitening layer); a no-op otherwise. ``images``: a few thousand normalised training
    images."""
    init = getattr(model, "initialize_from_data", None)
    if callable(init):
        init(images)


def small_cnn(num_classes: int = 10) -> nn.Module:
    """The airbench-style CNN used at ``"cpu"`` scale."""
    return SmallCNN(num_classes)


def resnet18(num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-18 (3×3 stem, no max-pool), 11.2 M parameters."""
    return ResNet18(num_classes)


def wide_resnet(num_classes: int = 10, depth: int = 28, width: int = 2) -> nn.Module:
    """WideResNet-depth-width (WRN-28-2 by default, 1.5 M parameters)."""
    return WideResNet(depth, width, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "fast_cnn": fast_cnn,
    "fast_cnn_narrow": lambda num_classes=10: FastCNN(num_classes, widths=(32, 64, 128)),
    "small_cnn": small_cnn,
    "resnet18": resnet18,
    "wrn28_2": wide_resnet,
    "wrn28_10": lambda num_classes=10: wide_resnet(num_classes, 28, 10),
}


# How a network normalises its activations: "batch" (each layer as defined, batch norm), or one that
# does not couple a batch's samples: "group" (GroupNorm with 8 groups) or "layer" (one group).
NORMS: tuple[str, ...] = ("batch", "group", "layer")
GROUPS = 8


def replace_batch_norm(model: nn.Module, norm: str) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` replaced in place by a normalisation that does not
    couple a batch's samples, so that a sample's output and gradient do not depend on the others in
    its batch (Chapter 5: importance sampling's variance argument assumes they do not).

    ``"group"``: ``GroupNorm(8, C)`` (Wu & He 2018); ``"layer"``: ``GroupNorm(1, C)``, layer norm over
    channels and positions. Each keeps the replaced layer's ε and whether its scale learns (the fast
    networks freeze it); ``"batch"`` leaves the model as it is."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "batch":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                channels = child.num_features
                groups = 1 if norm == "layer" else GROUPS
                if channels % groups:
                    raise ValueError(
                        f"norm {norm!r} needs channels divisible by {groups}, got {channels}"
                    )
                replacement = nn.GroupNorm(groups, channels, eps=child.eps, affine=True)
                replacement.weight.requires_grad_(child.weight.requires_grad)
                setattr(parent, name, replacement.to(child.weight.device))
    return model


def build_model(name: str, num_classes: int = 10, norm: str = "batch") -> nn.Module:
    """The model registered under ``name`` (see ``MODELS``), with its batch norm replaced as ``norm``
    says (:func:`replace_batch_norm`)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return replace_batch_norm(MODELS[name](num_classes=num_classes), norm)
