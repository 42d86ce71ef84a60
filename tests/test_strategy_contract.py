"""The contract every registered strategy keeps (one test over the registry, so a new strategy is
covered by adding it there): shapes and devices of select/observe, determinism per seed, and a state
round trip mid-run that continues exactly as an uninterrupted run."""

import copy
import io

import pytest
import torch

from ismod.strategies import STRATEGIES, Strategy, build_strategy

N, B = 600, 32


def _score_fn(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic stand-in for the trainer's scoring pass: losses and logits that depend only on the index."""
    losses = (indices % 7).float() / 7 + 0.05
    logits = torch.nn.functional.one_hot(indices % 10, 10).float() * (indices % 5).float()[:, None]
    return losses, logits


def _reference_trainer(indices: torch.Tensor, epochs: float):
    """A stand-in for the trainer's reference model: losses that depend only on the index."""
    return lambda idx: (idx % 3).float() / 3


def _setup(name: str, seed: int) -> Strategy:
    s = build_strategy(name)
    gen = torch.Generator().manual_seed(seed)
    s.setup(N, B, torch.device("cpu"), gen, _score_fn, torch.arange(N) % 10)
    s.set_reference_trainer(_reference_trainer)
    s.set_step_times(0.01, 0.02)
    return s


def _steps(s: Strategy, start: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    out = []
    for step in range(start, start + count):
        s.progress = step / 200
        idx, w = s.select(step)
        losses, logits = _score_fn(idx)
        s.observe(idx, losses, logits)
        out.append((idx.clone(), None if w is None else w.clone()))
    return out


def _same(a, b) -> bool:
    return all(
        torch.equal(i, j) and ((w is None and v is None) or torch.equal(w, v))
        for (i, w), (j, v) in zip(a, b)
    )


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_select_and_observe_shapes(name):
    s = _setup(name, 0)
    for idx, w in _steps(s, 0, 60):
        assert idx.dtype == torch.int64 and idx.shape == (B,) and idx.device.type == "cpu"
        assert int(idx.min()) >= 0 and int(idx.max()) < N
        if w is not None:
            assert w.shape == (B,) and w.dtype.is_floating_point and bool((w > 0).all())
    assert isinstance(s.summary(), dict)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_deterministic_per_seed(name):
    assert _same(_steps(_setup(name, 3), 0, 50), _steps(_setup(name, 3), 0, 50))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_round_trip_mid_run_continues_identically(name):
    whole = _setup(name, 1)
    _steps(whole, 0, 45)
    buffer = io.BytesIO()
    torch.save({"strategy": whole.state_dict(), "generator": whole.generator.get_state()}, buffer)
    expected = _steps(whole, 45, 40)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = _setup(name, 99)  # another seed: everything must come from the saved state
    resumed.load_state_dict(copy.deepcopy(saved["strategy"]))
    resumed.generator.set_state(saved["generator"])
    assert _same(_steps(resumed, 45, 40), expected)


def test_forgotten_state_fails_loudly():
    class Forgetful(Strategy):
        name = "forgetful"

        def select(self, step):
            return torch.arange(self.batch_size), None

    class Stateless(Forgetful):
        stateless = True

    with pytest.raises(NotImplementedError, match="state_dict"):
        Forgetful().state_dict()
    assert Stateless().state_dict() == {}


def test_a_new_strategy_is_one_class_and_one_registry_line(monkeypatch, tmp_path):
    """What adding a strategy takes: the class, and its entry in STRATEGIES (monkeypatched here). A
    config can then name it, and the contract checks above apply to it unchanged."""
    from ismod import strategies
    from ismod.experiments import Config, run

    class EveryThird(Strategy):
        name = "every_third"

        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            self.offset = 0

        def select(self, step):
            idx = (
                torch.arange(self.batch_size, device=self.device) * 3 + self.offset
            ) % self.num_items
            self.offset = (self.offset + 1) % 3
            return idx, None

        def state_dict(self):
            return {"offset": self.offset}

        def load_state_dict(self, state):
            self.offset = state["offset"]

    monkeypatch.setitem(strategies.STRATEGIES, EveryThird.name, EveryThird)
    test_select_and_observe_shapes("every_third")
    test_state_round_trip_mid_run_continues_identically("every_third")
    config = Config(
        strategy="every_third",
        subset=None,
        batch_size=8,
        budget="steps",
        budget_amount=3,
        evaluations=1,
    )
    config.validate(36)
    from test_harness import make_tree

    result = run(config, data_root=make_tree(tmp_path), progress=False)
    assert result.final["steps"] == 3
    # the same class in a user's own loop, as a batch sampler: no edit anywhere else
    from torch.utils.data import DataLoader, TensorDataset

    from ismod.adapters import StrategyBatchSampler

    sampler = StrategyBatchSampler("every_third", 48, 8)
    loader = DataLoader(TensorDataset(torch.arange(48.0)), batch_sampler=sampler)
    steps = 0
    for (x,) in loader:
        sampler.loss(x + 1.0)
        steps += 1
    assert steps == 6 and sampler.epoch == 1


def test_the_cost_model_and_the_batch_sampler_read_what_a_strategy_declares(monkeypatch):
    """A strategy that scores 2 samples per trained sample says so once, in its class: the runner's
    estimate charges 2 forward passes per sample, and a batch sampler refuses it, naming the harness."""
    from ismod import strategies
    from ismod.adapters import StrategyBatchSampler
    from ismod.experiments import Config
    from ismod.runner import seconds_from_rate

    class ScoresTwice(Strategy):
        name = "scores_twice"
        stateless = True
        scoring_passes_per_sample = 2.0  # a declaration: no name is checked anywhere

        def select(self, step):
            return torch.arange(self.batch_size, device=self.device), None

    monkeypatch.setitem(strategies.STRATEGIES, ScoresTwice.name, ScoresTwice)
    plain = Config(
        strategy="uniform", subset=1000, batch_size=10, budget="steps", budget_amount=100
    )
    scoring = plain.replace(strategy="scores_twice")
    ratio = 1.5  # backward pass / forward pass: a forward pass is 1/2.5 of a uniform step
    cost = {c.strategy: seconds_from_rate(c, 1e-3, backward_ratio=ratio) for c in (plain, scoring)}
    assert cost["scores_twice"] / cost["uniform"] == pytest.approx(1 + 2.0 / (1 + ratio))
    with pytest.raises(
        ValueError, match="'scores_twice' scores samples with extra forward passes.*train.fit"
    ):
        StrategyBatchSampler("scores_twice", 100, 10)


def test_a_selection_survives_pickling_and_copying():
    """A selection crosses processes (the DDP tests send one back) and may be deep-copied: its
    indices, weights and inputs come back as they were, still a Selection."""
    import pickle

    from ismod.strategies import Selection

    x, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    sel = Selection(torch.tensor([4, 1, 7]), torch.tensor([0.5, 1.0, 2.0]), inputs=(x, y))
    for back in (pickle.loads(pickle.dumps(sel)), copy.deepcopy(sel)):
        assert isinstance(back, Selection)
        idx, w = back
        assert torch.equal(idx, sel.indices) and torch.equal(w, sel.weights)
        assert torch.equal(back.inputs[0], x) and torch.equal(back.inputs[1], y)
    plain = pickle.loads(pickle.dumps(Selection(torch.tensor([2]))))
    assert plain.weights is None and plain.inputs is None
