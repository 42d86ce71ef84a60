"""Experiments: a config, named configs, ``run(config) -> Result``, and ``run_or_load`` with provenance.

A :class:`Result` is JSON with ``config``, ``provenance``, ``history``, ``timing`` and ``final``.
:func:`run_or_load` reuses a saved result only when its config hash matches exactly; files are
written atomically, and a corrupt or mismatched file is never served.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from ._io import replace_atomically
from .augment import Augment
from .augment import normalize
from .data import ImageData, data_source, load_cifar
from .process_group import World
from .models import MODELS, NORMS, build_model, initialize_from_data
from .strategies import STRATEGIES, build_strategy
from .train import TrainSettings, check_field_types, fit

__all__ = [
    "Config",
    "Result",
    "CONFIGS",
    "BEHAVIOUR_VERSION",
    "get_config",
    "config_hash",
    "run",
    "run_or_load",
    "load_saved",
    "results_dir",
    "saved_results_dir",
    "saved_or_measured",
]

RESULTS_ENV = "ISMOD_RESULTS"
# Bumped whenever the same config would train differently (a saved result of another version is
# never served). 1: up to commit bdefcbd. 2: scoring passes in inference mode (BatchNorm's running
# statistics) and with the training loss (label smoothing included), fp16 with loss scaling on GPUs
# without bf16, GPU time up to each evaluation counted.
BEHAVIOUR_VERSION = 2


def results_dir(default: str | os.PathLike = "results") -> Path:
    """Where saved results live: ``$ISMOD_RESULTS`` if set (tests point it at a scratch folder), else ``default``."""
    env = os.environ.get(RESULTS_ENV, "").strip()
    return Path(env) if env else Path(default)


def saved_results_dir(scale: str, book_results: str | os.PathLike = "results") -> Path:
    """The runs saved at ``scale`` that ship with the book (``book/results/<scale>``), to read only.

    Unlike :func:`results_dir` it ignores ``$ISMOD_RESULTS``: a page that rests an argument on a pilot
    run at ``"cpu"`` scale reads that run at every scale, also when a test points new results at a
    scratch folder. Raises :class:`FileNotFoundError` naming the folder when it is not there (run from
    the book's folder, or pass ``book_results``).
    """
    path = Path(book_results) / scale
    if not path.is_dir():
        raise FileNotFoundError(
            f"no saved runs at {path.resolve()}: run from the book's folder (book/), where results/ "
            "holds the saved runs, or pass book_results= the path to that folder"
        )
    return path


@dataclass(frozen=True)
class Config(TrainSettings):
    """Everything that determines a run: data, model, strategy, augmentation, and
    :class:`~ismod.train.TrainSettings` (which it extends)."""

    name: str = "custom"
    dataset: str = "cifar10"
    model: str = "small_cnn"
    strategy: str = "uniform"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    crop: bool = True
    crop_padding: int = 4
    flip: bool = True
    mixup_alpha: float = 0.0
    ricap_beta: float = 0.0
    subset: int | None = None  # training samples kept (class-balanced); None: all
    test_subset: int | None = None
    seed: int = 0
    probe_size: int = 0  # training samples whose loss, bound and exact gradient norm are recorded
    probe_chunk: int = 64  # per-sample gradients held at once while probing
    tau_probe: int = (
        0  # presamples per evaluation point on which τ is checked against measured variance
    )
    tau_probe_batch: int = 32  # b of those presamples (B = 3b)
    # smaller presample sizes B' also checked at each point, as the first B' samples of each presample
    # (the same exact gradients: a sub-block of their Gram matrix), b' = B'/3
    tau_probe_sizes: tuple[int, ...] = ()
    train_eval_size: int = 0  # training samples evaluated (un-augmented) at each evaluation point
    # > 0: every batch-norm layer's ε (the fast networks use airbench's 1e-12; PyTorch's default is 1e-5)
    batch_norm_eps: float = 0.0
    # the network's normalisation: "batch" as defined, or "group" / "layer", which do not couple a
    # batch's samples (ismod.models.replace_batch_norm; Chapter 5's batch-norm test)
    norm: str = "batch"

    def validate(self, num_items: int | None = None) -> None:
        """Fail before any training, naming the field (its type, then its range)."""
        check_field_types(self)
        if self.dataset not in ("cifar10", "cifar100"):
            raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        # the strategy's own constructor is where its options' defaults and checks live: an unknown
        # option or a bad value fails here, before data is loaded, not at the first step
        build_strategy(self.strategy, self.strategy_options)
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"{name} must be a positive number of samples or None, got {value}"
                )
        if not (self.batch_norm_eps >= 0 and math.isfinite(self.batch_norm_eps)):
            raise ValueError(
                f"batch_norm_eps must be >= 0 (0: the model's own ε), got {self.batch_norm_eps}"
            )
        if self.subset is not None and self.batch_size > self.subset:
            raise ValueError(f"batch_size {self.batch_size} exceeds subset {self.subset}")
        super().validate(num_items if num_items is not None else self.subset or 50_000)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(d["milestones"])
        d["tau_probe_sizes"] = list(d["tau_probe_sizes"])
        d["gradient_error_modes"] = list(d["gradient_error_modes"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        d = dict(d)
        for name in ("milestones", "tau_probe_sizes", "gradient_error_modes"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


# Fields added after results were saved: left out of the hash while at their default, so that
# adding a field does not orphan every saved result.
_LATER_FIELDS: dict[str, Any] = {
    "step_seconds": 0.0,
    "score_seconds": 0.0,
    "tau_probe": 0,
    "tau_probe_batch": 32,
    "train_eval_size": 0,
    "final_lr": 0.0,
    "initial_lr": 0.0,
    "bias_lr_scale": 1.0,
    "lookahead": False,
    "tta": 0,
    "compile": False,
    "bn_recalibration": 0,
    "tau_probe_sizes": [],
    "instrument": False,
    "batch_norm_eps": 0.0,
    "norm": "batch",
    "gradient_error_draws": 0,
    "gradient_error_modes": ["train", "eval", "presample"],
}


# Strategy options added after results were saved, with the value those runs behaved as. Such an
# option is hashed at its value, given or default, except at that old value, which is left out: the
# saved runs' configs state it explicitly, so they keep their hashes, while a config that omits it
# gets (and is hashed with) the strategy's current default.
_LATER_STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "per": {"new_priority": "one"},
    "obs": {"rerank_every": 1},
    # until Chapter 5's dissection, presamples were scored clean and trained on a fresh augmentation
    "presample": {"score_augmented": False},
}


def _hashed_strategy_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    later = _LATER_STRATEGY_OPTIONS.get(strategy)
    if not later:
        return options
    defaults = inspect.signature(STRATEGIES[strategy].__init__).parameters
    hashed = dict(options)
    for key, old in later.items():
        value = hashed.get(key, defaults[key].default)
        if value == old:
            hashed.pop(key, None)
        else:
            hashed[key] = value
    return hashed


def config_hash(config: Config) -> str:
    """SHA-256 of the config's canonical JSON: equal hashes, equal runs (up to hardware)."""
    d = {
        k: v
        for k, v in config.to_dict().items()
        if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])
    }
    d["strategy_options"] = _hashed_strategy_options(config.strategy, d["strategy_options"])
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


