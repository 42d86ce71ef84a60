"""The experiment grids behind the chapters: which configs each chapter runs at each scale.

A suite maps an arm's label (e.g. ``"last-loss, crop+flip"``) to the configs of its seeds. Chapters
run one through :func:`ismod.runner.run_suite` (saved results whose config matches exactly are
reused) and read it with :mod:`ismod.findings`; the command line runs the same grid ahead of time
(``python -m ismod suite chapter3 --scale cpu --out book/results/cpu``).
"""

from __future__ import annotations

import math
from typing import Any

from .experiments import CONFIGS, Config
from .scale import by_scale
from .train import TRAINED_SAMPLE_FORWARDS

__all__ = [
    "REPORT_SETTINGS",
    "OBS_AS_SAVED",
    "PER_AS_SAVED",
    "PRESAMPLE_AS_SAVED",
    "fast_base",
    "cpu_base",
    "pilots",
    "gpu_pilots",
    "harness",
    "chapter3",
    "chapter3_report",
    "chapter3_variants",
    "chapter4",
    "chapter4_resnet",
    "chapter5",
    "chapter5_tau",
    "FORCED",
    "DISSECTION_VARIANTS",
    "DISSECTION_PARTS",
    "chapter5_dissection",
    "chapter5_dissection_weights",
    "chapter5_dissection_changes",
    "CRITICAL_BATCH_FACTORS",
    "chapter5_critical_batch",
    "chapter5_prediction_pilot",
    "chapter5_prediction",
    "chapter5_norm_pilot",
    "chapter5_batch_norm",
    "chapter5_free_scores_pilot",
    "chapter5_weighted_pilot",
    "chapter5_batch_norm_retired",
    "chapter5_free_scores",
    "NORM_PILOT_NORMS",
    "UNCOUPLED_NORM",
    "PROBED_SEEDS",
    "GRADIENT_ERROR_DRAWS",
    "chapter6",
    "equal_time",
    "CHAPTER6_PRIMARY_ARMS",
    "MODELLED_STEP_COSTS",
    "chapter6_modelled",
    "chapter6_speed",
    "SPEED_ARMS",
    "SPEED_STEP_COSTS",
    "SPEED_UNIFORM_FRACTIONS",
    "SPEED_PRIMARY_ARM",
    "modelled_label",
    "CHAPTER7_STRATEGIES",
    "CHAPTER7_AUGMENTATIONS",
    "CHAPTER7_BUDGETS",
    "CHAPTER7_PRIMARY_ARMS",
    "chapter7_label",
    "chapter7",
    "CHAPTER7_OVERFIT_EPOCHS",
    "chapter7_overfit",
    "chapter7_overfit_pilot",
    "chapter7_overfit_label",
    "SUITES",
    "PAGE_SUITES",
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
        suite[f"uniform, {aug}"] = _arm(
            base, f"uniform, {aug}", "uniform", {}, _primary_seeds(scale), **changes
        )
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


def _chapter5_seconds(scale: str) -> Suite:
    """Chapter 5's race in wall-clock seconds: uniform, Algorithm 1 with the upper bound and with the
    loss, and the upper bound forced on, three seeds each."""
    base = _chapter5_base(scale)
    seeds = _seeds(scale)
    scorer = _race_scorer(scale)
    return {
        "uniform": _arm(base, "uniform", "uniform", {}, seeds),
        "upper bound, τ switch": _arm(
            base, "bound-tau", "presample", {"score": "bound", **scorer}, seeds
        ),
        "loss, τ switch": _arm(base, "loss-tau", "presample", {"score": "loss", **scorer}, seeds),
        # the switch forced (τ_th = 1: importance sampling from the first step τ exceeds 1), to test the
        # cost model's prediction where the rule would have stayed uniform
        "upper bound, always": _arm(
            base, "bound-always", "presample", {"score": "bound", "threshold": 1.0, **scorer}, seeds
        ),
    }


def chapter5(scale: str) -> Suite:
    """Chapter 5's race at equal time: uniform, Algorithm 1 with the upper bound and with the loss
    (τ switch), and the upper bound forced on. On a GPU, which has its machine to itself, in wall-clock
    seconds. At ``cpu`` and ``smoke`` scale, the same arms under the cost model of
    :func:`chapter6_modelled` (the same configs, so its saved runs serve both pages): on a shared CPU
    a seconds budget measures the machine (on 2026-12-07 this one ran a uniform step 2–4× slower than
    when its cost was measured alone, and a 45-s run trained about a quarter of its steps)."""
    return _under_cost_model(scale, _chapter5_seconds(scale))


def _race_scorer(scale: str) -> dict[str, Any]:
    """The presample arms' scoring in the equal-time races: at ``cpu`` and ``smoke`` scale the fixed
    scorer (the augmented images the step trains on, as the authors' library scores); the ``gpu`` race
    is as saved, scoring clean images, until a GPU re-runs it."""
    return {"score_augmented": True} if scale in ("cpu", "smoke") else {}


def _under_cost_model(scale: str, seconds: Suite) -> Suite:
    """``seconds`` itself on a GPU; at ``cpu`` and ``smoke`` scale its arms' configs in
    :func:`chapter6_modelled`, under the same labels."""
    if scale not in ("cpu", "smoke"):
        return seconds
    modelled = chapter6_modelled(scale)
    return {label: modelled[modelled_label(label)] for label in seconds}


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


# --- Chapter 5's diagnosis: what the importance steps break, and what a bigger batch buys -----------

# The steps of the equal-step grids, each the uniform race arm's step count in its time budget: at cpu
# scale about 31 epochs of the 2,500-image subset at b = 256 (317–412 steps in 45 s); at gpu scale about
# 20 epochs of CIFAR-10 at b = 1024 (951–1054 steps in 6 s on an H200, the saved gpu race).
_DISSECTION_STEPS = {"smoke": 12, "cpu": 300, "gpu": 1000, "paper": 20_000}


def _dissection_base(scale: str) -> Config:
    """Chapter 5's base (:func:`_chapter5_base`) at equal *steps* (machine load cannot move a step
    count), instrumented (``instrument``: gradient norms, the noise scale and the train-mode loss at
    each evaluation point), without the re-estimated evaluation."""
    steps = by_scale(scale, **_DISSECTION_STEPS)
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


# The dissection in two grids of about half an hour each at cpu scale (runs are saved one by one, but a
# regeneration goes grid by grid): does the weighting do the harm, and do the implementation's choices?
DISSECTION_PARTS: dict[str, tuple[str, ...]] = {
    "weights": ("uniform", "forced, as is", "forced, unweighted (w = 1)", "forced, weights ≤ 5",
                "τ switch, √τ (library)"),
    "changes": ("forced, BN ε = 1e-5", "forced, lr halved", "forced, scores what it trains on",
                "uniform, BN ε = 1e-5", "uniform, lr halved"),
}  # fmt: skip


def _dissection_part(scale: str, part: str) -> Suite:
    whole = chapter5_dissection(scale)
    return {label: whole[label] for label in DISSECTION_PARTS[part]}


def chapter5_dissection_weights(scale: str) -> Suite:
    """The arms of :func:`chapter5_dissection` that ask whether the weights do the harm: uniform, the
    forced switch as is, unweighted and with weights ≤ 5, and the library's √τ switch."""
    return _dissection_part(scale, "weights")


def chapter5_dissection_changes(scale: str) -> Suite:
    """The arms of :func:`chapter5_dissection` that change the implementation: batch norm's ε, the
    learning rate (each with its uniform control) and scoring the images trained on."""
    return _dissection_part(scale, "changes")


CRITICAL_BATCH_FACTORS: tuple[int, ...] = (1, 2, 4)


def chapter5_critical_batch(scale: str) -> Suite:
    """Uniform at b, 2b and 4b for the same number of steps and the same learning rate (what less
    gradient noise alone buys per step, the trade an importance step makes), instrumented; the b arm
    is the dissection's uniform arm, config for config, with all its three seeds. ``cpu``: three seeds
    at b, two at 2b, one at 4b (300 steps of 1,024 images take about 5 minutes on two cores, more than
    the session that ran this grid had left)."""
    base = _dissection_base(scale)
    suite: Suite = {}
    for k in CRITICAL_BATCH_FACTORS:
        label = "uniform" if k == 1 else f"uniform, {k}b"
        seeds = range(by_scale(scale, smoke=1, cpu={1: 3, 2: 2, 4: 1}[k], gpu=3))
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


# the normalisations of Chapter 5's batch-norm test: what a step of each arm normalises with
NORM_PILOT_NORMS: tuple[str, ...] = ("batch", "group", "layer")
# draws per rule, mode and evaluation point of the gradient-error probe (TrainSettings.gradient_error_draws)
GRADIENT_ERROR_DRAWS = 8


def _should_pay_base(scale: str) -> Config:
    """The "should pay per step" regime of :func:`chapter5_prediction` (b = 64, B = 6b, no
    augmentation, 20 epochs, uniform), with the gradient-error probe at each evaluation point (at
    ``smoke`` scale, which checks that the code runs, two draws at two evaluation points)."""
    pay = chapter5_prediction(scale)["should pay per step: uniform"][0]
    draws = by_scale(scale, smoke=2, cpu=GRADIENT_ERROR_DRAWS, gpu=GRADIENT_ERROR_DRAWS)
    evaluations = by_scale(scale, smoke=2, cpu=pay.evaluations, gpu=pay.evaluations)
    return pay.replace(name="ch5b", gradient_error_draws=draws, evaluations=evaluations)


def chapter5_norm_pilot(scale: str) -> Suite:
    """Before the batch-norm test: does a network without batch coupling train as well here? Uniform in
    the "should pay per step" regime with each of :data:`NORM_PILOT_NORMS` (GroupNorm with 8 groups,
    LayerNorm as one group), one seed, probed; the test takes the one within about a point of batch
    norm's test accuracy, or the better if neither is."""
    base = _should_pay_base(scale).replace(name="ch5n")
    return {f"uniform, {norm}": _arm(base, f"pilot-{norm}", "uniform", {}, range(1), norm=norm)
            for norm in NORM_PILOT_NORMS}  # fmt: skip


# the normalisation without batch coupling the pilot chose (chapter5_norm_pilot): GroupNorm, 2.9
# points of test accuracy below batch norm on its seed, LayerNorm 4.3
UNCOUPLED_NORM = "group"
# seeds of the batch-norm test that run the gradient-error probe
PROBED_SEEDS = 2

# the probe's modes for runs that train with importance-weighted batch statistics: the three every
# probed run measures, and the one those runs train with
WEIGHTED_PROBE_MODES: tuple[str, ...] = ("train", "eval", "presample", "weighted")
# the pilots' seed, outside the tests' (0-4): a pilot must not be one of the runs it helps declare
PILOT_SEED = 5


def chapter5_batch_norm(scale: str) -> Suite:
    """Chapter 5's batch-norm test, declared before its runs: uniform and forced importance sampling
    (the upper bound over B = 6b, τ_th = 1) in the "should pay per step" regime at equal steps, with
    batch norm normalising the importance batch with its own statistics (``"train"``, as every saved
    run did) or with its importance-weighted statistics (``Presample(batch_norm="weighted")``), and
    with :data:`UNCOUPLED_NORM` in place of batch norm; without augmentation and with crop+flip
    (scoring the augmented images it trains on). The gradient-error probe runs at each evaluation
    point of the first :data:`PROBED_SEEDS` seeds.

    The weighted arm replaced, before any of its runs, one normalising with the presample's statistics
    held constant (``batch_norm="presample"``), whose first seed did not train, nor did a uniform run
    normalised that way (``benchmarks/diagnose_presample_statistics.py``); Chapter 5 §5.10 says so."""
    seeds = range(by_scale(scale, smoke=1, cpu=5, gpu=5))
    base = _should_pay_base(scale)
    forced = {**FORCED, "presample": 6.0}
    suite: Suite = {}
    for aug, crop in (("no augmentation", False), ("crop+flip", True)):
        config = base.replace(crop=crop, flip=crop)
        tag = "cropflip" if crop else "noaug"
        scored = {"score_augmented": True}
        suite[f"{aug}: uniform, batch norm"] = _arm(
            config, f"uniform-batch-{tag}", "uniform", {}, seeds
        )
        suite[f"{aug}: forced, batch norm (batch statistics)"] = _arm(
            config, f"forced-batch-train-{tag}", "presample", {**forced, **scored}, seeds
        )
        suite[f"{aug}: forced, batch norm (weighted statistics)"] = _arm(
            config.replace(gradient_error_modes=WEIGHTED_PROBE_MODES),
            f"forced-batch-weighted-{tag}",
            "presample",
            {**forced, **scored, "batch_norm": "weighted"},
            seeds,
        )
        uncoupled = config.replace(norm=UNCOUPLED_NORM)
        suite[f"{aug}: uniform, {UNCOUPLED_NORM} norm"] = _arm(
            uncoupled, f"uniform-{UNCOUPLED_NORM}-{tag}", "uniform", {}, seeds
        )
        suite[f"{aug}: forced, {UNCOUPLED_NORM} norm"] = _arm(
            uncoupled, f"forced-{UNCOUPLED_NORM}-{tag}", "presample", {**forced, **scored}, seeds
        )
    # the probe costs about as much as the training it watches: its trajectories come from the first
    # seeds; the declared comparisons read every seed's final training loss
    return {label: [c if c.seed < PROBED_SEEDS else c.replace(gradient_error_draws=0) for c in runs]
            for label, runs in suite.items()}  # fmt: skip


def chapter5_batch_norm_retired(scale: str) -> Suite:
    """The batch-norm test's arm that was replaced: forced importance sampling with each importance
    batch normalised by its presample's statistics held constant (``Presample(batch_norm="presample")``).
    Its first seed did not train, and it was retired before its other seeds ran (Chapter 5 §5.10 shows
    the run and its diagnosis)."""
    base = _should_pay_base(scale)
    options = {**FORCED, "presample": 6.0, "score_augmented": True, "batch_norm": "presample"}
    return {"no augmentation: forced, batch norm (presample statistics)": _arm(
        base.replace(crop=False, flip=False), "forced-batch-presample-noaug", "presample", options,
        range(1))}  # fmt: skip


def chapter5_weighted_pilot(scale: str) -> Suite:
    """Before the batch-norm test's rebuilt arm: forced importance sampling with batch norm normalising
    each importance batch by its importance-weighted statistics (``Presample(batch_norm="weighted")``)
    in the "should pay per step" regime without augmentation, one seed outside the test's, probed in
    every mode and in the weighted one. Does it train (the presample-statistics arm did not), and is an
    importance batch's gradient error below a uniform one's under weighted statistics?"""
    base = _should_pay_base(scale).replace(name="ch5w", gradient_error_modes=WEIGHTED_PROBE_MODES)
    options = {**FORCED, "presample": 6.0, "score_augmented": True, "batch_norm": "weighted"}
    return {"forced, batch norm (weighted statistics)": _arm(base, "pilot-forced-batch-weighted", "presample",
                                                             options, range(PILOT_SEED, PILOT_SEED + 1))}  # fmt: skip


def chapter5_free_scores_pilot(scale: str) -> Suite:
    """Before the free-score race: ``StaleBoundSampling`` (the upper bound from the training step,
    kept over all N, a defensive mixture with λ = 0.2) in the "should pay per step" regime without
    augmentation, one seed outside the batch-norm test's, with :data:`UNCOUPLED_NORM`, with batch norm,
    and with batch norm normalising each drawn batch by its weighted statistics, probed as the
    batch-norm test's arms are; its uniform baselines are the batch-norm test's first seeds."""
    base = _should_pay_base(scale).replace(name="ch5f", crop=False, flip=False)
    seeds = range(PILOT_SEED, PILOT_SEED + 1)
    arms = {f"stale bound, {UNCOUPLED_NORM} norm": ("group", {}, {"norm": UNCOUPLED_NORM}),
            "stale bound, batch norm": ("batch", {}, {}),
            "stale bound, batch norm (weighted statistics)": ("batch-weighted", {"batch_norm": "weighted"},
                                                              {"gradient_error_modes": WEIGHTED_PROBE_MODES})}  # fmt: skip
    return {label: _arm(base, f"pilot-stale-bound-{slug}", "stale_bound", options, seeds, **changes)
            for label, (slug, options, changes) in arms.items()}  # fmt: skip


def chapter5_free_scores(scale: str) -> Suite:
    """Chapter 5's free-score race, declared before its runs: ``StaleBoundSampling`` against uniform
    in the "should pay per step" regime without augmentation, at equal steps — equal forward passes,
    since its scores come from the training step itself (τ_th = 1 by cost) — five seeds, with
    :data:`UNCOUPLED_NORM` and with batch norm. The uniform arms are the batch-norm test's, config for
    config; the probe runs on the first :data:`PROBED_SEEDS` seeds."""
    test = chapter5_batch_norm(scale)
    base = _should_pay_base(scale).replace(crop=False, flip=False)
    seeds = range(by_scale(scale, smoke=1, cpu=5, gpu=5))
    suite = {
        f"uniform, {UNCOUPLED_NORM} norm": test[f"no augmentation: uniform, {UNCOUPLED_NORM} norm"],
        f"stale bound, {UNCOUPLED_NORM} norm": _arm(base, f"stale-bound-{UNCOUPLED_NORM}-noaug", "stale_bound", {},
                                                   seeds, norm=UNCOUPLED_NORM),
        "uniform, batch norm": test["no augmentation: uniform, batch norm"],
        "stale bound, batch norm": _arm(base, "stale-bound-batch-noaug", "stale_bound", {}, seeds),
    }  # fmt: skip
    return {label: [c if c.seed < PROBED_SEEDS else c.replace(gradient_error_draws=0) for c in runs]
            for label, runs in suite.items()}  # fmt: skip


def _chapter6_others(scale: str) -> Suite:
    """Chapter 6's arms beyond Chapter 5's, in wall-clock seconds: online batch selection,
    prioritised replay and selective backprop, three seeds each."""
    others = {
        "online batch selection": ("obs", OBS_AS_SAVED),
        "prioritised replay": ("per", PER_AS_SAVED),
        "selective backprop": ("selective_backprop", {"beta": 3.0}),
    }
    ch6 = _chapter5_base(scale).replace(name="ch6")
    return {label: _arm(ch6, label, strategy, options, _seeds(scale))
            for label, (strategy, options) in others.items()}  # fmt: skip


def chapter6(scale: str) -> Suite:
    """Equal time, every strategy of the course (Katharopoulos & Fleuret's setting, Chapter 5's base):
    uniform, Algorithm 1 with the loss and with the upper bound (τ switch), online batch selection,
    prioritised replay and selective backprop. The first three are Chapter 5's runs, config for
    config, so a book that ran Chapter 5 reuses them. In seconds on a GPU; under the cost model at
    ``cpu`` and ``smoke`` scale, as :func:`chapter5`."""
    reused = {k: v for k, v in chapter5(scale).items() if k != "upper bound, always"}
    return {**reused, **_under_cost_model(scale, _chapter6_others(scale))}


def equal_time(scale: str) -> Suite:
    """Chapters 5 and 6's races as one grid (:func:`chapter5` and :func:`chapter6`, the seven
    equal-time arms), so that all of them run interleaved seed by seed."""
    return {**chapter5(scale), **chapter6(scale)}


def _equal_time_seconds(scale: str) -> Suite:
    """The seven equal-time arms in wall-clock seconds, whatever the scale: the configs the cost-model
    race (:func:`chapter6_modelled`) changes only in its budget."""
    return {**_chapter5_seconds(scale), **_chapter6_others(scale)}


# The cpu cost model of ``chapter6_modelled``: arm → (step_seconds, score_seconds), measured alone on
# two cores by ``benchmarks/step_costs.py`` (``benchmarks/results/step-costs-cpu.json``, which a test
# checks these against; commit 9339e65, medians of 5 rounds of runs of 40 and 80 steps, whose spread
# on the shared machine was ±20–40%). Uniform never scores; the τ switches score as the forced
# switch does (a presample of 3b, in chunks of 1024, then sampled from), selective backprop its
# candidates b at a time.
MODELLED_STEP_COSTS: dict[str, tuple[float, float]] = {
    "uniform": (0.1377, 0.0),
    "upper bound, τ switch": (0.1439, 0.000281),
    "loss, τ switch": (0.166, 0.000281),
    "upper bound, always": (0.1477, 0.000281),
    "online batch selection": (0.1614, 0.0),
    "prioritised replay": (0.1519, 0.0),
    "selective backprop": (0.1649, 0.0002018),
}


# The race arms Chapter 6's declared comparisons read (ismod.findings.chapter6_primary): the upper
# bound's τ switch and its baseline.
CHAPTER6_PRIMARY_ARMS: tuple[str, str] = ("upper bound, τ switch", "uniform")


def chapter6_modelled(scale: str) -> Suite:
    """Chapter 6's race under a cost model (``budget="modelled_seconds"``): the same seven arms and
    45 s, but each arm is charged its step time and scoring time measured in isolation
    (``MODELLED_STEP_COSTS``), so the steps an arm gets, and its τ_th, cannot depend on how busy the
    machine was. Uniform and the upper-bound τ switch (the declared comparison) have five seeds, the
    others three. Only at ``cpu`` (and ``smoke``, with the cpu costs): a gpu run is alone on its
    machine, and its race is the seconds one."""
    if scale not in ("cpu", "smoke"):
        return {}
    race = _equal_time_seconds(scale)
    suite: Suite = {}
    for label, configs in race.items():
        step_s, score_s = MODELLED_STEP_COSTS[label]
        declared = label in CHAPTER6_PRIMARY_ARMS
        base = configs[0].replace(name="ch6m", budget="modelled_seconds", step_seconds=step_s,
                                  score_seconds=score_s)  # fmt: skip
        suite[modelled_label(label)] = _arm(base, label, configs[0].strategy, configs[0].strategy_options,
                                            _primary_seeds(scale) if declared else _seeds(scale))  # fmt: skip
    return suite


# The descendants' race (Chapter 6, §6.6): each arm's cost model, borrowed from the measured arm whose
# step it repeats (``MODELLED_STEP_COSTS``): InfoBatch's step is uniform's (its scores are the training
# losses, so it scores nothing extra); hard selection and RHO-LOSS score a uniform candidate batch
# without autograd and train on part of it, as selective backprop does. They score larger chunks than
# selective backprop (2b and up to 10b at once, against b), so the borrowed per-sample figure is, if
# anything, an over-charge.
SPEED_STEP_COSTS: dict[str, tuple[float, float]] = {
    "InfoBatch": MODELLED_STEP_COSTS["uniform"],
    "hard selection": MODELLED_STEP_COSTS["selective backprop"],
    "RHO-LOSS": MODELLED_STEP_COSTS["selective backprop"],
}
# Each descendant with its authors' defaults: InfoBatch's prune ratio 0.5 and annealing from 87.5% of
# training (Qin et al. 2024), airbench96's top half by loss, RHO-LOSS's 10% of each candidate batch
# with half the training set held out for its irreducible-loss model (Mindermann et al. 2022).
SPEED_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "InfoBatch": ("infobatch", {"prune_ratio": 0.5, "delta": 0.875}),
    "hard selection": ("hard_selection", {"keep": 0.5}),
    "RHO-LOSS": ("rho_loss", {"keep": 0.1, "holdout": 0.5, "reference_epochs": 10.0}),
}
# Uniform with a shorter schedule: what stopping early alone buys (the baseline of Okanovic et al.'s RS2)
SPEED_UNIFORM_FRACTIONS: tuple[float, ...] = (0.6, 0.8)
# The arm Chapter 6's declared speed comparison reads (ismod.findings.chapter6_speed_primary)
SPEED_PRIMARY_ARM = "InfoBatch, uniform's epochs"


