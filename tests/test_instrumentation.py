"""Chapter 5's instrumentation: the gradient noise scale at evaluation points, per-interval gradient
norms, the importance steps' weights and duplicates, and the forward-pass budget."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from synthetic_data import synthetic_images

from ismod.augment import Augment
from ismod.diagnostics import gradient_noise_scale
from ismod.models import build_model
from ismod.strategies import Presample, Uniform
from ismod.train import TRAINED_SAMPLE_FORWARDS, TrainSettings, fit, noise_scale_at

CPU = torch.device("cpu")


_synthetic = synthetic_images


def _ce(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


def test_noise_scale_at_is_the_two_batch_estimate_of_its_chunks_and_moves_nothing():
    torch.manual_seed(0)
    model = build_model("small_cnn")
    data = _synthetic(64)
    x, y = Augment()(data.images, data.labels, train=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = noise_scale_at(model, x, y, _ce, chunks=4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # by hand: the four chunks' gradients in train mode (batch statistics), from the same state
    model.train()
    params = list(model.parameters())
    grads, losses = [], []
    for k in range(4):
        loss = _ce(model(x[16 * k : 16 * (k + 1)]), y[16 * k : 16 * (k + 1)]).mean()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]).double())
        losses.append(float(loss.detach()))
    model.load_state_dict(before)
    small = torch.stack([(g**2).sum() for g in grads])
    big = (torch.stack(grads).mean(0) ** 2).sum()
    expected = gradient_noise_scale(small, big, 16, 64)
    assert out["b_small"] == 16 and out["b_big"] == 64
    assert out["trace"] == pytest.approx(expected.trace, rel=1e-5)
    assert out["grad_sq"] == pytest.approx(expected.grad_sq, rel=1e-4, abs=1e-9)
    assert out["train_mode_loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="chunks"):
        noise_scale_at(model, x[:3], y[:3], _ce, chunks=4)


def test_noise_scale_at_recovers_a_known_trace_and_signal_on_random_batches():
    """Least squares, f_i = ½(a_i·w − y_i)²: per-sample gradients G_i = a_i (a_i·w − y_i) are known, so
    |G|² and tr Σ of the population are exact; over random batches drawn with replacement the
    estimates average to them (within 4 standard errors)."""
    gen = torch.Generator().manual_seed(1)
    n, d = 4096, 6
    a = torch.randn(n, d, generator=gen)
    y = a @ torch.randn(d, generator=gen) + 0.5 * torch.randn(n, generator=gen) + 0.3
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()

    def half_square(out, targets):
        return 0.5 * (out[:, 0] - targets) ** 2

    per_sample = (a * (a @ model.weight[0].detach() - y)[:, None]).double()
    true_grad_sq = float((per_sample.mean(0) ** 2).sum())
    true_trace = float(((per_sample - per_sample.mean(0)) ** 2).sum(1).mean())
    traces, signals = [], []
    for _ in range(400):
        idx = torch.randint(n, (256,), generator=gen)
        out = noise_scale_at(model, a[idx], y[idx], half_square, chunks=8)
        traces.append(out["trace"])
        signals.append(out["grad_sq"])
    for values, truth in ((traces, true_trace), (signals, true_grad_sq)):
        t = torch.tensor(values, dtype=torch.float64)
        se = float(t.std()) / math.sqrt(t.numel())
        assert abs(float(t.mean()) - truth) < 4 * se, (float(t.mean()), truth, se)


class _Recording(Uniform):
    def select(self, step):
        idx, w = super().select(step)
        self.last = idx.clone()
        return idx, w


def test_an_instrumented_run_records_the_gradient_norm_of_its_step():
    torch.manual_seed(0)
    data = _synthetic(256)
    model = build_model("small_cnn")
    augment = Augment(crop=False, flip=False)
    settings = TrainSettings(batch_size=32, budget="steps", budget_amount=1, lr=1e-12, momentum=0.0,
                             weight_decay=0.0, schedule="constant", warmup=0.0, evaluations=1, instrument=True,
                             channels_last=False)  # fmt: skip
    strategy = _Recording()
    out = fit(model, data, data, strategy, augment, settings, progress=False)
    first, last = out["history"]
    assert first["grad_norm"] is None and first["noise_scale"]["b_big"] == 8 * 32
    assert last["grad_norm_importance"] is None  # a uniform run has no weighted steps
    x, y = augment(data.images[strategy.last], data.labels[strategy.last], train=False)
    model.train()
    loss = _ce(model(x), y).mean()
    norm = torch.cat(
        [g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]
    ).norm()
    assert last["grad_norm"] == pytest.approx(float(norm), rel=1e-3)


def test_the_forward_pass_budget_charges_three_per_trained_sample_and_one_per_scored():
    data = _synthetic(512)
    b = 32
    budget = TRAINED_SAMPLE_FORWARDS * b * 10 + 1  # ten uniform steps and a little
    settings = TrainSettings(batch_size=b, budget="forward_passes", budget_amount=budget, lr=0.01,
                             schedule="constant", warmup=0.0, evaluations=1)  # fmt: skip
    torch.manual_seed(0)
    out = fit(build_model("small_cnn"), data, data, Uniform(), Augment(), settings, progress=False)
    assert out["final"]["steps"] == 11
    torch.manual_seed(0)
    forced = Presample(threshold=1.0, tau_momentum=0.0)  # importance from the second step
    big = dataclasses.replace(settings, budget_amount=TRAINED_SAMPLE_FORWARDS * b * 20)
    out = fit(build_model("small_cnn"), data, data, forced, Augment(), big, progress=False)
    steps, importance = out["final"]["steps"], out["history"][-1]["importance_steps"]
    scored = 3 * b * importance
    assert importance > 0 and steps < 20
    spent = TRAINED_SAMPLE_FORWARDS * b * steps + scored
    assert spent >= big.budget_amount > spent - TRAINED_SAMPLE_FORWARDS * b - 3 * b


class _Scorer:
    """Scores that grow with the index: a skewed g whose smallest weights bind any cap."""

    def __call__(self, indices, augmented=False):
        z = torch.zeros(indices.numel(), 3)
        z[torch.arange(indices.numel()), indices % 3] = 3 - indices.float() / 4
        out = (indices.float() / 10, z)
        return (*out, (indices.float()[:, None], indices % 3)) if augmented else out


def _forced(**options) -> Presample:
    s = Presample(threshold=1.0, tau_momentum=0.0, **options)
    s.setup(60, 4, CPU, torch.Generator().manual_seed(0), _Scorer(), torch.arange(60) % 3)
    return s


def _importance_step(s: Presample, k: int):
    idx, w = s.select(k)
    s.observe(idx, idx.float() / 10, _Scorer()(idx)[1])
    return idx, w


def test_capped_weights_mix_in_just_enough_uniform():
    s = _forced(max_weight=2.0)
    g = torch.tensor([0.7, 0.2, 0.1, 0.0], dtype=torch.float64)
    capped = s.capped(g)
    # the floor 1/(2·4) = 0.125 needs λ = 0.5: g' = 0.5 g + 0.125
    assert torch.allclose(capped, 0.5 * g + 0.125) and float(capped.sum()) == pytest.approx(1.0)
    assert torch.equal(
        s.capped(torch.full((4,), 0.25, dtype=torch.float64)),
        torch.full((4,), 0.25, dtype=torch.float64),
    )
    weights = []
    for k in range(30):
        idx, w = _importance_step(s, k)
        if w is not None:
            weights.append(w)
    all_w = torch.cat(weights)
    assert float(all_w.max()) <= 2.0 + 1e-6 and float(all_w.max()) > 1.5
    with pytest.raises(ValueError, match="max_weight"):
        Presample(max_weight=0.5)
    with pytest.raises(ValueError, match="weighted"):
        Presample(weighted="no")


def test_unweighted_steps_and_the_summary_of_an_interval():
    plain, flat = _forced(), _forced(weighted=False)
    k = 0
    while plain.importance_steps < 3:
        _importance_step(plain, k)
        k += 1
    # the summary covers the interval's importance steps; recompute it from one more step alone
    plain.summary()
    idx, w = _importance_step(plain, k)
    summary = plain.summary()
    assert summary["max_weight"] == pytest.approx(float(w.max()))
    assert summary["duplicate_fraction"] == pytest.approx(1 - len(set(idx.tolist())) / 4)
    again = plain.summary()
    assert again["max_weight"] is None and again["duplicate_fraction"] is None
    for j in range(10):
        _, w = _importance_step(flat, j)
        assert w is None or torch.equal(w, torch.ones(4))
    assert flat.summary()["max_weight"] == 1.0


def test_resume_keeps_the_interval_being_summarised():
    a = _forced()
    for k in range(8):
        _importance_step(a, k)
    saved = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.state_dict().items()
    }
    gen = a.generator.get_state()
    for k in range(8, 12):
        _importance_step(a, k)
    b = _forced()
    b.load_state_dict(saved)
    b.generator.set_state(gen)
    for k in range(8, 12):
        _importance_step(b, k)
    sa, sb = a.summary(), b.summary()
    assert (
        sa["max_weight"] == sb["max_weight"]
        and sa["duplicate_fraction"] == sb["duplicate_fraction"]
    )


class _Recorder(torch.nn.Module):
    """Wraps a model and keeps every input it sees, with the mode it saw it in."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append((self.training, x.detach().clone()))
        return self.inner(x)


