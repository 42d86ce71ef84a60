"""Side-by-side speed measurements used by ``benchmarks/`` and by the book where it discusses cost.

Timings are medians over repeated steps of wall-clock time, taken in one process, one after the other;
compare them as ratios, on the machine that produced them.
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from .sampling import ImportanceSampler

try:  # a benchmark-only peer (pip install torchrl), not a dependency
    from torchrl._torchrl import SumSegmentTreeFp64
except ImportError:  # pragma: no cover - depends on the environment
    SumSegmentTreeFp64 = None

__all__ = [
    "machine",
    "median_us",
    "sampler_step_costs",
    "format_table",
    "harness_throughput",
    "dataloader_throughput",
    "scoring_costs",
    "forward_backward_times",
    "collective_costs",
]


def machine() -> str:
    """A one-line description of where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} torch thread{'' if threads == 1 else 's'}{gpu}; torch {torch.__version__}"


def median_us(step: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    """Median wall-clock time of ``step()`` in µs over at least ``repeats`` runs (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step()
    times: list[float] = []
    budget = time.perf_counter() + 0.3  # fast steps get more repeats, for a stable median
    while len(times) < repeats or (time.perf_counter() < budget and len(times) < 100 * repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _ismod_candidates(n: int, scores: torch.Tensor, new: torch.Tensor, batch_size: int,
                      draw_gen: torch.Generator, device: torch.device,
                      ) -> tuple[ImportanceSampler, dict[str, Callable[[], object]]]:  # fmt: skip
    """:func:`sampler_step_costs`' ismod steps: the sampler in its default and other SumTree forms."""
    # unsmoothed, so that the sampler does the same job as the baselines
    sampler = ImportanceSampler(
        n, method="proportional", smoothing=0.0, generator=draw_gen, device=device
    )
    sampler.update(torch.arange(n, device=device), scores)

    def ismod_step() -> None:
        idx, _ = sampler.sample(batch_size)
        sampler.update(idx, new)

    candidates: dict[str, Callable[[], object]] = {"ismod ImportanceSampler": ismod_step}
    # the sampler's other SumTree forms, the same job (the candidates for CUDA's default)
    for backend in ("tensor", "cumsum"):
        if backend == "tensor" and device.type != "cpu":
            continue  # the default there
        other = ImportanceSampler(n, method="proportional", smoothing=0.0, generator=draw_gen,
                                  device=device, backend=backend)  # fmt: skip
        other.update(torch.arange(n, device=device), scores)

        def other_step(other: ImportanceSampler = other) -> None:
            idx, _ = other.sample(batch_size)
            other.update(idx, new)

        candidates[f"ismod ImportanceSampler, {backend} form"] = other_step
    return sampler, candidates


def _baseline_candidates(n: int, scores: torch.Tensor, new: torch.Tensor, batch_size: int, seed: int,
                         gen: torch.Generator, draw_gen: torch.Generator, device: torch.device,
                         ) -> dict[str, Callable[[], object]]:  # fmt: skip
    """:func:`sampler_step_costs`' baselines: torch.multinomial, and on the CPU WeightedRandomSampler,
    torchrl's C++ sum tree (when installed) and numpy's choice."""
    candidates: dict[str, Callable[[], object]] = {}
    weights = scores.clone()
    idx0 = torch.randint(n, (batch_size,), generator=draw_gen, device=device)

    def multinomial_step() -> None:
        weights[idx0] = new
        torch.multinomial(weights, batch_size, replacement=True, generator=draw_gen)

    if device.type == "cpu":  # the host-only baselines

        def wrs_step() -> None:
            weights[idx0] = new
            list(WeightedRandomSampler(weights, batch_size, replacement=True, generator=gen))

        candidates["WeightedRandomSampler rebuild"] = wrs_step
    if n <= 2**24:
        candidates["torch.multinomial"] = multinomial_step
    if device.type == "cpu" and SumSegmentTreeFp64 is not None:
        tree = SumSegmentTreeFp64(n)
        tree[np.arange(n)] = scores.numpy()

        def torchrl_step() -> None:
            # the same job with torch tensors in and out, as ImportanceSampler has
            total = tree.query(0, n)
            u = torch.rand(batch_size, dtype=torch.float64, generator=draw_gen) * total
            idx = torch.from_numpy(tree.scan_lower_bound(u.numpy()))
            weights = torch.from_numpy(total / (n * tree[idx.numpy()])).float()
            tree[idx.numpy()] = new.numpy()
            return idx, weights

        rng_raw = np.random.default_rng(seed)
        new_np = new.numpy()

        def torchrl_raw_step() -> None:
            # the tree's own floor: numpy in and out, numpy's generator, no conversions
            total = tree.query(0, n)
            idx = tree.scan_lower_bound(rng_raw.random(batch_size) * total)
            weights = total / (n * tree[idx])
            tree[idx] = new_np
            return idx, weights

        candidates["torchrl SumSegmentTreeFp64 (C++), torch tensors"] = torchrl_step
        candidates["torchrl SumSegmentTreeFp64 (C++), bare numpy"] = torchrl_raw_step
    if device.type == "cpu":
        rng = np.random.default_rng(seed)
        w_np = scores.numpy().copy()

        def numpy_step() -> None:
            w_np[idx0.numpy()] = new.numpy()
            rng.choice(n, batch_size, p=w_np / w_np.sum())

        candidates["numpy Generator.choice"] = numpy_step
    return candidates


def sampler_step_costs(
    sizes: list[int],
    *,
    batch_size: int = 128,
    repeats: int = 20,
    ismod_only_above: int = 10**7,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict[str, float | int | str]]:
    """Per-step cost of "draw ``batch_size`` indices with weights, then update their scores".

    Compared at each N: :class:`~ismod.sampling.ImportanceSampler` (its default sum tree, and its
    other :class:`~ismod.sampling.SumTree` forms: ``"tensor"`` on the CPU, ``"cumsum"``), torchrl's compiled
    C++ sum segment tree (when torchrl is installed; torch tensors in and out, as the sampler), PyTorch's
    ``WeightedRandomSampler`` rebuilt on the updated weights, ``torch.multinomial`` on the full vector
    (refuses N > 2^24), and ``numpy.random.Generator.choice``. All use proportional probabilities so
    that the baselines need no O(N) transform beyond their own. Baselines above ``ismod_only_above`` are
    skipped. Returns one record per (N, method) with the median µs per step. On a CUDA ``device`` the
    sampler and ``torch.multinomial`` run there and the host-only baselines are left out.
    """
    rows: list[dict[str, float | int | str]] = []
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    # the sampler and torch.multinomial draw on the device; on the CPU that is the same generator
    draw_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    for n in sizes:
        scores = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.01).to(device)
        new = (torch.rand(batch_size, generator=gen, dtype=torch.float64) + 0.01).to(device)

        sampler, candidates = _ismod_candidates(n, scores, new, batch_size, draw_gen, device)
        if n <= ismod_only_above:
            candidates |= _baseline_candidates(
                n, scores, new, batch_size, seed, gen, draw_gen, device
            )
        reps = repeats if n < 10**7 else max(5, repeats // 4)
        for name, step in candidates.items():
            rows.append({"N": n, "method": name, "median_us": median_us(step, reps)})
        # The sampler also rebuilds its tree exactly once per N updated entries: O(N), amortised.
        rebuild_us = median_us(sampler.table._rebuild, 3, warmup=1)
        rows.append(
            {
                "N": n,
                "method": "ismod rebuild, amortised per step",
                "median_us": rebuild_us * batch_size / n,
            }
        )
    return rows


def format_table(
    rows: list[dict[str, float | int | str]], baseline: str = "ismod ImportanceSampler"
) -> str:
    """A markdown table of :func:`sampler_step_costs` records, with each time as a multiple of ismod's."""
    base = {r["N"]: r["median_us"] for r in rows if r["method"] == baseline}
    lines = ["| N | method | median µs / step | × ismod |", "|---:|---|---:|---:|"]
    for r in rows:
        ratio = float(r["median_us"]) / float(base[r["N"]])
        lines.append(
            f"| {int(r['N']):,} | {r['method']} | {float(r['median_us']):,.0f} | {ratio:,.2f} |"
        )
    return "\n".join(lines)


def _minimal_loop_images_per_s(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                               n_steps: int, device: torch.device, seed: int, amp: bool) -> float:  # fmt: skip
    """:func:`harness_throughput`'s reference: a minimal hand-written loop over the same work."""
    import torch.nn.functional as F

    from .augment import normalize, random_crop, random_flip
    from .models import build_model
    from .train import amp_dtype

    num_items = images.shape[0]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model(model_name).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    gen = torch.Generator(device=device).manual_seed(seed)
    sync()
    start = time.perf_counter()
    order = torch.randperm(num_items, device=device, generator=gen)
    for step in range(n_steps):
        idx = order[(step * batch_size) % (num_items - batch_size + 1) :][:batch_size]
        x = random_flip(random_crop(normalize(images[idx]), 4, generator=gen), generator=gen)
        with torch.autocast(
            device.type, dtype=amp_dtype(device), enabled=amp and device.type == "cuda"
        ):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return n_steps * batch_size / (time.perf_counter() - start)


def harness_throughput(
    model_name: str = "small_cnn",
    *,
    batch_size: int = 512,
    steps: int = 30,
    rounds: int = 2,
    num_items: int = 50_000,
    device: str | torch.device = "cpu",
    seed: int = 0,
    amp: bool = False,
) -> dict[str, float]:
    """Training images/s of :func:`ismod.train.fit` against a minimal hand-written loop, same work
    (with ``amp``, both under the same autocast dtype on CUDA).

    Both train ``model_name`` with SGD (Nesterov momentum) on ``num_items`` random uint8 images held on
    ``device``, batch ``batch_size``, crop + flip on the device, channels_last. They alternate
    ``rounds`` times, ``steps`` steps each (after one warm-up round), so drift on a shared machine hits
    both. Returns images/s of each, their ratio, and the harness's per-step selection, data and
    optimiser times.
    """
    from .augment import Augment
    from .data import ImageData
    from .models import build_model
    from .strategies import build_strategy
    from .train import TrainSettings, fit

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_items, 3, 32, 32), dtype=torch.uint8, generator=g).to(
        device
    )
    labels = torch.randint(10, (num_items,), generator=g).to(device)
    data = ImageData(images, labels, [str(i) for i in range(10)], "random")
    tiny_test = ImageData(images[:10], labels[:10], data.classes, "random")

    def minimal(n_steps: int) -> float:
        return _minimal_loop_images_per_s(
            model_name, images, labels, batch_size, n_steps, device, seed, amp
        )

    timings: dict[str, float] = {}

    def harness(n_steps: int) -> float:
        settings = TrainSettings(batch_size=batch_size, budget="steps", budget_amount=n_steps, lr=0.05,
                                 schedule="constant", warmup=0.0, evaluations=1, amp=amp)  # fmt: skip
        out = fit(build_model(model_name).to(device), data, tiny_test, build_strategy("uniform"),
                  Augment(num_classes=10), settings, seed=seed, progress=False)  # fmt: skip
        timings.update(out["timing"]["per_step"])
        return out["final"]["images_per_second"]

    minimal(3), harness(3)  # warm-up
    results: dict[str, list[float]] = {"minimal": [], "harness": []}
    for _ in range(rounds):
        results["minimal"].append(minimal(steps))
        results["harness"].append(harness(steps))
    minimal_ips = statistics.median(results["minimal"])
    harness_ips = statistics.median(results["harness"])
    return {
        "minimal_images_per_s": minimal_ips,
        "harness_images_per_s": harness_ips,
        "ratio": harness_ips / minimal_ips,
        **{f"harness_{k}_ms_per_step": v * 1e3 for k, v in timings.items()},
    }


