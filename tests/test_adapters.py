"""ismod.adapters: each method in an ordinary DataLoader loop.

Statistical checks use fixed seeds and tolerances of 4 standard errors computed from the draws."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ismod
from ismod.adapters import StrategyBatchSampler
from ismod.strategies.pruning import prune_epoch


def index_data(n: int) -> TensorDataset:
    """Item i is (i as a float feature, i): a loss that is a function of the index shows which sample
    each loss belongs to."""
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def fixed_loss(x: torch.Tensor) -> torch.Tensor:
    """A per-sample 'loss' known in advance: 1 + (i mod 7)."""
    return 1.0 + (x[:, 0].long() % 7).float()


def small_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def blobs(n: int = 600, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    x = torch.randn(n, 10, generator=g) + 2.0 * F.one_hot(y, 10).float()
    return TensorDataset(x, y)


# --- top level ---------------------------------------------------------------------------------------


def test_every_method_imports_from_the_top():
    from ismod import (  # noqa: F401
        HardExampleLoss,
        ImportanceSampler,
        ReducibleLossSelection,
        InfoBatchSampler,
        LossSampler,
        SelectiveBackpropLoss,
        StrategyBatchSampler,
        TauSwitchSampler,
    )

    assert set(ismod.__all__) >= {"LossSampler", "TauSwitchSampler", "InfoBatchSampler"}


# --- loss sampling -----------------------------------------------------------------------------------


def test_loss_sampler_pairs_each_loss_with_its_sample_through_prefetching_workers():
    n = 96
    sampler = ismod.LossSampler(n, 8, seed=1)
    loader = DataLoader(index_data(n), batch_sampler=sampler, num_workers=2, prefetch_factor=3)
    for _ in range(3):
        for x, _ in loader:
            sampler.loss(fixed_loss(x))
    scores = sampler.strategy.scores
    seen = sampler.strategy.visits > 0
    assert seen.sum() > n // 2
    # every recorded score is that sample's own loss: a misaligned queue would mix them up
    torch.testing.assert_close(scores[seen], fixed_loss(torch.arange(n).float()[:, None])[seen])


def test_loss_sampler_weighted_loss_is_unbiased():
    """After the warm-up epoch, p_i ∝ 1 + (i mod 7) mixed with 20% uniform; the weighted batch mean
    (1/b) Σ L/(N p) estimates the dataset's mean loss, 4.0 here, without bias."""
    n, b = 70, 10
    sampler = ismod.LossSampler(n, b, seed=3)
    loader = DataLoader(index_data(n), batch_sampler=sampler)
    values, drawn = [], []
    for epoch in range(60):
        for x, _ in loader:
            value = float(sampler.loss(fixed_loss(x)))
            if epoch >= 1:  # past the warm-up epoch
                values.append(value)
                drawn.append(x[:, 0].long())
    v = torch.tensor(values, dtype=torch.float64)
    se = float(v.std()) / math.sqrt(len(v))
    assert abs(float(v.mean()) - 4.0) < 4 * se
    # and the draws do follow the scores: high-loss samples come up more often than low-loss ones
    counts = torch.bincount(torch.cat(drawn), minlength=n).double()
    assert counts[6::7].mean() > 2 * counts[0::7].mean()


def test_loss_sampler_weights_are_bounded_by_the_smoothing():
    n = 50
    sampler = ismod.LossSampler(n, 10, smoothing=0.25, seed=0)
    loader = DataLoader(index_data(n), batch_sampler=sampler)
    for _ in range(3):
        for x, _ in loader:
            sampler.loss(fixed_loss(x) ** 6)  # very uneven scores
    probs = sampler.strategy.probabilities()
    assert float((1.0 / (n * probs)).max()) <= 1 / 0.25 + 1e-9


@pytest.mark.parametrize(
    "losses, match",
    [
        (torch.tensor(1.0), "reduction='none'"),
        (torch.ones(7), "expected 8 per-sample losses"),
        (torch.ones(8, 2), "expected 8 per-sample losses"),
        (torch.ones(8, dtype=torch.long), "floating-point"),
    ],
)
def test_loss_sampler_names_the_fix_for_wrong_losses(losses, match):
    sampler = ismod.LossSampler(40, 8)
    next(iter(sampler))
    with pytest.raises((ValueError, TypeError), match=match):
        sampler.loss(losses)


def test_loss_without_a_yielded_batch_says_how_to_build_the_loader():
    sampler = ismod.LossSampler(40, 8)
    with pytest.raises(RuntimeError, match="batch_sampler="):
        sampler.loss(torch.ones(8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_items": 0, "batch_size": 8}, "num_items must be a positive integer"),
        ({"num_items": 10, "batch_size": 20}, "exceeds num_items"),
        ({"num_items": 10, "batch_size": 2, "smoothing": 1.5}, "smoothing must lie in"),
    ],
)
def test_loss_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ismod.LossSampler(**kwargs)


@pytest.mark.parametrize(
    "name, adapter",
    [("presample", "TauSwitchSampler"), ("selective_backprop", "SelectiveBackpropLoss"),
     ("hard_selection", "HardExampleLoss"), ("rho_loss", "ReducibleLossSelection")],
)  # fmt: skip
def test_strategies_that_need_the_model_point_to_their_in_loop_objects(name, adapter):
    with pytest.raises(
        ValueError, match=f"scores samples with extra forward passes.*ismod.{adapter}"
    ):
        StrategyBatchSampler(name, 100, 10)


def test_prediction_subset_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="needs the logits of what was trained on.*train.fit"):
        StrategyBatchSampler("prediction_subset", 100, 10)