class _ScoresAugmented(Uniform):
    """Scores four fresh augmentations and trains on two of them, by position."""

    def select(self, step):
        from ismod.strategies import Selection

        idx = torch.arange(4 * step, 4 * step + 4, device=self.device)
        _, _, (x, y) = self.score_fn(idx, augmented=True)
        chosen = torch.tensor([3, 1], device=self.device)
        return Selection(idx[chosen], None, inputs=(x[chosen], y[chosen]))


def test_a_strategy_trains_on_the_augmented_inputs_it_scored():
    torch.manual_seed(0)
    model = _Recorder(build_model("small_cnn"))
    settings = TrainSettings(batch_size=2, budget="steps", budget_amount=2, lr=0.01, schedule="constant",
                             warmup=0.0, evaluations=1, channels_last=False)  # fmt: skip
    data = _synthetic(64)
    out = fit(
        model, data, _synthetic(8, 1), _ScoresAugmented(), Augment(), settings, progress=False
    )
    assert out["final"]["steps"] == 2
    trained = [x for training, x in model.seen if training]
    scored = [x for training, x in model.seen if not training and x.shape[0] == 4]
    assert len(trained) == len(scored) == 2
    for x_scored, x_trained in zip(scored, trained):
        assert torch.equal(x_trained, x_scored[[3, 1]])
    clean, _ = Augment()(data.images[:4], data.labels[:4], train=False)
    assert not torch.equal(scored[0], clean)  # a training augmentation, not the clean images
    with pytest.raises(ValueError, match="score_augmented=False"):
        fit(build_model("small_cnn"), data, data, _ScoresAugmented(), Augment(mixup_alpha=0.3), settings,
            progress=False)  # fmt: skip