def chapter6_speed(scale: str) -> Suite:
    """Which method reaches uniform's result sooner: the descendants in the cost-model race of
    :func:`chapter6_modelled` (same base, costs ``SPEED_STEP_COSTS``, 12 evaluation points so that a
    crossing can be located), each with its authors' defaults (``SPEED_ARMS``), three seeds each:

    - ``"InfoBatch, uniform's epochs"``: InfoBatch's own claim, as many of its epochs as uniform's run
      has (``budget="strategy_epochs"``), in fewer steps since its pruned epochs are shorter, five
      seeds (the declared comparison);
    - ``"InfoBatch"``, ``"hard selection"``, ``"RHO-LOSS"``: the same 45 modelled seconds as uniform;
    - ``"uniform, 60% of the time"`` and ``"… 80% …"``: uniform with a shorter schedule, the control
      for any method that saves time by training less (``SPEED_UNIFORM_FRACTIONS``).

    Only at ``cpu`` and ``smoke`` scale, as :func:`chapter6_modelled`."""
    if scale not in ("cpu", "smoke"):
        return {}
    uniform = chapter6_modelled(scale)[modelled_label("uniform")][0]
    base = uniform.replace(name="ch6s", evaluations=12 if scale == "cpu" else 3)
    seeds = _seeds(scale)
    suite: Suite = {}
    for label, (strategy, options) in SPEED_ARMS.items():
        step_s, score_s = SPEED_STEP_COSTS[label]
        costed = base.replace(step_seconds=step_s, score_seconds=score_s)
        suite[label] = _arm(costed, label, strategy, options, seeds)
    # uniform's run lasts the first whole step past the budget: the same number of steps, as epochs
    uniform_steps = math.ceil(uniform.budget_amount / uniform.step_seconds - 1e-9)
    epochs = uniform_steps * uniform.batch_size / uniform.subset
    strategy, options = SPEED_ARMS["InfoBatch"]
    suite[SPEED_PRIMARY_ARM] = _arm(base, "InfoBatch-uniform-epochs", strategy, options, _primary_seeds(scale),
                                    budget="strategy_epochs", budget_amount=epochs)  # fmt: skip
    for f in SPEED_UNIFORM_FRACTIONS:
        label = f"uniform, {f:.0%} of the time"
        suite[label] = _arm(base, f"uniform-{f:.0%}".replace("%", "pct"), "uniform", {}, seeds,
                            budget_amount=f * uniform.budget_amount)  # fmt: skip
    return suite


