"""Tests of ismod.sampling: invariants, goodness of fit, unbiasedness, large N, error paths."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from ismod import sampling
from ismod.sampling import ImportanceSampler, IndexedDataset, SumTree, draw, probabilities

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def chi2_threshold(df: int, z: float = 3.29) -> float:
    """Upper quantile of chi-square(df) by Wilson–Hilferty; z = 3.29 is the 99.95% normal quantile."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_statistic(indices: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    counts = torch.bincount(indices.cpu(), minlength=probs.numel()).double()
    expected = probs.double().cpu() * indices.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "drew an index of probability 0"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


# --- probabilities --------------------------------------------------------------------------------

score_lists = st.lists(
    st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    scores=score_lists,
    method=st.sampled_from(sampling.METHODS),
    temperature=st.floats(min_value=0.05, max_value=20),
    smoothing=st.floats(min_value=0, max_value=1),
)
def test_probabilities_invariants(scores, method, temperature, smoothing):
    s = torch.tensor(scores, dtype=torch.float64)
    if method == "proportional" and not (s > 0).any():
        return
    p = probabilities(s, method, temperature=temperature, smoothing=smoothing)
    assert p.shape == s.shape and torch.isfinite(p).all() and (p >= 0).all()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    if smoothing > 0:  # every weight 1/(N p_i) is bounded by 1/smoothing
        assert float((1 / (len(scores) * p)).max()) <= 1 / smoothing * (1 + 1e-9)
    # a higher score never gets a lower probability
    order = torch.argsort(s)
    assert (p[order].diff() >= -1e-12).all()


def test_softmax_matches_torch_and_is_stable_for_large_scores():
    s = torch.tensor([1e4, 1e4 - 1.0, 0.0, 3.0])
    p = probabilities(s, "softmax")
    assert torch.isfinite(p).all()
    assert torch.allclose(p, torch.softmax(s.double(), 0).float())
    assert torch.allclose(
        probabilities(s, temperature=2.0), torch.softmax(s.double() / 2, 0).float()
    )


def test_proportional_and_temperature():
    s = torch.tensor([1.0, 2.0, 3.0, 0.0])
    assert torch.allclose(probabilities(s, "proportional"), s / s.sum())
    sq = s.sqrt()
    assert torch.allclose(probabilities(s, "proportional", temperature=2.0), sq / sq.sum())


def test_rank_ratio_top_to_bottom_equals_pressure():
    s = torch.rand(500, generator=torch.Generator().manual_seed(0))
    p = probabilities(s, "rank", pressure=100.0)
    assert float(p.max() / p.min()) == pytest.approx(100.0, rel=1e-6)
    assert int(p.argmax()) == int(s.argmax()) and int(p.argmin()) == int(s.argmin())


def test_smoothing_formula():
    s = torch.tensor([1.0, 3.0])
    assert torch.allclose(
        probabilities(s, "proportional", smoothing=0.5), torch.tensor([0.375, 0.625])
    )
    assert torch.allclose(probabilities(s, smoothing=1.0), torch.tensor([0.5, 0.5]))


def test_integer_scores_give_float():
    p = probabilities(torch.tensor([1, 2, 3]), "proportional")
    assert p.dtype == torch.get_default_dtype()