def test_the_presample_cap_switches_on_tau_eff_not_tau():
    from ismod.strategies.presample import TauSwitch

    plain = TauSwitch(12, 4, CPU, threshold="fixed")  # τ_th = (12 + 12)/12 = 2
    capped = TauSwitch(12, 4, CPU, threshold="fixed", presample_cap=True)
    # τ = 4: worth τ_eff = 1/(1/4 + 1/3) = 1.71 uniform batches, below τ_th = 2; τ = 7: 2.1, above
    assert plain.switches_on(4.0) and not capped.switches_on(4.0)
    assert capped.switches_on(7.0) and not capped.switches_on(0.0)

    def make(**options):
        s = Presample(threshold=1.1, tau_momentum=0.0, **options)
        s.setup(60, 4, CPU, torch.Generator().manual_seed(0), _Scorer(), torch.arange(60) % 3)
        return s

    on, off = make(), make(presample_cap=True)
    for k in range(20):
        _importance_step(on, k)
        _importance_step(off, k)
    # the batches' τ passes 1.1 now and then; τ_eff = 1/(1/τ + 1/3) < 1.1 unless τ > 1.65
    assert on.importance_steps > 0 and off.importance_steps == 0
    with pytest.raises(ValueError, match="presample_cap"):
        Presample(presample_cap=1)


