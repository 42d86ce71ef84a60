"""The experiment grids behind the chapters: which configs a chapter runs at each scale.

A suite maps an arm's label (e.g. ``"last-loss, crop+flip"``) to the configs of its seeds. Chapters
call :func:`run_suite`, which goes through :func:`ismod.experiments.run_or_load`, so the built book
reuses saved results whose config matches exactly; the command line runs the same grid ahead of time
(``python -m ismod suite chapter3 --scale cpu --out book/results/cpu``).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .data import data_source
from .experiments import CONFIGS, Config, Result, config_hash, load_saved, run_or_load
from .scale import by_scale
from .stats import holm, paired_difference
from .train import TRAINED_SAMPLE_FORWARDS

__all__ = [
    "SUITES",
    "chapter3",
    "chapter3_variants",
    "chapter3_report",
    "chapter4",
    "chapter4_resnet",
    "chapter5",
    "chapter5_tau",
    "chapter5_dissection",
    "chapter5_critical_batch",
    "chapter5_prediction_pilot",
    "chapter5_prediction",
    "DISSECTION_VARIANTS",
    "chapter6",
    "chapter7",
    "chapter7_label",
    "CHAPTER7_STRATEGIES",
    "CHAPTER7_AUGMENTATIONS",
    "CHAPTER7_BUDGETS",
    "CHAPTER7_PRIMARY_ARMS",
    "CHAPTER7_OVERFIT_EPOCHS",
    "chapter7_overfit",
    "chapter7_overfit_pilot",
    "run_suite",
    "summarize",
    "markdown_table",
    "budget_curves",
    "accuracy_difference",
    "compare",
    "verdict_table",
    "findings",
    "fast_base",
    "cpu_base",
    "harness",
    "tau_points",
    "tau_crossing",
    "tau_log_error",
    "pilots",
    "ALPHA",
    "budget_time_ratios",
    "budget_cost_markdown",
    "importance_share",
    "load_suite",
    "provenance_summary",
    "chapter7_pairs",
    "gpu_pilots",
    "estimate_seconds",
    "seconds_from_rate",
    "missing_runs",
    "default_max_minutes",
    "PAGE_SUITES",
    "page_costs",
    "GridOverBudget",
    "MAX_MINUTES_ENV",
    "divergence_epoch",
    "sampling_log",
    "tau_log",
    "REPORT_SETTINGS",
]

Suite = dict[str, list[Config]]

# The loss-sampling report's Appendix A, as fractions of N and epochs (Loss-based sampling report, Appendix A).
REPORT_SETTINGS: dict[str, dict[str, Any]] = {
    "last-loss": {
        "score": "last",
        "subset": 8192 / 50_000,
        "warmup_epochs": 5,
        "replacement": False,
    },
    "running-loss": {
        "score": "running",
        "beta": 0.2,
        "subset": 30_000 / 50_000,
        "warmup_epochs": 0,
        "replacement": False,
    },
}


# Online batch selection and prioritised replay as the chapters' saved runs ran them: re-ranked every
# step, and new samples at priority 1 (the strategies' defaults now re-rank once per epoch and give new
# samples the maximum priority, as Schaul et al.; a grid that wants those drops these two options).
OBS_AS_SAVED: dict[str, Any] = {"pressure_start": 100.0, "pressure_end": 10.0, "rerank_every": 1}
PER_AS_SAVED: dict[str, Any] = {"new_priority": "one"}
# Algorithm 1 as the chapters' saved runs ran it: the presample scored clean and the chosen samples
# trained on a fresh augmentation (the strategy now scores and trains on the same augmented images, as
# the authors' library does; Chapter 5's dissection found the mismatch behind the importance steps'
# harm). Every presample arm below states it unless it asks for the new behaviour.
PRESAMPLE_AS_SAVED: dict[str, Any] = {"score_augmented": False}


def fast_base(name: str, **changes: Any) -> Config:
    """The ``"gpu"`` scale's base config: the fast recipe (``cifar10-fast-uniform``, airbench94's
    settings) with the tricks that would confound the course's measurements switched off — label
    smoothing (it caps per-sample gradient norms, Chapter 4), lookahead (weight averaging) and
    test-time augmentation — and the learning rate decaying to 0 (Arazo et al.'s budgeted schedule)."""
    return CONFIGS["cifar10-fast-uniform"].replace(name=name, label_smoothing=0.0, lookahead=False, tta=0, final_lr=0.0,
                                                   **changes)  # fmt: skip


def cpu_base(name: str, **changes: Any) -> Config:
    """The ``"cpu"`` scale's base config: the fast recipe's narrow network on two CPU cores
    (``cifar10-fast-cpu``) at batch 256 and half its learning rate, on a class-balanced subset of 5,000
    CIFAR-10 training images (5,000 test images), with the same tricks off as :func:`fast_base`. Its
    pilots (:func:`pilots`) fit the subset within 16 epochs, so augmentation and hard-sample selection
    have something to act on."""
    settings = dict(subset=5000, test_subset=5000, batch_size=256, lr=0.75, label_smoothing=0.0, lookahead=False,
                    tta=0, final_lr=0.0)  # fmt: skip
    return CONFIGS["cifar10-fast-cpu"].replace(name=name, **{**settings, **changes})


def pilots(scale: str) -> dict[str, Config]:
    """Short runs (seed 0) that show each grid's phenomenon is present before the grid runs: τ crossing
    τ_th under uniform training (Chapter 5), a full run fitting its training set with and without
    augmentation (Chapters 3 and 7), and per-sample gradient norms becoming negligible (Chapter 4).
    ``"gpu"``: the fast recipe on all of CIFAR-10 (:func:`fast_base`); ``"cpu"``: its narrow network on
    5,000 images (:func:`cpu_base`); ``"smoke"``: seconds, for the tests."""
    if scale == "gpu":
        return {
            "tau crosses threshold (ch5)": fast_base("pilot-ch5-tau", budget="seconds", budget_amount=8.0, evaluations=6,
                                                     strategy="presample",
                                                     strategy_options={**PRESAMPLE_AS_SAVED, "importance": False},
                                                     train_eval_size=10_000),
            "full run, crop+flip (ch7)": fast_base("pilot-ch7-cropflip", budget_amount=20, evaluations=4,
                                                   train_eval_size=10_000),
            "full run, no augmentation (ch3/ch7)": fast_base("pilot-ch7-noaug", budget_amount=20, evaluations=4, crop=False,
                                                             flip=False, train_eval_size=10_000),
            "full run, RICAP (ch7)": fast_base("pilot-ch7-ricap", budget_amount=20, evaluations=4, ricap_beta=0.3,
                                               train_eval_size=10_000),
            "gradient probe (ch4)": fast_base("pilot-ch4-probe", budget_amount=10, evaluations=5, probe_size=1024,
                                              probe_chunk=128),
        }  # fmt: skip
    if scale == "paper":
        return {}
    if scale not in ("cpu", "smoke"):
        raise ValueError(f"scale must be 'smoke', 'cpu', 'gpu' or 'paper', got {scale!r}")
    cpu = scale == "cpu"
    base = (
        cpu_base("pilot")
        if cpu
        else CONFIGS["smoke-uniform"].replace(name="pilot", label_smoothing=0.0)
    )
    full = dict(budget_amount=16 if cpu else 2, evaluations=4, train_eval_size=2000 if cpu else 128)
    return {
        "tau crosses threshold (ch5)": _chapter5_base(scale).replace(
            name="pilot-ch5-tau", strategy="presample",
            strategy_options={**PRESAMPLE_AS_SAVED, "importance": False}),
        "full run, crop+flip (ch7)": base.replace(name="pilot-ch7-cropflip", **full),
        "full run, no augmentation (ch3/ch7)": base.replace(name="pilot-ch7-noaug", crop=False, flip=False, **full),
        "full run, RICAP (ch7)": base.replace(name="pilot-ch7-ricap", ricap_beta=0.3, **full),
        "gradient probe (ch4)": base.replace(name="pilot-ch4-probe", budget_amount=full["budget_amount"], evaluations=5,
                                             probe_size=1024 if cpu else 32, probe_chunk=128 if cpu else 16),
    }  # fmt: skip


def gpu_pilots() -> dict[str, Config]:
    """:func:`pilots` at ``"gpu"`` scale (the saved H200 pilots)."""
    return pilots("gpu")


def harness(scale: str) -> Suite:
    """The harness chapter's one run: the fast recipe as this scale trains it (``cifar10-fast-cpu``,
    ``cifar10-fast-uniform``; at ``"smoke"`` scale, seconds)."""
    return {
        "fast recipe": [
            by_scale(
                scale,
                smoke=CONFIGS["smoke-uniform"],
                cpu=CONFIGS["cifar10-fast-cpu"],
                gpu=CONFIGS["cifar10-fast-uniform"],
            )
        ]
    }


def _chapter3_base(scale: str) -> Config:
    """One training setup per scale, with the report's optimiser (SGD, lr 0.01, momentum 0.9, weight
    decay 5e-4, batch 128, lr ×0.1 at epochs 15 and 30 — here at 1/3 and 2/3 of the budget — and plain
    cross-entropy). ``paper``: the report's ResNet-18 for 45 epochs. ``gpu``: the fast recipe (:func:`fast_base`, its own optimiser) on all of CIFAR-10
    for 20 epochs, long enough to fit the training set (the report trained ResNet-18 for 45).
    ``cpu``: :func:`cpu_base` for 16 epochs, long enough to fit its 5,000 images. ``smoke``: seconds."""
    report = dict(batch_size=128, lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="step",
                  milestones=(1 / 3, 2 / 3), gamma=0.1, warmup=0.0, label_smoothing=0.0, budget="epochs")  # fmt: skip
    return by_scale(
        scale,
        gpu=fast_base("ch3", budget_amount=20, evaluations=5, train_eval_size=10_000),
        paper=CONFIGS["cifar10-resnet18-uniform"].replace(name="ch3", budget_amount=45, evaluations=15,
                                                          train_eval_size=10_000, **report),
        cpu=cpu_base("ch3", budget_amount=16, evaluations=4, train_eval_size=2000),
        smoke=CONFIGS["smoke-uniform"].replace(name="ch3", budget_amount=3, evaluations=3, train_eval_size=128,
                                               **{**report, "batch_size": 64, "lr": 0.05}),
    )  # fmt: skip


def _report_options(scale: str, kind: str) -> dict[str, Any]:
    """The report's settings; the warm-up scales with the budget (5 of about 45 epochs → 2 of 20 on
    ``gpu``, 2 of 16 on ``cpu``, 1 of 3 on ``smoke``); |Z| keeps its fraction of N."""
    options = dict(REPORT_SETTINGS[kind])
    if options["warmup_epochs"]:
        options["warmup_epochs"] = {"paper": 5, "gpu": 2, "cpu": 2}.get(scale, 1)
    return options


def _seeds(scale: str) -> range:
    return range(by_scale(scale, smoke=1, cpu=3, gpu=5, paper=3))


def _primary_seeds(scale: str) -> range:
    """Seeds of the arms a chapter's declared primary comparisons read: five wherever a run costs
    under a minute (cpu and gpu), so the paired test has 4 degrees of freedom."""
    return range(by_scale(scale, smoke=1, cpu=5, gpu=5, paper=3))


def _arm(
    base: Config, label: str, strategy: str, options: dict[str, Any], seeds: range, **changes: Any
) -> list[Config]:
    slug = (
        label.replace(", ", "-")
        .replace(" ", "-")
        .replace("+", "")
        .replace("=", "")
        .replace("/", "")
    )
    if strategy == "presample":
        options = {**PRESAMPLE_AS_SAVED, **options}
    return [base.replace(name=f"{base.name}-{slug}-s{seed}", strategy=strategy, strategy_options=options,
                         seed=seed, **changes) for seed in seeds]  # fmt: skip


def chapter3(scale: str) -> Suite:
    """Uniform vs the report's last-loss and running-loss sampling, each with and without crop+flip."""
    base = _chapter3_base(scale)
    seeds = _seeds(scale)
    suite: Suite = {}
    for aug, changes in (
        ("crop+flip", {"crop": True, "flip": True}),
        ("no augmentation", {"crop": False, "flip": False}),
    ):
        # the uniform arms carry the primary comparison crop+flip vs none (the report's 84% → 91%)
        suite[f"uniform, {aug}"] = _arm(base, f"uniform, {aug}", "uniform", {}, _primary_seeds(scale), **changes)
        for kind in ("last-loss", "running-loss"):
            suite[f"{kind}, {aug}"] = _arm(
                base, f"{kind}, {aug}", "loss", _report_options(scale, kind), seeds, **changes
            )
    return suite


def _chapter3_report_base(scale: str) -> Config:
    """Chapter 3's network and data with the report's own optimiser: SGD lr 0.01, momentum 0.9,
    weight decay 5e-4, batch 128, lr ×0.1 at 1/3 and 2/3 of the budget, crop+flip. At ``paper`` scale
    this is :func:`_chapter3_base` itself."""
    report = dict(batch_size=128, lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="step",
                  milestones=(1 / 3, 2 / 3), gamma=0.1, warmup=0.0, crop=True, flip=True, bias_lr_scale=1.0)  # fmt: skip
    if scale in ("paper", "smoke"):
        return _chapter3_base(scale).replace(name="ch3r", crop=True, flip=True)
    return _chapter3_base(scale).replace(name="ch3r", **report)


def chapter3_report(scale: str) -> Suite:
    """The report's comparison under the report's optimiser (its learning rate is 1/75 of the fast
    schedule's, under which Algorithm 1 diverged): uniform, last-loss and running-loss, crop+flip,
    five seeds at ``cpu`` and ``gpu`` (the chapter's primary comparisons)."""
    base = _chapter3_report_base(scale)
    seeds = _primary_seeds(scale)
    return {
        "uniform, report's optimiser": _arm(base, "uniform", "uniform", {}, seeds),
        **{f"{kind}, report's optimiser": _arm(base, kind, "loss", _report_options(scale, kind), seeds)
           for kind in ("last-loss", "running-loss")},
    }  # fmt: skip


def chapter3_variants(scale: str) -> Suite:
    """The stronger variants on the same budget, with crop+flip: fixes for the drift, online batch
    selection, prioritised replay, and Arazo et al.'s baselines."""
    base = _chapter3_base(scale)
    seeds = (
        range(3) if scale == "gpu" else _seeds(scale)
    )  # gpu: 3 seeds keep all gpu grids within 20 minutes
    last = _report_options(scale, "last-loss")
    arms = {
        "softmax T=0.1": ("loss", {**last, "temperature": 0.1, "smoothing": 0.1}),
        "proportional, smoothing 0.2": (
            "loss",
            {**last, "method": "proportional", "smoothing": 0.2},
        ),
        "proportional, with replacement": (
            "loss",
            {**last, "method": "proportional", "smoothing": 0.2, "replacement": True},
        ),
        "online batch selection": ("obs", OBS_AS_SAVED),
        "prioritised replay": ("per", PER_AS_SAVED),
        "p-SGD": ("prediction_subset", {"kind": "p", "subset": 0.5}),
        "c-SGD": ("prediction_subset", {"kind": "c", "subset": 0.5}),
        "selective backprop": ("selective_backprop", {"beta": 3.0}),
    }
    return {
        label: _arm(base, label, strategy, options, seeds)
        for label, (strategy, options) in arms.items()
    }


def chapter4(scale: str) -> Suite:
    """Chapter 4's gradient probes: per-sample losses, upper bounds and exact gradient norms of 1,024
    fixed training samples recorded at each evaluation point, with crop+flip (``"probe"``) and without
    augmentation (``"probe, no augmentation"``, runs that fit their training set). ``gpu``: the fast network without label
    smoothing (its pilot is seed 0), three seeds; ``cpu``: the same on :func:`cpu_base`'s 5,000 images
    for 16 epochs (its pilot is seed 0), three seeds; ``smoke``: seconds."""
    base = by_scale(
        scale,
        smoke=CONFIGS["cifar10-small-probe"].replace(subset=512, test_subset=256, batch_size=64, budget_amount=2,
                                                     evaluations=2, probe_size=32),
        cpu=pilots("cpu")["gradient probe (ch4)"],
        gpu=pilots("gpu")["gradient probe (ch4)"],
        paper=CONFIGS["cifar10-small-probe"].replace(subset=None, budget_amount=20, evaluations=8),
    )  # fmt: skip
    seeds = by_scale(scale, smoke=1, cpu=3, gpu=3)
    # the same without augmentation: the network fits its training set (≥ 99% training accuracy at
    # cpu scale, see the "full run, no augmentation" pilot), the regime the 85%-negligible claim is about
    fitted = base.replace(name="ch4-probe-noaug", crop=False, flip=False)
    return {"probe": [base.replace(seed=k) for k in range(seeds)],
            "probe, no augmentation": [fitted.replace(seed=k) for k in range(seeds)]}  # fmt: skip


def chapter4_resnet(scale: str) -> Suite:
    """The gradient probe on ResNet-18, three seeds: a deeper network between the logits and the
    parameters. ``cpu``: 1,500 images for 4 epochs (ResNet-18 trains at about 50 images/s on two
    cores), probed at epochs 2 and 4; ``gpu``: all of CIFAR-10 for 15 epochs; ``smoke``: the small CNN."""
    base = by_scale(
        scale,
        smoke=CONFIGS["cifar10-resnet18-probe"].replace(model="small_cnn", subset=256, test_subset=128, batch_size=64,
                                                        budget_amount=1, evaluations=1, probe_size=16),
        cpu=CONFIGS["cifar10-resnet18-probe"],
        gpu=CONFIGS["cifar10-resnet18-probe"].replace(subset=None, test_subset=None, budget_amount=15, evaluations=5,
                                                      probe_size=512),
    )  # fmt: skip
    return {"probe": [base.replace(seed=k) for k in range(by_scale(scale, smoke=1, cpu=3, gpu=3))]}


def _chapter5_base(scale: str) -> Config:
    """Katharopoulos & Fleuret's CIFAR setting: SGD momentum 0.9, batch 128, lr 0.1
    → 0.02 at 50% → 0.004 at 80% of a wall-clock budget, crop+flip. ``paper``: their WRN-28-2 on
    CIFAR-10 for 3 hours (the default ``--time_budget`` of their ``examples/cifar10_resnet.py``). ``gpu``: the fast recipe (:func:`fast_base`) for 6 s of training on an
    H100-class GPU (about 20 epochs of uniform training on an H200, measured), b = 1024 (B = 3b).
    ``cpu``: :func:`cpu_base` on 2,500 images for 45 s of training (about 36 epochs: its pilot's τ
    crosses τ_th a little past half-way), with a final evaluation under batch-norm statistics
    re-estimated on uniform batches (``bn_recalibration``); ``smoke``: 3 s."""
    kf = dict(batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4, schedule="step",
              milestones=(0.5, 0.8), gamma=0.2, warmup=0.0, label_smoothing=0.0, budget="seconds")  # fmt: skip
    return by_scale(
        scale,
        gpu=fast_base("ch5", budget="seconds", budget_amount=6.0, evaluations=6, train_eval_size=10_000),
        paper=CONFIGS["cifar10-wrn-uniform"].replace(name="ch5", budget_amount=3 * 3600, evaluations=20,
                                                     train_eval_size=10_000, **kf),
        cpu=cpu_base("ch5", subset=2500, budget="seconds", budget_amount=45.0, evaluations=6, train_eval_size=2000,
                     bn_recalibration=20),
        smoke=CONFIGS["smoke-uniform"].replace(name="ch5", evaluations=3, train_eval_size=128, bn_recalibration=2,
                                               **{**kf, "batch_size": 32, "budget_amount": 3.0}),
    )  # fmt: skip


def chapter5(scale: str) -> Suite:
    """Equal wall-clock time: uniform vs Algorithm 1 with the upper bound vs Algorithm 1 with the loss."""
    base = _chapter5_base(scale)
    seeds = _seeds(scale)
    # uniform and the upper bound's τ switch carry Katharopoulos & Fleuret's headline comparison, a
    # primary one (Chapter 6): five seeds
    return {
        "uniform": _arm(base, "uniform", "uniform", {}, _primary_seeds(scale)),
        "upper bound, τ switch": _arm(base, "bound-tau", "presample", {"score": "bound"}, _primary_seeds(scale)),
        "loss, τ switch": _arm(base, "loss-tau", "presample", {"score": "loss"}, seeds),
        # the switch forced (τ_th = 1: importance sampling from the first step τ exceeds 1), to test the
        # cost model's prediction where the rule would have stayed uniform
        "upper bound, always": _arm(
            base, "bound-always", "presample", {"score": "bound", "threshold": 1.0}, seeds
        ),
    }


def chapter5_tau(scale: str) -> Suite:
    """Uniform runs (τ tracked, never switching) whose evaluation points check τ against the variance
    ratio measured with exact per-sample gradients, on presamples of several sizes B (b = B/3):
    ``cpu``: three seeds, B = 48, 96 and 192; ``gpu``: one seed, B = 384; ``smoke``: B = 12 and 24."""
    base = _chapter5_base(scale).replace(
        budget="epochs", budget_amount=by_scale(scale, smoke=2, cpu=36, gpu=16, paper=30)
    )
    probe = dict(
        tau_probe=by_scale(scale, smoke=2, cpu=4, gpu=8),
        tau_probe_batch=by_scale(scale, smoke=8, cpu=64, gpu=128),
        tau_probe_sizes=by_scale(scale, smoke=(12,), cpu=(48, 96), gpu=()),
        probe_chunk=by_scale(scale, smoke=16, cpu=48, gpu=64, paper=32),
    )
    seeds = range(by_scale(scale, smoke=1, cpu=3, gpu=1))
    return {"τ probe": _arm(base, "tau-probe", "presample", {"importance": False}, seeds, **probe)}


def tau_crossing(result: Result) -> float | None:
    """The epoch at which τ, as :func:`tau_log` records it, first exceeded the run's τ_th (its last
    recorded value); ``None`` if it never did."""
    x, tau, _ = tau_log(result)
    threshold = result.history[-1]["tau_threshold"]
    return next((epoch for epoch, t in zip(x, tau) if t > threshold), None)


def tau_points(runs: list[Result]) -> list[dict[str, Any]]:
    """Every presample checked by :func:`chapter5_tau`'s runs, as ``{"seed", "epoch", "B", "entry"}``
    (``entry`` as :func:`ismod.experiments.tau_probe` records it), smaller presamples included."""
    points = []
    for r in runs:
        big = 3 * r.config["tau_probe_batch"]
        for h in r.history:
            for entry in (h.get("probe") or {}).get("tau", []):
                points.append(
                    {"seed": r.config["seed"], "epoch": h["epoch"], "B": big, "entry": entry}
                )
                for size, smaller in entry.get("smaller", {}).items():
                    points.append(
                        {
                            "seed": r.config["seed"],
                            "epoch": h["epoch"],
                            "B": int(size),
                            "entry": smaller,
                        }
                    )
    return points


def tau_log_error(points: list[dict[str, Any]], score: str, key: str = "tau") -> float:
    """Mean ``abs(log(predicted τ / measured variance ratio))`` over ``points`` (:func:`tau_points`) for g ∝
    ``score`` and τ as ``key`` (``"tau"`` = BΣg², ``"tau_sqrt"`` = its square root)."""
    if not points:
        raise ValueError("no τ points: the runs recorded no τ probe")
    errors = [abs(math.log(p["entry"][score][key] / p["entry"][score]["measured"])) for p in points]
    return sum(errors) / len(errors)


# --- Chapter 5's diagnosis: what the importance steps break, and what a bigger batch buys -----------

# The steps of the equal-step grids at cpu scale: about 31 epochs of the 2,500-image subset at b = 256,
# the uniform race arm's step count in 45 s (317–412 steps).
_DISSECTION_STEPS = 300


def _dissection_base(scale: str) -> Config:
    """Chapter 5's base (:func:`_chapter5_base`) at equal *steps* (machine load cannot move a step
    count), instrumented (``instrument``: gradient norms, the noise scale and the train-mode loss at
    each evaluation point), without the re-estimated evaluation."""
    steps = by_scale(scale, smoke=12, cpu=_DISSECTION_STEPS, gpu=2000, paper=20_000)
    return _chapter5_base(scale).replace(name="ch5d", budget="steps", budget_amount=steps, instrument=True,
                                         bn_recalibration=0)  # fmt: skip


# The dissection's variants of the forced switch (τ_th = 1) — label → (file slug, strategy options,
# config changes) — and the uniform controls of the two changes that act on uniform training too.
FORCED: dict[str, Any] = {"score": "bound", "threshold": 1.0}
DISSECTION_VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "forced, as is": ("forced", {}, {}),
    "forced, unweighted (w = 1)": ("forced-unweighted", {"weighted": False}, {}),
    "forced, weights ≤ 5": ("forced-max-weight-5", {"max_weight": 5.0}, {}),
    "forced, BN ε = 1e-5": ("forced-bn-eps-1e-5", {}, {"batch_norm_eps": 1e-5}),
    "forced, lr halved": ("forced-lr-half", {}, {"lr_factor": 0.5}),
    # the authors' library scores the augmented images it then trains on; this harness scored the
    # clean images and trained on a fresh augmentation of those chosen
    "forced, scores what it trains on": ("forced-score-augmented", {"score_augmented": True}, {}),
}


