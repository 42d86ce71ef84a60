"""Chapter 3's strategies: Algorithm 1 and its variants, online batch selection, prioritised replay,
p-SGD / c-SGD and selective backprop — each driven directly with synthetic losses."""

import math

import pytest
import torch

from ismod.diagnostics import coverage, distribution_stats, distribution_summary
from ismod.strategies import (
    STRATEGIES,
    LossSampling,
    OnlineBatchSelection,
    PredictionSubset,
    PrioritizedReplay,
    SelectiveBackprop,
    build_strategy,
)
from ismod.strategies.budgeted import percentile_in, selective_backprop_keep
from ismod.strategies.scored import score_probabilities

CPU = torch.device("cpu")


def fake_losses(indices: torch.Tensor) -> torch.Tensor:
    """A fixed 'loss' per sample: sample i has loss i / 10 (so higher index = harder)."""
    return indices.float() / 10


def labels_for(n: int) -> torch.Tensor:
    return torch.arange(n) % 3


def fake_score_fn(indices: torch.Tensor):
    losses = fake_losses(indices)
    logits = torch.zeros(indices.numel(), 3)
    return losses, logits


def drive(strategy, n: int, b: int, steps: int, seed: int = 0, progress=None):
    """Run the select/observe loop as ``fit`` does, with fake losses; return what was selected."""
    strategy.setup(n, b, CPU, torch.Generator().manual_seed(seed), fake_score_fn, labels_for(n))
    out = []
    for step in range(steps):
        strategy.progress = step / steps if progress is None else progress
        idx, w = strategy.select(step)
        out.append((idx.clone(), None if w is None else w.clone()))
        logits = torch.zeros(idx.numel(), 3)
        strategy.observe(idx, fake_losses(idx), logits)
    return out


# --- the registry -----------------------------------------------------------------------------------