_SMALL = dict(model="small_cnn", batch_size=512, lr=0.3, label_smoothing=0.2, crop_padding=2,
              schedule="onecycle", warmup=0.2, evaluations=4)  # fmt: skip

CONFIGS: dict[str, Config] = {
    # The CPU-scale reference: the small CNN, uniform sampling, 4 epochs of the full training set.
    "cifar10-small-uniform": Config(name="cifar10-small-uniform", budget_amount=4, **_SMALL),
    # Seconds for tests and smoke-scale chapters.
    "smoke-uniform": Config(
        name="smoke-uniform",
        subset=512,
        test_subset=256,
        budget_amount=2,
        **{**_SMALL, "batch_size": 64, "evaluations": 2},
    ),  # fmt: skip
    # The sources' GPU settings (the loss-sampling report, Katharopoulos & Fleuret 2018, Arazo et al. 2021).
    "cifar10-resnet18-uniform": Config(
        name="cifar10-resnet18-uniform",
        model="resnet18",
        batch_size=128,
        lr=0.1,
        nesterov=False,
        weight_decay=1e-4,
        schedule="linear",
        warmup=0.0,
        budget_amount=200,
        evaluations=40,
    ),  # fmt: skip
    "cifar10-wrn-uniform": Config(
        name="cifar10-wrn-uniform",
        model="wrn28_2",
        batch_size=128,
        lr=0.1,
        nesterov=False,
        weight_decay=5e-4,
        schedule="step",
        warmup=0.0,
        milestones=(0.5, 0.8),
        gamma=0.2,
        budget="seconds",
        budget_amount=3600,
        evaluations=20,
    ),  # fmt: skip
}


