"""Chapter 5's strategy: Katharopoulos & Fleuret's Algorithm 1 (presample, resample, τ switch)."""

import math

import pytest
import torch

from ismod.bounds import upper_bound
from ismod.strategies import Presample, build_strategy
from ismod.tau import switch_threshold

CPU = torch.device("cpu")
N, B_SIZE, C = 60, 4, 3


def labels() -> torch.Tensor:
    return torch.arange(N) % C


class Scorer:
    """score_fn stand-in: logits that make sample i's upper bound grow with i; counts its calls."""

    def __init__(self):
        self.calls = 0
        self.sizes = []

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(indices.numel(), C)
        # the true class gets logit 3 - i/4: confident for small i, wrong for large i
        z[torch.arange(indices.numel()), labels()[indices]] = 3 - indices.float() / 4
        return z

    def __call__(self, indices, augmented=False):
        self.calls += 1
        self.sizes.append(indices.numel())
        out = (indices.float() / 10, self.logits(indices))
        # augmented: the scored inputs come back too (the trainer's contract), here the indices as x
        return (*out, (indices.float()[:, None], labels()[indices])) if augmented else out


def make(scorer, **options) -> Presample:
    s = Presample(**options)
    s.setup(N, B_SIZE, CPU, torch.Generator().manual_seed(0), scorer, labels())
    return s


def step(s: Presample, scorer: Scorer, k: int):
    idx, w = s.select(k)
    s.observe(idx, idx.float() / 10, scorer.logits(idx))
    return idx, w