def test_registry_builds_every_strategy_and_names_bad_options():
    for name in STRATEGIES:
        assert build_strategy(name).name == name
    with pytest.raises(ValueError, match="strategy_options for 'loss'"):
        build_strategy("loss", {"nonsense": 1})


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (LossSampling, {"score": "best"}, "score must be"),
        (LossSampling, {"beta": 1.5}, "beta"),
        (LossSampling, {"subset": 0}, "subset"),
        (LossSampling, {"temperature": 0}, "temperature"),
        (LossSampling, {"smoothing": 1.0}, "smoothing"),
        (LossSampling, {"method": "cubic"}, "method"),
        (LossSampling, {"warmup_epochs": -1}, "warmup_epochs"),
        (OnlineBatchSelection, {"pressure_end": 0.5}, "pressure"),
        (PrioritizedReplay, {"beta_start": 2}, "beta_start"),
        (PrioritizedReplay, {"epsilon": 0}, "epsilon"),
        (PredictionSubset, {"kind": "q"}, "kind"),
        (SelectiveBackprop, {"beta": 0}, "beta"),
        (SelectiveBackprop, {"history": 0}, "history"),
    ],
)
def test_bad_options_name_the_argument(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_subset_smaller_than_batch_is_refused():
    with pytest.raises(ValueError, match=r"\|Z\| = 2 < batch_size 4"):
        LossSampling(subset=0.1).setup(20, 4, CPU, torch.Generator())


# --- Algorithm 1 --------------------------------------------------------------------------------------


def test_warmup_samples_uniformly_and_only_records_scores():
    n, b = 40, 8
    s = LossSampling(score="last", warmup_epochs=2, subset=0.5)
    picks = drive(s, n, b, steps=2 * n // b)
    for epoch in range(2):  # each warm-up epoch is a permutation of all N, unweighted
        chunk = picks[epoch * n // b : (epoch + 1) * n // b]
        assert all(w is None for _, w in chunk)
        assert torch.equal(torch.sort(torch.cat([i for i, _ in chunk])).values, torch.arange(n))
    assert s.log == [] and s.warming_up
    assert torch.allclose(s.scores, fake_losses(torch.arange(n)))  # every score recorded
    idx, w = s.select(
        2 * n // b
    )  # first importance-sampled step: weighted, and the distribution logged
    assert w is not None and len(s.log) == 1 and not s.warming_up


def test_importance_epoch_weights_are_one_over_n_p_and_subset_size_is_respected():
    n, b = 50, 5
    s = LossSampling(score="last", warmup_epochs=1, subset=0.4, method="softmax", temperature=0.5)
    drive(s, n, b, steps=n // b)
    p = s.probabilities()
    expected = torch.softmax(fake_losses(torch.arange(n)).double() / 0.5, 0)
    assert torch.allclose(p, expected)
    epoch = [s.select(n // b + k) for k in range(4)]  # |Z| = 20: 4 batches of 5
    idx = torch.cat([i for i, _ in epoch])
    w = torch.cat([w for _, w in epoch])
    assert idx.numel() == 20 and idx.unique().numel() == 20  # the report's default: no replacement
    assert torch.allclose(w.double(), 1.0 / (n * p[idx]), rtol=1e-6)


def test_running_loss_score_is_an_exponential_average():
    s = LossSampling(score="running", beta=0.2)
    s.setup(4, 2, CPU, torch.Generator())
    idx = torch.tensor([0, 1])
    s.observe(idx, torch.tensor([1.0, 2.0]), torch.zeros(2, 3))
    s.observe(idx, torch.tensor([3.0, 0.0]), torch.zeros(2, 3))
    # S = 0.2 * (0.8 * L1) + 0.8 * L2
    assert torch.allclose(s.scores[:2], torch.tensor([0.2 * 0.8 * 1 + 0.8 * 3, 0.2 * 0.8 * 2 + 0]))
    assert s.scores[2:].eq(0).all() and s.visits.tolist() == [2, 2, 0, 0]


def test_with_replacement_draws_follow_p():
    """Frequencies of indices drawn over many epochs match p within 4 standard errors."""
    n, b, epochs = 10, 10, 400
    s = LossSampling(
        score="last", warmup_epochs=1, subset=1.0, replacement=True, method="proportional"
    )
    picks = drive(s, n, b, steps=1 + epochs)  # warm-up epoch (1 step), then importance epochs
    p = s.probabilities()
    counts = torch.bincount(torch.cat([i for i, _ in picks[1:]]), minlength=n).double()
    total = counts.sum()
    se = (total * p * (1 - p)).sqrt()
    assert ((counts - total * p).abs() < 4 * se + 1e-9).all()
    assert p[0] == 0  # proportional: sample 0 has loss 0 and is never drawn
    assert counts[0] == 0


def test_all_zero_scores_give_uniform_for_every_method():
    for method in ("softmax", "proportional", "rank"):
        p = score_probabilities(torch.zeros(6), method, 1.0, 0.0)
        assert torch.allclose(p, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_softmax_of_shrinking_losses_drifts_to_uniform():
    """The report's drift: the same ranking with a smaller spread gives a flatter softmax."""
    base = torch.linspace(0, 1, 1000)
    kl = [
        float(distribution_stats(score_probabilities(base * spread, "softmax", 1.0, 0.0))[1])
        for spread in (4, 1, 0.1)
    ]
    assert kl[0] > kl[1] > kl[2] and kl[2] < 1e-3
    # a temperature proportional to the spread undoes it
    sharp = distribution_stats(score_probabilities(base * 0.1, "softmax", 0.1 / 4, 0.0))[1]
    assert math.isclose(float(sharp), kl[0], rel_tol=1e-6)  # float32 scores


# --- online batch selection ------------------------------------------------------------------------


def test_rank_distribution_top_to_bottom_ratio_is_the_pressure():
    s = OnlineBatchSelection(pressure_start=100.0, pressure_end=10.0, warmup_epochs=1)
    drive(s, 30, 5, steps=6)  # one warm-up epoch scores everything
    for progress, pressure in ((0.0, 100.0), (1.0, 10.0), (0.5, math.sqrt(1000.0))):
        s.progress = progress
        p = s.probabilities()
        assert math.isclose(s.pressure(), pressure, rel_tol=1e-12)
        assert math.isclose(float(p.max() / p.min()), pressure, rel_tol=1e-9)
        assert int(p.argmax()) == 29 and int(p.argmin()) == 0  # hardest most likely


def test_obs_is_unweighted_by_default_and_prefers_hard_samples():
    s = OnlineBatchSelection(pressure_start=100.0, pressure_end=100.0)
    picks = drive(s, 100, 10, steps=10 + 200, progress=0.0)
    drawn = torch.cat([i for i, _ in picks[10:]])
    assert all(w is None for _, w in picks)
    assert (
        drawn >= 50
    ).float().mean() > 0.8  # upper half holds 100^0.5/(1+100^0.5) ≈ 91% of the mass


# --- prioritised replay ----------------------------------------------------------------------------


def test_prioritized_probabilities_and_weights():
    n, b = 20, 4
    s = PrioritizedReplay(alpha=0.6, beta_start=0.4, epsilon=1e-3)
    s.setup(n, b, CPU, torch.Generator().manual_seed(0))
    all_idx = torch.arange(n)
    s.observe(all_idx, fake_losses(all_idx), torch.zeros(n, 3))
    priorities = (fake_losses(all_idx).double() + 1e-3) ** 0.6
    assert torch.allclose(s.probabilities(), priorities / priorities.sum())
    for progress, beta in ((0.0, 0.4), (0.5, 0.7), (1.0, 1.0)):
        s.progress = progress
        w = s.normalized_weights(s.tree.masses())
        expected = (n * priorities / priorities.sum()) ** (-beta)
        assert torch.allclose(w, expected / expected.max())
        assert (
            float(w.max()) == 1.0 and int(w.argmax()) == 0
        )  # the lowest priority has weight exactly 1
    idx, w = s.select(0)
    assert (w <= 1).all() and idx.shape == (b,)


# --- the upper bound with free, stale scores ------------------------------------------------------


def test_stale_bound_draws_from_the_defensive_mixture_with_unbiased_weights():
    """Scores are the training step's bound ||softmax(z) − e_y||; the draws follow
    p = (1 − λ) G/ΣG + λ/N (a chi-square-free check: each index's frequency within 5 SE over 4,000
    draws), each weighted 1/(N p); a sample is re-scored when it is trained on again."""
    from ismod.bounds import upper_bound
    from ismod.strategies import StaleBoundSampling

    n, b, lam = 12, 4, 0.25
    labels = labels_for(n)
    s = StaleBoundSampling(mixture=lam, warmup_epochs=0)
    s.setup(n, b, CPU, torch.Generator().manual_seed(0), None, labels)
    logits = torch.randn(n, 3, generator=torch.Generator().manual_seed(1)) * 3
    s.observe(torch.arange(n), torch.zeros(n), logits)
    bound = upper_bound(logits, labels).double()
    p = (1 - lam) * bound / bound.sum() + lam / n
    assert torch.allclose(s.probabilities(), p)
    counts = torch.zeros(n, dtype=torch.float64)
    for k in range(1000):
        idx, w = s.select(k)
        assert torch.allclose(w.double(), 1.0 / (n * p[idx]), rtol=1e-5)
        counts += torch.bincount(idx, minlength=n).double()
    draws = 1000 * b
    se = (p * (1 - p) / draws).sqrt()
    assert ((counts / draws - p).abs() < 5 * se).all()
    s.observe(
        torch.tensor([0]), torch.zeros(1), torch.zeros(1, 3)
    )  # a uniform output: bound sqrt(2/3)
    assert float(s.scores[0]) == pytest.approx((2 / 3) ** 0.5, rel=1e-5)
    with pytest.raises(ValueError, match="mixture"):
        StaleBoundSampling(mixture=0.0)
    with pytest.raises(ValueError, match="labels"):
        StaleBoundSampling().setup(n, b, CPU, torch.Generator())
    assert not s.select(0).weighted_norm  # batch_norm="train": the trainer normalises as usual
    with pytest.raises(ValueError, match="batch_norm must be 'train' or 'weighted'"):
        StaleBoundSampling(batch_norm="presample")
    weighted = StaleBoundSampling(mixture=lam, warmup_epochs=0, batch_norm="weighted")
    weighted.setup(n, b, CPU, torch.Generator().manual_seed(0), None, labels)
    selection = weighted.select(0)
    assert selection.weighted_norm and selection.weights is not None


# --- p-SGD, c-SGD ----------------------------------------------------------------------------------


def test_prediction_subset_scores_from_mean_true_class_probability():
    n = 6
    labels = labels_for(n)
    for kind in ("p", "c"):
        s = PredictionSubset(kind=kind, subset=0.5, warmup_epochs=0)
        s.setup(n, 3, CPU, torch.Generator(), None, labels)
        idx = torch.tensor([0, 1])

        # logits giving p_true = 0.8 then 0.4 for sample 0; 0.5 twice for sample 1 (3 classes)
        def logits_for(p_true, y):
            rest = (1 - p_true) / 2
            z = torch.full((3,), math.log(rest))
            z[y] = math.log(p_true)
            return z

        s.observe(
            idx,
            torch.zeros(2),
            torch.stack([logits_for(0.8, labels[0]), logits_for(0.5, labels[1])]),
        )
        s.observe(
            idx,
            torch.zeros(2),
            torch.stack([logits_for(0.4, labels[0]), logits_for(0.5, labels[1])]),
        )
        mean = torch.tensor([0.6, 0.5])
        expected = 1 - mean if kind == "p" else mean * (1 - mean)
        assert torch.allclose(s.scores[:2], expected, atol=1e-6)


def test_prediction_subset_draws_distinct_unweighted_subsets():
    s = PredictionSubset(kind="p", subset=0.5, warmup_epochs=1)
    picks = drive(s, 40, 4, steps=10 + 5)
    epoch = torch.cat([i for i, _ in picks[10:15]])
    assert epoch.numel() == 20 and epoch.unique().numel() == 20
    assert all(w is None for _, w in picks)


def _subset_counts(kind: str, n: int = 40, epochs: int = 400) -> torch.Tensor:
    """How often each sample is drawn over ``epochs`` half-size subsets, when the model is confident
    (p_true ≈ 0.98) on the first half of the samples and unsure (p_true = 1/3) on the rest."""
    s = PredictionSubset(kind=kind, subset=0.5, warmup_epochs=1)
    labels = labels_for(n)
    s.setup(n, 4, CPU, torch.Generator().manual_seed(0), None, labels)
    counts = torch.zeros(n)
    steps_per_subset = n // 2 // 4
    for step in range(n // 4 + epochs * steps_per_subset):
        idx, _ = s.select(step)
        if step >= n // 4:  # after the warm-up epoch
            counts.index_add_(0, idx, torch.ones(idx.numel()))
        logits = torch.zeros(idx.numel(), 3)
        confident = idx < n // 2
        logits[confident, labels[idx][confident]] = 5.0
        s.observe(idx, torch.zeros(idx.numel()), logits)
    return counts


def test_uniform_subset_ignores_the_scores():
    # each sample is in a half-size subset with probability 1/2: counts ~ Binomial(400, 1/2), s.e. 10
    counts = _subset_counts("uniform")
    assert counts.sum() == 400 * 20
    assert (counts - 200).abs().max() < 5 * 10
    # the same scores drive p-SGD towards the unsure half, far beyond that tolerance
    skewed = _subset_counts("p")
    assert skewed[20:].mean() - skewed[:20].mean() > 5 * 10


# --- selective backprop ----------------------------------------------------------------------------


def test_percentile_in_is_the_empirical_cdf():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert percentile_in(torch.tensor([0.5, 1.0, 2.5, 4.0, 9.0]), history).tolist() == [
        0,
        0.25,
        0.5,
        1.0,
        1.0,
    ]
    with pytest.raises(ValueError, match="history is empty"):
        percentile_in(torch.tensor([1.0]), torch.empty(0))


def test_selective_backprop_keep_rate_matches_percentile_to_the_beta():
    g = torch.Generator().manual_seed(0)
    history = torch.arange(1, 1001).float() / 1000  # percentile(x) = x for x in (0, 1]
    repeats = 20_000
    for q in (0.3, 0.6, 0.9):
        losses = torch.full((repeats,), q)
        rate = float(selective_backprop_keep(losses, history, beta=3.0, generator=g).float().mean())
        expected = q**3
        se = math.sqrt(expected * (1 - expected) / repeats)
        assert abs(rate - expected) < 4 * se


def test_selective_backprop_trains_on_kept_hard_samples():
    n, b = 200, 10
    s = SelectiveBackprop(beta=3.0, history=100)
    picks = drive(s, n, b, steps=40)
    trained = torch.cat([i for i, _ in picks])
    assert all(w is None for _, w in picks) and all(i.numel() == b for i, _ in picks)
    # keep probability rises with the loss (= index here), so trained samples are skewed high
    assert trained.float().mean() > 0.6 * n
    assert 3.0 < s.summary()["scored_per_trained"] < 5.5  # about beta + 1 = 4 scored per trained


def test_selective_backprop_needs_a_score_fn():
    with pytest.raises(ValueError, match="score_fn"):
        SelectiveBackprop().setup(10, 2, CPU, torch.Generator())


# --- state round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("loss", {"warmup_epochs": 1, "subset": 0.5}),
        (
            "loss",
            {"score": "running", "replacement": True, "method": "proportional", "smoothing": 0.1},
        ),
        ("obs", {"pressure_end": 10.0}),
        ("per", {}),
        ("prediction_subset", {"kind": "c"}),
        ("selective_backprop", {"history": 50}),
    ],
)
def test_resume_from_state_dict_continues_identically(name, options):
    n, b = 60, 6
    a = build_strategy(name, options)
    drive(a, n, b, steps=17)
    saved = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.state_dict().items()
    }
    gen_state = a.generator.get_state()

    def selections(strategy):  # as fit does: the trainer sets progress before every select
        out = []
        for k in range(8):
            strategy.progress = (17 + k) / 25
            out.append(strategy.select(17 + k))
        return out

    continued = selections(a)

    c = build_strategy(name, options)
    c.setup(n, b, CPU, torch.Generator(), fake_score_fn, labels_for(n))
    c.load_state_dict(saved)
    c.generator.set_state(gen_state)
    resumed = selections(c)
    for (i1, w1), (i2, w2) in zip(continued, resumed):
        assert torch.equal(i1, i2)
        assert (w1 is None and w2 is None) or torch.equal(w1, w2)


# --- diagnostics -------------------------------------------------------------------------------------


def test_distribution_stats_agree_with_the_summary_and_known_values():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    stats = distribution_stats(p)
    summary = distribution_summary(p)
    assert stats.tolist() == pytest.approx(list(summary.values()))
    assert summary["entropy"] == pytest.approx(1.5 * math.log(2))
    assert summary["effective_fraction"] == pytest.approx(1 / (4 * 0.375))
    assert summary["max_weight"] == pytest.approx(1.0)  # 1/(4 * 0.25)
    uniform = distribution_summary(torch.full((8,), 1 / 8))
    assert uniform["kl_from_uniform"] == pytest.approx(0.0, abs=1e-12) and uniform[
        "effective_fraction"
    ] == pytest.approx(1)


def test_coverage():
    assert coverage(torch.tensor([1, 1, 1, 1])) == {
        "seen": 1.0,
        "visit_entropy": pytest.approx(1.0),
    }
    c = coverage(torch.tensor([4, 0, 0, 0]))
    assert c["seen"] == 0.25 and c["visit_entropy"] == 0.0
    assert coverage(torch.zeros(3)) == {"seen": 0.0, "visit_entropy": 0.0}
    with pytest.raises(ValueError, match="non-negative"):
        coverage(torch.tensor([1, -1]))


def test_hard_selection_trains_on_the_highest_scored_candidates():
    from ismod.strategies import HardSelection

    losses_of = torch.rand(400, generator=torch.Generator().manual_seed(0))

    def score_fn(idx):
        return losses_of[idx], torch.zeros(idx.numel(), 10)

    s = HardSelection(keep=0.25)
    s.setup(400, 20, torch.device("cpu"), torch.Generator().manual_seed(1), score_fn)
    for step in range(10):
        idx, weights = s.select(step)
        candidates = s.stream.order[
            s.stream.position - 80 : s.stream.position
        ]  # the 80 candidates just scored
        assert weights is None and idx.numel() == 20
        assert set(idx.tolist()) == set(
            candidates[torch.topk(losses_of[candidates], 20).indices].tolist()
        )


def test_infobatch_epochs_prune_well_learned_samples_and_weigh_the_kept():
    from ismod.strategies import InfoBatch

    n, b = 300, 10
    s = InfoBatch(prune_ratio=0.5, delta=0.9)
    s.setup(n, b, torch.device("cpu"), torch.Generator().manual_seed(0))
    losses = torch.linspace(0, 2, n)
    first = torch.cat([s.select(step)[0] for step in range(n // b)])
    assert sorted(first.tolist()) == list(range(n))  # nothing known yet: every sample once
    for step in range(n // b):
        idx = first[step * b : (step + 1) * b]
        s.observe(idx, losses[idx], torch.zeros(b, 3))
    idx, weights = s.select(n // b)
    queue, queue_weights = s.queue, s.queue_weights
    low = queue < n // 2  # scores below the mean (1.0)
    assert torch.all(queue_weights[low] == 2.0) and torch.all(queue_weights[~low] == 1.0)
    # every high-loss sample stays, but for the last partial batch, which is dropped
    assert len(set(range(n // 2, n)) - set(queue.tolist())) < b
    assert 0.3 * n // 2 < int(low.sum()) < 0.7 * n // 2  # about half of the low-loss half kept
    s.progress = 0.95  # annealing: everything, unweighted
    s.position = s.queue.numel()
    s.select(2 * n // b)
    assert s.queue_weights is None and s.queue.numel() == n - n % b


def test_rho_loss_trains_on_the_largest_reducible_losses_of_each_candidate_batch():
    """RHO-LOSS (Mindermann et al. 2022) against a brute-force reference: the trainer's reference model
    is trained once, on the holdout alone; each step's candidates are uniform draws from the other
    points; the b trained on are those of largest loss minus irreducible loss; held-out points are
    never trained on."""
    from ismod.strategies import ReducibleHoldoutLoss

    n, b = 100, 4
    current = torch.rand(n, generator=torch.Generator().manual_seed(1))  # the model's loss of each
    irreducible = torch.rand(n, generator=torch.Generator().manual_seed(2))  # the reference model's
    calls, candidates = [], []

    def score_fn(idx, augmented=False):
        candidates.append(idx.clone())
        return current[idx], torch.zeros(idx.numel(), 3)

    def trainer(indices, epochs):
        calls.append((indices.clone(), epochs))
        return lambda idx: irreducible[idx]

    s = ReducibleHoldoutLoss(keep=0.2, holdout=0.3, reference_epochs=4)
    s.setup(
        n,
        b,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        score_fn,
        torch.zeros(n, dtype=torch.long),
    )
    s.set_reference_trainer(trainer)
    trained = []
    for step in range(30):
        idx, w = s.select(step)
        assert w is None and idx.numel() == b
        cand = candidates[-1]
        assert cand.numel() == 20 and cand.unique().numel() == 20  # b / keep, without repeats
        brute = sorted(
            cand.tolist(), key=lambda i: float(current[i] - irreducible[i]), reverse=True
        )[:b]
        assert sorted(idx.tolist()) == sorted(brute)
        trained += idx.tolist()
    ((held, epochs),) = calls  # trained once, on the holdout, for the epochs asked
    assert epochs == 4 and held.numel() == 30 and held.unique().numel() == 30
    seen = torch.cat(candidates)
    assert not set(held.tolist()) & set(seen.tolist())  # the holdout is neither scored nor trained
    assert set(seen.tolist()) == set(range(n)) - set(held.tolist())  # 600 draws cover the other 70
    with pytest.raises(ValueError, match="holdout"):
        ReducibleHoldoutLoss(holdout=1.0)
    with pytest.raises(ValueError, match="leaves 2 to train on"):
        ReducibleHoldoutLoss(holdout=0.8).setup(
            10,
            4,
            torch.device("cpu"),
            torch.Generator(),
            score_fn,
            torch.zeros(10, dtype=torch.long),
        )
    unready = ReducibleHoldoutLoss()
    unready.setup(
        n, b, torch.device("cpu"), torch.Generator(), score_fn, torch.zeros(n, dtype=torch.long)
    )
    with pytest.raises(ValueError, match="reference model"):
        unready.select(0)


def test_rho_loss_in_the_harness_charges_its_reference_model_to_the_run(tmp_path):
    """Under fit, RHO-LOSS's irreducible-loss model is trained inside the first step: its trained
    samples, its scoring of the remaining points and the candidates all count as forward passes."""
    from test_harness import make_tree

    from ismod.experiments import Config, run
    from ismod.train import TRAINED_SAMPLE_FORWARDS

    config = Config(strategy="rho_loss", strategy_options={"keep": 0.5, "holdout": 0.25, "reference_epochs": 2},
                    subset=None, batch_size=4, budget="steps", budget_amount=3, evaluations=1)  # fmt: skip
    result = run(config, data_root=make_tree(tmp_path), progress=False)
    n = 36  # make_tree's training set
    held, reference_steps = 9, round(2 * 9 / 4)
    expected = (
        TRAINED_SAMPLE_FORWARDS * 4 * reference_steps  # the reference model's training
        + (n - held)  # its irreducible loss of each remaining point
        + 3 * (8 + TRAINED_SAMPLE_FORWARDS * 4)
    )  # 3 steps: 8 candidates scored, 4 trained
    assert result.final["steps"] == 3
    assert result.final["forward_passes"] == pytest.approx(expected)
