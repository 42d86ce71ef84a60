"""Side-by-side speed measurements used by ``benchmarks/`` and by the book where it discusses cost.

Timings are medians over repeated steps of wall-clock time, taken in one process, one after the other;
compare them as ratios, on the machine that produced them.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from .sampling import ImportanceSampler

__all__ = ["machine", "median_us", "sampler_step_costs", "format_table"]


def machine() -> str:
    """A one-line description of where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads{gpu}; torch {torch.__version__}"


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


def sampler_step_costs(
    sizes: list[int],
    *,
    batch_size: int = 128,
    repeats: int = 20,
    ismod_only_above: int = 10**7,
    seed: int = 0,
) -> list[dict[str, float | int | str]]:
    """Per-step cost of "draw ``batch_size`` indices with weights, then update their scores".

    Compared at each N: :class:`~ismod.sampling.ImportanceSampler` (sum tree), PyTorch's
    ``WeightedRandomSampler`` rebuilt on the updated weights, ``torch.multinomial`` on the full vector
    (refuses N > 2^24), and ``numpy.random.Generator.choice``. All use proportional probabilities so
    that the baselines need no O(N) transform beyond their own. Baselines above ``ismod_only_above`` are
    skipped. Returns one record per (N, method) with the median µs per step.
    """
    rows: list[dict[str, float | int | str]] = []
    gen = torch.Generator().manual_seed(seed)
    for n in sizes:
        scores = torch.rand(n, generator=gen, dtype=torch.float64) + 0.01
        new = torch.rand(batch_size, generator=gen, dtype=torch.float64) + 0.01

        sampler = ImportanceSampler(n, method="proportional", generator=gen)
        sampler.update(torch.arange(n), scores)

        def ismod_step() -> None:
            idx, _ = sampler.sample(batch_size)
            sampler.update(idx, new)

        candidates: dict[str, Callable[[], object]] = {"ismod ImportanceSampler": ismod_step}
        if n <= ismod_only_above:
            weights = scores.clone()
            idx0 = torch.randint(n, (batch_size,), generator=gen)

            def wrs_step() -> None:
                weights[idx0] = new
                list(WeightedRandomSampler(weights, batch_size, replacement=True, generator=gen))

            def multinomial_step() -> None:
                weights[idx0] = new
                torch.multinomial(weights, batch_size, replacement=True, generator=gen)

            rng = np.random.default_rng(seed)
            w_np = scores.numpy().copy()

            def numpy_step() -> None:
                w_np[idx0.numpy()] = new.numpy()
                rng.choice(n, batch_size, p=w_np / w_np.sum())

            candidates["WeightedRandomSampler rebuild"] = wrs_step
            if n <= 2**24:
                candidates["torch.multinomial"] = multinomial_step
            candidates["numpy Generator.choice"] = numpy_step

        reps = repeats if n < 10**7 else max(5, repeats // 4)
        for name, step in candidates.items():
            rows.append({"N": n, "method": name, "median_us": median_us(step, reps)})
        # The sampler also rebuilds its tree exactly once per N updated entries: O(N), amortised.
        rebuild_us = median_us(sampler._rebuild, 3, warmup=1)
        rows.append(
            {"N": n, "method": "ismod rebuild, amortised per step", "median_us": rebuild_us * batch_size / n}
        )
    return rows


def format_table(rows: list[dict[str, float | int | str]], baseline: str = "ismod ImportanceSampler") -> str:
    """A markdown table of :func:`sampler_step_costs` records, with each time as a multiple of ismod's."""
    base = {r["N"]: r["median_us"] for r in rows if r["method"] == baseline}
    lines = ["| N | method | median µs / step | × ismod |", "|---:|---|---:|---:|"]
    for r in rows:
        ratio = float(r["median_us"]) / float(base[r["N"]])
        lines.append(f"| {int(r['N']):,} | {r['method']} | {float(r['median_us']):,.0f} | {ratio:,.2f} |")
    return "\n".join(lines)