@pytest.mark.parametrize("name", ["uniform", "obs", "per", "loss"])
def test_any_score_driven_strategy_runs_in_a_loader(name):
    n = 64
    sampler = StrategyBatchSampler(name, n, 8, num_epochs=2)
    loader = DataLoader(index_data(n), batch_sampler=sampler)
    steps = 0
    for _ in range(2):
        for x, _ in loader:
            loss = sampler.loss(fixed_loss(x))
            assert loss.dim() == 0 and torch.isfinite(loss)
            steps += 1
    assert steps == 2 * (n // 8)


def test_uniform_through_the_adapter_is_a_permutation_per_epoch():
    n = 40
    sampler = StrategyBatchSampler("uniform", n, 8)
    seen = [i for batch in sampler for i in batch]
    assert sorted(seen) == list(range(n))


def test_sampler_state_round_trips():
    n = 60
    sampler = ismod.LossSampler(n, 6, seed=2)
    loader = DataLoader(index_data(n), batch_sampler=sampler)
    for _ in range(2):
        for x, _ in loader:
            sampler.loss(fixed_loss(x))
    state = sampler.state_dict()
    other = ismod.LossSampler(n, 6, seed=2)
    other.load_state_dict(state)
    torch.testing.assert_close(other.strategy.scores, sampler.strategy.scores)
    assert other.epoch == sampler.epoch


# --- InfoBatch ---------------------------------------------------------------------------------------


def test_prune_epoch_keeps_the_expected_total_loss():
    """Σ_kept w_i L_i has expectation Σ_i L_i: the rescaling 1/(1-r) undoes the pruning on average."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(200, generator=g) * 3
    seen = torch.ones(200, dtype=torch.bool)
    seen[:10] = False  # never trained on: never pruned
    totals, pruned = [], []
    for _ in range(400):
        idx, w = prune_epoch(scores, seen, 0.5, g)
        totals.append(float((w * scores[idx]).sum()))
        pruned.append(200 - idx.numel())
        assert set(range(10)) <= set(idx.tolist())
    t = torch.tensor(totals, dtype=torch.float64)
    assert abs(float(t.mean()) - float(scores.sum())) < 4 * float(t.std()) / math.sqrt(len(t))
    well_learned = int((seen & (scores < scores[seen].mean())).sum())
    p = torch.tensor(pruned, dtype=torch.float64)
    assert abs(float(p.mean()) - 0.5 * well_learned) < 4 * float(p.std()) / math.sqrt(len(p))


def test_infobatch_sampler_prunes_then_anneals_to_the_full_data():
    n, b, epochs = 200, 10, 8
    sampler = ismod.InfoBatchSampler(n, b, num_epochs=epochs, prune_ratio=0.5, delta=0.75, seed=0)
    loader = DataLoader(index_data(n), batch_sampler=sampler)
    steps, weights_seen = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        count = 0
        for x, _ in loader:
            weights_seen.append(sampler._pairing.batches[0][1])
            sampler.loss(fixed_loss(x))
            count += 1
        steps.append(count)
    assert steps[0] == n // b  # nothing is known yet: the first epoch is full
    assert all(s < n // b for s in steps[1:6])  # pruned epochs are shorter
    assert steps[6] == steps[7] == n // b  # from delta = 0.75 of 8 epochs on: everything
    assert any(w is not None and float(w.max()) == pytest.approx(2.0) for w in weights_seen)
    assert weights_seen[-1] is None


# --- the τ switch ------------------------------------------------------------------------------------


def test_presample_loss_is_an_unbiased_estimate_of_the_presample_mean():
    """loss() on a presample of B returns (1/b) Σ_j L_{c_j}/(B g_{c_j}) for c drawn with probabilities g:
    its expectation over the draws is the presample's mean loss."""
    model = small_classifier()
    x, y = blobs(48).tensors
    sampler = ismod.TauSwitchSampler(model, 600, 16, presample=3, batch_norm="train")
    with torch.no_grad():
        expected = float(F.cross_entropy(model.eval()(x), y))
        model.eval()  # BN in inference mode in the training forward too, so every call is the same function
        values = torch.tensor([float(sampler.loss(x, y)) for _ in range(3000)], dtype=torch.float64)
    se = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - expected) < 4 * se
    assert sampler.importance_steps == 3000


def test_tau_follows_the_recurrence_on_uniform_batches():
    model = small_classifier()
    x, y = blobs(16).tensors
    sampler = ismod.TauSwitchSampler(model, 600, 16, tau_momentum=0.5, batch_norm="train")
    sampler.loss(x, y)
    g = ismod.upper_bound(sampler.last_logits, y).double()
    g = g / g.sum()
    assert sampler.tau == pytest.approx(0.5 * 16 * float((g * g).sum()), rel=1e-6)


