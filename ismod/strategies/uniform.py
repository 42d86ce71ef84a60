"""Uniform sampling: shuffled epochs, every sample once per epoch, all weights 1."""

from __future__ import annotations

from typing import Any

import torch

from .base import Strategy


class Uniform(Strategy):
    """Plain SGD's choice: a fresh permutation each epoch, cut into consecutive batches.

    An epoch has ``N // batch_size`` steps (the last partial batch is dropped, as ``drop_last=True``).
    Step ``t``'s batch is a function of ``t`` and the epoch's permutation (random access, which its
    tests and resume rely on), so it cuts the permutation by position instead of reading the
    presample strategies' ``EpochStream`` (:mod:`ismod.sampling`).
    """

    name = "uniform"
    uses_observations = False  # its batches do not depend on what it observes

    def setup(self, num_items, batch_size, device, generator, score_fn=None, labels=None) -> None:
        super().setup(num_items, batch_size, device, generator, score_fn, labels)
        self.steps_per_epoch = num_items // batch_size
        self.order = torch.empty(0, dtype=torch.long, device=device)
        self.epoch = -1

    def select(self, step: int) -> tuple[torch.Tensor, None]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            self.order = torch.randperm(
                self.num_items, device=self.device, generator=self.generator
            )
            self.epoch = epoch
        start = position * self.batch_size
        return self.order[start : start + self.batch_size], None

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order = state["order"].to(self.device)
        self.epoch = int(state["epoch"])