# The gpu scale's recipe: airbench94's (Jordan 2024) in this harness's terms. airbench sums the loss
# over a batch of 1024 with lr 11.5 / (1024 (1 + 1/(1 - 0.85))) and decoupled weight decay
# 0.0153 · 1024 / that; with the mean loss that is lr 1.5 and weight decay 1.33e-3; BN shifts at 64×
# the rate; label smoothing 0.2; 2-pixel translations and flips; a triangular schedule 0.2 → 1 (at 23%)
# → 0.07; lookahead; test-time augmentation. 9.9 epochs. Chapters switch off what would confound them.
FAST_RECIPE: dict[str, Any] = dict(
    model="fast_cnn", batch_size=1024, lr=1.5, momentum=0.85, nesterov=True, weight_decay=0.0153 / 11.5,
    bias_lr_scale=64.0, label_smoothing=0.2, crop_padding=2, schedule="onecycle", warmup=0.23, initial_lr=0.2,
    final_lr=0.07, lookahead=True, tta=2, budget="epochs", budget_amount=9.9, evaluations=4,
)  # fmt: skip
CONFIGS["cifar10-fast-uniform"] = Config(name="cifar10-fast-uniform", **FAST_RECIPE)
# The same recipe on two CPU cores: the narrow network (widths 32/64/128), batch 512, 5 epochs —
# 85.1% on the JPEG copy in 147 s of training against the small CNN's 80.1% in 100 s
# (benchmarks/cpu_time_to_accuracy.py, one seed each; benchmarks/results/cpu-2026-11-30.md).
CONFIGS["cifar10-fast-cpu"] = Config(
    name="cifar10-fast-cpu",
    **{**FAST_RECIPE, "model": "fast_cnn_narrow", "batch_size": 512, "budget_amount": 5.0},
)

CONFIGS["cifar10-small-probe"] = Config(
    name="cifar10-small-probe", subset=10_000, budget_amount=8, probe_size=1024,
    **{**_SMALL, "batch_size": 256, "lr": 0.2, "evaluations": 5},
)  # fmt: skip
# ResNet-18 at about 50 images/s on two CPU cores: 1,500 images, 4 epochs, probed at epochs 2 and 4;
# no label smoothing (it keeps every per-sample gradient away from 0, Chapter 4)
CONFIGS["cifar10-resnet18-probe"] = Config(
    name="cifar10-resnet18-probe", subset=1500, test_subset=1000, budget_amount=4, probe_size=96, probe_chunk=16,
    **{**_SMALL, "model": "resnet18", "batch_size": 64, "lr": 0.05, "evaluations": 2, "label_smoothing": 0.0},
)  # fmt: skip


def _per_sample_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none")


def gradient_probe(
    train: ImageData, augment: Augment, size: int, *, chunk: int = 64, seed: int = 0
):
    """A ``probe`` for :func:`ismod.train.fit`: on ``size`` fixed training samples (un-augmented), record
    per-sample ``loss``, upper ``bound``, exact ``grad_norm`` and the squared norm of their mean gradient
    ``mean_grad_sq`` (the model in eval mode throughout, so all four agree on BatchNorm)."""
    from .bounds import per_sample_grad_norms, upper_bound

    ce = _per_sample_ce
    g = torch.Generator().manual_seed(seed + 12345)
    idx = torch.randperm(len(train), generator=g)[:size].to(train.labels.device)
    x, y = augment(train.images[idx], train.labels[idx], train=False)

    def probe(model: torch.nn.Module) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(x).float()
        norms = per_sample_grad_norms(model, ce, x, y, chunk_size=chunk)
        model.zero_grad(set_to_none=True)
        ce(model(x).float(), y).mean().backward()
        mean_sq = sum(
            float(p.grad.float().pow(2).sum()) for p in model.parameters() if p.grad is not None
        )
        model.zero_grad(set_to_none=True)
        model.train(was_training)

        def rounded(t: torch.Tensor) -> list[float]:
            return [float(f"{v:.6g}") for v in t.tolist()]

        return {"loss": rounded(ce(logits, y)), "bound": rounded(upper_bound(logits, y)),
                "grad_norm": rounded(norms), "mean_grad_sq": mean_sq}  # fmt: skip

    return probe


