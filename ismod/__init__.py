"""ismod: importance sampling for deep learning, in PyTorch.

The package behind the course *Importance Sampling for Deep Learning*. Modules are layered; a module
imports only from layers below it (function-level imports included), and there is no import cycle —
``tests/test_layers.py`` checks both:

- layer 0, estimators and formulas: :mod:`ismod.mc`, :mod:`ismod.sampling`, :mod:`ismod.diagnostics`,
  :mod:`ismod.convex`, :mod:`ismod.bounds`, :mod:`ismod.tau`, :mod:`ismod.stats`, :mod:`ismod.verdicts`,
  :mod:`ismod.scale`, :mod:`ismod.batchnorm` (batch norm under importance weights), and the
  process-group primitives :mod:`ismod.process_group` (torch and the standard library only);
- layer 1, training parts: :mod:`ismod.data`, :mod:`ismod.augment`, :mod:`ismod.models`;
- layer 2, strategies: :mod:`ismod.strategies` (one class per strategy, one registry line);
- layer 3, the loop: :mod:`ismod.train` (budget and schedule, scoring, the step, recording and
  checkpoints, each a method of its loop; optimiser and per-sample loss injectable), and
  :mod:`ismod.adapters` (the same strategies in your own ``DataLoader`` loop);
- layer 4, experiments and the book's readers: :mod:`ismod.experiments`, :mod:`ismod.suites`,
  :mod:`ismod.runner`, :mod:`ismod.findings`, :mod:`ismod.conclusions`, :mod:`ismod.diagnosis`,
  :mod:`ismod.bench`, :mod:`ismod.distributed` (launchers), the command line ``ismod.__main__``,
  :mod:`ismod.plots` and :mod:`ismod.widgets` (the last two need the ``book`` extra), and
  :mod:`ismod.glue` (run numbers into a page's prose).

Private helpers (a leading underscore) sit in their user's layer; ``tests/test_layers.py`` holds the one
list, and this docstring and the architecture notes are checked against it.
"""

__version__ = "0.7.0"  # CHANGELOG.md says what each version changed

# What a training loop of your own needs, importable from the top: ``from ismod import LossSampler``.
from .adapters import (
    HardExampleLoss,
    InfoBatchSampler,
    LossSampler,
    ReducibleLossSelection,
    SelectiveBackpropLoss,
    StrategyBatchSampler,
    TauSwitchSampler,
    select_by_loss,
)
from .bounds import upper_bound
from .process_group import all_gather_cat
from .sampling import ImportanceSampler, IndexedDataset, probabilities
from .train import cross_entropy_loss

__all__ = [
    "__version__",
    "LossSampler",
    "InfoBatchSampler",
    "TauSwitchSampler",
    "SelectiveBackpropLoss",
    "HardExampleLoss",
    "ReducibleLossSelection",
    "StrategyBatchSampler",
    "select_by_loss",
    "ImportanceSampler",
    "IndexedDataset",
    "probabilities",
    "upper_bound",
    "cross_entropy_loss",
    "all_gather_cat",
]
