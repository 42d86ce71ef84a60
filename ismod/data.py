"""CIFAR on the training device: whole splits as uint8 tensors, no DataLoader in the hot loop.

Where the data comes from, in order:

1. an image-folder tree ``<root>/cifar10-jpeg/{train,test}/<class>/*.jpg`` (class folders sort into
   label order), or the same tree packed as ``<root>/cifar10-jpeg.tar.gz`` — the offline CIFAR-10 copy
   this project is developed with;
2. torchvision's ``CIFAR10`` / ``CIFAR100`` files under ``<root>``, downloaded there when
   ``download=True`` (the normal path on Colab).

``root`` is an argument or the environment variable ``ISMOD_DATA``. Decoded arrays are cached (in
``ISMOD_CACHE``, default ``~/.cache/ismod``) so the second load takes about a second.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ._io import replace_atomically

__all__ = [
    "ImageData",
    "load_cifar",
    "data_root",
    "data_source",
    "DATA_ENV",
    "CIFAR_MEAN",
    "CIFAR_STD",
]

DATA_ENV = "ISMOD_DATA"
CACHE_ENV = "ISMOD_CACHE"
CIFAR_MEAN = (125.31, 122.95, 113.87)  # per-channel, on the 0–255 scale (CIFAR-10 train split)
CIFAR_STD = (62.99, 62.09, 66.70)
_JPEG_NAME = {"cifar10": "cifar10-jpeg", "cifar100": "cifar100-jpeg"}


@dataclass
class ImageData:
    """A split held as tensors: ``images`` uint8 (N, 3, 32, 32), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device), self.classes, self.source)

    def subset(self, n: int, *, seed: int = 0) -> ImageData:
        """A class-stratified random subset of ``n`` items (all of them when ``n >= len``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        labels = self.labels.cpu()[perm]
        # round-robin over classes keeps the subset balanced
        order = torch.argsort(labels, stable=True)
        rank_in_class = torch.empty_like(order)
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_class[order] = torch.arange(len(order)) - starts[labels[order]]
        chosen = perm[torch.argsort(rank_in_class * self.num_classes + labels, stable=True)[:n]]
        chosen = chosen.to(self.labels.device)
        return ImageData(self.images[chosen], self.labels[chosen], self.classes, self.source)


def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """``root`` if given, else ``$ISMOD_DATA`` if set, else None."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV, "").strip()
    return Path(env).expanduser() if env else None


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/ismod")).expanduser()


def _decode(blobs: list[bytes]) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    return torch.stack(decode_jpeg(tensors, mode=ImageReadMode.RGB))


def _split_from_files(
    items: list[tuple[str, str, bytes]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """items: (class name, file name, jpeg bytes) → images, labels, sorted class names."""
    classes = sorted({c for c, _, _ in items})
    items = sorted(items, key=lambda t: (t[0], t[1]))
    labels = torch.tensor([classes.index(c) for c, _, _ in items], dtype=torch.long)
    return _decode([b for _, _, b in items]), labels, classes


def _read_tree(split_dir: Path) -> list[tuple[str, str, bytes]]:
    return [
        (cls.name, f.name, f.read_bytes())
        for cls in sorted(p for p in split_dir.iterdir() if p.is_dir())
        for f in sorted(cls.iterdir())
        if f.suffix.lower() in (".jpg", ".jpeg")
    ]


def _read_tar(path: Path, split: str) -> list[tuple[str, str, bytes]]:
    items = []
    with tarfile.open(path) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if (
                member.isfile()
                and len(parts) >= 4
                and parts[-3] == split
                and parts[-1].lower().endswith((".jpg", ".jpeg"))
            ):
                items.append((parts[-2], parts[-1], tar.extractfile(member).read()))
    return items


def _load_image_folder(source: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    stat = source.stat()
    key = hashlib.sha256(
        f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{split}".encode()
    ).hexdigest()[:16]
    cache = _cache_dir() / f"{source.name.split('.')[0]}-{split}-{key}.pt"
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            return blob["images"], blob["labels"], list(blob["classes"])
        except Exception:  # a corrupt cache is rebuilt, never trusted
            cache.unlink(missing_ok=True)
    items = _read_tar(source, split) if source.is_file() else _read_tree(source / split)
    if not items:
        raise FileNotFoundError(f"no JPEG images for split {split!r} in {source}")
    images, labels, classes = _split_from_files(items)
    try:
        blob = {"images": images, "labels": labels, "classes": classes}
        replace_atomically(cache, lambda tmp: torch.save(blob, tmp))
    except OSError:
        pass  # caching is an optimisation; a read-only home must not stop training
    return images, labels, classes


def load_cifar(
    name: str = "cifar10",
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = False,
    device: torch.device | str = "cpu",
    subset: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Load a CIFAR split as uint8 tensors on ``device``.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` or ``"test"``.
        root: the data directory; default ``$ISMOD_DATA``.
        download: let torchvision download the dataset into ``root`` when no copy is found.
        subset: keep a class-balanced random subset of this many items (small scales).
    """
    if name not in _JPEG_NAME:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = data_root(root)
    looked: list[str] = []
    data: ImageData | None = None
    copy = _jpeg_copy(name, base, looked)
    if copy is not None:
        images, labels, classes = _load_image_folder(copy, split)
        data = ImageData(images, labels, classes, _source_label(name, jpeg=True))
    if data is None:
        data = _load_torchvision(name, split, base, download, looked)
    if subset is not None:
        data = data.subset(subset, seed=seed)
    return data.to(device)


def _load_torchvision(
    name: str, split: str, base: Path | None, download: bool, looked: list[str]
) -> ImageData:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    where = base if base is not None else Path.cwd() / "data"
    looked.append(f"{where} (torchvision {cls.__name__} files)")
    try:
        ds = cls(str(where), train=split == "train", download=download)
    except (RuntimeError, OSError) as err:  # not there, or no network to fetch it
        raise FileNotFoundError(
            f"{name} not found; looked in: {'; '.join(looked)}. Set {DATA_ENV} (or pass root=) to a "
            f"folder holding {_JPEG_NAME[name]}/ or {_JPEG_NAME[name]}.tar.gz, or torchvision's "
            f"files, or pass download=True to let torchvision fetch it (needs internet)."
        ) from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageData(
        images,
        torch.tensor(ds.targets, dtype=torch.long),
        list(ds.classes),
        _source_label(name, jpeg=False),
    )


def _source_label(name: str, *, jpeg: bool) -> str:
    label = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    return f"{label} (JPEG q75 copy)" if jpeg else f"{label} (torchvision)"


def _jpeg_copy(name: str, base: Path | None, looked: list[str] | None = None) -> Path | None:
    """The image-folder copy of ``name`` under ``base`` (a tree or a tarball), if there is one."""
    if base is None:
        return None
    jpeg = _JPEG_NAME[name]
    for candidate in (base / jpeg, base / f"{jpeg}.tar.gz", base / f"{jpeg}.tgz"):
        if looked is not None:
            looked.append(str(candidate))
        if candidate.exists():
            return candidate
    return None


def data_source(name: str = "cifar10", root: str | os.PathLike | None = None) -> str:
    """The identity of the data :func:`load_cifar` would load, without loading it: e.g.
    ``"CIFAR-10 (JPEG q75 copy)"`` or ``"CIFAR-10 (torchvision)"``. Saved results are reused only for
    the same source (a result on the JPEG copy is never served to a reader on torchvision's CIFAR-10)."""
    if name not in _JPEG_NAME:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    return _source_label(name, jpeg=_jpeg_copy(name, data_root(root)) is not None)
