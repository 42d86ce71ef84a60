"""Costing and running a chapter's grid (:mod:`ismod.suites`): how long its missing runs would train,
running them (or refusing, over a time limit), and loading the saved ones.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .data import data_source
from .experiments import Config, Result, config_hash, load_saved, run_or_load
from .strategies import build_strategy
from .suites import PAGE_SUITES, SUITES, Suite
from .train import TRAINED_SAMPLE_FORWARDS

__all__ = [
    "page_costs",
    "MAX_MINUTES_ENV",
    "GridOverBudget",
    "default_max_minutes",
    "seconds_from_rate",
    "estimate_seconds",
    "missing_runs",
    "run_suite",
    "load_suite",
]


def page_costs(
    scale: str, results_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
    device: str | Any = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """For each page of ``ismod.suites.PAGE_SUITES``, at ``scale``: how many of its runs are saved, how many are
    missing (what building the page would train) and the training seconds predicted for those
    (:func:`estimate_seconds`, measured on ``device`` only when something is missing)."""
    costs: dict[str, dict[str, float]] = {}
    cache: dict = {}
    for page, names in PAGE_SUITES.items():
        configs = {
            config_hash(c): c for n in names for runs in SUITES[n](scale).values() for c in runs
        }
        suite = {"all": list(configs.values())}
        missing = missing_runs(suite, results_dir, data_root)
        seconds = estimate_seconds(missing, device, step_times=cache) if missing else 0.0
        costs[page] = {
            "saved": len(configs) - len(missing),
            "missing": len(missing),
            "seconds": seconds,
        }
    return costs


MAX_MINUTES_ENV = "ISMOD_MAX_MINUTES"
# fwd + bwd from bench.forward_backward_times is most of a step; augmentation and the optimiser add about
# 15% (measured on an H200 for fast_cnn at b = 1024: 5.9 ms of 6.8 ms per step)
_STEP_OVERHEAD = 1.15


class GridOverBudget(RuntimeError):
    """A grid's predicted training time exceeds the time allowed for it (see :func:`run_suite`)."""


