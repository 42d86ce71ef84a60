"""ismod: importance sampling for deep learning, in PyTorch.

The package behind the course *Importance Sampling for Deep Learning*. Modules are layered;
a module imports only from layers below it:

- layer 0, estimators and formulas: :mod:`ismod.mc`, :mod:`ismod.sampling`, :mod:`ismod.diagnostics`,
  :mod:`ismod.convex`, :mod:`ismod.bounds`, :mod:`ismod.tau`, :mod:`ismod.scale` (diagnostics and convex
  build on sampling);
- layer 1, training parts: :mod:`ismod.data`, :mod:`ismod.augment`, :mod:`ismod.models`;
- layer 2, strategies: :mod:`ismod.strategies`;
- layer 3, the loop: :mod:`ismod.train`;
- layer 4, experiments and presentation: :mod:`ismod.experiments`, :mod:`ismod.bench`, :mod:`ismod.plots`, :mod:`ismod.widgets` (the last two
  need the ``book`` extra).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
