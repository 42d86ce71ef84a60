"""What torchdata's StatefulDataLoader costs a loop with an ismod batch sampler, per step.

StatefulDataLoader with workers asks the batch sampler for its ``state_dict()`` at every prefetch. A
state that copies the sampler's O(N) scores makes that cost grow with N; ismod's costs O(1) and is read
when saved. Measured as a ratio, in one run: ms per step through ``StatefulDataLoader`` over ms per step
through a plain ``DataLoader``, same sampler, same workers, a dataset that returns its index (so the
loader, not the data, is timed). Run it with nothing else on the machine.

    python benchmarks/stateful_loader.py --sizes 1000000 10000000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import ismod
from ismod.bench import machine


class Indices(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def ms_per_step(loader_cls, n: int, steps: int, workers: int, batch_size: int) -> float:
    sampler = ismod.LossSampler(n, batch_size, seed=0)
    loader = loader_cls(Indices(n), batch_sampler=sampler, num_workers=workers)
    it = iter(loader)
    for _ in range(20):  # workers started, prefetch queue full
        idx = next(it)
        sampler.loss(idx.float() % 7 + 1)
    start = time.perf_counter()
    for _ in range(steps):
        idx = next(it)
        sampler.loss(idx.float() % 7 + 1)
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    from torchdata.stateful_dataloader import StatefulDataLoader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        plain = ms_per_step(DataLoader, n, args.steps, args.workers, args.batch_size)
        stateful = ms_per_step(StatefulDataLoader, n, args.steps, args.workers, args.batch_size)
        rows.append({"num_items": n, "plain_ms": plain, "stateful_ms": stateful,
                     "ratio": stateful / plain})  # fmt: skip
        print(f"N = {n:>11,}: DataLoader {plain:6.2f} ms/step, StatefulDataLoader {stateful:6.2f} "
              f"ms/step, ratio {stateful / plain:5.2f}", flush=True)  # fmt: skip
    if args.out is not None:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()  # fmt: skip
        args.out.write_text(json.dumps({"rows": rows, "steps": args.steps, "workers": args.workers,
                                        "batch_size": args.batch_size, "commit": commit,
                                        "ismod": ismod.__version__, "torch": torch.__version__,
                                        "machine": machine()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