def test_bad_options_and_setups():
    for kwargs, match in (({"presample": 0.5}, "presample"), ({"score": "norm"}, "score"),
                          ({"threshold": "guess"}, "threshold"), ({"threshold": 0.5}, ">= 1"),
                          ({"tau_momentum": 1.0}, "tau_momentum")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            Presample(**kwargs)
    with pytest.raises(ValueError, match="exceeds the 10 training samples"):
        Presample(presample=3).setup(
            10, 4, CPU, torch.Generator(), Scorer(), torch.zeros(10, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="score_fn and labels"):
        Presample().setup(N, 4, CPU, torch.Generator())


def test_threshold_rules():
    s = make(Scorer(), presample=3)
    assert s.tau_threshold == pytest.approx(2.0)  # (B + 3b)/(3b) with B = 3b, before any timing
    s.set_step_times(forward=0.01, backward=0.03)  # t_b = 3 t_f
    assert (
        s.tau_threshold
        == pytest.approx(switch_threshold(12, 4, 0.01 / 4, 0.03 / 4))
        == pytest.approx(1 + 3 * 0.25)
    )
    fixed = make(Scorer(), threshold="fixed")
    fixed.set_step_times(0.01, 0.03)
    assert fixed.tau_threshold == pytest.approx(2.0)
    assert make(Scorer(), threshold=1.5).tau_threshold == 1.5


def test_uniform_phase_scores_the_batch_for_free_and_tau_follows_the_recurrence():
    scorer = Scorer()
    s = make(scorer, threshold=1e9)  # never switch
    tau = 0.0
    for k in range(12):
        idx, w = step(s, scorer, k)
        assert w is None
        g = upper_bound(scorer.logits(idx), labels()[idx]).double()
        g = g / g.sum()
        tau = 0.9 * tau + 0.1 * float(len(g) * (g**2).sum())
        assert float(s.tau) == pytest.approx(tau, rel=1e-9)  # updated every step
    assert scorer.calls == 0  # no presample before the switch
    assert s.summary()["importance_steps"] == 0


def test_after_the_switch_weights_are_one_over_b_g():
    scorer = Scorer()
    s = make(scorer, threshold=1.0, tau_momentum=0.5)
    k = 0
    while s.importance_steps == 0:
        step(s, scorer, k)
        k += 1
        assert k < 50
    assert s.switch_step == k - 1 and scorer.sizes == [12]
    # check one importance step by hand: rebuild g from the presample the strategy scored
    position = s.stream.position
    presample = s.stream.order[position : position + 12] if position + 12 <= N else None
    idx, w = s.select(k)
    assert scorer.sizes[-1] == 12 and presample is not None
    g = upper_bound(scorer.logits(presample), labels()[presample]).double()
    g = g / g.sum()
    lookup = {int(i): float(gi) for i, gi in zip(presample, g)}
    assert torch.allclose(
        w.double(),
        torch.tensor([1 / (12 * lookup[int(i)]) for i in idx], dtype=torch.float64),
        rtol=1e-6,
    )
    assert set(idx.tolist()) <= set(presample.tolist())


def test_sqrt_option_takes_the_square_root_of_tau_new():
    a, b = Scorer(), Scorer()
    plain, rooted = (
        make(a, threshold=1e9, tau_momentum=0.0),
        make(b, threshold=1e9, tau_momentum=0.0, sqrt=True),
    )
    step(plain, a, 0)
    step(rooted, b, 0)
    assert float(rooted.tau) == pytest.approx(math.sqrt(float(plain.tau)))


def test_importance_false_never_switches_but_tracks_tau():
    scorer = Scorer()
    s = make(scorer, threshold=1.0, importance=False)
    for k in range(20):
        step(s, scorer, k)
    assert scorer.calls == 0 and float(s.tau) > 0.8  # τ starts at 0: 1 - 0.9^20 of the way to >= 1


def test_resume_preserves_tau_and_phase():
    scorer = Scorer()
    a = make(scorer, threshold=1.05, tau_momentum=0.5)
    for k in range(15):
        step(a, scorer, k)
    assert a.importance_steps > 0
    saved = {
        k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in a.state_dict().items()
    }
    gen = a.generator.get_state()
    after_a = [step(a, scorer, 15 + k) for k in range(6)]
    b = make(Scorer(), threshold=1.05, tau_momentum=0.5)
    b.load_state_dict(saved)
    b.generator.set_state(gen)
    assert (
        float(b.tau) == pytest.approx(float(saved["tau"])) and b.switch_step == saved["switch_step"]
    )
    after_b = [step(b, scorer, 15 + k) for k in range(6)]
    for (i1, w1), (i2, w2) in zip(after_a, after_b):
        assert torch.equal(i1, i2) and ((w1 is None and w2 is None) or torch.equal(w1, w2))
    assert float(a.tau) == float(b.tau)


def test_registered():
    assert isinstance(build_strategy("presample", {"score": "loss"}), Presample)


@pytest.mark.parametrize("score", ["bound", "loss"])
def test_the_harness_strategy_and_the_own_loop_sampler_decide_alike_on_the_same_stream(score):
    """Presample and TauSwitchSampler share one core (the score, the draw, the τ update): fed the same
    batches, and drawing from the same generator state, they switch at the same step, train on the
    same samples with the same loss and keep the same τ, step by step."""
    import torch.nn.functional as F

    from ismod import TauSwitchSampler

    torch.manual_seed(0)
    n, b, dim = 200, 8, 5
    x, y = torch.randn(n, dim), torch.randint(0, C, (n,))
    model = torch.nn.Linear(dim, C)  # fixed weights: a sample's score does not change over the run
    with torch.no_grad():
        model.weight.mul_(4.0)  # confident on some samples, wrong on others: scores far from equal
    scored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (presample, the generator's state then)

    def forward(indices):
        with torch.no_grad():
            logits = model(x[indices])
        return F.cross_entropy(logits, y[indices], reduction="none"), logits

    def score_fn(indices, augmented=False):
        scored.append((indices.clone(), harness.generator.get_state()))  # just before the draw
        return forward(indices)

    options = {"presample": 3, "score": score, "threshold": 1.15, "tau_momentum": 0.5}
    harness = Presample(**options, score_augmented=False)
    harness.setup(n, b, CPU, torch.Generator().manual_seed(1), score_fn, y)
    own = TauSwitchSampler(
        model, n, b, **options, batch_norm="train"
    )  # never iterated: it trains on what it is given
    importance_steps = 0
    for k in range(60):
        decides = own.importance_on()
        idx, w = harness.select(k)
        assert (w is not None) == decides, f"step {k}: the two switched differently"
        losses, logits = forward(idx)
        if w is None:  # a uniform batch: each folds the batch's own scores into τ
            loss = own.loss(x[idx], y[idx])
            torch.testing.assert_close(loss, losses.mean(), rtol=0, atol=0)
        else:  # the same presample, drawn from the same generator state
            importance_steps += 1
            presample, state = scored[-1]
            own._generator.set_state(state)
            loss = own.loss(x[presample], y[presample])
            torch.testing.assert_close(own.last_logits, logits, rtol=0, atol=0)  # the same draws
            torch.testing.assert_close(loss, (w * losses).mean(), rtol=1e-6, atol=0)
        harness.observe(idx, losses, logits)
        assert own.tau == pytest.approx(float(harness.tau), rel=1e-12), f"step {k}"
    assert 5 <= importance_steps < 60  # both phases were compared


def test_presample_normalisation_decouples_the_batch_and_moves_the_running_statistics_with_the_presample():
    """Inside normalized_by, batch norm uses the presample's train-mode statistics: a sample's output
    and gradient no longer depend on the batch it is trained in, and equal those of the network whose
    batch norm holds the presample's statistics; afterwards the running statistics have moved as if
    the presample had been the training batch, and every layer is back in its mode."""
    import copy

    from ismod.models import build_model
    from ismod.train import normalized_by

    torch.manual_seed(0)
    model = build_model("small_cnn").train()
    presample, x = torch.randn(24, 3, 32, 32), torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        model(torch.randn(32, 3, 32, 32))  # running statistics away from their initial values
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in norms]

    reference = copy.deepcopy(model)  # batch norm holding the presample's statistics, by hand
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        reference(presample)
    reference.eval()
    expected = reference(x)

    with normalized_by(model, presample):
        out = model(x)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model(x[:2]), out[:2], rtol=1e-4, atol=1e-5)  # batch-independent
        out.sum().backward()  # the block's backward runs on the statistics it used
    assert model.training and all(m.training for m in norms)
    stats = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m, (mean, var, momentum), r in zip(norms, before, stats):
        assert m.momentum == momentum
        torch.testing.assert_close(
            m.running_mean, (1 - momentum) * mean + momentum * r.running_mean
        )
        torch.testing.assert_close(m.running_var, (1 - momentum) * var + momentum * r.running_var)


def test_the_presample_batch_norm_option():
    """batch_norm="presample" hands the trainer the augmented presample's inputs at importance steps,
    costs one more presample pass (declared), and needs scored augmented inputs."""
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        Presample(batch_norm="eval")
    with pytest.raises(ValueError, match="needs score_augmented=True"):
        Presample(batch_norm="presample", score_augmented=False)
    assert (
        Presample(batch_norm="presample").scoring_passes_per_sample
        == 2 * Presample().scoring_passes_per_sample
    )
    scorer = Scorer()
    s = make(scorer, threshold=1.0, tau_momentum=0.0, batch_norm="presample")
    for k in range(20):
        selection = s.select(k)
        if selection.weights is None:
            assert selection.norm_inputs is None
        else:
            assert selection.norm_inputs.shape[0] == 12  # the presample of B = 3b, as scored
            # what it trains on was drawn from those very inputs (the stand-in's x is the index)
            assert set(selection.inputs[0].flatten().tolist()) <= set(
                selection.norm_inputs.flatten().tolist()
            )
        s.observe(
            selection.indices, selection.indices.float() / 10, scorer.logits(selection.indices)
        )
    assert s.importance_steps > 0


def test_presample_normalisation_keeps_a_cumulative_average_layer_cumulative():
    """A batch-norm layer with momentum=None keeps a cumulative average (PyTorch's 1/batches seen);
    after normalized_by its running statistics are those a train-mode pass of the presample would
    leave, not a blend with a made-up momentum."""
    import copy

    from ismod.models import build_model
    from ismod.train import normalized_by

    torch.manual_seed(0)
    model = build_model("small_cnn").train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    presample = torch.randn(24, 3, 32, 32)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))  # three batches seen
    expected = copy.deepcopy(model)
    with torch.no_grad():
        expected(presample)  # the fourth: the presample, as a training batch
    with normalized_by(model, presample):
        model(torch.randn(6, 3, 32, 32)).sum().backward()
    pairs = zip(
        [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)],
        [m for m in expected.modules() if isinstance(m, torch.nn.BatchNorm2d)],
    )
    for m, e in pairs:
        assert m.momentum is None and int(m.num_batches_tracked) == 4
        torch.testing.assert_close(m.running_mean, e.running_mean)
        torch.testing.assert_close(m.running_var, e.running_var)