def chapter5_dissection(scale: str) -> Suite:
    """The forced switch against uniform at equal steps, each arm instrumented: as is, unweighted, with
    weights smoothed to ≤ 5, with batch norm's ε at PyTorch's 1e-5 (the fast network's is airbench's
    1e-12), with the learning rate halved, scoring the augmented images it trains on (as the authors'
    library does); uniform with each of the last two changes (their effect
    without importance sampling); and the τ switch as the authors' library decides it (√τ against
    τ_th). ``cpu``: 3 seeds of 300 steps; ``smoke``: 1 seed of 12."""
    base = _dissection_base(scale)
    seeds = range(by_scale(scale, smoke=1, cpu=3, gpu=3))
    suite: Suite = {"uniform": _arm(base, "uniform", "uniform", {}, seeds)}
    for label, (slug, options, changes) in DISSECTION_VARIANTS.items():
        changes = dict(changes)
        if "lr_factor" in changes:
            changes["lr"] = base.lr * changes.pop("lr_factor")
        suite[label] = _arm(base, slug, "presample", {**FORCED, **options}, seeds, **changes)
    suite["uniform, BN ε = 1e-5"] = _arm(
        base, "uniform-bn-eps-1e-5", "uniform", {}, seeds, batch_norm_eps=1e-5
    )
    suite["uniform, lr halved"] = _arm(
        base, "uniform-lr-half", "uniform", {}, seeds, lr=base.lr / 2
    )
    suite["τ switch, √τ (library)"] = _arm(base, "tau-sqrt", "presample",
                                           {"score": "bound", "threshold": "fixed", "sqrt": True}, seeds)  # fmt: skip
    return suite


