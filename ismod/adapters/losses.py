"""Methods that choose within a batch, as losses: :class:`SelectiveBackpropLoss`,
:class:`HardExampleLoss`, and the functional :func:`select_by_loss`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..sampling import check_scores, draw_unchecked
from ..strategies.budgeted import LossWindow, hardest
from ..strategies.presample import (
    normalize_scores,
)
from ..train import PerSampleLoss, cross_entropy_loss, per_sample_losses
from ._common import (
    HostScoreCheck,
    Logits,
    check_batch,
    check_logits_option,
    cloned_state,
    pick_logits,
    require_keys,
    score_without_grad,
)


def select_by_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    keep: float = 0.5,
    *,
    sample: bool = False,
    loss_fn: PerSampleLoss | None = None,
    logits: Logits = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which samples of the batch ``x, y`` to train on, for any forward pass: scores the batch without
    autograd (inference mode, as the adapters score) and returns ``(positions, weights)`` in the batch.

    - ``sample=False``: the ``max(1, round(keep · n))`` samples with the highest loss, weights 1
      (hard-example selection as airbench96; biased on purpose).
    - ``sample=True``: that many drawn with replacement with :math:`p_i \\propto L_i`, weights
      :math:`1/(n p_i)`, so that :math:`\\frac1k\\sum_j w_j L_j` is an unbiased estimate of the batch's
      mean loss (Katharopoulos & Fleuret 2018, with the loss as the score).

    Then train on the subset::

        pos, w = ismod.select_by_loss(model, x, y, keep=0.5)
        loss = (w * F.cross_entropy(model(x[pos]), y[pos], reduction="none")).mean()

    ``logits`` says where the logits are in the model's output: a key, an index or a function of the
    output (default: the output is the logits); ``generator`` draws
    when ``sample`` (default: torch's global RNG, as torch's own random functions)."""
    check_batch(x, y, "select_by_loss")
    if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
        raise ValueError(
            f"keep (the fraction of the batch trained on) must lie in (0, 1], got {keep!r}"
        )
    _, losses = score_without_grad(model, x, y, loss_fn or cross_entropy_loss(), check_logits_option(logits),
                       "select_by_loss")  # fmt: skip
    check_scores(losses.detach().reshape(-1), "select_by_loss losses")
    k = max(1, round(keep * losses.shape[0]))
    if not sample:
        positions = hardest(losses, k)
        return positions, torch.ones(k, dtype=torch.float32, device=losses.device)
    return draw_unchecked(normalize_scores(losses.float()), k, True, generator)


