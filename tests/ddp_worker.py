"""What one rank of the distributed tests runs (spawned processes import it by module name).

A small run of ``ismod.train.fit`` on synthetic images with a model without BatchNorm — so that a
sample's loss does not depend on which other samples share its batch, and one process with the
global batch can be compared with K processes number for number.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from torch import nn

N, CLASSES, GLOBAL_BATCH = 96, 10, 16


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


def synthetic(n: int, seed: int):
    from ismod.data import ImageData

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (n,), generator=g)
    # class-dependent colour shifts, so that there is something to learn and losses spread
    images = torch.randint(0, 200, (n, 3, 32, 32), generator=g, dtype=torch.int32)
    images[:, 0] += (labels * 5)[:, None, None]
    return ImageData(
        images.clamp(0, 255).to(torch.uint8), labels, [str(c) for c in range(CLASSES)], "synthetic"
    )


def train(strategy_name: str, options: dict[str, Any], steps: int, *, batch_size: int = GLOBAL_BATCH,
          checkpoint: str | None = None, resume: bool = False, tag: str = "test", die_at: int | None = None,
          seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run ``steps`` steps; return every selected global batch, the history and the strategy's state."""
    from ismod.augment import Augment
    from ismod.distributed import World
    from ismod.strategies import build_strategy
    from ismod.train import TrainSettings, fit

    strategy = build_strategy(strategy_name, options)
    selected: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    select = strategy.select
    world = World.current()

    def recording_select(step: int):
        if die_at is not None and step == die_at and world is not None and world.rank == 1:
            os._exit(3)  # a rank that dies without a word
        selection = select(step)
        idx, w = selection
        selected.append((idx.clone(), None if w is None else w.clone()))
        return selection  # whole: the scored inputs and batch-norm inputs it may carry go to the trainer

    strategy.select = recording_select  # type: ignore[method-assign]
    budget = (
        dict(budget="seconds", budget_amount=seconds)
        if seconds
        else dict(budget="steps", budget_amount=steps)
    )
    settings = TrainSettings(batch_size=batch_size, **budget, lr=0.05, schedule="constant",
                             warmup=0.0, evaluations=2, label_smoothing=0.0, checkpoint_every_steps=1000)  # fmt: skip
    out = fit(tiny_model(), synthetic(N, 1), synthetic(40, 2), strategy, Augment(num_classes=CLASSES, seed=0), settings,
              seed=0, checkpoint=checkpoint, resume=resume, tag=tag, progress=False)  # fmt: skip
    return {
        "selected": selected,
        "history": out["history"],
        "timing": out["timing"],
        "state": strategy.state_dict(),
    }