def dataloader_throughput(
    model_name: str = "resnet18",
    *,
    batch_size: int = 512,
    steps: int = 40,
    workers: int = 8,
    num_items: int = 20_000,
    device: str | torch.device = "cuda",
    seed: int = 0,
) -> float:
    """Training images/s of the ordinary PyTorch pipeline, for comparison with :func:`harness_throughput`:
    uint8 images on the host, per-sample random crop (pad 4) and flip in ``workers`` DataLoader
    processes, pinned batches copied to ``device``, bf16 autocast on CUDA, SGD. Timed after 5 warm-up
    steps, synchronised at both ends."""
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from .augment import normalize
    from .models import build_model
    from .train import amp_dtype

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_items, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(10, (num_items,), generator=g)
    loader = DataLoader(_CropFlipDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)  # fmt: skip
    model = build_model(model_name).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    done, start = 0, 0.0
    while done < steps + 5:
        for x, y in loader:
            if done == 5:
                sync()
                start = time.perf_counter()
            x = normalize(x.to(device, non_blocking=True)).contiguous(
                memory_format=torch.channels_last
            )
            y = y.to(device, non_blocking=True)
            with torch.autocast(
                device.type, dtype=amp_dtype(device), enabled=device.type == "cuda"
            ):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps + 5:
                break
    sync()
    return steps * batch_size / (time.perf_counter() - start)