def test_the_modelled_seconds_budget_charges_the_measured_step_and_score_costs():
    data = _synthetic(512)
    b, step_s, score_s = 32, 0.5, 0.01
    settings = TrainSettings(batch_size=b, budget="modelled_seconds", budget_amount=step_s * 10 + 0.1,
                             step_seconds=step_s, score_seconds=score_s, lr=0.01, schedule="constant",
                             warmup=0.0, evaluations=1)  # fmt: skip
    torch.manual_seed(0)
    out = fit(build_model("small_cnn"), data, data, Uniform(), Augment(), settings, progress=False)
    assert out["final"]["steps"] == 11 and out["final"]["modelled_seconds"] == pytest.approx(5.5)
    torch.manual_seed(0)
    forced = Presample(threshold=1.0, tau_momentum=0.0)  # importance from the second step
    big = dataclasses.replace(settings, budget_amount=step_s * 20)
    out = fit(build_model("small_cnn"), data, data, forced, Augment(), big, progress=False)
    steps, importance = out["final"]["steps"], out["history"][-1]["importance_steps"]
    # a presample of B = 3b is scored per importance step
    spent = step_s * steps + score_s * 3 * b * importance
    assert importance > 0 and steps < 20
    assert out["final"]["modelled_seconds"] == pytest.approx(spent)
    assert spent >= big.budget_amount > spent - step_s - score_s * 3 * b


def test_a_modelled_budget_sets_the_switch_threshold_from_its_costs_not_the_clock():
    data = _synthetic(512)
    b, step_s, score_s = 32, 0.5, 0.002
    settings = TrainSettings(batch_size=b, budget="modelled_seconds", budget_amount=step_s * 12,
                             step_seconds=step_s, score_seconds=score_s, lr=0.01, schedule="constant",
                             warmup=0.0, evaluations=1)  # fmt: skip
    rule = Presample()  # threshold "measured": τ_th = 1 + B t_f / (b (t_f + t_b))
    torch.manual_seed(0)
    fit(build_model("small_cnn"), data, data, rule, Augment(), settings, progress=False)
    assert rule.switch.tau_threshold == pytest.approx(1 + 3 * b * score_s / step_s)


@pytest.mark.parametrize(
    "changes, named",
    [({"step_seconds": 0.0}, "step_seconds"), ({"score_seconds": -1.0}, "score_seconds"),
     ({"score_seconds": 1.0}, "step_seconds")],
)  # fmt: skip
def test_a_modelled_budget_without_a_usable_cost_model_fails_naming_it(changes, named):
    settings = TrainSettings(batch_size=32, budget="modelled_seconds", budget_amount=5.0,
                             step_seconds=0.5, score_seconds=0.001)  # fmt: skip
    with pytest.raises(ValueError, match=named):
        dataclasses.replace(settings, **changes).validate(512)


def test_each_record_carries_the_cost_models_clock_and_the_last_one_equals_the_runs_total():
    data = _synthetic(512)
    b, step_s, score_s = 32, 0.5, 0.01
    settings = TrainSettings(batch_size=b, budget="steps", budget_amount=12, step_seconds=step_s,
                             score_seconds=score_s, lr=0.01, schedule="constant", warmup=0.0,
                             evaluations=3)  # fmt: skip
    torch.manual_seed(0)
    forced = Presample(threshold=1.0, tau_momentum=0.0)  # scores a presample from the second step
    out = fit(build_model("small_cnn"), data, data, forced, Augment(), settings, progress=False)
    records = out["history"]
    assert [r["step"] for r in records] == [0, 4, 8, 12]
    for r in records:  # each record's clock is the cost model of its own step and passes
        scored = r["forward_passes"] - 3 * b * r["step"]
        assert r["modelled_seconds"] == pytest.approx(step_s * r["step"] + score_s * scored)
    assert records[-1]["forward_passes"] == out["final"]["forward_passes"]
    assert records[-1]["modelled_seconds"] == pytest.approx(out["final"]["modelled_seconds"])
    assert records[-1]["forward_passes"] > 3 * b * 12  # presamples were scored
    no_model = dataclasses.replace(settings, step_seconds=0.0, score_seconds=0.0)
    out = fit(build_model("small_cnn"), data, data, Uniform(), Augment(), no_model, progress=False)
    assert "modelled_seconds" not in out["history"][-1] and "modelled_seconds" not in out["final"]