CRITICAL_BATCH_FACTORS: tuple[int, ...] = (1, 2, 4)


def chapter5_critical_batch(scale: str) -> Suite:
    """Uniform at b, 2b and 4b for the same number of steps and the same learning rate (what less
    gradient noise alone buys per step, the trade an importance step makes), instrumented; the b arm
    is the dissection's uniform arm, config for config. ``cpu``: two seeds at b and 2b, one at 4b (300
    steps of 1,024 images take about 5 minutes on two cores, more than the session that ran this
    grid had left)."""
    base = _dissection_base(scale)
    suite: Suite = {}
    for k in CRITICAL_BATCH_FACTORS:
        label = "uniform" if k == 1 else f"uniform, {k}b"
        seeds = range(by_scale(scale, smoke=1, cpu=1 if k == 4 else 2, gpu=3))
        suite[f"b × {k}"] = _arm(base, label, "uniform", {}, seeds, batch_size=base.batch_size * k)
    return suite


def chapter5_prediction_pilot(scale: str) -> Suite:
    """Uniform runs with τ tracked (never switching) and the instrumentation on, in the regime the
    completed rule is asked about before the prediction runs: small batches (b = 64 and 32, the
    learning rate scaled with b), no augmentation (the network fits its 2,500 images, so most
    per-sample gradients become negligible and τ can grow), a presample of B = 6b, 40 epochs; one seed."""
    base = _chapter5_base(scale)
    epochs = by_scale(scale, smoke=2, cpu=40, gpu=40)
    suite: Suite = {}
    for b in by_scale(scale, smoke=(16,), cpu=(64, 32), gpu=(256, 128)):
        config = base.replace(name="ch5p", batch_size=b, lr=base.lr * b / base.batch_size, crop=False, flip=False,
                              budget="epochs", budget_amount=epochs, evaluations=8, instrument=True,
                              bn_recalibration=0)  # fmt: skip
        suite[f"b = {b}, no augmentation"] = _arm(config, f"pilot-b{b}", "presample",
            {"score": "bound", "presample": 6.0, "threshold": "fixed", "importance": False}, range(1))  # fmt: skip
    return suite