def test_tau_switch_sampler_yields_presamples_once_tau_exceeds_the_threshold():
    model = small_classifier()
    data = blobs(600)
    sampler = ismod.TauSwitchSampler(
        model, 600, 20, presample=3, threshold=1.02, batch_norm="train"
    )
    loader = DataLoader(data, batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sizes = []
    for _ in range(3):
        for x, y in loader:
            sizes.append(x.shape[0])
            loss = sampler.loss(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert sizes[0] == 20 and 60 in sizes  # uniform at first, presamples of B = 60 later
    assert sampler.importance_steps == sizes.count(60)
    assert len(sizes) == 3 * (600 // 20)  # an epoch keeps N/b steps


def test_tau_threshold_is_measured_in_the_users_loop_from_the_median_of_five_probes():
    model = small_classifier()
    x, y = blobs(16).tensors
    sampler = ismod.TauSwitchSampler(
        model, 600, 16, presample=3, threshold="measured", batch_norm="train"
    )
    assert sampler.tau_threshold == pytest.approx(2.0)  # (B + 3b)/(3b) before any timing
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(40):
        sampler.loss(x, y)  # no backward: a probe must not leave gradients behind either
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert len(sampler.probes) == 5
    t_forward = sorted(f for f, _ in sampler.probes)[2]
    t_backward = sorted(b for _, b in sampler.probes)[2]
    assert sampler.switch.measured_times == (t_forward, t_backward)
    assert sampler.tau_threshold == pytest.approx(1 + 3 * t_forward / (t_forward + t_backward))


def test_default_threshold_is_the_authors_fixed_rule():
    sampler = ismod.TauSwitchSampler(small_classifier(), 600, 16, presample=4, batch_norm="train")
    x, y = blobs(16).tensors
    for _ in range(20):
        sampler.loss(x, y)
    assert sampler.tau_threshold == pytest.approx((64 + 48) / 48) and not sampler.probes


def test_scoring_leaves_batch_norm_statistics_alone():
    model = small_classifier()
    x, y = blobs(48).tensors
    sampler = ismod.TauSwitchSampler(model, 600, 16, batch_norm="train")
    before = model[1].running_mean.clone()
    ismod.adapters._common.score_without_grad(model, x, y, ismod.cross_entropy_loss())
    torch.testing.assert_close(model[1].running_mean, before)
    assert model.training
    sampler.loss(x, y)  # presample: scored (no change), then 16 trained on (one change)
    assert not torch.equal(model[1].running_mean, before)


def _tau_switch_run(model, **options) -> ismod.TauSwitchSampler:
    """One epoch of blobs with a low threshold, so that a sampler allowed to switch does."""
    sampler = ismod.TauSwitchSampler(model, 600, 20, threshold=1.02, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for x, y in DataLoader(blobs(600), batch_sampler=sampler):
        loss = sampler.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sampler


@pytest.mark.parametrize("batch_norm", ["train", "weighted"])
def test_tau_switch_sampler_weights_batch_norm_statistics_on_importance_steps_only(
    batch_norm, monkeypatch
):
    """batch_norm="weighted": each importance step's forward pass runs inside weighted_statistics with
    that step's weights; uniform steps, and every step under "train", are plain."""
    import ismod.adapters.presample as presample
    from ismod.batchnorm import weighted_statistics

    entered = []

    def spy(model, weights):
        entered.append(weights.detach().clone())
        return weighted_statistics(model, weights)

    monkeypatch.setattr(presample, "weighted_statistics", spy)
    sampler = _tau_switch_run(small_classifier(), batch_norm=batch_norm)
    assert sampler.importance_steps > 0
    if batch_norm == "train":
        assert entered == []
    else:
        assert len(entered) == sampler.importance_steps
        assert all(w.shape == (20,) and (w > 0).all() for w in entered)
        assert any(w.std() > 0 for w in entered)  # the step's own importance weights, not ones


def test_tau_switch_by_default_takes_no_importance_step_on_a_batch_normalised_model():
    """batch_norm="auto" on a model with batch norm: a warning naming the fix, uniform batches only
    (τ still tracked, above τ_th), and the same batches and weights as the uniform steps of "train"
    before its first switch."""
    with pytest.warns(UserWarning, match="replace_batch_norm.*batch_norm='train'"):
        auto = _tau_switch_run(small_classifier())
    assert auto.importance_steps == 0 and not auto.importance_allowed
    assert auto.tau > auto.tau_threshold  # it would have switched: "train" does, below
    switching = _tau_switch_run(small_classifier(), batch_norm="train")
    assert switching.importance_steps > 0
    with pytest.warns(UserWarning):
        own_batches = ismod.TauSwitchSampler(small_classifier(), 600, 20)  # never iterated
    with pytest.raises(ValueError, match="batch_norm='train' to allow presamples"):
        own_batches.loss(*blobs(60).tensors)  # a presample of B = 3b, which "auto" never yields


def test_tau_switch_auto_switches_on_a_model_without_batch_norm(recwarn):
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    torch.manual_seed(0)
    sampler = _tau_switch_run(model)
    assert sampler.importance_allowed and sampler.importance_steps > 0
    assert not [w for w in recwarn if "batch-norm" in str(w.message)]


def test_tau_switch_refuses_a_state_from_a_sampler_that_switches_differently():
    with pytest.warns(UserWarning):
        auto = ismod.TauSwitchSampler(small_classifier(), 600, 20)
    train = ismod.TauSwitchSampler(small_classifier(), 600, 20, batch_norm="train")
    with pytest.raises(ValueError, match="importance_allowed"):
        auto.load_state_dict(train.state_dict())


def test_a_batch_sampler_refuses_a_strategy_that_asks_for_other_batch_norm_statistics():
    from ismod.strategies.base import Selection
    from ismod.strategies.uniform import Uniform

    class WeightedNorm(Uniform):
        def select(self, step):
            indices, _ = super().select(step)
            return Selection(indices, torch.ones(indices.numel()), weighted_norm=True)

    sampler = StrategyBatchSampler(WeightedNorm(), 40, 8)
    with pytest.raises(ValueError, match="batch sampler cannot do .* batch_norm='train'"):
        next(iter(sampler))


def test_soft_targets_are_accepted():
    model = small_classifier()
    x, y = blobs(48).tensors
    soft = 0.9 * F.one_hot(y, 3).float() + 0.1 / 3
    loss = ismod.TauSwitchSampler(model, 600, 16, batch_norm="train").loss(x, soft)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"presample": 0.5}, "presample"),
        ({"score": "norm"}, "score must be"),
        ({"threshold": "auto"}, "threshold must be one of"),
        ({"threshold": 0.5}, "numeric threshold"),
        ({"tau_momentum": 1.0}, "tau_momentum"),
        ({"batch_norm": "presample"}, "batch_norm must be one of .* need ismod.train.fit"),
    ],
)
def test_tau_switch_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ismod.TauSwitchSampler(small_classifier(), 600, 16, **{"batch_norm": "train", **kwargs})


def test_a_reduced_loss_fn_is_named():
    model = small_classifier()
    x, y = blobs(16).tensors
    sampler = ismod.TauSwitchSampler(
        model, 600, 16, loss_fn=lambda z, t: F.cross_entropy(z, t), batch_norm="train"
    )
    with pytest.raises(ValueError, match="reduction='none'"):
        sampler.loss(x, y)


def test_mismatched_batches_are_named():
    model = small_classifier()
    x, y = blobs(16).tensors
    with pytest.raises(ValueError, match="inputs hold 16 samples but targets 15"):
        ismod.TauSwitchSampler(model, 600, 16, batch_norm="train").loss(x, y[:15])


# --- selective backprop and hard selection ----------------------------------------------------------


def test_selective_backprop_keeps_about_one_in_beta_plus_one():
    """With continuous losses percentile^β of a uniform percentile has mean 1/(β + 1)."""
    model = small_classifier()
    x, y = blobs(600).tensors
    method = ismod.SelectiveBackpropLoss(model, beta=3.0, history=600, seed=0)
    kept = []
    for start in range(0, 600 * 20, 100):
        part = torch.arange(start, start + 100) % 600
        before = method.trained
        method.loss(x[part], y[part])
        kept.append(method.trained - before)
    k = torch.tensor(kept[6:], dtype=torch.float64) / 100  # once the window is full
    assert abs(float(k.mean()) - 0.25) < 4 * float(k.std()) / math.sqrt(len(k))


def test_selective_backprop_trains_on_exactly_the_kept_candidates():
    """The same window and generator, run beside the method, must keep the same candidates, and the
    loss must be their mean loss."""
    from ismod.strategies.budgeted import LossWindow

    model = small_classifier()
    x, y = blobs(64).tensors
    method = ismod.SelectiveBackpropLoss(model, beta=1.0, history=64, seed=5)
    window, gen = LossWindow(64, torch.device("cpu")), torch.Generator().manual_seed(5)
    for _ in range(3):
        _, losses = ismod.adapters._common.score_without_grad(
            model, x, y, ismod.cross_entropy_loss()
        )
        kept = window.keep(losses, 1.0, gen).nonzero().squeeze(1)
        loss = method.loss(x, y)
        assert 0 < kept.numel() < 64
        assert torch.equal(method.last_targets, y[kept])
        recomputed = ismod.cross_entropy_loss()(method.last_logits, method.last_targets).mean()
        torch.testing.assert_close(loss.detach(), recomputed)


def test_hard_example_loss_trains_on_the_highest_losses():
    model = small_classifier()
    x, y = blobs(64).tensors
    method = ismod.HardExampleLoss(model, keep=0.25)
    _, losses = ismod.adapters._common.score_without_grad(model, x, y, ismod.cross_entropy_loss())
    method.loss(x, y)
    top = torch.topk(losses, 16).indices
    assert sorted(method.last_targets.tolist()) == sorted(y[top].tolist())
    assert method.trained == 16 and method.candidates == 64


