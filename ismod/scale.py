"""The scale switch every chapter uses: ``"smoke"``, ``"cpu"``, ``"gpu"`` or ``"auto"``.

- ``"smoke"``: seconds; what the test suite runs.
- ``"cpu"``: what the built book runs on a 2-core machine, minutes per chapter at most.
- ``"gpu"``: full-size runs.
- ``"auto"``: ``"gpu"`` when CUDA is available, else ``"cpu"``.

The environment variable ``ISMOD_SCALE`` overrides whatever a notebook's ``parameters`` cell says,
so tests and the book build can choose a scale without editing notebooks.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu")
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
            f"{source} must be one of 'auto', 'smoke', 'cpu', 'gpu'; got {env or scale!r}"
        )
    return chosen


def by_scale(scale: str, *, smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for ``scale`` (already resolved) from the three given, e.g. a sample size."""
    table = {"smoke": smoke, "cpu": cpu, "gpu": gpu}
    if scale not in table:
        raise ValueError(
            f"scale must be a resolved scale ('smoke', 'cpu' or 'gpu'); got {scale!r}. "
            "Pass it through resolve_scale() first."
        )
    return table[scale]