def _tau_check(
    gram: torch.Tensor, scores: dict[str, torch.Tensor], batch: int, seed: int
) -> dict[str, Any]:
    """τ (with and without the root) and the measured variance ratio for each score, on one presample
    whose exact per-sample gradients have Gram matrix ``gram``; for the bound also the sampled ratio."""
    from .tau import (
        equivalent_batch_increment,
        presample_increment,
        sampled_sq_errors,
        variance_ratio,
    )

    size = gram.shape[0]
    entry: dict[str, Any] = {"mean_grad_sq": float(gram.sum()) / size**2,
                             "mean_sq_norm": float(torch.diagonal(gram).mean())}  # fmt: skip
    probs = {
        name: (s + 1e-12) / (s + 1e-12).sum() for name, s in scores.items()
    }  # every point drawable
    for name, p in probs.items():
        tau = equivalent_batch_increment(p)
        entry[name] = {"tau": tau, "tau_sqrt": equivalent_batch_increment(p, sqrt=True),
                       "tau_eff": presample_increment(tau, batch, size), "measured": variance_ratio(gram, p)}  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    err_g, se_g = sampled_sq_errors(gram, probs["bound"], batch, generator=gen)
    err_u, se_u = sampled_sq_errors(
        gram, torch.full_like(probs["bound"], 1.0 / size), batch, generator=gen
    )
    entry["bound"]["sampled"] = err_u / err_g
    entry["bound"]["sampled_rel_se"] = math.hypot(se_g / err_g, se_u / err_u)
    return entry


def tau_probe(
    train: ImageData,
    augment: Augment,
    presamples: int,
    batch: int,
    *,
    chunk: int = 64,
    seed: int = 0,
    sizes: tuple[int, ...] = (),
):
    """A ``probe`` checking τ against the variance it predicts (Chapter 5).

    At each call, ``presamples`` fixed presamples of B = 3 ``batch`` training samples (un-augmented,
    the model in eval mode) get exact per-sample gradients; for g from the upper bound, from the loss and
    from the exact gradient norms it records τ (:func:`ismod.tau.equivalent_batch_increment`, with and
    without the square root), the presample-capped ``tau_eff`` :math:`1/(1/\\tau + b/B)`
    (:func:`ismod.tau.presample_increment`) and the measured ratio :func:`ismod.tau.variance_ratio`, and, for the
    bound, the same ratio from 2000 sampled minibatches each way (:func:`ismod.tau.sampled_sq_errors`).
    For each B' in ``sizes`` (each a multiple of 3 below B) the same is recorded under
    ``entry["smaller"][str(B')]`` for the presample's first B' samples, from the same gradients.
    """
    for smaller in sizes:
        if not (3 <= smaller < 3 * batch and smaller % 3 == 0):
            raise ValueError(
                f"tau_probe_sizes must be multiples of 3 below B = {3 * batch}, got {smaller}"
            )
    from .bounds import per_sample_grads, upper_bound

    ce = _per_sample_ce
    size = 3 * batch
    g = torch.Generator().manual_seed(seed + 54321)
    sets = [
        torch.randperm(len(train), generator=g)[:size].to(train.labels.device)
        for _ in range(presamples)
    ]

    def probe(model: torch.nn.Module) -> list[dict[str, Any]]:
        was_training = model.training
        model.eval()
        out = []
        for k, idx in enumerate(sets):
            x, y = augment(train.images[idx], train.labels[idx], train=False)
            with torch.no_grad():
                logits = model(x).float()
            grads = per_sample_grads(model, ce, x, y, chunk_size=chunk).double()
            gram = grads @ grads.T
            del grads
            scores = {"bound": upper_bound(logits, y).double(), "loss": ce(logits, y).double(),
                      "exact": torch.diagonal(gram).clamp_min(0).sqrt()}  # fmt: skip
            entry = _tau_check(gram, scores, batch, seed + k)
            if sizes:
                entry["smaller"] = {
                    str(m): _tau_check(
                        gram[:m, :m], {n: v[:m] for n, v in scores.items()}, m // 3, seed + k
                    )
                    for m in sizes
                }
            out.append(entry)
        model.train(was_training)
        return out

    return probe