def test_the_weighted_batch_norm_option():
    """batch_norm="weighted" asks the trainer to normalise each importance batch with its statistics
    weighted by its weights (Selection.weighted_norm), at no extra pass; uniform steps stay plain."""
    import pickle

    from ismod.strategies.base import Selection

    with pytest.raises(ValueError, match="needs weighted=True"):
        Presample(batch_norm="weighted", weighted=False)
    assert (
        Presample(batch_norm="weighted").scoring_passes_per_sample
        == Presample().scoring_passes_per_sample
    )
    with pytest.raises(ValueError, match="weighted_norm=True needs weights"):
        Selection(torch.arange(3), None, weighted_norm=True)
    scorer = Scorer()
    s = make(scorer, threshold=1.0, tau_momentum=0.0, batch_norm="weighted")
    seen = set()
    for k in range(20):
        selection = s.select(k)
        assert selection.weighted_norm == (selection.weights is not None)
        assert selection.norm_inputs is None
        seen.add(selection.weighted_norm)
        s.observe(
            selection.indices, selection.indices.float() / 10, scorer.logits(selection.indices)
        )
    assert seen == {True, False}  # the warm-up's uniform steps, then importance steps
    copied = pickle.loads(
        pickle.dumps(Selection(torch.arange(2), torch.ones(2), weighted_norm=True))
    )
    assert copied.weighted_norm