class _CropFlipDataset(torch.utils.data.Dataset):
    """uint8 images with the per-sample random crop (reflect pad 4) and flip of a torchvision pipeline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.nn.functional.pad(self.images[i][None].float(), (4, 4, 4, 4), mode="reflect")[0]
        oy, ox = (int(v) for v in torch.randint(0, 9, (2,)))
        x = x[:, oy : oy + 32, ox : ox + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return x.to(torch.uint8), self.labels[i]


def scoring_costs(
    model_name: str = "small_cnn",
    *,
    batch_size: int = 1024,
    loop_samples: int = 64,
    chunk_size: int | None = 128,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Seconds to score ``batch_size`` samples four ways (Chapter 4's cost question).

    ``loss``: one forward pass without autograd; ``upper_bound``: the same forward plus
    :func:`ismod.bounds.upper_bound`; ``exact_vmap``: :func:`ismod.bounds.per_sample_grad_norms`;
    ``exact_loop``: one backward pass per sample, timed on ``loop_samples`` samples and scaled to
    ``batch_size``. Medians over ``repeats``; ratios to ``loss`` included.
    """
    import torch.nn.functional as F

    from .bounds import per_sample_grad_norms, upper_bound
    from .models import build_model

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    model = build_model(model_name).to(device).eval()
    x = torch.randn(batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (batch_size,), generator=g).to(device)

    def ce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, t, reduction="none")

    def loss_only() -> None:
        with torch.no_grad():
            ce(model(x), y)

    def bound() -> None:
        with torch.no_grad():
            upper_bound(model(x), y)

    def exact() -> None:
        per_sample_grad_norms(model, ce, x, y, chunk_size=chunk_size)

    def loop() -> None:
        for i in range(loop_samples):
            model.zero_grad(set_to_none=True)
            ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()

    out = {
        "loss": median_us(loss_only, repeats, warmup=1) / 1e6,
        "upper_bound": median_us(bound, repeats, warmup=1) / 1e6,
        "exact_vmap": median_us(exact, max(1, repeats // 2), warmup=1) / 1e6,
        "exact_loop": median_us(loop, 1, warmup=1) / 1e6 * batch_size / loop_samples,
    }
    return {**out, **{f"{k}_over_loss": v / out["loss"] for k, v in out.items() if k != "loss"}}


def forward_backward_times(
    model_name: str = "small_cnn",
    *,
    batch_size: int = 128,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds of a training forward pass (with autograd, loss included), of its backward pass,
    and of a scoring forward pass (no autograd, as a presample is scored), for ``batch_size`` random
    images; and the ratios ``backward/forward`` (the :math:`t_b/t_f` of Katharopoulos & Fleuret's cost
    model, often assumed to be 2) and ``scoring/forward``."""
    import torch.nn.functional as F

    from .models import build_model

    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(batch_size, 3, 32, 32, generator=g)
        .to(device)
        .contiguous(memory_format=torch.channels_last)
    )
    y = torch.randint(10, (batch_size,), generator=g).to(device)
    model = build_model(model_name).to(device).to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = device.type == "cuda"
    forward, backward, scoring = [], [], []
    for i in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        sync()
        t3 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i:  # the first round warms up
            forward.append(t1 - t0)
            backward.append(t2 - t1)
            scoring.append(t3 - t2)
    f, b, s = (statistics.median(v) for v in (forward, backward, scoring))
    return {
        "forward_s": f,
        "backward_s": b,
        "scoring_s": s,
        "backward/forward": b / f,
        "scoring/forward": s / f,
    }


def _collective_worker(rank: int, size: int, port: int, out: str, options: dict) -> None:
    """One rank of :func:`collective_costs` (spawned; gloo on loopback)."""
    import torch.distributed as dist

    from .process_group import join_local
    from .models import build_model

    torch.set_num_threads(options["threads"])
    world = join_local(rank, size, port, "gloo", timeout_s=60)
    assert world is not None
    b, classes, repeats = options["batch_size"] // size, options["classes"], options["repeats"]
    losses, logits = torch.rand(b), torch.randn(b, classes)
    scores = torch.rand(options["num_scores"] // size)
    grads = [torch.randn_like(p) for p in build_model(options["model"], classes).parameters()]

    def fixed_median_us(step: Callable[[], object]) -> float:
        # every rank must make the same number of calls (a collective waits for all), so no adaptive repeats
        for _ in range(3):
            step()
        times = []
        for _ in range(repeats):
            world.barrier()
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6

    rows = {
        "all-gather batch losses + logits": fixed_median_us(lambda: (world.all_gather_cat(losses), world.all_gather_cat(logits))),
        "all-reduce gradients": fixed_median_us(lambda: world.average_(grads)),
        f"all-gather {options['num_scores']:,} scores": fixed_median_us(lambda: world.all_gather_cat(scores)),
    }  # fmt: skip
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def collective_costs(*, nprocs: int = 2, num_scores: int = 50_000, batch_size: int = 128, model: str = "small_cnn",
                     classes: int = 10, repeats: int = 20, threads: int = 1) -> dict[str, float]:  # fmt: skip
    """Median µs per step of the collectives a distributed ``fit`` step makes — the all-gather of the
    global batch's losses and logits and the gradient all-reduce — and of an all-gather of ``num_scores``
    scores (what keeping all N scores in sync each step would cost), on ``nprocs`` local gloo processes;
    plus one rank's forward and backward of ``model`` on ``batch_size / nprocs`` samples with ``threads``
    threads, to compare against."""
    import os
    import tempfile

    import torch.multiprocessing as mp

    from .process_group import free_port

    port = free_port()
    options = dict(
        num_scores=num_scores,
        batch_size=batch_size,
        model=model,
        classes=classes,
        repeats=repeats,
        threads=threads,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.start_processes(
            _collective_worker,
            args=(nprocs, port, out, options),
            nprocs=nprocs,
            start_method="spawn",
        )
        rows = torch.load(out)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # what one rank has
    try:
        times = forward_backward_times(
            model, batch_size=batch_size // nprocs, repeats=max(repeats // 4, 3)
        )
    finally:
        torch.set_num_threads(before)
    rows[f"forward + backward of one rank's {batch_size // nprocs} samples"] = (
        times["forward_s"] + times["backward_s"]
    ) * 1e6
    return rows


def session_tables(paths: list[str]) -> str:
    """Markdown tables of the benchmarks recorded by ``benchmarks/gpu_session.py`` (its ``session.json``
    files, in the order given): machine and commit, the fast recipe against airbench94 (rounds after
    the first, which includes warm-up), harness against a minimal loop and a DataLoader pipeline,
    sampler draw+update per step, and scoring costs."""
    import json

    out: list[str] = []
    for path in paths:
        with open(path) as f:
            record = json.load(f)
        stages = record["stages"]
        out.append(
            f"**{record['machine']}**, commit `{record['commit'][:12]}`, command `{record['command']}`"
        )
        if "airbench" in stages and "rounds" in stages["airbench"]:
            rounds = stages["airbench"]["rounds"]
            ours, ref = rounds["ismod fast recipe"][1:], rounds["airbench94"][1:]
            if ours and ref:
                t_ours = statistics.median(t for _, t in ours)
                t_ref = statistics.median(t for _, t in ref)
                out += ["", "| run (CIFAR-10, JPEG q75 copy) | rounds | test accuracy (each) | median seconds | × airbench94 |",
                        "|---|---:|---|---:|---:|",
                        f"| airbench94 (TTA) | {len(ref)} | {', '.join(f'{a:.2%}' for a, _ in ref)} | {t_ref:.2f} | 1.00 |",
                        f"| ismod fast recipe, uniform (TTA) | {len(ours)} | {', '.join(f'{a:.2%}' for a, _ in ours)} | "
                        f"{t_ours:.2f} | {t_ours / t_ref:.2f} |"]  # fmt: skip
        bench = stages.get("bench", {})
        rows = [
            (k.split(", ")[1], v) for k, v in bench.items() if k.startswith("harness vs minimal")
        ]
        if rows:
            out += [
                "",
                "| model | minimal loop (images/s) | harness (images/s) | harness / minimal |",
                "|---|---:|---:|---:|",
            ]
            out += [f"| {m} | {v['minimal_images_per_s']:,.0f} | {v['harness_images_per_s']:,.0f} | {v['ratio']:.3f} |"
                    for m, v in rows]  # fmt: skip
            if "DataLoader pipeline, resnet18" in bench:
                ips = bench["DataLoader pipeline, resnet18"]["images_per_s"]
                out.append(
                    f"| resnet18, DataLoader with worker processes (per-sample crop+flip) | – | {ips:,.0f} | – |"
                )
        if "sampler step, cuda" in bench:
            out += ["", "Sampler draw of 128 with weights, then update of their 128 scores, on the GPU:", "",
                    format_table(bench["sampler step, cuda"])]  # fmt: skip
        costs = [(k.split(", ")[1], v) for k, v in bench.items() if k.startswith("scoring cost")]
        if costs:
            out += ["", "| model (1024 samples) | loss (ms) | upper bound (ms) | exact norms, vmap (ms) | exact norms, loop (ms, 64 samples) |",
                    "|---|---:|---:|---:|---:|"]  # fmt: skip
            out += [f"| {m} | {1e3 * v['loss']:.2f} | {1e3 * v['upper_bound']:.2f} ({v['upper_bound_over_loss']:.2f}×) | "
                    f"{1e3 * v['exact_vmap']:.0f} ({v['exact_vmap_over_loss']:.0f}×) | {1e3 * v['exact_loop']:.0f} |"
                    for m, v in costs]  # fmt: skip
        out.append("")
    return "\n".join(out)


def _at_least_zero(seconds: float, label: str, name: str) -> float:
    """A measured cost, or 0 with a warning where the measured difference came out ≤ 0."""
    if seconds > 0:
        return seconds
    warnings.warn(
        f"step_costs: {name} of {label!r} measured {seconds:.3g} s (≤ 0: timing noise exceeded the "
        "cost); set to 0. Re-run with more steps, or with nothing else on the machine.",
        RuntimeWarning,
        stacklevel=3,
    )
    return 0.0


def _step_cost_deltas(configs: dict[str, Any], steps: int, rounds: int, device: str | torch.device,
                      data_root: str | None) -> dict[str, list[tuple[float, float, float]]]:  # fmt: skip
    """:func:`step_costs`' measurements: per arm and round, the differences between runs of 2k and k
    steps in training seconds, selection seconds and samples scored."""
    from .experiments import run
    from .train import scored_samples

    deltas: dict[str, list[tuple[float, float, float]]] = {label: [] for label in configs}
    for _ in range(rounds):
        for label, config in configs.items():
            spent = []
            for k in (steps, 2 * steps):
                short = config.replace(budget="steps", budget_amount=k, evaluations=1, train_eval_size=0,
                                       test_subset=256, tau_probe=0, checkpoint_every_seconds=1e9)  # fmt: skip
                out = run(short, device=device, data_root=data_root, progress=False)
                scored = scored_samples(k, out.final["forward_passes"], config.batch_size)
                spent.append((out.final["train_time"], out.timing["selection"], scored))
            (t1, sel1, s1), (t2, sel2, s2) = spent
            deltas[label].append((t2 - t1, sel2 - sel1, s2 - s1))
    return deltas


def step_costs(
    configs: dict[str, Any],
    *,
    score_like: dict[str, str] | None = None,
    steps: int = 30,
    rounds: int = 2,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
) -> dict[str, Any]:
    """The cost model of a ``"modelled_seconds"`` budget, measured here for each arm of ``configs``
    (label → :class:`~ismod.experiments.Config`) from runs of k and 2k steps (``steps`` = k), so that
    start-up costs cancel. ``score_seconds``: seconds of the selection phase per scored sample,
    ``ΔT_selection / ΔS`` (S samples scored), as the arm itself scores (its chunk size and inputs);
    an arm that scores nothing in 2k steps (a τ switch before it switches) takes the figure of the arm
    ``score_like[label]`` names, which scores the same way. ``step_seconds``: training seconds per
    step with the scoring taken out, ``(ΔT − score_seconds·ΔS) / k``. Arms alternate ``rounds`` times,
    so drift hits all of them; medians over rounds. Run it with nothing else on the machine: both
    figures are differences of measured times, so on a busy machine (or with few ``steps``) noise can
    exceed the cost and a median come out ≤ 0; such a figure is set to 0 with a ``RuntimeWarning``
    naming the arm, since a cost cannot be negative and a re-run with more steps is the fix."""
    score_like = dict(score_like or {})
    unknown = sorted(set(score_like) - set(configs)) + sorted(
        set(score_like.values()) - set(configs)
    )
    if unknown:
        raise ValueError(
            f"score_like names arms that configs lacks: {unknown}; use labels of configs"
        )
    deltas = _step_cost_deltas(configs, steps, rounds, device, data_root)
    score = {label: _at_least_zero(statistics.median(sel / n for _, sel, n in d), label, "score_seconds")
             for label, d in deltas.items() if all(n > 0 for _, _, n in d)}  # fmt: skip
    for label, like in score_like.items():
        if label in score:
            raise ValueError(
                f"score_like[{label!r}]: that arm scores samples itself; drop it from score_like"
            )
        if like not in score:
            raise ValueError(f"score_like[{label!r}] = {like!r}: that arm scores nothing either")
        score[label] = score[like]
    per_round = {label: [(dt - score.get(label, 0.0) * n) / steps for dt, _, n in d]
                 for label, d in deltas.items()}  # fmt: skip
    return {
        "score_seconds": score,
        "step_seconds": {
            label: _at_least_zero(statistics.median(v), label, "step_seconds")
            for label, v in per_round.items()
        },  # fmt: skip
        "step_seconds_rounds": per_round,
        "scored_per_step": {
            label: statistics.median(n for _, _, n in d) / steps for label, d in deltas.items()
        },
        "steps": steps,
        "rounds": rounds,
        "machine": machine(),
    }