def chapter5_prediction(scale: str) -> Suite:
    """The completed rule's two predictions, each {uniform, importance sampling} × 5 seeds, instrumented.

    ``"should not pay"``: Chapter 5's regime (b = 256, B = 3b, crop+flip) under a budget of forward
    passes (the cost model of ``ismod.train.TRAINED_SAMPLE_FORWARDS``: the steps' and the presamples'
    cost without the machine's load), uniform's 300 steps; the τ switch with τ_th = (B + 3b)/(3b), scoring
    the augmented images it trains on.
    ``"should pay per step"``: the pilot's regime (b = 64, B = 6b, no augmentation, 20 epochs) at equal
    steps — the variance half of the rule, with scoring free — the switch forced on."""
    seeds = range(by_scale(scale, smoke=1, cpu=5, gpu=5))
    lose = _dissection_base(scale)
    passes = lose.budget_amount * TRAINED_SAMPLE_FORWARDS * lose.batch_size
    lose = lose.replace(name="ch5q", budget="forward_passes", budget_amount=passes)
    pilot = chapter5_prediction_pilot(scale)
    small = next(iter(pilot.values()))[0]
    pay = small.replace(name="ch5q", strategy="uniform", strategy_options={},
                        budget_amount=by_scale(scale, smoke=2, cpu=20, gpu=20))  # fmt: skip
    return {
        "should not pay: uniform": _arm(lose, "lose-uniform", "uniform", {}, seeds),
        "should not pay: τ switch": _arm(lose, "lose-tau", "presample",
                                         {"score": "bound", "threshold": "fixed", "score_augmented": True}, seeds),
        "should pay per step: uniform": _arm(pay, "pay-uniform", "uniform", {}, seeds),
        "should pay per step: forced": _arm(pay, "pay-forced", "presample", {**FORCED, "presample": 6.0}, seeds),
        # exploratory, added after the forced arm's first seed spiked: the same with its weights bounded
        "should pay per step: forced, weights ≤ 5": _arm(pay, "pay-forced-max-weight-5", "presample",
            {**FORCED, "presample": 6.0, "max_weight": 5.0}, range(by_scale(scale, smoke=1, cpu=1, gpu=2))),
    }  # fmt: skip