@pytest.mark.parametrize(
    "scores, kwargs, match",
    [
        (torch.tensor([1.0, -2.0]), {}, "scores must be non-negative.*1 negative"),
        (torch.tensor([1.0, math.nan, math.nan]), {}, "scores contain NaN at 2 positions"),
        (torch.tensor([1.0, math.inf]), {}, "scores contain infinite values at 1 positions"),
        (torch.zeros(3), {"method": "proportional"}, "all zero"),
        (torch.ones(2, 2), {}, "1-D"),
        (torch.ones(0), {}, "non-empty"),
        (torch.ones(3), {"temperature": 0.0}, "temperature must be"),
        (torch.ones(3), {"temperature": -1.0}, "temperature must be"),
        (torch.ones(3), {"smoothing": 1.5}, r"smoothing must lie in \[0, 1\]"),
        (torch.ones(3), {"smoothing": -0.1}, r"smoothing must lie in \[0, 1\]"),
        (torch.ones(3), {"method": "sqrt"}, "method must be one of"),
        (torch.ones(3), {"method": "rank", "pressure": 0.5}, "pressure must be"),
    ],
)
def test_probabilities_errors(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        probabilities(scores, **kwargs)


# --- draw ----------------------------------------------------------------------------------------


def test_draw_goodness_of_fit_and_exact_weights():
    g = torch.Generator().manual_seed(1)
    p = probabilities(torch.rand(20, generator=g, dtype=torch.float64) ** 3, "proportional")
    idx, w = draw(p, 200_000, generator=g)
    assert idx.dtype == torch.int64 and w.dtype == torch.float64
    stat, df = chi2_statistic(idx, p)
    assert stat < chi2_threshold(df)
    assert torch.equal(w, 1.0 / (20 * p[idx]))


def test_draw_never_picks_zero_probability():
    p = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    idx, _ = draw(p, 10_000, generator=torch.Generator().manual_seed(0))
    assert set(idx.tolist()) <= {1, 3}
    idx, _ = draw(p, 2, replacement=False, generator=torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [1, 3]


def test_weighted_minibatch_mean_is_unbiased_with_replacement():
    g = torch.Generator().manual_seed(2)
    values = torch.randn(100, generator=g, dtype=torch.float64).abs() * 5
    p = probabilities(torch.rand(100, generator=g, dtype=torch.float64) + 0.1, "proportional")
    reps, k = 4000, 16
    idx, w = draw(p, reps * k, generator=g)
    batch_means = (w * values[idx]).view(reps, k).mean(1)
    se = batch_means.std() / math.sqrt(reps)
    assert abs(float(batch_means.mean() - values.mean())) < 4 * float(se)


def test_without_replacement_is_distinct_and_biased():
    # Two heavy items and many light ones: without replacement, the heavy items are in almost every
    # batch, far more often than k p_i, so the 1/(N p_i) weights overshoot their contribution.
    p = torch.tensor([0.3, 0.3] + [0.4 / 8] * 8, dtype=torch.float64)
    values = torch.tensor([1.0, 1.0] + [0.0] * 8, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    means = []
    for _ in range(3000):
        idx, w = draw(p, 5, replacement=False, generator=g)
        assert idx.unique().numel() == 5
        means.append(float((w * values[idx]).mean()))
    means = torch.tensor(means)
    se = means.std() / math.sqrt(len(means))
    bias = float(means.mean() - values.mean())
    assert abs(bias) > 10 * float(se), "the bias this test documents has disappeared"


def test_draw_beyond_multinomial_limit():
    n = 2**24 + 10
    p = torch.zeros(n, dtype=torch.float64)
    p[[3, n - 5, n - 1]] = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with pytest.raises(RuntimeError):
        torch.multinomial(p, 1)  # the limit ismod works around
    idx, w = draw(p, 20_000, generator=torch.Generator().manual_seed(0))
    counts = {i: int((idx == i).sum()) for i in (3, n - 5, n - 1)}
    assert sum(counts.values()) == 20_000
    assert counts[n - 1] / 20_000 == pytest.approx(0.5, abs=4 * math.sqrt(0.25 / 20_000))
    assert float(w[idx == n - 1][0]) == pytest.approx(1 / (n * 0.5))
    idx, _ = draw(p, 3, replacement=False, generator=torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [3, n - 5, n - 1]


@pytest.mark.parametrize(
    "probs, k, kwargs, match",
    [
        (
            torch.full((4,), 0.25),
            5,
            {"replacement": False},
            "k = 5 draws without replacement exceed",
        ),
        (torch.tensor([0.5, 0.5, 0.0]), 3, {"replacement": False}, "only 2 positive"),
        (torch.full((4,), 0.25), 0, {}, "k must be"),
        (torch.tensor([0.5, 0.6]), 1, {}, "sum to 1"),
        (torch.tensor([1.5, -0.5]), 1, {}, "negative"),
        (torch.tensor([math.nan, 1.0]), 1, {}, "NaN or infinite"),
        (torch.ones(2, 2) / 4, 1, {}, "1-D"),
        (torch.tensor([0, 1]), 1, {}, "floating-point"),
    ],
)
def test_draw_errors(probs, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        draw(probs, k, **kwargs)


# --- SumTree -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, branching, top_size",
    [
        (1, 4, 4),
        (5, 4, 4),
        (64, 4, 4),
        (1000, 8, 4),
        (3000, 64, 64),
        (3000, None, 4096),
        (40_000, None, 100),
    ],
)
@pytest.mark.parametrize("backend", ["compiled", "tensor", "cumsum"])
def test_sum_tree_goodness_of_fit_and_updates(n, branching, top_size, backend):
    g = torch.Generator().manual_seed(n)
    masses = torch.rand(n, generator=g, dtype=torch.float64)
    masses[::3] = 0.0 if n > 1 else masses[::3]
    tree = SumTree(masses, branching=branching, top_size=top_size, backend=backend)
    assert tree.compiled == (backend == "compiled")
    if backend == "tensor":
        assert tree.levels[-1].numel() <= top_size
    assert float(tree.total) == pytest.approx(float(masses.sum()))
    stat, df = chi2_statistic(tree.sample(100_000, generator=g), masses / masses.sum())
    if df:
        assert stat < chi2_threshold(df)
    # update a batch (with a repeated index) and check the new distribution
    idx = torch.randint(n, (37,), generator=g)
    new = torch.rand(37, generator=g, dtype=torch.float64) * 5
    tree.update(idx, new)
    masses[idx] = new  # same last-write semantics on CPU for the reference
    masses[idx] = tree.masses(idx)
    assert torch.equal(tree.masses(), masses)
    assert float(tree.total) == pytest.approx(float(masses.sum()))
    stat, df = chi2_statistic(tree.sample(100_000, generator=g), masses / masses.sum())
    if df:
        assert stat < chi2_threshold(df)


@pytest.mark.parametrize("backend", ["compiled", "tensor", "cumsum"])
def test_sum_tree_beyond_multinomial_limit(backend):
    n = 2**24 + 10
    tree = SumTree(torch.zeros(n, dtype=torch.float64), backend=backend)
    if backend == "tensor":
        assert len(tree.levels) == 3  # two levels below a top row of at most 4096
    tree.update(torch.tensor([n - 1, 7]), torch.tensor([3.0, 1.0], dtype=torch.float64))
    idx = tree.sample(4000, generator=torch.Generator().manual_seed(0))
    assert set(idx.tolist()) == {7, n - 1}
    assert float((idx == n - 1).double().mean()) == pytest.approx(
        0.75, abs=4 * math.sqrt(0.1875 / 4000)
    )


def test_cumsum_tree_never_draws_an_empty_leaf_at_the_edges(monkeypatch):
    masses = torch.tensor([0.0, 1e-300, 3.0, 0.0, 0.0], dtype=torch.float64)
    tree = SumTree(masses, backend="cumsum")
    idx, mass = tree.sample_with_masses(10_000, generator=torch.Generator().manual_seed(0))
    assert set(idx.tolist()) <= {1, 2} and bool((mass > 0).all())
    real_rand = torch.rand
    for u, expected in (
        (1.0, 2),
        (0.0, 1),
    ):  # a target on the total (past the last leaf with mass), and 0
        monkeypatch.setattr(
            torch, "rand", lambda k, u=u, **kw: torch.full((k,), u, dtype=torch.float64)
        )
        assert tree.sample(3).tolist() == [expected] * 3
    monkeypatch.setattr(torch, "rand", real_rand)
    # a parallel scan whose prefix steps out of order by a rounding error gives an empty leaf an interval
    tree = SumTree(torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64), backend="cumsum")
    tree.sample(1)
    cum = torch.tensor([0.0, 1.0, 1.0 + 1e-9, 2.0], dtype=torch.float64)
    tree._cumulative = cum, torch.searchsorted(cum, cum[-1:])
    monkeypatch.setattr(
        torch, "rand", lambda k, **kw: torch.full((k,), (1.0 + 5e-10) / 2.0, dtype=torch.float64)
    )
    idx, mass = tree.sample_with_masses(2)
    assert idx.tolist() == [3, 3] and mass.tolist() == [1.0, 1.0]


def test_cumsum_tree_draws_again_after_an_update_and_the_sampler_takes_the_backend():
    tree = SumTree(torch.ones(4, dtype=torch.float64), backend="cumsum")
    tree.update(torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.float64))
    assert set(tree.sample(200, generator=torch.Generator().manual_seed(0)).tolist()) == {3}
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(200, generator=g, dtype=torch.float64) + 0.01
    for backend in ("compiled", "tensor", "cumsum"):
        s = ImportanceSampler(
            200, smoothing=0.1, backend=backend, generator=torch.Generator().manual_seed(1)
        )
        s.update(torch.arange(200), scores)
        assert s.table.compiled == (backend == "compiled")
        idx, w = s.sample(50_000)
        stat, df = chi2_statistic(idx, s.probabilities())
        assert stat < chi2_threshold(df), backend
        assert torch.allclose(w, (1 / (200 * s.probabilities()[idx])).float())
    with pytest.raises(ValueError, match="backend must be one of"):
        ImportanceSampler(10, backend="flat")
    with pytest.raises(ValueError, match="backend must be one of"):
        SumTree(torch.ones(3), backend="tree")


# --- ImportanceSampler --------------------------------------------------------------------------


def test_sampler_starts_uniform_and_follows_updates():
    g = torch.Generator().manual_seed(0)
    s = ImportanceSampler(50, method="proportional", generator=g, smoothing=0.0)
    assert torch.allclose(s.probabilities(), torch.full((50,), 1 / 50, dtype=torch.float64))
    scores = torch.rand(50, generator=g, dtype=torch.float64) + 0.01
    for chunk in torch.arange(50).split(7):
        s.update(chunk, scores[chunk])
    expected = probabilities(scores, "proportional")
    assert torch.allclose(s.probabilities(), expected)
    idx, w = s.sample(100_000)
    stat, df = chi2_statistic(idx, expected)
    assert stat < chi2_threshold(df)
    assert torch.allclose(w, (1 / (50 * expected[idx])).float())
    assert torch.equal(s.weights_for(idx[-10:]), w[-10:])


@pytest.mark.parametrize("method", sampling.METHODS)
def test_sampler_probabilities_match_function(method):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(300, generator=g, dtype=torch.float64) * 4
    s = ImportanceSampler(300, method=method, temperature=0.7, smoothing=0.1, rebuild_every=10**9)
    s.update(torch.arange(300), scores)
    # after this many single updates the tree is incremental, not rebuilt (rebuild_every is huge)
    s.update(torch.tensor([5, 9]), torch.tensor([10.0, 0.0]))
    scores[[5, 9]] = torch.tensor([10.0, 0.0], dtype=torch.float64)
    ref = probabilities(scores, method, temperature=0.7, smoothing=0.1)
    assert torch.allclose(s.probabilities(), ref, rtol=1e-9, atol=1e-12)


def test_sampler_smoothing_mixture_fits():
    s = ImportanceSampler(
        10, method="proportional", smoothing=0.3, generator=torch.Generator().manual_seed(0)
    )
    scores = torch.tensor([0.0] * 5 + [1.0] * 5)
    s.update(torch.arange(10), scores)
    idx, w = s.sample(100_000)
    stat, df = chi2_statistic(idx, s.probabilities())
    assert stat < chi2_threshold(df)
    assert float(w.max()) == pytest.approx(1 / 0.3, rel=1e-6)


def test_sampler_weighted_mean_unbiased():
    g = torch.Generator().manual_seed(5)
    values = torch.rand(200, generator=g, dtype=torch.float64) * 3
    s = ImportanceSampler(200, method="softmax", generator=g, smoothing=0.0)
    s.update(torch.arange(200), values)
    reps, k = 3000, 32
    idx, w = s.sample(reps * k)
    batch_means = (w.double() * values[idx]).view(reps, k).mean(1)
    assert abs(float(batch_means.mean() - values.mean())) < 4 * float(
        batch_means.std()
    ) / math.sqrt(reps)


def test_sampler_repeated_index_keeps_one_value():
    s = ImportanceSampler(4, method="proportional", rebuild_every=10**6, smoothing=0.0)
    s.update(torch.tensor([2, 2, 1]), torch.tensor([1.0, 3.0, 5.0]))
    assert s.scores[2].item() in (1.0, 3.0) and s.scores[[0, 1, 3]].tolist() == [1.0, 5.0, 1.0]
    assert torch.allclose(s.probabilities(), probabilities(s.scores, "proportional"))


@pytest.mark.parametrize("workers", [0, 2])
def test_sampler_in_a_dataloader_loop(workers):
    n = 64
    data = TensorDataset(torch.arange(n, dtype=torch.float32), torch.zeros(n))
    sampler = ImportanceSampler(
        n,
        num_samples=256,
        method="proportional",
        smoothing=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    sampler.update(torch.arange(n), torch.zeros(n).index_fill_(0, torch.arange(8), 1.0))
    loader = DataLoader(IndexedDataset(data), batch_size=32, sampler=sampler, num_workers=workers)
    seen = []
    for x, _, idx in loader:
        assert torch.equal(x.long(), idx)  # the dataset returned the item the sampler chose
        assert torch.allclose(sampler.weights_for(idx), torch.full((len(idx),), 8 / n))
        sampler.update(idx, torch.ones(len(idx)))
        seen.append(idx)
    seen = torch.cat(seen)
    assert len(seen) == 256 == len(sampler)
    assert set(seen[:32].tolist()) <= set(range(8))  # the first batch comes from the 8 scored items


def test_sampler_state_dict_round_trip():
    a = ImportanceSampler(
        30, method="softmax", generator=torch.Generator().manual_seed(0), smoothing=0.0
    )
    a.update(torch.arange(10), torch.linspace(0, 3, 10))
    a.sample(5)
    b = ImportanceSampler(30, method="softmax", smoothing=0.0)
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a.probabilities(), b.probabilities(), rtol=1e-12, atol=0)
    assert torch.equal(a.weights_for(torch.arange(30)), b.weights_for(torch.arange(30)))
    with pytest.raises(ValueError, match="scores for 30 items, this sampler has 31"):
        ImportanceSampler(31).load_state_dict(a.state_dict())


@pytest.mark.parametrize("backend", ["compiled", "tensor", "cumsum"])
def test_sampler_resumed_with_its_backend_draws_as_the_saved_one(backend):
    a = ImportanceSampler(40, backend=backend, generator=torch.Generator().manual_seed(0))
    a.update(torch.arange(40), torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.1)
    a.update(*a.sample(16))  # an incremental update after the rebuild, then save
    b = ImportanceSampler(40, backend=backend)
    b.load_state_dict(a.state_dict())
    drawn = [s.sample(64, generator=torch.Generator().manual_seed(5)) for s in (a, b)]
    assert torch.equal(drawn[0][0], drawn[1][0]) and torch.equal(drawn[0][1], drawn[1][1])


def test_sampler_large_n():
    n = 2**24 + 10
    s = ImportanceSampler(n, method="proportional", initial_score=1e-12, smoothing=0.0)
    s.update(torch.tensor([n - 1]), torch.tensor([1.0]))
    idx, _ = s.sample(1000)
    assert (idx == n - 1).float().mean() > 0.95


def test_sampler_errors():
    with pytest.raises(ValueError, match="num_items"):
        ImportanceSampler(0)
    with pytest.raises(ValueError, match="num_samples"):
        ImportanceSampler(5, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        ImportanceSampler(5, temperature=0)
    with pytest.raises(ValueError, match="all-zero"):
        ImportanceSampler(5, method="proportional", initial_score=0.0, smoothing=0.5)
    zeroed = ImportanceSampler(2, method="proportional", rebuild_every=2, smoothing=0.0)
    with pytest.raises(ValueError, match="all zero"):
        zeroed.update(torch.tensor([0, 1]), torch.zeros(2))
    s = ImportanceSampler(5)
    with pytest.raises(ValueError, match="scores contain NaN at 1 positions"):
        s.update(torch.tensor([0, 1]), torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="same length"):
        s.update(torch.tensor([0, 1]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        s.update(torch.tensor([0]), torch.tensor([-1.0]))


@pytest.mark.cuda
@CUDA
def test_sampler_on_cuda_without_sync():
    dev = torch.device("cuda")
    s = ImportanceSampler(
        100_000, method="softmax", device=dev, generator=torch.Generator(dev).manual_seed(0)
    )
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            i, w = s.sample(128)
            s.update(i, torch.rand(128, device=dev))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert i.device.type == "cuda" and w.device.type == "cuda"
    p, _ = draw(probabilities(torch.rand(1000, device=dev)), 10)
    assert p.device.type == "cuda"
    # a CPU sampler (a DataLoader's) hands a batch moved to the GPU its weights there
    cpu_sampler = ImportanceSampler(100)
    idx, w = cpu_sampler.sample(16)
    assert torch.equal(cpu_sampler.weights_for(idx.to(dev)).cpu(), w)


# --- distributed mode --------------------------------------------------------------------------------


def test_distributed_replicas_split_one_global_draw():
    state = {"scores": torch.linspace(0.1, 3.0, 40), "weight_at_draw": torch.ones(40)}
    replicas = [
        ImportanceSampler(
            40,
            num_samples=300,
            method="proportional",
            smoothing=0.0,
            num_replicas=3,
            rank=r,
            seed=11,
        )
        for r in range(3)
    ]
    for s in replicas:
        s.load_state_dict(state)  # the same scores on every replica
        s.set_epoch(2)
    yields = [list(s) for s in replicas]
    ref = ImportanceSampler(40, method="proportional", smoothing=0.0)
    ref.load_state_dict(state)
    gen = torch.Generator().manual_seed(11 + 2)
    drawn = torch.cat(
        [ref.sample(k, generator=gen)[0] for k in (126,) * 7 + (18,)]
    )  # 900 in chunks of 126, as the replicas draw them
    for r in range(3):
        assert yields[r] == drawn[r::3].tolist()
    replicas[0].set_epoch(3)
    assert list(replicas[0]) != yields[0]  # a new epoch, a new draw
    replicas[0].set_epoch(2)
    assert list(replicas[0]) == yields[0]  # the same epoch, the same draw


def test_distributed_mode_names_bad_arguments():
    with pytest.raises(ValueError, match="pass seed=..., not generator="):
        ImportanceSampler(10, num_replicas=2, rank=0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"rank must lie in \[0, num_replicas=2\)"):
        ImportanceSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be a positive integer"):
        ImportanceSampler(10, num_replicas=0)
    s = ImportanceSampler(10, num_replicas=2, rank=1)
    assert len(s) == 5  # ceil(N / replicas), as DistributedSampler
    with pytest.raises(RuntimeError, match="needs an initialised process group of 2 ranks"):
        s.update(torch.tensor([1]), torch.tensor([2.0]))
