"""The training loop's extension points: an injected optimiser and per-sample loss, side-effect-free
scoring, and clear errors for the losses users get wrong."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from synthetic_data import synthetic_images

from ismod.augment import Augment
from ismod.models import build_model
from ismod.strategies import Uniform, build_strategy
from ismod.train import TrainSettings, fit

_synthetic = synthetic_images


SETTINGS = TrainSettings(batch_size=64, budget="steps", budget_amount=30, lr=0.01, schedule="constant", warmup=0.0,
                         evaluations=1)  # fmt: skip


def test_adamw_and_a_custom_loss_without_touching_the_loop():
    data, test = _synthetic(640), _synthetic(200, 1)
    made = []

    def adamw(groups):
        made.append(torch.optim.AdamW(groups, lr=0.01))
        return made[-1]

    def brier(logits, targets):  # squared error of the predicted probabilities, per sample
        one_hot = F.one_hot(targets, logits.shape[1]).float() if targets.dim() == 1 else targets
        return (logits.softmax(1) - one_hot).pow(2).sum(1)

    torch.manual_seed(0)
    out = fit(build_model("small_cnn"), data, test, Uniform(), Augment(), SETTINGS, progress=False, optimizer=adamw,
              loss=brier)  # fmt: skip
    assert len(made) == 1 and isinstance(made[0], torch.optim.AdamW)
    assert made[0].param_groups[0]["lr"] == pytest.approx(
        SETTINGS.lr
    )  # the schedule drives its groups
    first, last = out["history"][0], out["history"][-1]
    assert last["train_loss"] < 0.9 * 0.9  # Brier score of a uniform guess over 10 classes is 0.9
    assert (
        last["test_accuracy"] > 0.2 and first["test_accuracy"] < last["test_accuracy"]
    )  # chance is 0.1


def test_a_reduced_loss_is_refused_with_the_fix():
    data = _synthetic(128)
    with pytest.raises(ValueError, match="reduction='none'"):
        fit(build_model("small_cnn"), data, data, Uniform(), Augment(), SETTINGS, progress=False,
            loss=lambda logits, y: F.cross_entropy(logits, y))  # fmt: skip


class _Capture(Uniform):
    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self.captured = self.score_fn


def test_scoring_is_chunk_independent_leaves_buffers_alone_and_uses_the_training_loss():
    data = _synthetic(256)
    torch.manual_seed(0)
    model = build_model("small_cnn")
    strategy = _Capture()
    settings = TrainSettings(
        batch_size=64, budget="steps", budget_amount=3, evaluations=1, label_smoothing=0.2
    )
    fit(model, data, data, strategy, Augment(), settings, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.arange(200)
    losses, logits = strategy.captured(idx)
    alone, _ = strategy.captured(idx[5:8])
    assert all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )  # running statistics unmoved
    torch.testing.assert_close(
        alone, losses[5:8], rtol=1e-5, atol=1e-5
    )  # the chunk does not matter
    smoothed = F.cross_entropy(logits, data.labels[idx], reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(losses, smoothed)  # training and scoring losses agree


def test_strategies_scoring_passes_run_under_the_injected_loss():
    data = _synthetic(256)
    calls = []

    def counting(logits, y):
        calls.append(logits.shape[0])
        return F.cross_entropy(logits, y, reduction="none")

    settings = TrainSettings(batch_size=32, budget="steps", budget_amount=4, evaluations=1)
    fit(build_model("small_cnn"), data, data, build_strategy("selective_backprop", {"history": 16}), Augment(), settings,
        progress=False, loss=counting)  # fmt: skip
    assert len(calls) > 4  # the training steps and the candidates' scoring passes


class _Recorder(build_strategy("loss", {"warmup_epochs": 0}).__class__):
    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self.observed = []

    def observe(self, indices, losses, logits):
        self.observed.append((indices.clone(), losses.clone()))
        super().observe(indices, losses, logits)


@pytest.mark.parametrize("mixing", [{"mixup_alpha": 0.3}, {"ricap_beta": 0.3}])
def test_under_mixing_a_recorded_score_is_the_samples_own(mixing):
    """Mixup and RICAP outputs hold several samples; what a strategy records for sample i must be the
    loss of sample i alone (the clean pass), never the loss of a mixed output."""
    data = _synthetic(256)
    strategy = _Recorder()
    settings = TrainSettings(
        batch_size=32,
        budget="steps",
        budget_amount=1,
        evaluations=1,
        schedule="constant",
        warmup=0.0,
    )
    torch.manual_seed(0)
    model = build_model("small_cnn")
    fit(model, data, data, strategy, Augment(**mixing), settings, progress=False)
    ((indices, recorded),) = strategy.observed
    clean, _ = strategy.score_fn(indices)  # the model after the step, as the recording saw it
    torch.testing.assert_close(recorded, clean)
    model.eval()
    with torch.no_grad():
        x, y = Augment()(data.images[indices], data.labels[indices], train=False)
        own = F.cross_entropy(
            model(x.contiguous(memory_format=torch.channels_last)), y, reduction="none"
        )
    torch.testing.assert_close(recorded, own, rtol=1e-4, atol=1e-4)


def test_recalibrated_batch_norm_restores_statistics_and_repairs_skewed_ones():
    """Statistics skewed the way a non-uniform sampler skews them (gathered on one class only) hurt
    evaluation; re-estimated on uniform batches they match a model trained uniformly, and on exit the
    skewed statistics are back exactly."""
    from ismod.train import evaluate, recalibrated_batch_norm

    torch.manual_seed(0)
    data, augment = _synthetic(640), Augment()
    model = build_model("small_cnn")
    fit(
        model,
        data,
        data,
        Uniform(),
        augment,
        dataclasses.replace(SETTINGS, lr=0.05, budget_amount=60),
        progress=False,
    )
    plain, _ = evaluate(model, data, augment)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mask = data.labels == 9  # statistics from one class only
    model.train()
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model(augment(data.images[mask], data.labels[mask], train=False)[0])
        for m in norms:
            m.momentum = 0.1
    skewed_state = {k: v.clone() for k, v in model.state_dict().items()}
    skewed, _ = evaluate(model, data, augment)
    with recalibrated_batch_norm(model, data, augment, batches=8, batch_size=128, seed=0):
        repaired, _ = evaluate(model, data, augment)
    assert repaired > skewed + 0.05 and repaired > plain - 0.05, (plain, skewed, repaired)
    assert all(torch.equal(v, skewed_state[k]) for k, v in model.state_dict().items())
    assert all(m.momentum == 0.1 for m in norms)