def test_hard_example_loss_scores_with_the_proxy():
    model, proxy = small_classifier(0), small_classifier(1)
    x, y = blobs(64).tensors
    method = ismod.HardExampleLoss(model, keep=0.5, proxy=proxy)
    _, losses = ismod.adapters._common.score_without_grad(proxy, x, y, ismod.cross_entropy_loss())
    method.loss(x, y)
    assert sorted(method.last_targets.tolist()) == sorted(
        y[torch.topk(losses, 32).indices].tolist()
    )


def test_reducible_loss_selection_trains_on_the_largest_reducible_losses():
    """RHO-LOSS in one's own loop against a brute-force reference: the kept samples are those of
    largest model loss minus irreducible-model loss."""
    model, irreducible = small_classifier(0), small_classifier(1)
    x, y = blobs(64).tensors
    method = ismod.ReducibleLossSelection(model, irreducible, keep=0.25)
    _, current = ismod.adapters._common.score_without_grad(model, x, y, ismod.cross_entropy_loss())
    _, floor = ismod.adapters._common.score_without_grad(
        irreducible, x, y, ismod.cross_entropy_loss()
    )
    method.loss(x, y)
    brute = sorted(range(64), key=lambda i: float(current[i] - floor[i]), reverse=True)[:16]
    assert sorted(method.last_targets.tolist()) == sorted(y[brute].tolist())
    assert method.trained == 16 and method.candidates == 64
    assert set(brute) != set(torch.topk(current, 16).indices.tolist())  # not the plain hardest


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: ismod.SelectiveBackpropLoss(m, beta=0), "beta must be > 0"),
        (lambda m: ismod.SelectiveBackpropLoss(m, history=0), "history must be a positive"),
        (lambda m: ismod.HardExampleLoss(m, keep=0), "keep"),
        (lambda m: ismod.HardExampleLoss("model"), "torch.nn.Module"),
        (lambda m: ismod.ReducibleLossSelection(m, m, keep=1.5), "keep"),
        (
            lambda m: ismod.ReducibleLossSelection(m, "model"),
            "irreducible_model must be a torch.nn.Module",
        ),
    ],
)
def test_in_loop_methods_bad_arguments(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(small_classifier())


# --- distributed -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_sampler_in_a_ddp_loop_matches_one_process(tmp_path):
    import ddp_worker
    from test_distributed import spawn

    n, batch, epochs, seed = 48, 4, 3, 5
    ranks = spawn(
        tmp_path, target=ddp_worker.adapter_loop, n=n, batch=batch, epochs=epochs, seed=seed
    )
    assert set(ranks) == {0, 1}, ranks
    torch.testing.assert_close(ranks[0]["scores"], ranks[1]["scores"], rtol=0, atol=0)
    # one process with the global batch of 2 × 4, fed the same losses, draws the same batches
    ref = ismod.LossSampler(n, 2 * batch, seed=seed)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_sampler=ref)
    k = 0
    for epoch in range(epochs):
        ref.set_epoch(epoch)
        for (idx,) in loader:
            assert torch.equal(ranks[0]["batches"][k], idx[0::2])
            assert torch.equal(ranks[1]["batches"][k], idx[1::2])
            ref.loss(ddp_worker.fake_losses(idx).float())
            k += 1
    torch.testing.assert_close(ranks[0]["scores"], ref.strategy.scores, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:epoch .* ended with no loss")  # it only reads the batches
def test_tau_switch_sampler_shards_each_epoch_between_replicas():
    model = small_classifier()
    shards = [
        ismod.TauSwitchSampler(model, 100, 10, num_replicas=2, rank=r, seed=4, batch_norm="train")
        for r in range(2)
    ]
    epochs = [[i for batch in s for i in batch] for s in shards]
    assert len(epochs[0]) == len(epochs[1]) == 50
    assert set(epochs[0]).isdisjoint(epochs[1]) and set(epochs[0]) | set(epochs[1]) == set(
        range(100)
    )
    for s in shards:
        s.set_epoch(1)
    assert [i for batch in shards[0] for i in batch] != epochs[0]  # a new permutation per epoch


@pytest.mark.parametrize("bad", [torch.tensor([3, 40]), torch.tensor([-1, 2])])
def test_importance_sampler_names_indices_out_of_range(bad):
    sampler = ismod.ImportanceSampler(40)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, num_items=40\)"):
        sampler.update(bad, torch.ones(2))


def test_importance_sampler_names_a_reduced_loss():
    sampler = ismod.ImportanceSampler(40)
    with pytest.raises(ValueError, match="reduction='none'"):
        sampler.update(torch.arange(8), torch.tensor(2.0))


# --- resume: a run saved and loaded trains on exactly the batches of the uninterrupted one ----------

RESUME_N, RESUME_B, RESUME_EPOCHS = 240, 16, 3  # 15 batches an epoch


def indexed_blobs(n: int = RESUME_N) -> TensorDataset:
    x, y = blobs(n).tensors
    return TensorDataset(x, y, torch.arange(n))


def make_sampler(kind: str, model: nn.Module):
    n, b, e = RESUME_N, RESUME_B, RESUME_EPOCHS
    if kind == "loss":
        return ismod.LossSampler(n, b, seed=3)
    if kind == "infobatch":
        return ismod.InfoBatchSampler(n, b, num_epochs=e, delta=0.6, seed=3)
    if kind in ("per", "obs"):
        return StrategyBatchSampler(kind, n, b, num_epochs=e, seed=3)
    if kind == "tau":
        return ismod.TauSwitchSampler(model, n, b, threshold=1.02, seed=3, batch_norm="train")
    if kind == "selective_backprop":
        return ismod.SelectiveBackpropLoss(model, beta=1.0, seed=3)  # about half kept: BN needs 2+
    if kind == "reducible":
        with torch.random.fork_rng():
            torch.manual_seed(7)  # an irreducible-loss model of its own, the same in every run
            irreducible = nn.Sequential(nn.Linear(10, 3))
        return ismod.ReducibleLossSelection(model, irreducible, keep=0.5)
    return ismod.HardExampleLoss(model, keep=0.5)


def _train_step(kind, method, model, opt, x, y, idx, seen) -> None:
    """One step of the resume tests' loop with ``method``, recording what it trained on."""
    if kind in ("tau", "selective_backprop", "hard_example", "reducible"):
        loss = method.loss(x, y)
        seen.append(idx.tolist() if kind != "tau" else (idx.tolist(), method.importance_steps))
    else:
        loss = method.loss(F.cross_entropy(model(x), y, reduction="none"))
        seen.append(idx.tolist())
    opt.zero_grad()
    loss.backward()
    opt.step()


