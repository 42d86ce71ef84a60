"""Interactive explorers for the book (need the ``book`` extra: ipywidgets and matplotlib).

In the static HTML book a widget cannot run; each chapter draws the figure for the default values
next to it, and the widget is there for readers running the notebook.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from . import plots

__all__ = ["proposal_explorer", "tau_explorer", "speedup_explorer"]


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
    (:func:`ismod.plots.tau_tradeoff`) → τ and τ_eff against τ_th and the predicted speed-up.

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


def speedup_explorer(
    *, tau: float = 4.0, presample_ratio: float = 3.0, backward_ratio: float = 2.0,
    noise_ratio: float = 8.0, batch: int = 128,
):  # fmt: skip
    """Sliders for Chapter 8's check: τ, B/b (0 for free scores), t_b/t_f and
    :math:`B_{\\text{noise}}/b` → the predicted speed-up in time of
    :func:`ismod.tau.predict_speedup`, drawn against τ with the chosen τ marked.

    Returns an ``ipywidgets.interactive``; display it (or leave it as the cell's last expression).
    """
    import ipywidgets as widgets

    def show(tau: float, presample_ratio: float, backward_ratio: float, noise_ratio: float) -> None:
        ax = plots.panels(1, height=3.6)[0]
        (p,) = plots.speedup_panel(ax, presample_ratio=presample_ratio or None,  # 0: free scores
                                   backward_ratio=backward_ratio, batch=batch,
                                   noise_ratios=(noise_ratio,), tau=tau)  # fmt: skip
        ax.set_title(f"τ_eff {p.tau_eff:.2f} · τ_th {p.tau_threshold:.2f} · "
                     f"needs τ_eff > {p.required:.2f} · speed-up ×{p.speedup:.2f}")  # fmt: skip
        plt.show()

    return widgets.interactive(
        show,
        tau=widgets.FloatLogSlider(value=tau, base=10, min=0, max=2, step=0.02, description="τ"),
        presample_ratio=widgets.FloatSlider(
            value=presample_ratio, min=0.0, max=10.0, step=0.5, description="B / b (0: free)"
        ),
        backward_ratio=widgets.FloatSlider(
            value=backward_ratio, min=0.5, max=4.0, step=0.05, description="t_b / t_f"
        ),
        noise_ratio=widgets.FloatLogSlider(
            value=noise_ratio, base=10, min=-1, max=3, step=0.05, description="B_noise / b"
        ),
    )
