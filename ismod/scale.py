"""The scale switch every chapter uses: ``"smoke"``, ``"cpu"``, ``"gpu"``, ``"paper"`` or ``"auto"``.

- ``"smoke"``: seconds; what the test suite runs.
- ``"cpu"``: what the built book runs on a 2-core machine, minutes per chapter at most.
- ``"gpu"``: the fast recipe (airbench94's network) on all of CIFAR-10, minutes per chapter on one GPU.
- ``"paper"``: the sources' own settings (ResNet-18 for 45 or 200 epochs, WRN-28-2 for 3 hours):
  GPU-days for a whole grid; chosen only by name, never by ``"auto"``.
- ``"auto"``: ``"gpu"`` when CUDA is available, else ``"cpu"``.

The environment variable ``ISMOD_SCALE`` overrides whatever a notebook's ``parameters`` cell says,
so tests and the book build can choose a scale without editing notebooks.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu", "paper")
ENV_VAR = "ISMOD_SCALE"

T = TypeVar("T")


def resolve_scale(scale: str = "auto") -> str:
    """Return the concrete scale (``"smoke"``, ``"cpu"`` or ``"gpu"``) to run at.

    ``ISMOD_SCALE``, when set and non-empty, takes precedence over ``scale``; ``"auto"`` becomes
    ``"gpu"`` if ``torch.cuda.is_available()`` and ``"cpu"`` otherwise.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    source = f"environment variable {ENV_VAR}" if env else "scale"
    chosen = (env or scale).strip().lower()
    if chosen == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if chosen not in SCALES:
        raise ValueError(
            f"{source} must be one of 'auto', 'smoke', 'cpu', 'gpu', 'paper'; got {env or scale!r}"
        )
    return chosen


def by_scale(scale: str, *, smoke: T, cpu: T, gpu: T, paper: T | None = None) -> T:
    """Pick the value for ``scale`` (already resolved) from those given, e.g. a sample size; ``"paper"``
    takes ``gpu``'s value where no ``paper`` value is given."""
    table = {"smoke": smoke, "cpu": cpu, "gpu": gpu, "paper": gpu if paper is None else paper}
    if scale not in table:
        raise ValueError(
            f"scale must be a resolved scale ('smoke', 'cpu', 'gpu' or 'paper'); got {scale!r}. "
            "Pass it through resolve_scale() first."
        )
    return table[scale]
