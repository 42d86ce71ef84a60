"""Per training step, the selection cost of the score-driven strategies in a user's loop: select a
batch of 128 and observe its losses, at N = 50,000 (CIFAR's training set), on this machine's CPU.

Side by side in one run: online batch selection re-ranking every step (``rerank_every=1``, a sort of
all N: the behaviour before re-ranking became periodic, which the chapters' saved runs used) and once
per epoch (the default); prioritised replay with new samples at priority 1 (before) and at the
maximum (the default, refreshed once per epoch); loss sampling; uniform. Medians of ``--rounds`` timed
blocks of ``--steps`` steps each; ratios against uniform.

    .venv/bin/python benchmarks/strategy_step.py --markdown benchmarks/results/strategy-step-cpu-DATE.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from ismod.adapters import StrategyBatchSampler

ARMS = {
    "uniform": ("uniform", {}),
    "loss sampling": ("loss", {"method": "proportional", "smoothing": 0.2, "replacement": True}),
    "prioritised replay, new samples at priority 1 (as before)": ("per", {"new_priority": "one"}),
    "prioritised replay, new samples at the maximum (the default)": ("per", {}),
    "online batch selection, re-rank every step": ("obs", {"rerank_every": 1}),
    "online batch selection, re-rank once per epoch": ("obs", {}),
}


def median_step_us(name: str, options: dict, n: int, b: int, steps: int, rounds: int) -> float:
    sampler = StrategyBatchSampler(name, n, b, num_epochs=10, seed=0, **options)
    losses = torch.rand(b)
    batches = iter(sampler)

    def step() -> None:  # one batch and its losses, into the next epoch when this one ends
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = iter(sampler)
            next(batches)
        sampler.loss(losses)

    for _ in range(2 * (n // b)):  # past any warm-up epoch, so every arm is in its selecting phase
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = {label: median_step_us(name, opts, args.num_items, args.batch_size, args.steps, args.rounds)
            for label, (name, opts) in ARMS.items()}  # fmt: skip
    base = rows["uniform"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()  # fmt: skip
    lines = [
        f"Selection cost per step (select {args.batch_size} + observe their losses), N = {args.num_items:,}; "
        f"median of {args.rounds} blocks of {args.steps} steps; {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, commit {commit}.",
        "",
        "| strategy | µs per step | × uniform |",
        "|---|---:|---:|",
        *(f"| {label} | {us:,.0f} | {us / base:.1f} |" for label, us in rows.items()),
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n\nCommand: `" + " ".join(["benchmarks/strategy_step.py", *[f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "markdown"]]) + "`\n")  # fmt: skip


if __name__ == "__main__":
    main()