def default_max_minutes(scale: str) -> float | None:
    """The training time a chapter's grid may take without an explicit opt-in: ``$ISMOD_MAX_MINUTES``
    when set (``inf`` for no limit), else 15 minutes at ``"gpu"`` scale (a Colab T4 session) and no
    limit at ``"smoke"`` and ``"cpu"`` (the book's own build)."""
    env = os.environ.get(MAX_MINUTES_ENV, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(
                f"{MAX_MINUTES_ENV} must be a number of minutes or 'inf', got {env!r}"
            ) from None
        return None if math.isinf(value) else value
    return 15.0 if scale == "gpu" else None


def _step_cost_factor(config: Config, t_forward: float, t_backward: float) -> float:
    """Training steps' cost relative to a uniform step, from the scoring passes the strategy declares
    per trained sample (``Strategy.scoring_passes_per_sample``: selective backprop about β + 1, the τ
    switch at most B/b, hard selection 1/keep), each a forward pass."""
    share = t_forward / (t_forward + t_backward)
    strategy = build_strategy(config.strategy, config.strategy_options)
    return 1.0 + strategy.scoring_passes_per_sample * share


def seconds_from_rate(config: Config, seconds_per_sample: float, *, backward_ratio: float,
                      overhead_s: float = 0.0) -> float:  # fmt: skip
    """Predicted seconds of one run from a measured training rate: the samples its budget trains on ×
    ``seconds_per_sample`` (of a uniform step) × the strategy's scoring factor, for a network whose
    backward pass takes ``backward_ratio`` times its forward pass, plus ``overhead_s`` (evaluation,
    start-up); a seconds (or modelled-seconds) budget counts as itself plus the overhead. The one cost model behind
    :func:`estimate_seconds` and the GPU session's scripts."""
    if config.budget in ("seconds", "modelled_seconds"):  # modelled on a machine like this one
        return config.budget_amount + overhead_s
    if config.budget == "forward_passes":  # the budget already holds the scoring passes
        return config.budget_amount / TRAINED_SAMPLE_FORWARDS * seconds_per_sample + overhead_s
    per_epoch = config.subset or 50_000
    # a strategy's own (pruned) epochs are at most N samples each: an upper bound
    epochs = config.budget in ("epochs", "strategy_epochs")
    samples = config.budget_amount * (per_epoch if epochs else config.batch_size)
    return (
        samples * seconds_per_sample * _step_cost_factor(config, 1.0, backward_ratio) + overhead_s
    )


def estimate_seconds(
    configs: list[Config], device: str | Any = None, *, step_times: dict | None = None
) -> float:
    """Predicted training seconds of ``configs`` on ``device`` (default: CUDA if available), by
    :func:`seconds_from_rate` with the rate measured here: forward + backward seconds of each model at
    its batch size (one short measurement per (model, batch), :func:`ismod.bench.forward_backward_times`)
    × 1.15 for augmentation and the optimiser, plus the evaluation passes. Probes are not counted.
    ``step_times`` caches measurements between calls."""
    import torch

    from .bench import forward_backward_times

    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    cache = step_times if step_times is not None else {}
    total = 0.0
    for c in configs:
        key = (c.model, c.batch_size, str(device))
        if key not in cache:
            cache[key] = forward_backward_times(
                c.model, batch_size=c.batch_size, repeats=2, device=device
            )
        t = cache[key]
        per_sample = (t["forward_s"] + t["backward_s"]) * _STEP_OVERHEAD / c.batch_size
        evals = (
            (c.evaluations + 1)
            * ((c.test_subset or 10_000) + c.train_eval_size)
            / c.batch_size
            * t["scoring_s"]
        )
        total += seconds_from_rate(
            c, per_sample, backward_ratio=t["backward_s"] / t["forward_s"], overhead_s=evals
        )
    return total


def missing_runs(
    suite: Suite, results_dir: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> list[Config]:
    """The configs of ``suite`` with no saved result for this code and this data (see
    :func:`ismod.experiments.load_saved`): what running the suite would train."""
    sources: dict[str, str] = {}
    missing = []
    for configs in suite.values():
        for c in configs:
            if c.dataset not in sources:
                sources[c.dataset] = data_source(c.dataset, data_root)
            if load_saved(c, results_dir, data=sources[c.dataset]) is None:
                missing.append(c)
    return missing


def run_suite(suite: Suite, results_dir: str | os.PathLike, *, scale: str = "", progress: bool | None = None,
              max_minutes: float | None | str = "default", if_over_budget: str = "saved",
              **run_kwargs: Any) -> dict[str, list[Result]]:  # fmt: skip
    """Every config of ``suite`` through :func:`~ismod.experiments.run_or_load` (saved results reused).

    Before training, the runs that have no saved result are costed (:func:`estimate_seconds`) and the
    prediction printed. If it exceeds ``max_minutes`` (default :func:`default_max_minutes` of
    ``scale``; ``None`` for no limit), nothing is trained: with ``if_over_budget="saved"`` the saved
    results that exist are returned (any data source, each with its provenance) — :class:`GridOverBudget`
    is raised when there are none, and always with ``"raise"``; ``"saved or none"`` returns the saved
    results, or ``{}`` when there are none (for a page that reports "not measured" instead). A bar counts the grid's runs when ``progress`` is set (by default at
    ``"gpu"`` and ``"paper"`` scale, where a grid takes minutes or more)."""
    if if_over_budget not in ("saved", "raise", "saved or none"):
        raise ValueError(
            f"if_over_budget must be 'saved', 'saved or none' or 'raise', got {if_over_budget!r}"
        )
    limit = default_max_minutes(scale) if max_minutes == "default" else max_minutes
    missing = missing_runs(suite, results_dir, run_kwargs.get("data_root"))
    if missing and scale in ("gpu", "paper") and not _cuda():
        print(f"scale {scale!r} asked for on a machine without CUDA: its runs would train on the CPU, slowly",
              flush=True)  # fmt: skip
    if missing and limit is not None:
        seconds = estimate_seconds(missing, run_kwargs.get("device"))
        device = run_kwargs.get("device") or _default_device()
        print(f"{len(missing)} of {sum(len(v) for v in suite.values())} runs to train on {device}: about "
              f"{seconds / 60:.1f} min predicted (limit {limit:g} min)", flush=True)  # fmt: skip
        if seconds > 60 * limit:
            message = (f"this grid would train {len(missing)} runs for about {seconds / 60:.0f} min on {device}, over the "
                       f"max_minutes={limit:g} limit; pass max_minutes=None (or set {MAX_MINUTES_ENV}=inf) to train "
                       f"it anyway, or run it ahead of time with `python -m ismod suite ... --scale {scale or '...'}`")  # fmt: skip
            saved = load_suite(suite, results_dir) if if_over_budget != "raise" else {}
            if not saved and if_over_budget == "saved or none":
                print(message + "; nothing saved to show", flush=True)
                return {}
            if not saved:
                raise GridOverBudget(
                    message
                    + ("" if if_over_budget == "raise" else "; no saved results to show either")
                )
            print(message + "; showing the saved results instead", flush=True)
            return saved
    bar = None
    if progress if progress is not None else scale in ("gpu", "paper"):
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(v) for v in suite.values()), desc="grid", unit="run")
    out: dict[str, list[Result]] = {}
    for label, configs in suite.items():
        out[label] = []
        for c in configs:
            out[label].append(
                run_or_load(c, results_dir, scale=scale, progress=False, **run_kwargs)
            )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _default_device() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "this CPU"


def load_suite(suite: Suite, results_dir: str | os.PathLike) -> dict[str, list[Result]]:
    """The saved results of ``suite`` without training anything (arms with none are left out): how a
    CPU build of the book shows runs made on a GPU. Results are matched by config and behaviour
    version; their data source is in their provenance, printed beside the figures."""
    found = {label: [r for r in (load_saved(c, results_dir) for c in configs) if r is not None]
             for label, configs in suite.items()}  # fmt: skip
    return {label: runs for label, runs in found.items() if runs}