def test_a_strategy_epochs_budget_ends_after_the_strategys_own_pruned_epochs():
    from ismod.strategies import InfoBatch

    data = _synthetic(512)
    b = 32  # 16 steps per full epoch
    settings = TrainSettings(batch_size=b, budget="strategy_epochs", budget_amount=6, lr=0.01,
                             schedule="onecycle", warmup=0.2, evaluations=2)  # fmt: skip
    torch.manual_seed(0)
    strategy = InfoBatch(prune_ratio=0.9, delta=1.0)
    out = fit(build_model("small_cnn"), data, data, strategy, Augment(), settings, progress=False)
    # epoch 0 trains on everything (nothing seen yet); later epochs leave out well-learned samples,
    # so six of InfoBatch's epochs take fewer than six full epochs' 96 steps
    assert strategy.epochs_done() == pytest.approx(6.0) and strategy.epochs_started == 6
    assert 16 < out["final"]["steps"] < 6 * 16
    with pytest.raises(ValueError, match="strategy_epochs.*Strategy.epochs_done is None"):
        fit(build_model("small_cnn"), data, data, Uniform(), Augment(), settings, progress=False)


def test_gradient_error_at_lowers_the_error_where_the_bound_is_the_gradient_norm():
    """A linear softmax model on unit-norm inputs: no batch coupling, and a sample's gradient norm is
    its upper bound times sqrt(1 + |x|^2), so p ∝ bound is the optimal p within each presample. The
    importance batches' error must be below the uniform ones' by more than 4 standard errors."""
    from ismod.train import gradient_error_at

    g = torch.Generator().manual_seed(0)
    n, d = 240, 6
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(d, 4)
    with torch.no_grad():
        model.weight.mul_(40.0)  # confident: fitted samples have bounds near 0
    # most samples fitted (bound near 0), a fifth not (near sqrt(2)): scores far from uniform
    y = model(x).argmax(1)
    wrong = torch.rand(n, generator=g) < 0.2
    y[wrong] = torch.randint(4, (int(wrong.sum()),), generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = gradient_error_at(model, x, y, _ce, batch_size=8, draws=400, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert set(out) == {"train", "tau"}  # no batch norm: one mode
    t = out["train"]
    assert t["importance"] + 4 * (t["importance_se"] + t["uniform_se"]) < t["uniform"]
    assert t["ratio"] == pytest.approx(t["importance"] / t["uniform"])
    assert out["tau"] > 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_instrumented_run_probes_the_gradient_error_in_every_mode_and_resumes_the_same():
    torch.manual_seed(0)
    data = _synthetic(256)
    settings = TrainSettings(batch_size=16, budget="steps", budget_amount=4, lr=0.01, schedule="constant",
                             warmup=0.0, evaluations=2, instrument=True, gradient_error_draws=2,
                             channels_last=False)  # fmt: skip
    model = build_model("small_cnn")
    out = fit(
        model, data, data, Uniform(), Augment(crop=False, flip=False), settings, progress=False
    )
    probes = [r["gradient_error"] for r in out["history"]]
    assert len(probes) == 3
    for probe in probes:
        assert set(probe) == {"train", "eval", "presample", "tau"}
        for mode in ("train", "eval", "presample"):
            assert probe[mode]["uniform"] > 0 and probe[mode]["ratio"] > 0
    # the probe moved nothing: a run without it trains to the same weights
    torch.manual_seed(0)
    plain = build_model("small_cnn")
    fit(plain, data, data, Uniform(), Augment(crop=False, flip=False),
        dataclasses.replace(settings, gradient_error_draws=0), progress=False)  # fmt: skip
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values())
    )
    for bad in ({"gradient_error_draws": 1}, {"instrument": False}):
        with pytest.raises(ValueError, match="gradient_error_draws must be 0"):
            dataclasses.replace(settings, **bad).validate(256)