def run_loop(kind, *, stop_after=None, checkpoint=None, workers=0, stateful=False):
    """Train a small classifier with ``kind``; stop after ``stop_after`` steps and return a checkpoint,
    or start from ``checkpoint``. Returns the trained-on index batches, the weights and the checkpoint.
    Selective backprop and hard examples take the loader's batches (a seeded shuffle per epoch, which a
    user's loader resumes on its own; here the loop skips the batches already done). ``stateful``:
    torchdata's StatefulDataLoader, whose own state_dict() holds the sampler's, as its users save it."""
    import io

    if stateful:
        return _run_stateful_loop(
            kind, stop_after=stop_after, checkpoint=checkpoint, workers=workers
        )

    in_loop = kind in ("selective_backprop", "hard_example", "reducible")
    model = small_classifier(0)
    if in_loop:  # a step may keep a single candidate, which BatchNorm cannot train on
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = make_sampler(kind, model)
    data = indexed_blobs()
    done, start_epoch, seen = 0, 0, []
    if checkpoint is not None:
        state = torch.load(io.BytesIO(checkpoint), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        method.load_state_dict(state["method"])
        done = state["done"]
        start_epoch = done // 8 if in_loop else method.epoch  # 8 candidate batches an epoch
    for epoch in range(start_epoch, RESUME_EPOCHS):
        if in_loop:
            order = torch.randperm(RESUME_N, generator=torch.Generator().manual_seed(epoch))
            batches = [
                order[i : i + 2 * RESUME_B].tolist() for i in range(0, RESUME_N, 2 * RESUME_B)
            ]
            skip = done - epoch * len(batches) if checkpoint is not None else 0
            loader = DataLoader(data, batch_sampler=batches[max(skip, 0) :])
        else:
            loader = DataLoader(data, batch_sampler=method, num_workers=workers)
        for x, y, idx in loader:
            _train_step(kind, method, model, opt, x, y, idx, seen)
            done += 1
            if stop_after is not None and done == stop_after:
                buffer = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                            "method": method.state_dict(), "done": done}, buffer)  # fmt: skip
                return seen, model, buffer.getvalue()
        if in_loop:
            checkpoint = None  # later epochs of a resumed run are whole
    return seen, model, None


def _run_stateful_loop(kind, *, stop_after, checkpoint, workers):
    import io

    from torchdata.stateful_dataloader import StatefulDataLoader

    model = small_classifier(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method = make_sampler(kind, model)
    loader = StatefulDataLoader(indexed_blobs(), batch_sampler=method, num_workers=workers)
    done, start_epoch, seen = 0, 0, []
    if checkpoint is not None:
        state = torch.load(io.BytesIO(checkpoint), weights_only=True)  # plain tensors and dicts
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        loader.load_state_dict(state["loader"])  # the sampler's state travels inside the loader's
        done, start_epoch = state["done"], state["epoch"]
    for epoch in range(start_epoch, RESUME_EPOCHS):
        for x, y, idx in loader:
            _train_step(kind, method, model, opt, x, y, idx, seen)
            done += 1
            if stop_after is not None and done == stop_after:
                buffer = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch,
                            "loader": loader.state_dict(), "done": done}, buffer)  # fmt: skip
                return seen, model, buffer.getvalue()
    return seen, model, None


RESUMED = [
    "loss",
    "infobatch",
    "per",
    "obs",
    "tau",
    "selective_backprop",
    "hard_example",
    "reducible",
]


