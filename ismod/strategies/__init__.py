"""Selection strategies: how each training step picks its indices and weights (one file per family).

A strategy is one class implementing :class:`~ismod.strategies.base.Strategy`. Register new ones in
``STRATEGIES`` so configs can name them.
"""

from __future__ import annotations

from typing import Any

from .base import Strategy
from .budgeted import PredictionSubset, SelectiveBackprop
from .presample import Presample
from .scored import LossSampling, OnlineBatchSelection, PrioritizedReplay, ScoredStrategy
from .uniform import Uniform

__all__ = [
    "Strategy",
    "ScoredStrategy",
    "Uniform",
    "LossSampling",
    "OnlineBatchSelection",
    "PrioritizedReplay",
    "PredictionSubset",
    "SelectiveBackprop",
    "Presample",
    "STRATEGIES",
    "build_strategy",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (Uniform, LossSampling, OnlineBatchSelection, PrioritizedReplay, PredictionSubset, SelectiveBackprop,
                Presample)
}


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The strategy registered under ``name``, constructed with ``options``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**(options or {}))
    except TypeError as err:
        raise ValueError(f"strategy_options for {name!r} are not valid: {err}") from err
