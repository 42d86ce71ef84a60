"""Importance sampling under ``torch.distributed``: one global view of the scores on every rank.

Importance sampling needs the scores of all N samples, one distribution and one τ. ``ismod`` keeps
them global by making every rank do the single-process bookkeeping with the same numbers:

- every rank draws the same global batch of ``batch_size`` indices (same generator, same seed, same
  scores), augments it identically, and trains on its own contiguous slice of ``batch_size / K``;
- gradients are averaged over ranks (one all-reduce of a flat buffer per step), so the update equals
  the single-process update on the global batch;
- per-sample losses and logits of the global batch are all-gathered, so every rank's strategy
  observes the same values; scoring passes (presamples, selective backprop's candidates) are split
  over ranks and gathered.

The strategies themselves are unchanged. With ``K`` ranks and the same seed and global batch, the
sampled indices, weights, scores and τ equal those of one process (up to floating-point summation
order in the gradient average). Rank 0 writes checkpoints and results; the state in them is global,
so a run resumes on any world size that divides the global batch.

Launch with ``torchrun --nproc_per_node=K -m ismod run NAME ...`` (gloo on CPU, nccl on GPUs), or
from Python/a notebook with :func:`launch`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist

from . import process_group
from .process_group import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    CollectiveError,
    World,
    all_gather_cat,
    free_port,
    init_from_env,
    join_local,
)

# the process-group primitives, re-exported for launchers and tests, and the launcher
__all__ = [*process_group.__all__, "launch"]


def _worker(rank: int, size: int, port: int, config_dict: dict[str, Any], out: str, run_kwargs: dict[str, Any],
            backend: str | None, timeout_s: float | None) -> None:  # fmt: skip
    from .experiments import Config, run

    join_local(rank, size, port, backend, timeout_s)
    try:
        result = run(Config.from_dict(config_dict), **run_kwargs)
        if rank == 0:
            result.save(out)
    finally:
        dist.destroy_process_group()


def launch(config: Any, nprocs: int = 2, *, backend: str | None = None, timeout_s: float | None = None,
           **run_kwargs: Any) -> Any:  # fmt: skip
    """Run :func:`ismod.experiments.run` on ``nprocs`` local processes (loopback only) and return rank
    0's :class:`~ismod.experiments.Result` — ``torchrun`` for a notebook. ``run_kwargs`` go to ``run``
    (``data_root``, ``checkpoint``, ``resume``, ``device``...). The processes are spawned, so this works
    from Jupyter."""
    import torch.multiprocessing as mp

    from .experiments import Result

    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive integer, got {nprocs!r}")
    if config.batch_size % nprocs:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) is not divisible by nprocs={nprocs}; "
                         f"choose a batch size that is a multiple of {nprocs}")  # fmt: skip
    run_kwargs.setdefault("progress", False)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        args = (nprocs, free_port(), config.to_dict(), out, run_kwargs, backend, timeout_s)
        mp.start_processes(_worker, args=args, nprocs=nprocs, start_method="spawn")
        return Result.load(out)