def _probes(train: ImageData, augment: Augment, config: Config):
    """The config's probes as one callback: the gradient probe's keys, plus ``"tau"`` for the τ probe."""
    grad_probe = (
        gradient_probe(
            train, augment, config.probe_size, chunk=config.probe_chunk, seed=config.seed
        )
        if config.probe_size
        else None
    )
    t_probe = tau_probe(train, augment, config.tau_probe, config.tau_probe_batch, chunk=config.probe_chunk,
                        seed=config.seed, sizes=config.tau_probe_sizes) if config.tau_probe else None  # fmt: skip
    if grad_probe is None and t_probe is None:
        return None

    def probe(model: torch.nn.Module) -> dict[str, Any]:
        out = grad_probe(model) if grad_probe is not None else {}
        if t_probe is not None:
            out["tau"] = t_probe(model)
        return out

    return probe


def get_config(name: str, **changes: Any) -> Config:
    """A named config, with ``changes`` applied."""
    if name not in CONFIGS:
        raise ValueError(f"no config named {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name].replace(**changes) if changes else CONFIGS[name]


@dataclass
class Result:
    """A finished run: ``config``, ``provenance``, ``history``, ``timing``, ``final`` (all JSON-able)."""

    config: dict[str, Any]
    provenance: dict[str, Any]
    history: list[dict[str, Any]]
    timing: dict[str, Any]
    final: dict[str, Any]

    @property
    def config_hash(self) -> str:
        return config_hash(Config.from_dict(self.config))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Result:
        d = json.loads(text)
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})

    def describe(self) -> str:
        """One line of provenance, to print beside a figure."""
        p = self.provenance
        return (f"{self.config['name']}: {p['data_source']}, {p['train_size']} training images; ran on "
                f"{p['device']} at scale {p['scale'] or '?'} on {p['date']}, ismod {p['ismod_version']} "
                f"(commit {p['git_commit'][:12]}{'+dirty' if p['git_commit'].endswith('+dirty') else ''}), "
                f"torch {p['torch_version']}")  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        text = self.to_json()
        replace_atomically(Path(path), lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Result:
        return cls.from_json(Path(path).read_text())


def _git_commit() -> str:
    """HEAD (with ``+dirty`` for local changes to the package), or ``$ISMOD_GIT_COMMIT`` where the code
    runs from a copy without git history (a lent GPU machine receives the working tree alone)."""
    env = os.environ.get("ISMOD_GIT_COMMIT", "").strip()
    if env:
        return env
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True,
                               text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    # the vector instructions torch dispatches to, so that a reader can tell machines apart: the same
    # code, config and seed agree across machines only to rounding, which training amplifies (Chapter
    # 3's uniform seed 0: 74.0% saved on 2026-11-30 at commit 0892d10, 74.2% re-run on 2026-12-03; that
    # commit's code gave the re-run's step-0 evaluation, 0.02 points off the saved one: the machine or
    # its libraries differed, not the code)
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"CPU ({platform.machine()}, {capability}, {os.cpu_count()} cores, "
            f"{_threads()})")  # fmt: skip


def _threads() -> str:
    n = torch.get_num_threads()
    return f"{n} torch thread" + ("" if n == 1 else "s")


def run(
    config: Config,
    *,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    scale: str = "",
    progress: bool = True,
) -> Result:
    """Train as ``config`` says and return the :class:`Result` (not saved; see :func:`run_or_load`).

    Inside an initialised process group (``torchrun``, :func:`ismod.distributed.launch`) every rank
    calls this with the same config; ``config.batch_size`` is then the global batch."""
    config.validate()
    world = World.current()
    if device is None and world is not None and world.device.type == "cuda":
        device = world.device  # nccl: this rank's GPU
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    # download=True only matters where no local copy exists (Colab): torchvision then fetches CIFAR
    load = dict(root=data_root, device=device, seed=config.seed, download=True)
    train = load_cifar(config.dataset, "train", subset=config.subset, **load)
    test = load_cifar(config.dataset, "test", subset=config.test_subset, **load)
    torch.manual_seed(config.seed)
    model = build_model(config.model, train.num_classes, config.norm).to(device)
    if config.batch_norm_eps:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                m.eps = config.batch_norm_eps
    whitening_sample = torch.randperm(
        len(train), generator=torch.Generator().manual_seed(config.seed)
    )[:5000]
    initialize_from_data(model, normalize(train.images[whitening_sample.to(device)]))
    strategy = build_strategy(config.strategy, config.strategy_options)
    augment = Augment(num_classes=train.num_classes, crop=config.crop, flip=config.flip, padding=config.crop_padding,
                      mixup_alpha=config.mixup_alpha, ricap_beta=config.ricap_beta, seed=config.seed)  # fmt: skip
    tag = config_hash(config)
    probe = _probes(train, augment, config)
    train_eval = (
        train.subset(config.train_eval_size, seed=config.seed + 777)
        if config.train_eval_size
        else None
    )
    out = fit(model, train, test, strategy, augment, config, seed=config.seed, checkpoint=checkpoint,
              resume=resume, tag=tag, progress=progress, probe=probe, train_eval=train_eval)  # fmt: skip
    provenance = {
        "ismod_version": __version__, "git_commit": _git_commit(), "torch_version": torch.__version__,
        "device": _device_name(device), "data_source": train.source, "train_size": len(train),
        "test_size": len(test), "seed": config.seed, "scale": scale, "world_size": world.size if world else 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "config_hash": tag,
        "behaviour_version": BEHAVIOUR_VERSION, "command": os.environ.get("ISMOD_COMMAND", ""),
    }  # fmt: skip
    return Result(config.to_dict(), provenance, out["history"], out["timing"], out["final"])