def modelled_label(arm: str) -> str:
    """The label of a race arm in :func:`chapter6_modelled`, e.g. ``"uniform, cost model"``."""
    return f"{arm}, cost model"


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
    if (
        scale == "cpu"
    ):  # its τ never reached τ_th within these budgets (0 importance steps in 9 runs)
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
    ``CHAPTER7_OVERFIT_EPOCHS`` epochs (Chapter 7's 16-epoch full run fits only at its end),
    evaluated 8 times; five seeds at ``gpu`` and ``cpu`` scale, one at ``smoke``. At ``cpu`` a 64-epoch
    crop+flip run took 277 s on two cores with nothing else running (2026-12-03; the pilot's 358 s and
    1,127 s were on a busy machine), so a seed of the four arms takes about 12 minutes and the grid
    about an hour."""
    full = _chapter7_base(scale).replace(name="ch7o", budget_amount=CHAPTER7_OVERFIT_EPOCHS[scale],
                                         evaluations=8, train_eval_size=by_scale(scale, smoke=128, cpu=2000, gpu=10_000))  # fmt: skip
    strategy, options = CHAPTER7_STRATEGIES["uniform subset"]
    suite: Suite = {}
    for f in (1.0, 0.3):
        for aug in ("crop+flip", "RICAP"):
            arm = chapter7_label("uniform subset", aug, f)
            suite[chapter7_overfit_label(aug, f, scale)] = _arm(
                full, arm.replace("%", "pct"), strategy, options(f), range(by_scale(scale, smoke=1, cpu=5, gpu=5)),
                budget_amount=full.budget_amount * f, **CHAPTER7_AUGMENTATIONS[aug])  # fmt: skip
    return suite


def chapter7_overfit_label(augmentation: str, fraction: float, scale: str) -> str:
    """An arm label of :func:`chapter7_overfit`, e.g. ``"uniform subset, RICAP, 30% of 64 epochs"``."""
    return f"{chapter7_label('uniform subset', augmentation, fraction)} of {CHAPTER7_OVERFIT_EPOCHS[scale]} epochs"


def chapter7_overfit_pilot(scale: str) -> Suite:
    """The pilot of :func:`chapter7_overfit`: its seed-0 full runs (the same configs), to check that
    crop+flip fits its training set long before the end and to see whether RICAP beats it there."""
    full = chapter7_overfit_label("crop+flip", 1.0, scale).split(",")[-1]  # " 100% of L epochs"
    return {
        arm: configs[:1] for arm, configs in chapter7_overfit(scale).items() if arm.endswith(full)
    }


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
    "chapter5_dissection_weights": chapter5_dissection_weights,
    "chapter5_dissection_changes": chapter5_dissection_changes,
    "chapter5_critical_batch": chapter5_critical_batch,
    "chapter5_prediction_pilot": chapter5_prediction_pilot,
    "chapter5_prediction": chapter5_prediction,
    "chapter5_norm_pilot": chapter5_norm_pilot,
    "chapter5_batch_norm": chapter5_batch_norm,
    "chapter5_free_scores_pilot": chapter5_free_scores_pilot,
    "chapter5_weighted_pilot": chapter5_weighted_pilot,
    "chapter5_batch_norm_retired": chapter5_batch_norm_retired,
    "chapter5_free_scores": chapter5_free_scores,
    "chapter6": chapter6,
    "chapter6_modelled": chapter6_modelled,
    "chapter6_speed": chapter6_speed,
    "equal_time": equal_time,
    "chapter7": chapter7,
    "chapter7_overfit_pilot": chapter7_overfit_pilot,
    "chapter7_overfit": chapter7_overfit,
}


# Which grids each page of the book reads (pages without any train nothing of the harness's).
PAGE_SUITES: dict[str, tuple[str, ...]] = {
    "harness": ("harness",),
    "ch03_loss_scores": ("pilots", "chapter3", "chapter3_report", "chapter3_variants"),
    "ch04_upper_bound": ("chapter4", "chapter4_resnet"),
    "ch05_tau_switch": ("chapter5", "chapter5_tau"),
    "ch05b_diagnosis": ("chapter5_dissection", "chapter5_critical_batch", "chapter5_prediction"),
    "ch05c_batch_norm": ("chapter5_norm_pilot",),
    "ch06_wall_clock": ("chapter6", "chapter6_modelled", "chapter6_speed", "chapter5_prediction"),
    "ch07_budgeted": ("chapter7", "chapter7_overfit_pilot", "chapter7_overfit"),
    "ch08_conclusions": ("chapter3", "chapter3_report", "chapter5_tau", "chapter6", "chapter6_modelled", "chapter6_speed",
                         "chapter5_prediction",
                         "chapter7", "chapter7_overfit"),
}  # fmt: skip