@pytest.mark.parametrize("kind", RESUMED)
@pytest.mark.parametrize("stop_after", [22, 15], ids=["mid-epoch", "epoch-boundary"])
def test_a_resumed_run_trains_on_the_batches_of_the_uninterrupted_one(kind, stop_after):
    if kind in ("selective_backprop", "hard_example", "reducible") and stop_after == 22:
        stop_after = 11  # 8 candidate batches an epoch: mid-epoch of the second
    if kind in ("selective_backprop", "hard_example", "reducible") and stop_after == 15:
        stop_after = 8
    full, full_model, _ = run_loop(kind)
    first, _, checkpoint = run_loop(kind, stop_after=stop_after)
    rest, resumed_model, _ = run_loop(kind, checkpoint=checkpoint)
    assert first + rest == full
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loss", "tau"])
def test_resume_through_prefetching_workers(kind):
    """Two workers take batches ahead of the loop: the checkpoint still resumes at the trained ones."""
    full, full_model, _ = run_loop(kind, workers=2)
    first, _, checkpoint = run_loop(kind, stop_after=20, workers=2)
    rest, resumed_model, _ = run_loop(kind, checkpoint=checkpoint, workers=2)
    assert first + rest == full
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["loss", "infobatch", "per", "obs", "tau"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [20, 15], ids=["mid-epoch", "epoch-boundary"])
def test_resume_through_torchdatas_stateful_dataloader(kind, workers, stop_after):
    """StatefulDataLoader asks the sampler for its state when it prefetches a batch, ahead of the loop;
    a run resumed from the loader's state still trains on exactly the uninterrupted run's batches."""
    if workers and stop_after == 15 and kind not in ("loss", "tau"):
        pytest.skip(
            "the epoch boundary with workers is checked on one batch sampler and the τ sampler"
        )
    full, full_model, _ = run_loop(kind, workers=workers, stateful=True)
    first, _, checkpoint = run_loop(kind, stop_after=stop_after, workers=workers, stateful=True)
    rest, resumed_model, _ = run_loop(kind, checkpoint=checkpoint, workers=workers, stateful=True)
    assert len(first + rest) == len(full) and first + rest == full
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_state_is_read_when_saved_and_costs_no_copy_when_asked_for():
    """state_dict() copies nothing (a StatefulDataLoader calls it at every prefetch); what it holds is
    read when it is saved or deep-copied, so losses recorded after the call are in the saved state."""
    import copy
    import io

    sampler = ismod.LossSampler(64, 8, seed=0)
    loader = DataLoader(index_data(64), batch_sampler=sampler)
    batches = iter(loader)
    x, _ = next(batches)
    state = sampler.state_dict()
    sampler.loss(fixed_loss(x))  # after the call, before the save
    frozen = copy.deepcopy(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    scores = sampler.strategy.state_dict()["scores"]
    for saved in (frozen["saved"], loaded["saved"]):
        assert (
            torch.equal(saved["strategy"]["scores"], scores) and saved["in_epoch"]["pending"] == []
        )
    next(batches)
    assert (
        frozen["saved"]["in_epoch"]["count"] == 1
    )  # frozen at the copy, not moving on with the sampler


def _saved(sampler) -> dict:
    import copy

    return copy.deepcopy(sampler.state_dict())


@pytest.mark.parametrize(
    "saved_by, loaded_by, named",
    [
        (lambda: ismod.LossSampler(200, 16), lambda: ismod.LossSampler(100, 16), "num_items 200"),
        (lambda: ismod.LossSampler(100, 16), lambda: ismod.LossSampler(200, 16), "num_items 100"),
        (lambda: ismod.LossSampler(100, 16), lambda: ismod.LossSampler(100, 32), "batch_size 16"),
        (lambda: ismod.InfoBatchSampler(100, 16, 3), lambda: ismod.LossSampler(100, 16),
         "class 'InfoBatchSampler'"),
        (lambda: StrategyBatchSampler("per", 100, 16), lambda: StrategyBatchSampler("obs", 100, 16),
         "strategy 'per'"),
        (lambda: ismod.TauSwitchSampler(small_classifier(), 100, 8, batch_norm="train"),
         lambda: ismod.TauSwitchSampler(small_classifier(), 50, 8, batch_norm="train"), "num_items 100"),
    ],
    ids=["fewer-items", "more-items", "batch-size", "class", "method", "tau-items"],
)  # fmt: skip
def test_a_state_of_another_sampler_is_refused_naming_what_differs(saved_by, loaded_by, named):
    state = _saved(saved_by())
    with pytest.raises(ValueError, match=f"belongs to another sampler: .*{named}"):
        loaded_by().load_state_dict(state)


def test_an_old_state_still_loads_and_a_partial_one_is_refused_naming_the_missing_keys():
    sampler = ismod.LossSampler(240, 16, seed=3)
    loader = DataLoader(indexed_blobs(), batch_sampler=sampler)
    for k, (x, _, _) in zip(range(5), loader):
        sampler.loss(x.norm(dim=1))
    old = _saved(sampler)["saved"]  # format 1 was this dict, at the top level
    assert "format" not in old
    resumed = ismod.LossSampler(240, 16, seed=3)
    resumed.load_state_dict(old)
    assert resumed.step == sampler.step and resumed.epoch == sampler.epoch
    with pytest.raises(ValueError, match=r"lacks \['step'\]"):
        resumed.load_state_dict({k: v for k, v in old.items() if k != "step"})
    with pytest.raises(ValueError, match="format 7"):
        resumed.load_state_dict({**_saved(sampler), "format": 7})
    with pytest.raises(TypeError, match="takes the dict that state_dict"):
        resumed.load_state_dict([old])


def test_identically_seeded_tau_runs_make_the_same_switch_decisions():
    a, model_a, _ = run_loop("tau")
    b, model_b, _ = run_loop("tau")
    assert [s for _, s in a] == [s for _, s in b] and a[-1][1] > 0  # it switched, alike
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


def test_importance_sampler_draws_from_its_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    draws = {seed: ismod.ImportanceSampler(500, seed=seed).sample(64)[0] for seed in (0, 1, 0)}
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(draws[0], ismod.ImportanceSampler(500, seed=0).sample(64)[0])


def test_importance_sampler_resumes_mid_pass_from_its_state_alone():
    """ImportanceSampler without a generator draws from its own, seeded one: its state continues the
    run exactly, mid-pass, at a pass boundary and past the buffer of uniforms it had fetched (batch 256
    of 32 draws 16,384 uniforms), whatever the global RNG did in between."""
    from ismod.sampling import _UNIFORM_BUFFER, IndexedDataset

    data = IndexedDataset(TensorDataset(torch.arange(200.0)))
    passes = 2 + 2 * _UNIFORM_BUFFER // 200  # past the first refill of the uniforms

    def loop(stop=None, state=None):
        sampler = ismod.ImportanceSampler(200, seed=5)
        start = 0
        if state is not None:
            torch.manual_seed(123)  # another global RNG than the saved run's
            sampler.load_state_dict(state["sampler"])
            start = state["epoch"] + (0 if sampler.resumes_mid_pass else 1)
        seen = []
        for epoch in range(start, passes):
            for k, (x, idx) in enumerate(DataLoader(data, batch_size=32, sampler=sampler)):
                seen.append(idx.tolist())
                sampler.update(idx, 1.0 + x % 5)
                if (epoch, k) == stop:
                    return seen, {"sampler": sampler.state_dict(), "epoch": epoch}
        return seen, None

    full, _ = loop()
    for stop in [(0, 3), (1, 6)]:  # 7 batches a pass: (1, 6) is a pass's last
        first, state = loop(stop=stop)
        rest, _ = loop(state=state)
        assert first + rest == full


# --- bad losses are refused with the fix named ---------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.5])
@pytest.mark.parametrize("kind", ["loss", "infobatch", "per", "obs"])
def test_batch_samplers_refuse_bad_losses(kind, bad):
    sampler = make_sampler(kind, small_classifier())
    loader = DataLoader(indexed_blobs(), batch_sampler=sampler)
    x, y, _ = next(iter(loader))
    losses = torch.ones(x.shape[0])
    losses[3] = bad
    with pytest.raises(ValueError, match="clamp them.*shift them.*a loss that is >= 0"):
        sampler.loss(losses)


@pytest.mark.parametrize("kind", ["tau", "selective_backprop", "hard_example", "reducible"])
def test_in_loop_methods_refuse_bad_scores(kind):
    model = small_classifier()
    method = make_sampler(kind, model)
    if kind == "tau":
        method = ismod.TauSwitchSampler(model, 240, 16, score="loss", loss_fn=lambda z, t: -F.cross_entropy(z, t, reduction="none"), batch_norm="train")  # fmt: skip
    else:
        method.loss_fn = lambda z, t: -F.cross_entropy(z, t, reduction="none")
    x, y = blobs(16).tensors
    with pytest.raises(ValueError, match="must be non-negative.*clamp them"):
        method.loss(x, y)


def test_importance_sampler_names_the_same_fix():
    sampler = ismod.ImportanceSampler(10)
    with pytest.raises(ValueError, match="clamp them.*shift them"):
        sampler.update(torch.tensor([1, 2]), torch.tensor([0.5, -1.0]))


# --- misuse --------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_second_loss_for_one_batch_is_an_error(workers):
    sampler = ismod.LossSampler(RESUME_N, RESUME_B)
    loader = DataLoader(indexed_blobs(), batch_sampler=sampler, num_workers=workers)
    it = iter(loader)
    x, _, _ = next(it)
    sampler.loss(torch.ones(x.shape[0]))
    with pytest.raises(RuntimeError, match="twice for one batch"):
        sampler.loss(torch.ones(x.shape[0]))
    x, _, _ = next(it)
    sampler.loss(torch.ones(x.shape[0]))  # the next batch is fine


def test_a_second_tau_loss_for_one_batch_is_an_error():
    model = small_classifier()
    sampler = ismod.TauSwitchSampler(model, RESUME_N, RESUME_B, batch_norm="train")
    it = iter(DataLoader(indexed_blobs(), batch_sampler=sampler))
    x, y, _ = next(it)
    sampler.loss(x, y)
    with pytest.raises(RuntimeError, match="twice for one batch"):
        sampler.loss(x, y)


def test_an_epoch_without_loss_calls_warns():
    sampler = ismod.LossSampler(RESUME_N, RESUME_B)
    loader = DataLoader(indexed_blobs(), batch_sampler=sampler)
    for _ in loader:
        pass
    with pytest.warns(RuntimeWarning, match=r"no loss\(\) call"):
        next(iter(loader))


@pytest.mark.parametrize(
    "make",
    [
        lambda d: ismod.LossSampler(100, 16, dataset=d),
        lambda d: ismod.InfoBatchSampler(300, 16, num_epochs=4, dataset=d),
        lambda d: StrategyBatchSampler("per", 100, 16, dataset=d),
        lambda d: ismod.TauSwitchSampler(
            small_classifier(), 100, 16, dataset=d, batch_norm="train"
        ),
    ],
)
def test_dataset_length_is_checked(make):
    with pytest.raises(ValueError, match=r"num_items = \d+ but len\(dataset\) = 240"):
        make(indexed_blobs())


def test_tau_switch_sampler_refuses_a_plain_model_under_several_ranks(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    with pytest.raises(ValueError, match="DistributedDataParallel-wrapped model"):
        ismod.TauSwitchSampler(small_classifier(), 240, 16, batch_norm="train")


def test_all_gather_gives_no_deprecation_warning(tmp_path):
    import warnings

    import torch.distributed as dist

    from ismod.process_group import World

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = World(0, 1, torch.device("cpu")).all_gather_cat(torch.arange(3.0))
        assert torch.equal(out, torch.arange(3.0))
    finally:
        dist.destroy_process_group()


def test_drop_last_false_keeps_the_partial_batch():
    sampler = ismod.LossSampler(250, 16, drop_last=False, warmup_epochs=0)
    sizes = [len(batch) for batch in sampler]
    assert sizes == [16] * 15 + [10] and len(sampler) == 16
    assert [len(b) for b in ismod.InfoBatchSampler(250, 16, num_epochs=2)] == [16] * 15 + [10]
    with pytest.raises(ValueError, match="drop_last=False"):
        StrategyBatchSampler("per", 250, 16, drop_last=False)


# --- parity with the published methods -------------------------------------------------------------


@pytest.mark.parametrize(
    "epochs, delta, pruned",
    [(6, 0.875, 5), (8, 0.875, 7), (8, 0.75, 6), (10, 0.875, 8), (4, 0.5, 2)],
)
def test_infobatch_anneals_at_the_official_epoch(epochs, delta, pruned):
    """NUS-HPC-AI-Lab/InfoBatch prunes epoch e (from 0) iff e + 1 <= E·δ: with E = 6 the last epoch
    trains on everything (e/E < δ would prune all six)."""
    sampler = ismod.InfoBatchSampler(200, 10, num_epochs=epochs, delta=delta, seed=0)
    lengths, weighted = [], []
    for _ in range(epochs):
        count, any_weight = 0, False
        for batch in sampler:
            any_weight |= sampler._pairing.batches[0][1] is not None
            sampler.loss(fixed_loss(torch.tensor(batch, dtype=torch.float32)[:, None]))
            count += 1
        lengths.append(count)
        weighted.append(any_weight)
    assert all(n < 20 for n in lengths[1:pruned])  # pruned (epoch 0 has seen nothing yet)
    assert lengths[pruned:] == [20] * (epochs - pruned) and not any(weighted[pruned:])


def test_infobatch_prune_ratio_is_bounded_as_in_the_official_code():
    ismod.InfoBatchSampler(100, 10, num_epochs=4, prune_ratio=0.9)
    with pytest.raises(ValueError, match="at most 0.9"):
        ismod.InfoBatchSampler(100, 10, num_epochs=4, prune_ratio=0.95)


def test_prioritised_replay_gives_unseen_samples_the_maximum_priority_and_beta_reaches_one():
    def never_drawn(new_priority: str) -> tuple[int, float]:
        sampler = StrategyBatchSampler(
            "per", 1000, 25, num_epochs=4, seed=1, new_priority=new_priority
        )
        drawn = torch.zeros(1000, dtype=torch.bool)
        for _ in range(4):
            for batch in sampler:
                drawn[batch] = True
                sampler.loss(1.0 + 3.0 * (torch.tensor(batch) % 2 == 0).float())
        return int((~drawn).sum()), sampler.strategy.importance_beta()

    missed_max, beta = never_drawn("max")
    missed_one, _ = never_drawn("one")
    assert beta == pytest.approx(1.0)  # the last step's progress is 1
    assert missed_max < missed_one
    strategy = StrategyBatchSampler("per", 100, 10, new_priority="max").strategy
    strategy.observe(torch.tensor([0, 1]), torch.tensor([3.0, 0.1]), None)
    strategy.refresh_unseen()
    peak = (3.0 + strategy.epsilon) ** strategy.alpha
    assert torch.allclose(strategy.tree.masses()[2:], torch.full((98,), peak, dtype=torch.float64))


def test_online_batch_selection_reranks_once_per_epoch(monkeypatch):
    from ismod.strategies import OnlineBatchSelection

    calls = []
    original = OnlineBatchSelection.probabilities
    monkeypatch.setattr(
        OnlineBatchSelection, "probabilities", lambda self: calls.append(1) or original(self)
    )
    sampler = StrategyBatchSampler("obs", 200, 10, num_epochs=3, warmup_epochs=1)
    for _ in range(3):
        for batch in sampler:
            sampler.loss(torch.rand(len(batch)))
    # warm-up epoch: one log; then one re-rank (and one log) per epoch of 20 steps
    assert len(calls) <= 1 + 2 * 2
    every = StrategyBatchSampler("obs", 200, 10, rerank_every=1, warmup_epochs=0)
    calls.clear()
    for batch in every:
        every.loss(torch.rand(len(batch)))
    assert len(calls) >= 20


@pytest.mark.slow
def test_tau_switch_sampler_under_ddp_needs_the_wrapped_model_and_keeps_replicas_equal(tmp_path):
    import ddp_worker
    from test_distributed import spawn

    ranks = spawn(tmp_path, target=ddp_worker.tau_ddp_loop, epochs=14, seed=2)
    assert set(ranks) == {0, 1}, ranks
    for r in ranks.values():
        assert "DistributedDataParallel-wrapped model" in r["refusal"]
    assert ranks[0]["importance_steps"] > 0 and ranks[1]["importance_steps"] > 0
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# --- the smaller conventions a PyTorch user relies on -----------------------------------------------


def test_an_epoch_without_loss_calls_warns_with_its_own_number_at_the_users_line_and_in_a_one_epoch_run():
    import gc

    sampler = ismod.LossSampler(64, 16)
    loader = DataLoader(index_data(64), batch_sampler=sampler)
    for _ in loader:  # no loss() call
        pass
    with pytest.warns(RuntimeWarning, match="epoch 0 ended with no loss") as caught:
        for _ in loader:
            break
    assert caught[0].filename == __file__  # this loop's line, not torch's dataloader.py
    one_epoch = ismod.TauSwitchSampler(small_classifier(), 64, 16, batch_norm="train")
    for _ in DataLoader(blobs(64), batch_sampler=one_epoch):
        pass
    with pytest.warns(RuntimeWarning, match="epoch 0 ended with no loss"):
        del one_epoch
        gc.collect()


@pytest.mark.parametrize("workers", [0, 2])
def test_len_before_an_infobatch_epoch_is_that_epochs_and_asking_changes_nothing(workers):
    def run(ask: bool, rename: bool = False):
        sampler = ismod.InfoBatchSampler(
            RESUME_N, RESUME_B, num_epochs=RESUME_EPOCHS, delta=0.7, seed=3
        )
        loader = DataLoader(indexed_blobs(), batch_sampler=sampler, num_workers=workers)
        lengths, batches = [], []
        for epoch in range(RESUME_EPOCHS):
            if ask:
                lengths.append(len(loader))
                if (
                    rename
                ):  # set_epoch after len() with another number than len() assumed, then back
                    sampler.set_epoch(epoch + 7)
                    len(loader)
                    sampler.set_epoch(epoch)
            seen = 0
            for x, _, idx in loader:
                sampler.loss(x.norm(dim=1))
                batches.append(idx.tolist())
                seen += 1
            lengths.append(seen)
        return lengths, batches

    lengths, asked = run(ask=True)
    assert (
        lengths[0::2] == lengths[1::2] and lengths[2] < lengths[4]
    )  # epoch 1 pruned, epoch 2 whole
    assert asked == run(ask=False)[1] == run(ask=True, rename=True)[1]


@pytest.mark.parametrize("bad", [-1, 2.7, "3", True])
def test_set_epoch_takes_a_non_negative_integer(bad):
    for sampler in (ismod.LossSampler(64, 16), ismod.TauSwitchSampler(small_classifier(), 64, 16, batch_norm="train"),
                    ismod.ImportanceSampler(64)):  # fmt: skip
        with pytest.raises(ValueError, match="set_epoch takes the epoch's number, an integer >= 0"):
            sampler.set_epoch(bad)


def test_a_batch_sampler_passed_as_sampler_is_refused_naming_batch_sampler():
    for sampler in (
        ismod.LossSampler(64, 16),
        ismod.TauSwitchSampler(small_classifier(), 64, 16, batch_norm="train"),
    ):
        with pytest.raises(TypeError, match=r"batch_sampler=sampler\), not sampler=sampler"):
            next(iter(DataLoader(blobs(64), sampler=sampler, batch_size=4)))


def test_a_threshold_below_one_is_refused_with_the_reason_and_tau_is_documented_to_start_at_zero():
    with pytest.raises(ValueError, match="each batch's τ is at least 1"):
        ismod.TauSwitchSampler(small_classifier(), 64, 16, threshold=0.9, batch_norm="train")
    assert "started at 0" in ismod.TauSwitchSampler.tau.__doc__


# --- any model output --------------------------------------------------------------------------------


class DictOutput(nn.Module):
    """A model whose forward returns a dict (as Hugging Face models do) or a tuple."""

    def __init__(self, as_tuple: bool = False) -> None:
        super().__init__()
        self.net, self.as_tuple = small_classifier(0), as_tuple

    def forward(self, x):
        z = self.net(x)
        return (z, x.sum(1)) if self.as_tuple else {"logits": z, "aux": x.sum(1)}


@pytest.mark.parametrize(
    "make",
    [
        lambda m, logits: ismod.TauSwitchSampler(
            m, 96, 16, threshold=1.0, logits=logits, batch_norm="train"
        ),
        lambda m, logits: ismod.SelectiveBackpropLoss(m, beta=1.0, logits=logits),
        lambda m, logits: ismod.HardExampleLoss(m, logits=logits),
    ],
    ids=["tau", "selective_backprop", "hard_example"],
)
def test_models_returning_a_dict_or_a_tuple_train_once_the_logits_are_named(make):
    x, y = blobs(96).tensors
    plain = make(small_classifier(0), None).loss(x[:32], y[:32])
    for model, logits in ((DictOutput(), "logits"), (DictOutput(True), 0),
                          (DictOutput(), lambda out: out["logits"])):  # fmt: skip
        with pytest.raises(TypeError, match="not a tensor of logits: pass logits="):
            make(model, None).loss(x[:32], y[:32])
        loss = make(model, logits).loss(x[:32], y[:32])
        loss.backward()
        assert torch.equal(
            loss.detach(), plain.detach()
        )  # the same network and batch as the plain one
    with pytest.raises(ValueError, match="logits='scores' picks nothing"):
        make(DictOutput(), "scores").loss(x[:32], y[:32])


def test_select_by_loss_keeps_the_hardest_or_samples_by_loss_without_bias():
    from ismod.train import per_sample_losses

    model, (x, y) = small_classifier(0), blobs(64).tensors
    model.eval()
    with torch.no_grad():
        losses = per_sample_losses(ismod.cross_entropy_loss(), model(x), y)
    model.train()
    positions, weights = ismod.select_by_loss(model, x, y, keep=0.25)
    assert set(positions.tolist()) == set(losses.topk(16).indices.tolist()) and weights.eq(1).all()
    assert model.training  # scored in inference mode, handed back in training mode
    # sampled, p ∝ L: (1/k) Σ w_j f_j is unbiased for the batch mean of any f (4,000 draws, 4 standard
    # errors), and for f = L itself it is exact, the zero-variance case of importance sampling
    gen = torch.Generator().manual_seed(0)
    f = x[:, 0].double()
    estimates = []
    for _ in range(4000):
        pos, w = ismod.select_by_loss(DictOutput(), x, y, keep=0.25, sample=True, logits="logits",
                                      generator=gen)  # fmt: skip
        estimates.append(float((w * f[pos]).mean()))
        assert float((w * losses[pos]).mean()) == pytest.approx(float(losses.mean()), rel=1e-5)
    estimates = torch.tensor(estimates, dtype=torch.float64)
    se = estimates.std() / len(estimates) ** 0.5
    assert se > 0 and abs(estimates.mean() - f.mean()) < 4 * se
    with pytest.raises(ValueError, match=r"keep .* must lie in \(0, 1\]"):
        ismod.select_by_loss(model, x, y, keep=0)
