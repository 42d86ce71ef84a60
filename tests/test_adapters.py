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


@pytest.mark.parametrize("name", ["presample", "selective_backprop", "hard_selection"])
def test_strategies_that_need_the_model_point_to_the_in_loop_objects(name):
    with pytest.raises(ValueError, match="TauSwitchSampler"):
        StrategyBatchSampler(name, 100, 10)


def test_prediction_subset_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="true-class probability"):
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
    sampler = ismod.TauSwitchSampler(model, 600, 16, presample=3)
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
    sampler = ismod.TauSwitchSampler(model, 600, 16, tau_momentum=0.5)
    sampler.loss(x, y)
    g = ismod.upper_bound(sampler.last_logits, y).double()
    g = g / g.sum()
    assert sampler.tau == pytest.approx(0.5 * 16 * float((g * g).sum()), rel=1e-6)


def test_tau_switch_sampler_yields_presamples_once_tau_exceeds_the_threshold():
    model = small_classifier()
    data = blobs(600)
    sampler = ismod.TauSwitchSampler(model, 600, 20, presample=3, threshold=1.02)
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
    sampler = ismod.TauSwitchSampler(model, 600, 16, presample=3, threshold="measured")
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
    sampler = ismod.TauSwitchSampler(small_classifier(), 600, 16, presample=4)
    x, y = blobs(16).tensors
    for _ in range(20):
        sampler.loss(x, y)
    assert sampler.tau_threshold == pytest.approx((64 + 48) / 48) and not sampler.probes


def test_scoring_leaves_batch_norm_statistics_alone():
    model = small_classifier()
    x, y = blobs(48).tensors
    sampler = ismod.TauSwitchSampler(model, 600, 16)
    before = model[1].running_mean.clone()
    ismod.adapters._score(model, x, y, ismod.cross_entropy_loss())
    torch.testing.assert_close(model[1].running_mean, before)
    assert model.training
    sampler.loss(x, y)  # presample: scored (no change), then 16 trained on (one change)
    assert not torch.equal(model[1].running_mean, before)


def test_soft_targets_are_accepted():
    model = small_classifier()
    x, y = blobs(48).tensors
    soft = 0.9 * F.one_hot(y, 3).float() + 0.1 / 3
    loss = ismod.TauSwitchSampler(model, 600, 16).loss(x, soft)
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"presample": 0.5}, "presample"),
        ({"score": "norm"}, "score must be"),
        ({"threshold": "auto"}, "threshold must be one of"),
        ({"threshold": 0.5}, "numeric threshold"),
        ({"tau_momentum": 1.0}, "tau_momentum"),
    ],
)
def test_tau_switch_sampler_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ismod.TauSwitchSampler(small_classifier(), 600, 16, **kwargs)


def test_a_reduced_loss_fn_is_named():
    model = small_classifier()
    x, y = blobs(16).tensors
    sampler = ismod.TauSwitchSampler(model, 600, 16, loss_fn=lambda z, t: F.cross_entropy(z, t))
    with pytest.raises(ValueError, match="reduction='none'"):
        sampler.loss(x, y)


def test_mismatched_batches_are_named():
    model = small_classifier()
    x, y = blobs(16).tensors
    with pytest.raises(ValueError, match="inputs hold 16 samples but targets 15"):
        ismod.TauSwitchSampler(model, 600, 16).loss(x, y[:15])


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
        _, losses = ismod.adapters._score(model, x, y, ismod.cross_entropy_loss())
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
    _, losses = ismod.adapters._score(model, x, y, ismod.cross_entropy_loss())
    method.loss(x, y)
    top = torch.topk(losses, 16).indices
    assert sorted(method.last_targets.tolist()) == sorted(y[top].tolist())
    assert method.trained == 16 and method.candidates == 64


def test_hard_example_loss_scores_with_the_proxy():
    model, proxy = small_classifier(0), small_classifier(1)
    x, y = blobs(64).tensors
    method = ismod.HardExampleLoss(model, keep=0.5, proxy=proxy)
    _, losses = ismod.adapters._score(proxy, x, y, ismod.cross_entropy_loss())
    method.loss(x, y)
    assert sorted(method.last_targets.tolist()) == sorted(
        y[torch.topk(losses, 32).indices].tolist()
    )


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: ismod.SelectiveBackpropLoss(m, beta=0), "beta must be > 0"),
        (lambda m: ismod.SelectiveBackpropLoss(m, history=0), "history must be a positive"),
        (lambda m: ismod.HardExampleLoss(m, keep=0), "keep"),
        (lambda m: ismod.HardExampleLoss("model"), "torch.nn.Module"),
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


def test_tau_switch_sampler_shards_each_epoch_between_replicas():
    model = small_classifier()
    shards = [
        ismod.TauSwitchSampler(model, 100, 10, num_replicas=2, rank=r, seed=4) for r in range(2)
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