def chapter6(scale: str) -> Suite:
    """Equal wall-clock time, every strategy of the course (Katharopoulos & Fleuret's setting, Chapter 5's base):
    uniform, Algorithm 1 with the loss and with the upper bound (τ switch), online batch selection,
    prioritised replay and selective backprop. The first three are Chapter 5's runs, config for
    config, so a book that ran Chapter 5 reuses them."""
    base = _chapter5_base(scale)
    seeds = _seeds(scale)
    reused = {k: v for k, v in chapter5(scale).items() if k != "upper bound, always"}
    others = {
        "online batch selection": ("obs", OBS_AS_SAVED),
        "prioritised replay": ("per", PER_AS_SAVED),
        "selective backprop": ("selective_backprop", {"beta": 3.0}),
    }
    ch6 = base.replace(name="ch6")
    return {
        **reused,
        **{
            label: _arm(ch6, label, strategy, options, seeds)
            for label, (strategy, options) in others.items()
        },
    }


# Chapter 7 (Arazo et al. 2021): strategy label → (strategy, options given the budget fraction f).
CHAPTER7_STRATEGIES: dict[str, tuple[str, Any]] = {
    "uniform subset": (
        "prediction_subset",
        lambda f: {"kind": "uniform", "subset": f, "warmup_epochs": 0},
    ),
    "p-SGD": ("prediction_subset", lambda f: {"kind": "p", "subset": f}),
    "c-SGD": ("prediction_subset", lambda f: {"kind": "c", "subset": f}),
    "selective backprop": ("selective_backprop", lambda f: {"beta": 3.0}),
    "upper bound, τ switch": ("presample", lambda f: {"score": "bound"}),
}
# Arazo et al.'s strengths: crop (pad 4) + flip always; mixup α = 0.3 or RICAP β = 0.3 on top.
CHAPTER7_AUGMENTATIONS: dict[str, dict[str, float]] = {"crop+flip": {}, "mixup": {"mixup_alpha": 0.3},
                                                      "RICAP": {"ricap_beta": 0.3}}  # fmt: skip
CHAPTER7_BUDGETS: tuple[float, ...] = (0.2, 0.3, 0.5, 1.0)


# The arms Chapter 7's primary comparisons read (five seeds at cpu and gpu scale): the full crop+flip
# run, Arazo et al.'s RICAP at 30% (their headline), and p-SGD against the uniform subset at 30%.
CHAPTER7_PRIMARY_ARMS: tuple[tuple[str, str, float], ...] = (
    ("uniform subset", "crop+flip", 1.0), ("uniform subset", "RICAP", 0.3),
    ("uniform subset", "crop+flip", 0.3), ("p-SGD", "crop+flip", 0.3))  # fmt: skip


def chapter7_label(
    strategy: str, augmentation: str, fraction: float, dataset: str = "cifar10"
) -> str:
    """The arm label of :func:`chapter7`, e.g. ``"p-SGD, RICAP, 30%"`` (``", CIFAR-100"`` appended for it)."""
    return f"{strategy}, {augmentation}, {fraction:.0%}" + (
        ", CIFAR-100" if dataset == "cifar100" else ""
    )


def _chapter7_base(scale: str) -> Config:
    """Arazo et al.'s budgeted training: SGD lr 0.1, momentum 0.9, batch 128, the
    learning rate decaying linearly to 0 over the budget, crop+flip. ``budget_amount`` is the full
    (100%) run. ``paper``: ResNet-18, 200 epochs, weight decay 1e-4. ``gpu``: the fast recipe (:func:`fast_base`) for 20
    epochs, with a 2-pixel crop as airbench94; ``cpu``: :func:`cpu_base` for 16 epochs (its 5,000 images
    fitted, see :func:`pilots`); ``smoke``: seconds."""
    arazo = dict(batch_size=128, lr=0.1, momentum=0.9, nesterov=False, schedule="linear", warmup=0.0, label_smoothing=0.0,
                 budget="epochs", crop=True, flip=True, crop_padding=4)  # fmt: skip
    return by_scale(
        scale,
        gpu=fast_base("ch7", budget_amount=20, evaluations=4),
        paper=CONFIGS["cifar10-resnet18-uniform"].replace(name="ch7", budget_amount=200, evaluations=4,
                                                          weight_decay=1e-4, **arazo),
        cpu=cpu_base("ch7", budget_amount=16, evaluations=1),
        smoke=CONFIGS["smoke-uniform"].replace(name="ch7", budget_amount=3, evaluations=1,
                                               **{**arazo, "batch_size": 64, "lr": 0.05}),
    )  # fmt: skip


