"""Process-group primitives (the bottom layer: imports only torch and the standard library).

:class:`World` is this process's place in a ``torch.distributed`` group, with the few collectives the
training loop and the sampler need, each failing with a :class:`CollectiveError` that says which rank
and what, instead of hanging. :mod:`ismod.distributed` explains how importance sampling uses them and
launches local process groups.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import numbers
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "World",
    "CollectiveError",
    "init_from_env",
    "join_local",
    "free_port",
    "all_gather_cat",
    "TIMEOUT_ENV",
    "DEFAULT_TIMEOUT_S",
]

TIMEOUT_ENV = "ISMOD_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0

T = TypeVar("T")


class CollectiveError(RuntimeError):
    """A collective failed: another rank died, diverged, or did not arrive within the timeout."""


def _all_gather_single(out: torch.Tensor, local: torch.Tensor) -> None:
    """``dist.all_gather_single`` where torch has it (its ``all_gather_into_tensor`` warns that it is
    deprecated there), else ``all_gather_into_tensor``, the same collective under its older name."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, local)


def replica_layout(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)`` as ``DistributedSampler`` takes them: each given value checked, each
    missing one read from the initialised process group (1 replica, rank 0 without one). The one
    helper of every sampler that shards by rank."""
    grouped = dist.is_available() and dist.is_initialized()
    replicas = (
        num_replicas if num_replicas is not None else (dist.get_world_size() if grouped else 1)
    )
    this_rank = rank if rank is not None else (dist.get_rank() if grouped else 0)
    if isinstance(replicas, bool) or not isinstance(replicas, numbers.Integral) or replicas < 1:
        raise ValueError(f"num_replicas must be a positive integer, got {replicas!r}")
    if isinstance(this_rank, bool) or not (
        isinstance(this_rank, numbers.Integral) and 0 <= this_rank < replicas
    ):
        raise ValueError(f"rank must lie in [0, num_replicas={replicas}), got {this_rank!r}")
    return int(replicas), int(this_rank)


@dataclass(frozen=True)
class World:
    """This process's place in the process group: ``rank`` of ``size``, and the device collectives use
    (CUDA for nccl, CPU for gloo)."""

    rank: int
    size: int
    device: torch.device

    @classmethod
    def current(cls) -> World | None:
        """The initialised process group as a :class:`World`; ``None`` when not distributed (or one rank)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        backend = dist.get_backend()
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if backend == "nccl"
            else torch.device("cpu")
        )
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as err:  # gloo and nccl raise several types; name the situation once
            raise CollectiveError(
                f"rank {self.rank} of {self.size}: {what} failed — another rank died, raised, or did not reach it "
                f"within the process group's timeout (${TIMEOUT_ENV}): {err}"
            ) from err

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' equal-shaped ``tensor`` concatenated along dim 0, in rank order, on every rank."""
        local = tensor.contiguous().to(self.device)
        out = torch.empty(
            (self.size * local.shape[0], *local.shape[1:]), dtype=local.dtype, device=self.device
        )
        self._run("all_gather", lambda: _all_gather_single(out, local))
        return out.to(tensor.device)

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` over ranks in place, with one all-reduce of a flat buffer."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        self._run("all_reduce (gradients)", lambda: dist.all_reduce(flat))
        flat /= self.size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def reduce_floats(self, values: list[float], op: str = "sum") -> list[float]:
        """``values`` combined over ranks (``"sum"``, ``"max"`` or ``"mean"``); a host read."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        self._run(f"all_reduce ({op})", lambda: dist.all_reduce(t, op=reduce_op))
        if op == "mean":
            t /= self.size
        return t.tolist()

    def check_same(self, text: str, what: str) -> None:
        """Fail on every rank, before training, unless all ranks hold the same ``text`` (e.g. the config hash)."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        digits = [int(digest[i : i + 8], 16) for i in range(0, 64, 8)]
        # one all-reduce: the max of -d and of d differ by sign only if every rank holds the same d
        reduced = self.reduce_floats([-d for d in digits] + [float(d) for d in digits], "max")
        if reduced[: len(digits)] != [-d for d in reduced[len(digits) :]]:
            raise ValueError(
                f"rank {self.rank}: the ranks disagree on the {what} (this rank has {text[:12]!r}); start every rank "
                f"with the same config"
            )

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of ``indices`` (padded with the last index so every share has the same size)."""
        per = -(-indices.numel() // self.size)
        pad = per * self.size - indices.numel()
        if pad:
            indices = torch.cat([indices, indices[-1:].expand(pad)])
        return indices[self.rank * per : (self.rank + 1) * per]

    def unshard(self, part: torch.Tensor, total: int) -> torch.Tensor:
        """Undo :meth:`shard` on per-index results: gather every rank's part and drop the padding."""
        return self.all_gather_cat(part)[:total]

    def barrier(self) -> None:
        self._run("barrier", lambda: dist.barrier())


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` from every rank concatenated along dim 0 (the tensor itself when not distributed).

    What an ordinary DDP loop calls before :meth:`ismod.sampling.ImportanceSampler.update`, so that every
    rank's sampler sees the losses of the whole global batch."""
    world = World.current()
    return tensor if world is None else world.all_gather_cat(tensor)


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"${TIMEOUT_ENV} must be positive, got {value}")
    return value


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> World | None:
    """Join the process group that ``torchrun`` (or :func:`ismod.distributed.launch`) describes in the environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); ``None`` when ``WORLD_SIZE`` is unset or 1.

    ``backend`` defaults to nccl with CUDA and gloo without. Every collective fails after ``timeout_s``
    (default ``$ISMOD_DIST_TIMEOUT`` or 300 s), so a dead rank stops the others instead of hanging them.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size < 2:
        return None
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = _dt.timedelta(seconds=timeout_s if timeout_s is not None else _timeout_s())
        dist.init_process_group(backend, timeout=timeout)
    return World.current()


def free_port() -> int:
    """A free TCP port on the loopback interface, for a local process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_local(
    rank: int, size: int, port: int, backend: str | None = None, timeout_s: float | None = None
) -> World | None:
    """Join a process group of ``size`` processes on this machine (loopback, ``port``) as ``rank`` —
    what a process started by :func:`ismod.distributed.launch` (or by a test, or a benchmark) does first."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    return init_from_env(backend, timeout_s)
