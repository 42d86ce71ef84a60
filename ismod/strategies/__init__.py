"""Selection strategies: how each training step picks its indices and weights (one file per family).

A strategy is one class implementing :class:`~ismod.strategies.base.Strategy` (``select``, returning a
:class:`~ismod.strategies.base.Selection`, ``observe``, ``state_dict`` and ``load_state_dict``),
registered by adding it to ``STRATEGIES`` below: configs name it by its ``name``, and the contract
tests, the distributed tests and the API page pick it up from there. What the rest of the package asks
of it, it declares on the class (``scoring_passes_per_sample`` for the cost model, ``observes_logits``,
``own_loop_adapter``, ``cuts_epochs_into_batches`` for the batch sampler); nothing outside this package
checks a strategy's name.
"""

from __future__ import annotations

from typing import Any

from .base import Selection, Strategy
from .budgeted import HardSelection, PredictionSubset, SelectiveBackprop
from .presample import Presample
from .pruning import InfoBatch
from .reducible import ReducibleHoldoutLoss
from .scored import (
    LossSampling,
    OnlineBatchSelection,
    PrioritizedReplay,
    ScoredStrategy,
    StaleBoundSampling,
)
from .uniform import Uniform

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        Uniform,
        LossSampling,
        OnlineBatchSelection,
        PrioritizedReplay,
        PredictionSubset,
        SelectiveBackprop,
        Presample,
        InfoBatch,
        HardSelection,
        ReducibleHoldoutLoss,
        StaleBoundSampling,
    )
}

# the registry is the list: configs, the contract tests and the API page all read it from here
__all__ = [
    "Strategy",
    "Selection",
    "ScoredStrategy",
    *(cls.__name__ for cls in STRATEGIES.values()),
    "STRATEGIES",
    "build_strategy",
]


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The strategy registered under ``name``, constructed with ``options``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {name!r}")
    try:
        return STRATEGIES[name](**(options or {}))
    except TypeError as err:
        raise ValueError(f"strategy_options for {name!r} are not valid: {err}") from err