def chapter7(scale: str) -> Suite:
    """Budgeted training: every strategy × augmentation at 20%, 30% and 50% of the full run's
    iterations, and the uniform subset at 100% too (where the subset strategies all reduce to it).
    Subset strategies train on a fraction f of the data per epoch for the full run's number of epochs,
    as Arazo et al. do; selective backprop and the upper bound train on f × the full run's batches.
    CIFAR-10 only, except at ``paper`` scale (CIFAR-100 too; the offline copy has no CIFAR-100). At
    ``gpu`` and ``cpu`` scale, mixup is combined with the uniform subset and RICAP with the uniform
    subset and selective backprop only, and c-SGD is left out: p-SGD, c-SGD and the τ switch with
    mixing (they would score each sample cleanly, see ``Strategy.uses_observations``) would not fit
    the grid's time budget. At ``smoke`` scale mixup is run for the uniform subset only."""
    full = _chapter7_base(scale)
    seeds = _seeds(scale)
    primary = {chapter7_label(*arm) for arm in CHAPTER7_PRIMARY_ARMS}
    datasets = ("cifar10", "cifar100") if scale == "paper" else ("cifar10",)
    suite: Suite = {}
    budgets = by_scale(scale, smoke=(0.3, 1.0), cpu=CHAPTER7_BUDGETS, gpu=CHAPTER7_BUDGETS)
    budgeted = {"mixup": ("uniform subset",), "RICAP": ("uniform subset", "selective backprop")}
    mixed = by_scale(scale, smoke={"mixup": ("uniform subset",)}, cpu=budgeted, gpu=budgeted,
                     paper={aug: ("uniform subset", "selective backprop") for aug in ("mixup", "RICAP")})  # fmt: skip
    strategies = [k for k in CHAPTER7_STRATEGIES if scale not in ("gpu", "cpu") or k != "c-SGD"]
    if scale == "cpu":  # its τ never reached τ_th within these budgets (0 importance steps in 9 runs)
        strategies.remove("upper bound, τ switch")
    for dataset in datasets:
        for aug, changes in CHAPTER7_AUGMENTATIONS.items():
            for f in budgets:
                for label in strategies:
                    strategy, options = CHAPTER7_STRATEGIES[label]
                    if (f == 1.0 and label != "uniform subset") or (
                        aug in mixed and label not in mixed[aug]
                    ):
                        continue
                    arm = chapter7_label(label, aug, f, dataset)
                    slug = (
                        arm.replace("%", "pct").replace("τ", "tau").replace(", CIFAR-100", ", c100")
                    )
                    suite[arm] = _arm(full, slug, strategy, options(f), _primary_seeds(scale) if arm in primary else seeds,
                                      dataset=dataset,
                                      budget_amount=full.budget_amount * f, **changes)  # fmt: skip
    return suite


# The full run's length in epochs at which crop+flip fits its training set long before the end (cpu:
# its 5,000 images; chosen by the pilot, the seed-0 full runs of :func:`chapter7_overfit`).
CHAPTER7_OVERFIT_EPOCHS: dict[str, int] = {"smoke": 4, "cpu": 64, "gpu": 80, "paper": 200}


def chapter7_overfit(scale: str) -> Suite:
    """Arazo et al.'s RICAP test where the full run has room to overfit: the uniform subset with
    crop+flip and with RICAP (β = 0.3) at 30% and 100% of a full run of
    :data:`CHAPTER7_OVERFIT_EPOCHS` epochs (Chapter 7's 16-epoch full run fits only at its end),
    evaluated 8 times, five seeds (``smoke``: one)."""
    full = _chapter7_base(scale).replace(name="ch7o", budget_amount=CHAPTER7_OVERFIT_EPOCHS[scale],
                                         evaluations=8, train_eval_size=by_scale(scale, smoke=128, cpu=2000, gpu=10_000))  # fmt: skip
    strategy, options = CHAPTER7_STRATEGIES["uniform subset"]
    suite: Suite = {}
    for f in (1.0, 0.3):
        for aug in ("crop+flip", "RICAP"):
            arm = chapter7_label("uniform subset", aug, f)
            suite[arm] = _arm(full, arm.replace("%", "pct"), strategy, options(f), _primary_seeds(scale),
                              budget_amount=full.budget_amount * f, **CHAPTER7_AUGMENTATIONS[aug])  # fmt: skip
    return suite


def chapter7_overfit_pilot(scale: str) -> Suite:
    """The pilot of :func:`chapter7_overfit`: its seed-0 full runs (the same configs), to check that
    crop+flip fits its training set long before the end and to see whether RICAP beats it there."""
    return {arm: configs[:1] for arm, configs in chapter7_overfit(scale).items() if arm.endswith("100%")}


SUITES = {
    "pilots": lambda scale: {label: [config] for label, config in pilots(scale).items()},
    "harness": harness,
    "chapter3": chapter3,
    "chapter3_variants": chapter3_variants,
    "chapter3_report": chapter3_report,
    "chapter4": chapter4,
    "chapter4_resnet": chapter4_resnet,
    "chapter5": chapter5,
    "chapter5_tau": chapter5_tau,
    "chapter5_dissection": chapter5_dissection,
    "chapter5_critical_batch": chapter5_critical_batch,
    "chapter5_prediction_pilot": chapter5_prediction_pilot,
    "chapter5_prediction": chapter5_prediction,
    "chapter6": chapter6,
    # Chapters 5 and 6's races as one grid, so that all seven arms run interleaved seed by seed
    "equal_time": lambda scale: {**chapter5(scale), **chapter6(scale)},
    "chapter7": chapter7,
    "chapter7_overfit_pilot": chapter7_overfit_pilot,
    "chapter7_overfit": chapter7_overfit,
}


# Which grids each page of the book reads (pages without any train nothing of the harness's).
PAGE_SUITES: dict[str, tuple[str, ...]] = {
    "harness": ("harness",),
    "ch03_loss_scores": ("pilots", "chapter3", "chapter3_report", "chapter3_variants"),
    "ch04_upper_bound": ("chapter4", "chapter4_resnet"),
    "ch05_tau_switch": (
        "chapter5",
        "chapter5_tau",
        "chapter5_dissection",
        "chapter5_critical_batch",
    ),
    "ch06_wall_clock": ("chapter6",),
    "ch07_budgeted": ("chapter7", "chapter7_overfit_pilot", "chapter7_overfit"),
    "ch08_conclusions": ("chapter3", "chapter5_tau", "chapter6", "chapter7"),
}