class _ScoredSubsetLoss:
    """Score a batch without autograd, keep some of it, train on those (selective backprop, hard
    selection). The loader's batch is the candidate batch. For a model whose output is a tuple or a
    dict, ``logits=`` names where its logits are (a key, an index or a function of the output)."""

    where = "loss()"

    def __init__(self, model: nn.Module, loss_fn: PerSampleLoss | None, seed: int,
                 logits: Logits = None) -> None:  # fmt: skip
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model, self.loss_fn, self.seed = model, loss_fn or cross_entropy_loss(), int(seed)
        self.logits = check_logits_option(logits)
        self.last_logits: torch.Tensor | None = None
        self.last_targets: torch.Tensor | None = None
        self.candidates = 0
        self.trained = 0
        self._check = HostScoreCheck("loss() scores")

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The counters (and, for selective backprop, the loss window and the generator): with the
        model, the optimiser and the loader's own position, a resumed run keeps the same samples."""
        self._check.raise_if_bad(wait=True)
        return {"candidates": self.candidates, "trained": self.trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the counters (and, for selective backprop, the window and the
        generator, applied at the next ``loss()``)."""
        require_keys(state, ("candidates", "trained"), f"{type(self).__name__}.load_state_dict")
        self.candidates, self.trained = int(state["candidates"]), int(state["trained"])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score the batch ``x, y``, forward the samples kept, return their mean loss."""
        check_batch(x, y, self.where)
        scoring_model = self.model if self.score_model is self.model else None
        _, losses = score_without_grad(self.score_model, x, y, self.loss_fn,
                           self.logits if scoring_model is not None else None)  # fmt: skip
        self._check(losses)
        keep = self._positions(losses)
        x, y = x[keep], y[keep]
        logits = pick_logits(self.model(x), self.logits, self.where)
        self.last_logits, self.last_targets = logits.detach(), y
        self.candidates += losses.shape[0]
        self.trained += keep.shape[0]
        return per_sample_losses(self.loss_fn, logits, y).mean()

    @property
    def score_model(self) -> nn.Module:
        return self.model


class SelectiveBackpropLoss(_ScoredSubsetLoss):
    """Selective backprop (Jiang et al. 2019) in your own loop: each candidate batch is scored without
    autograd, each sample kept with probability :math:`\\mathrm{percentile}(L_i)^\\beta` among the last
    ``history`` losses, and only the kept ones are forwarded and backpropagated (unweighted).

    With β = 3 about a quarter of the candidates are kept, so load candidate batches of about 4b for
    batches of b; unlike Jiang et al.'s implementation, kept samples are not pooled across steps (a
    step trains on what its candidates yield, at least one sample). Knowing how many were kept is one
    host read per step. The same :class:`~ismod.strategies.budgeted.LossWindow` as the harness's
    ``SelectiveBackprop``.
    """

    def __init__(self, model: nn.Module, *, beta: float = 3.0, history: int = 1024,
                 loss_fn: PerSampleLoss | None = None, seed: int = 0, logits: Logits = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, seed, logits)
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.beta, self.history = float(beta), LossWindow.check_size(history)
        self.window: LossWindow | None = None
        self._generator: torch.Generator | None = None
        self._restored: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The counters, the loss window of the last ``history`` losses and the keep-draw generator
        (a copy: later steps do not change it)."""
        state = super().state_dict()
        if self._restored is not None:  # loaded, not yet applied
            return {**state, **{k: self._restored[k] for k in ("window", "generator")}}
        window, gen = self.window, self._generator
        return cloned_state({**state, "window": None if window is None else window.state_dict(),
                        "generator": None if gen is None else gen.get_state()})  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the window and generator take effect at the next ``loss()``,
        on its device."""
        super().load_state_dict(state)
        self._restored = cloned_state(state) if state.get("window") is not None else None
        self.window = self._generator = None

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = LossWindow(self.history, losses.device)
            self._generator = torch.Generator(device=losses.device).manual_seed(self.seed)
            if self._restored is not None:
                self.window.load_state_dict(self._restored["window"])
                self._generator.set_state(self._restored["generator"])
                self._restored = None
        kept = self.window.keep(losses, self.beta, self._generator).nonzero().squeeze(1)
        if kept.numel() == 0:  # the host read: train on the hardest candidate rather than nothing
            kept = losses.argmax().view(1)
        return kept


class HardExampleLoss(_ScoredSubsetLoss):
    """Hard-example selection as in airbench96_faster: score each candidate batch without autograd and
    train on the fraction ``keep`` with the highest loss, unweighted (biased on purpose). ``proxy``
    scores instead of the model (airbench uses a small proxy network). No host synchronisation. The
    same :func:`~ismod.strategies.budgeted.hardest` as the harness's ``HardSelection``."""

    def __init__(self, model: nn.Module, *, keep: float = 0.5, proxy: nn.Module | None = None,
                 loss_fn: PerSampleLoss | None = None, logits: Logits = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, 0, logits)
        if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
            raise ValueError(
                f"keep (the fraction of each batch trained on) must lie in (0, 1], got {keep!r}"
            )
        if proxy is not None and not isinstance(proxy, nn.Module):
            raise TypeError(f"proxy must be a torch.nn.Module or None, got {type(proxy).__name__}")
        self.keep, self.proxy = float(keep), proxy

    @property
    def score_model(self) -> nn.Module:
        return self.proxy if self.proxy is not None else self.model

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        return hardest(losses, max(1, round(self.keep * losses.shape[0])))


class ReducibleLossSelection(_ScoredSubsetLoss):
    """RHO-LOSS (Mindermann et al., ICML 2022) in your own loop: score each candidate batch without
    autograd with the model and with ``irreducible_model`` (a model you trained on a held-out split of
    your data, which the model itself never trains on), and train on the fraction ``keep`` with the
    largest reducible holdout loss :math:`L[y_i \\mid x_i; D_t] - L[y_i \\mid x_i; D_{ho}]`, unweighted.

    The authors loaded candidate batches of 320 and kept 10 % (``keep=0.1``, b = 32), and held out
    half of CIFAR-10's training set for the irreducible-loss model. No host synchronisation. The same
    selection as the harness's :class:`~ismod.strategies.ReducibleHoldoutLoss`, which trains the
    irreducible-loss model itself.

    Args:
        model: the network being trained.
        irreducible_model: the irreducible-loss model (scored in inference mode; never updated here).
        keep: the fraction of each candidate batch trained on.
        loss_fn: per-sample loss, ``(logits, targets) -> (b,)``; softmax cross-entropy by default.
        logits: where the logits are in the model's output, for models returning a tuple or a dict.
    """

    def __init__(self, model: nn.Module, irreducible_model: nn.Module, *, keep: float = 0.1,
                 loss_fn: PerSampleLoss | None = None, logits: Logits = None) -> None:  # fmt: skip
        super().__init__(model, loss_fn, 0, logits)
        if not isinstance(irreducible_model, nn.Module):
            raise TypeError(f"irreducible_model must be a torch.nn.Module, got {type(irreducible_model).__name__}")  # fmt: skip
        if not (isinstance(keep, (int, float)) and 0 < keep <= 1):
            raise ValueError(f"keep (the fraction of each batch trained on) must lie in (0, 1], got {keep!r}")  # fmt: skip
        self.irreducible_model, self.keep = irreducible_model, float(keep)
        self._irreducible: torch.Tensor | None = None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Score the batch ``x, y`` with both models, forward the samples kept, return their mean loss."""
        check_batch(x, y, self.where)
        _, self._irreducible = score_without_grad(
            self.irreducible_model, x, y, self.loss_fn, self.logits
        )
        return super().loss(x, y)

    def _positions(self, losses: torch.Tensor) -> torch.Tensor:
        assert self._irreducible is not None
        reducible = losses.float() - self._irreducible.float()
        return hardest(reducible, max(1, round(self.keep * losses.shape[0])))
