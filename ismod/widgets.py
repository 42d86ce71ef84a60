"""Interactive explorers for the book (need the ``book`` extra: ipywidgets and matplotlib).

In the static HTML book a widget cannot run; each chapter draws the figure for the default values
next to it, and the widget is there for readers running the notebook.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from . import plots

__all__ = ["proposal_explorer", "tau_explorer"]


def proposal_explorer(*, threshold: float = 3.0, n: int = 10_000, seed: int = 0):
    """Sliders for the proposal's mean and scale in the tail problem of :func:`ismod.plots.tail_proposal`.

    Returns an ``ipywidgets.interactive``; display it (or leave it as the cell's last expression).
    """
    import ipywidgets as widgets  # imported here so that `import ismod.widgets` needs no browser stack

    def show(mean: float = threshold, scale: float = 1.0) -> None:
        axes = plots.panels(2)
        plots.tail_proposal(mean, scale, threshold=threshold, n=n, seed=seed, axes=axes)
        plt.show()

    return widgets.interactive(
        show,
        mean=widgets.FloatSlider(value=threshold, min=-1.0, max=threshold + 3, step=0.25),
        scale=widgets.FloatSlider(value=1.0, min=0.25, max=3.0, step=0.05),
    )


def tau_explorer(
    *, presample_ratio: float = 3.0, backward_ratio: float = 2.0, spread: float = 0.5, seed: int = 0
):
    """Sliders for Katharopoulos & Fleuret's cost model: B/b, t_b/t_f and the spread of the scores
    (:func:`ismod.plots.tau_tradeoff`) → τ against τ_th and the predicted speed-up.

    Returns an ``ipywidgets.interactive``; display it (or leave it as the cell's last expression).
    """
    import ipywidgets as widgets

    def show(
        presample_ratio: float = presample_ratio,
        backward_ratio: float = backward_ratio,
        spread: float = spread,
    ) -> None:
        axes = plots.panels(2)
        plots.tau_tradeoff(presample_ratio, backward_ratio, spread, seed=seed, axes=axes)
        plt.show()

    return widgets.interactive(
        show,
        presample_ratio=widgets.FloatSlider(
            value=presample_ratio, min=1.0, max=10.0, step=0.5, description="B / b"
        ),
        backward_ratio=widgets.FloatSlider(
            value=backward_ratio, min=0.5, max=4.0, step=0.1, description="t_b / t_f"
        ),
        spread=widgets.FloatSlider(
            value=spread, min=0.0, max=2.0, step=0.05, description="score spread σ"
        ),
    )