def page_costs(
    scale: str, results_dir: str | os.PathLike, *, data_root: str | os.PathLike | None = None,
    device: str | Any = None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """For each page of :data:`PAGE_SUITES`, at ``scale``: how many of its runs are saved, how many are
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
    """Training steps' cost relative to a uniform step, from the scoring passes a strategy adds:
    selective backprop scores about β + 1 candidates per trained sample; the τ switch at most B/b
    per sample (every step an importance step)."""
    share = t_forward / (t_forward + t_backward)
    if config.strategy == "selective_backprop":
        return 1.0 + (config.strategy_options.get("beta", 3.0) + 1.0) * share
    if config.strategy == "presample":
        return 1.0 + config.strategy_options.get("presample", 3.0) * share
    return 1.0


def seconds_from_rate(config: Config, seconds_per_sample: float, *, backward_ratio: float,
                      overhead_s: float = 0.0) -> float:  # fmt: skip
    """Predicted seconds of one run from a measured training rate: the samples its budget trains on ×
    ``seconds_per_sample`` (of a uniform step) × the strategy's scoring factor, for a network whose
    backward pass takes ``backward_ratio`` times its forward pass, plus ``overhead_s`` (evaluation,
    start-up); a seconds budget counts as itself plus the overhead. The one cost model behind
    :func:`estimate_seconds` and the GPU session's scripts."""
    if config.budget == "seconds":
        return config.budget_amount + overhead_s
    if config.budget == "forward_passes":  # the budget already holds the scoring passes
        return config.budget_amount / TRAINED_SAMPLE_FORWARDS * seconds_per_sample + overhead_s
    per_epoch = config.subset or 50_000
    samples = config.budget_amount * (per_epoch if config.budget == "epochs" else config.batch_size)
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


def provenance_summary(results: dict[str, list[Result]]) -> str:
    """One paragraph of where a set of results comes from: devices, data, dates, commits, commands."""
    runs = [r for rs in results.values() for r in rs]
    if not runs:
        return "no saved results"

    def values(key: str) -> str:
        return ", ".join(sorted({str(r.provenance.get(key, "?")) for r in runs}))

    commits = sorted({str(r.provenance.get("git_commit", "?"))[:12] for r in runs})
    commands = sorted({r.provenance.get("command") or "(not recorded)" for r in runs})
    return (f"{len(runs)} runs on {values('device')}; data {values('data_source')}; "
            f"dates {', '.join(sorted({str(r.provenance.get('date', '?'))[:10] for r in runs}))}; commit {', '.join(commits)}; "
            f"torch {values('torch_version')}; command: {' / '.join(f'`{c}`' for c in commands)}")  # fmt: skip


def chapter7_pairs(results: dict[str, list[Result]]) -> dict[str, list[tuple[str, str]]]:
    """Chapter 7's families of comparisons among the arms present in ``results``, each an
    ``(arm, baseline)`` at the same budget: ``"importance"`` — each strategy against the uniform subset
    with the same augmentation; ``"augmentation"`` — the uniform subset with mixup or RICAP against it
    with crop+flip (the 100% runs included)."""
    pairs: dict[str, list[tuple[str, str]]] = {"importance": [], "augmentation": []}
    for f in CHAPTER7_BUDGETS:
        for aug in CHAPTER7_AUGMENTATIONS:
            base = chapter7_label("uniform subset", aug, f)
            if base not in results:
                continue
            for strategy in CHAPTER7_STRATEGIES:
                arm = chapter7_label(strategy, aug, f)
                if strategy != "uniform subset" and arm in results:
                    pairs["importance"].append((arm, base))
            plain = chapter7_label("uniform subset", "crop+flip", f)
            if aug != "crop+flip" and plain in results:
                pairs["augmentation"].append((base, plain))
    return pairs


def divergence_epoch(result: Result) -> float | None:
    """The epoch of the first evaluation point whose training loss is NaN; ``None`` if the run never diverged."""
    return next(
        (
            h["epoch"]
            for h in result.history
            if h["train_loss"] is not None and math.isnan(h["train_loss"])
        ),
        None,
    )


def sampling_log(result: Result) -> list[dict[str, Any]]:
    """A scored strategy's per-epoch distribution log, gathered from the history records."""
    return [entry for h in result.history for entry in h.get("sampling", [])]


def tau_log(result: Result) -> tuple[list[float], list[float], list[int]]:
    """The :class:`~ismod.strategies.presample.Presample` τ log: (epochs, τ, 1 for importance steps)."""
    rows = [row for h in result.history for row in h.get("tau_log", [])]
    n, b = result.provenance["train_size"], result.config["batch_size"]
    return [s * b / n for s, _, _ in rows], [t for _, t, _ in rows], [p for _, _, p in rows]


def _final(result: Result, key: str) -> float | None:
    for h in reversed(result.history):
        if h.get(key) is not None:
            return float(h[key])
    return None


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); a diverged seed (nan) makes both nan, visibly."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _test_accuracy(runs: list[Result]) -> tuple[float, float]:
    return _mean_sd([r.final["test_accuracy"] for r in runs])


def summarize(
    results: dict[str, list[Result]], baseline: str | None = None
) -> list[dict[str, Any]]:
    """One row per arm: mean and standard deviation over seeds of the final test accuracy, training
    loss (on the fixed training subset when recorded, else the trained batches), training seconds,
    and the share of training time spent selecting (scoring and sampling); with ``baseline``, the
    test error and training loss relative to the baseline arm's (ratios of the seed means)."""
    rows = []
    for label, runs in results.items():
        loss_key = (
            "train_eval_loss" if _final(runs[0], "train_eval_loss") is not None else "train_loss"
        )
        acc = _test_accuracy(runs)
        loss = _mean_sd([_final(r, loss_key) for r in runs])
        secs = _mean_sd([r.final["train_time"] for r in runs])
        share = _mean_sd([r.timing["selection"] / max(r.final["train_time"], 1e-9) for r in runs])
        rows.append({"arm": label, "seeds": len(runs), "test_accuracy": acc, "train_loss": loss, "loss_kind": loss_key,
                     "train_seconds": secs, "selection_share": share})  # fmt: skip
    if baseline is not None:
        base = next(r for r in rows if r["arm"] == baseline)
        for r in rows:
            r["relative_test_error"] = (1.0 - r["test_accuracy"][0]) / (
                1.0 - base["test_accuracy"][0]
            )
            r["relative_train_loss"] = r["train_loss"][0] / base["train_loss"][0]
    return rows


def budget_curves(
    results: dict[str, list[Result]], dataset: str = "cifar10"
) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """Chapter 7's results as Arazo et al. plot them: for each augmentation and strategy, a list of
    (budget fraction, mean, sample standard deviation) of the final test accuracy over seeds. The
    uniform subset's 100% point is the full run, shared by every strategy's curve."""
    out: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for aug in CHAPTER7_AUGMENTATIONS:
        per_strategy = {}
        for strategy in CHAPTER7_STRATEGIES:
            points = []
            for f in CHAPTER7_BUDGETS:
                runs = results.get(chapter7_label(strategy, aug, f, dataset))
                if runs:
                    points.append((f, *_test_accuracy(runs)))
            if points:
                per_strategy[strategy] = points
        if per_strategy:
            out[aug] = per_strategy
    return out


def budget_time_ratios(
    results: dict[str, list[Result]], augmentation: str = "crop+flip"
) -> dict[str, dict[float, float]]:
    """Chapter 7's wall-clock price outside the iteration budget: for each strategy and budget below
    100%, its mean training seconds over seeds divided by the uniform subset's at the same budget and
    augmentation (arms without runs are left out)."""

    def mean_seconds(runs: list[Result]) -> float:
        return sum(r.final["train_time"] for r in runs) / len(runs)

    out: dict[str, dict[float, float]] = {}
    for strategy in CHAPTER7_STRATEGIES:
        for f in CHAPTER7_BUDGETS[:-1]:
            runs = results.get(chapter7_label(strategy, augmentation, f))
            base = results.get(chapter7_label("uniform subset", augmentation, f))
            if runs and base:
                out.setdefault(strategy, {})[f] = mean_seconds(runs) / mean_seconds(base)
    return out