def worker(rank: int, size: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    """One rank: join the group (gloo, loopback, 20 s timeout), train, and save what it saw as
    ``rank{rank}.pt`` — or the error it raised as ``rank{rank}.err``."""
    from ismod.distributed import join_local

    torch.set_num_threads(1)
    join_local(rank, size, port, "gloo", timeout_s=20)
    kwargs = dict(kwargs)
    if "tag_by_rank" in kwargs:
        kwargs["tag"] = kwargs.pop("tag_by_rank")[rank]
    try:
        torch.save(train(**kwargs), Path(out_dir) / f"rank{rank}.pt")
    except Exception as err:  # the test reads the message
        (Path(out_dir) / f"rank{rank}.err").write_text(
            f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        )
    finally:
        torch.distributed.destroy_process_group()


def fake_losses(idx: torch.Tensor) -> torch.Tensor:
    return (idx % 7).double() + 1.0


def sampler_loop(rank: int, size: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    """An ordinary DDP-style loop: ``ImportanceSampler`` (distributed mode, taken from the process group)
    in a ``DataLoader`` over an ``IndexedDataset``, ``set_epoch`` each epoch, ``update`` each batch."""
    from torch.utils.data import DataLoader, TensorDataset

    from ismod.distributed import join_local
    from ismod.sampling import ImportanceSampler, IndexedDataset

    join_local(rank, size, port, "gloo", timeout_s=20)
    try:
        n = kwargs["n"]
        sampler = ImportanceSampler(
            n, num_samples=kwargs["per_rank"], method="proportional", seed=kwargs["seed"]
        )
        loader = DataLoader(
            IndexedDataset(TensorDataset(torch.zeros(n, 1))),
            batch_size=kwargs["batch"],
            sampler=sampler,
        )
        batches = []
        for epoch in range(kwargs["epochs"]):
            sampler.set_epoch(epoch)
            for _, idx in loader:
                batches.append(idx.clone())
                sampler.update(idx, fake_losses(idx))
        torch.save(
            {"batches": batches, "scores": sampler.scores.clone()}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        torch.distributed.destroy_process_group()


def bn_scores(strategy_name: str | None = None) -> dict[str, Any]:
    """With a BatchNorm model (the shipped small CNN) and fixed weights: the trainer's scoring pass over
    48 samples, and one selection of the strategy built on it — what a rank computes, or one process."""
    from ismod.augment import Augment
    from ismod.models import build_model
    from ismod.strategies import build_strategy
    from ismod.train import TrainSettings, _Loop

    torch.manual_seed(0)
    model = build_model("small_cnn", CLASSES)
    with torch.no_grad():  # running statistics that differ from a fresh model's, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    strategy = build_strategy(
        strategy_name or "uniform", {"threshold": 1.0} if strategy_name == "presample" else {}
    )
    settings = TrainSettings(
        batch_size=GLOBAL_BATCH, budget="steps", budget_amount=1, evaluations=1
    )
    loop = _Loop(model, synthetic(N, 1), synthetic(40, 2), strategy, Augment(num_classes=CLASSES), settings, seed=0,
                 checkpoint=None, tag="bn", probe=None, train_eval=None, optimizer=None, loss=None)  # fmt: skip
    losses, logits = loop.score(torch.arange(48))
    out: dict[str, Any] = {"losses": losses, "logits": logits}
    if strategy_name is not None:
        strategy.tau = torch.tensor(
            5.0, dtype=torch.float64
        )  # above τ_th = 1: the next step samples by score
        out["selected"] = strategy.select(0)
    return out


def bn_worker(rank: int, size: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    from ismod.distributed import join_local

    torch.set_num_threads(1)
    join_local(rank, size, port, "gloo", timeout_s=20)
    try:
        torch.save(bn_scores(**kwargs), Path(out_dir) / f"rank{rank}.pt")
    except Exception as err:
        (Path(out_dir) / f"rank{rank}.err").write_text(
            f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        )
    finally:
        torch.distributed.destroy_process_group()


def adapter_loop(rank: int, size: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    """``ismod.LossSampler`` as a DDP user would run it: the process group's layout, ``set_epoch`` each
    epoch, ``loss()`` on each batch's per-sample losses (here a fixed function of the index)."""
    from torch.utils.data import DataLoader, TensorDataset

    from ismod import LossSampler
    from ismod.distributed import join_local

    join_local(rank, size, port, "gloo", timeout_s=20)
    try:
        n = kwargs["n"]
        sampler = LossSampler(n, kwargs["batch"], seed=kwargs["seed"])
        loader = DataLoader(TensorDataset(torch.arange(n)), batch_sampler=sampler)
        batches, values = [], []
        for epoch in range(kwargs["epochs"]):
            sampler.set_epoch(epoch)
            for (idx,) in loader:
                batches.append(idx.clone())
                values.append(float(sampler.loss(fake_losses(idx).float())))
        torch.save(
            {"batches": batches, "values": values, "scores": sampler.strategy.scores.clone()},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        torch.distributed.destroy_process_group()


def tau_ddp_loop(rank: int, size: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    """``ismod.TauSwitchSampler`` as a DDP user would run it, with the DistributedDataParallel model
    (after checking that the plain model is refused): the replicas must end with equal weights."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    from ismod import TauSwitchSampler
    from ismod.distributed import join_local

    join_local(rank, size, port, "gloo", timeout_s=20)
    try:
        model = tiny_model()
        try:
            TauSwitchSampler(model, N, 8, batch_norm="train")
            refusal = ""
        except ValueError as err:
            refusal = str(err)
        ddp = DistributedDataParallel(model)
        sampler = TauSwitchSampler(
            ddp, N, 8, threshold=1.0, seed=kwargs["seed"], batch_norm="train"
        )
        data = synthetic(N, 1)
        images = data.images.float() / 255.0
        loader = DataLoader(TensorDataset(images, data.labels), batch_sampler=sampler)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)  # fast enough for τ to pass 1
        for epoch in range(kwargs["epochs"]):
            sampler.set_epoch(epoch)
            for x, y in loader:
                loss = sampler.loss(x, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        torch.save(
            {"refusal": refusal, "importance_steps": sampler.importance_steps,
             "params": [p.detach().clone() for p in model.parameters()]},
            Path(out_dir) / f"rank{rank}.pt",
        )  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()