def saved_or_measured(
    path: str | os.PathLike,
    identity: dict[str, Any],
    measure: Callable[[], dict[str, Any]],
    *,
    device: torch.device | str = "cpu",
    reuse: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results, provenance)`` of a page's own measurement: read from ``path`` when it was saved for
    exactly this ``identity`` (the code that ran, its settings and data, and the behaviour version),
    else ``measure()``d now and saved there with its provenance. For pages whose runs are not harness
    configs (the own-loop page's loops); ``reuse=False`` always measures."""
    path = Path(path)
    wanted = json.loads(json.dumps({**identity, "behaviour_version": BEHAVIOUR_VERSION}))
    if reuse and path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("identity") == wanted:
                return saved["results"], saved["provenance"]
        except (ValueError, KeyError):  # unreadable: measure again and replace it
            pass
    results = measure()
    provenance = {
        "ismod_version": __version__, "git_commit": _git_commit(), "torch_version": torch.__version__,
        "device": _device_name(torch.device(device)), "command": os.environ.get("ISMOD_COMMAND", ""),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    text = json.dumps({"identity": wanted, "provenance": provenance, "results": results}, indent=1)
    replace_atomically(path, lambda tmp: tmp.write_text(text + "\n"))
    return results, provenance


def result_path(config: Config, results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / f"{config.name}-{config_hash(config)[:12]}.json"


def load_saved(
    config: Config, results_dir: str | os.PathLike, *, data: str | None = None
) -> Result | None:
    """The saved result of exactly ``config`` (same hash, same behaviour version and, when ``data`` is
    given, the same data source as :func:`ismod.data.data_source` names it), or ``None``.

    A file that cannot be parsed, or was made by other code or on other data, is not served."""
    path = result_path(config, results_dir)
    if not path.exists():
        return None
    try:
        saved = Result.load(path)
        same = (saved.config_hash == config_hash(config)
                and saved.provenance.get("behaviour_version", 1) == BEHAVIOUR_VERSION
                and (data is None or saved.provenance.get("data_source") == data))  # fmt: skip
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None  # corrupt or from another version
    return saved if same else None


def run_or_load(config: Config, results_dir: str | os.PathLike, **run_kwargs: Any) -> Result:
    """The saved result for exactly this config, code and data if there is one (:func:`load_saved`);
    otherwise run, save and return it.

    A file made from another config, behaviour version or data source, or that cannot be parsed, is not
    served: the run happens and overwrites it. Interrupted runs resume from ``<results_dir>/checkpoints/``.
    """
    world = World.current()
    path = result_path(config, results_dir)
    saved = load_saved(
        config, results_dir, data=data_source(config.dataset, run_kwargs.get("data_root"))
    )
    if saved is not None:
        return saved
    checkpoint = Path(results_dir) / "checkpoints" / f"{path.stem}.pt"
    own_checkpoint = "checkpoint" not in run_kwargs
    run_kwargs.setdefault("checkpoint", checkpoint)
    run_kwargs.setdefault("resume", True)
    result = run(config, **run_kwargs)
    if world is None or world.rank == 0:  # one writer; every rank returns the same result
        result.save(path)
        if own_checkpoint:
            checkpoint.unlink(missing_ok=True)  # the saved result supersedes it
    if world is not None:
        world.barrier()  # no rank looks for the next result file before this one is written
    return result