def budget_cost_markdown(results: dict[str, list[Result]], augmentation: str = "crop+flip") -> str:
    """Chapter 7's two records of what the iteration budget leaves out, as Markdown: the training-time
    ratios of :func:`budget_time_ratios` (a τ arm that never switched is marked: its steps were
    uniform, so its ratio is no price of importance sampling), and the extra forward passes of
    selective backprop and the upper bound, which do not depend on how busy the machine was."""
    partial = list(CHAPTER7_BUDGETS[:-1])
    tau = "upper bound, τ switch"

    def cell(strategy: str, f: float, ratio: float | None) -> str:
        if ratio is None:
            return ""
        runs = results.get(chapter7_label(tau, augmentation, f)) if strategy == tau else None
        never = bool(runs) and importance_share(runs) == 0
        return f"×{ratio:.2f}" + (" (never switched)" if never else "")

    table = ["| strategy | " + " | ".join(f"{f:.0%}" for f in partial) + " |",
             "|" + "---|" * (1 + len(partial))]  # fmt: skip
    for strategy, by_budget in budget_time_ratios(results, augmentation).items():
        cells = " | ".join(cell(strategy, f, by_budget.get(f)) for f in partial)
        table.append(f"| {strategy} | {cells} |")
    extra = []
    for f in partial:
        sb = results.get(chapter7_label("selective backprop", augmentation, f)) or []
        ub = results.get(chapter7_label(tau, augmentation, f))
        if sb and ub:
            scored = sum(r.history[-1]["scored_per_trained"] for r in sb) / len(sb)
            extra.append(f"- {f:.0%}: selective backprop scored {scored:.2f} candidates per trained sample; "
                         f"the upper bound presampled on {importance_share(ub):.0%} of its steps "
                         "(3 scored samples per trained one there).")  # fmt: skip
    return (f"Training time relative to the uniform subset ({augmentation}):\n\n" + "\n".join(table)
            + "\n\nExtra forward passes, which do not depend on how busy the machine was:\n\n"
            + "\n".join(extra))  # fmt: skip


def importance_share(runs: list[Result]) -> float:
    """The τ switch's share of importance steps (presample, score, resample), mean over seeds."""
    last = [r.history[-1] for r in runs]
    return sum(h.get("importance_steps", 0) / max(h.get("steps") or 1, 1) for h in last) / len(last)


def accuracy_difference(runs: list[Result], baseline: list[Result]) -> tuple[float, float]:
    """Mean final test accuracy of ``runs`` minus that of ``baseline``, and the standard error of that
    difference from the two seed spreads, :math:`\\sqrt{s_a^2/n_a + s_b^2/n_b}` (0 with one seed each).
    A difference beyond two standard errors is one the seeds do not explain."""
    (ma, sa), (mb, sb) = _test_accuracy(runs), _test_accuracy(baseline)
    return ma - mb, math.sqrt(sa**2 / len(runs) + sb**2 / len(baseline))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """:func:`summarize`'s rows as a Markdown table (mean ± standard deviation over seeds)."""
    rel = "relative_test_error" in rows[0]
    head = "| arm | seeds | test accuracy | training loss | training s | selection share |" + (
        " training loss / baseline | test error / baseline |" if rel else ""
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        a, lo, s, sh = r["test_accuracy"], r["train_loss"], r["train_seconds"], r["selection_share"]
        line = (f"| {r['arm']} | {r['seeds']} | {a[0]:.1%} ± {a[1]:.1%} | {lo[0]:.3f} ± {lo[1]:.3f} | "
                f"{s[0]:.0f} ± {s[1]:.0f} | {sh[0]:.1%} |")  # fmt: skip
        if rel:
            line += f" {r['relative_train_loss']:.2f} | {r['relative_test_error']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


# The book's one threshold: a difference is "detected" when its Holm-adjusted p-value is below this.
ALPHA = 0.05


def compare(results: dict[str, list[Result]], pairs: list[tuple[str, str]], *, metric: str = "test_accuracy",
            alpha: float = ALPHA) -> list[dict[str, Any]]:  # fmt: skip
    """The book's verdicts: for each ``(arm, baseline)`` of ``pairs``, the final ``metric`` paired by
    seed (:func:`ismod.stats.paired_difference` on the seeds both arms ran), with Holm's correction
    over all the pairs given (one chapter's family of comparisons). A row's ``verdict`` is
    ``"higher"`` or ``"lower"`` when the adjusted p-value is below ``alpha``, ``"no detected difference"``
    otherwise, and ``"not tested"`` with fewer than two shared seeds (a diverged seed's NaN is kept, so
    the comparison shows NaN rather than hiding it)."""
    rows: list[dict[str, Any]] = []
    for arm, baseline in pairs:
        if arm not in results or baseline not in results:
            raise KeyError(f"no results for {arm if arm not in results else baseline!r}")
        a = {r.config["seed"]: r.final[metric] for r in results[arm]}
        b = {r.config["seed"]: r.final[metric] for r in results[baseline]}
        seeds = sorted(set(a) & set(b))
        row: dict[str, Any] = {"arm": arm, "baseline": baseline, "seeds": len(seeds)}
        if len(seeds) >= 2:
            d = paired_difference([a[k] for k in seeds], [b[k] for k in seeds])
            row.update(mean=d.mean, low=d.low, high=d.high, p_value=d.p_value)
        rows.append(row)
    tested = [r for r in rows if "p_value" in r and not math.isnan(r["p_value"])]
    for r, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
        r["p_holm"] = adjusted
        r["verdict"] = (
            ("higher" if r["mean"] > 0 else "lower")
            if adjusted < alpha
            else "no detected difference"
        )
    for r in rows:
        r.setdefault("verdict", "not tested")
    return rows


def findings(rows: list[dict[str, Any]], *, scale_name: str, metric: str = "test accuracy",
             scale: float = 100.0, unit: str = "points") -> list[str]:  # fmt: skip
    """:func:`compare`'s rows as sentences for a chapter's findings: the direction and size of each
    difference with its interval, the seeds, the Holm-adjusted p-value and the scale it was measured
    at. A difference the design did not detect is *inconclusive*, never "the same"."""
    out = []
    for r in rows:
        head = f"**{r['arm']}** against {r['baseline']} ({metric}, {scale_name!r} scale, {r['seeds']} seeds)"
        if "mean" not in r or r["verdict"] == "not tested":
            out.append(f"- {head}: not tested (fewer than two shared seeds).")
            continue
        size = (f"{scale * r['mean']:+.2f} {unit} (unadjusted 95% interval "
                f"[{scale * r['low']:+.2f}, {scale * r['high']:+.2f}])")  # fmt: skip
        p = r.get("p_holm", float("nan"))
        if r["verdict"] in ("higher", "lower"):
            out.append(f"- {head}: **{r['verdict']}**, {size}, Holm-adjusted p = {p:.3f}.")
        else:
            out.append(f"- {head}: inconclusive, {size}: Holm-adjusted p = {p:.3f} over the "
                       "comparisons, so no difference was detected, which does not make them equal.")  # fmt: skip
    return out


def verdict_table(rows: list[dict[str, Any]], *, scale: float = 100.0, unit: str = "points") -> str:
    """:func:`compare`'s rows as a Markdown table (differences × ``scale``, e.g. accuracy in points)."""
    lines = [f"| arm | against | seeds | difference ({unit}) | 95% interval | p (Holm) | verdict |",
             "|---|---|---:|---:|---|---:|---|"]  # fmt: skip
    for r in rows:
        if "mean" in r:
            lines.append(f"| {r['arm']} | {r['baseline']} | {r['seeds']} | {scale * r['mean']:+.2f} | "
                         f"[{scale * r['low']:+.2f}, {scale * r['high']:+.2f}] | {r.get('p_holm', float('nan')):.3f} | "
                         f"{r['verdict']} |")  # fmt: skip
        else:
            lines.append(
                f"| {r['arm']} | {r['baseline']} | {r['seeds']} | – | – | – | {r['verdict']} |"
            )
    return "\n".join(lines)
