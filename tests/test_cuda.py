"""The GPU paths: run only where CUDA is available (`pytest -m cuda` on a lent GPU machine)."""

import pytest
import torch

from ismod import train as train_mod
from ismod.augment import Augment
from ismod.data import ImageData
from ismod.models import build_model, initialize_from_data
from ismod.strategies import STRATEGIES, build_strategy
from ismod.train import TrainSettings, fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _data(n: int, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 128, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    # learnable: the class shifts the red channel. Not a constant channel: on constant channels the fast
    # network's batch norm (eps 1e-12, as airbench) divides rounding noise by ~1e-6, which overflows fp16
    # (seen on an H200: the fp16 run stayed at chance on such data)
    images[:, 0] += (labels * 12).to(torch.uint8)[:, None, None]
    return ImageData(images, labels, [str(i) for i in range(10)], "synthetic").to("cuda")


def _fast_model(data: ImageData) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("fast_cnn").cuda()
    initialize_from_data(model, Augment()(data.images[:256], data.labels[:256], train=False)[0])
    return model


@pytest.mark.parametrize("strategy,options", [
    ("uniform", {}),
    ("presample", {"score": "bound", "threshold": 1.0}),
    ("selective_backprop", {}),
    ("loss", {"warmup_epochs": 0}),
])  # fmt: skip
def test_fit_on_cuda_learns_with_fast_recipe(strategy, options):
    data, test = _data(4096), _data(1000, seed=1)
    settings = TrainSettings(batch_size=256, budget="epochs", budget_amount=3, lr=0.5, momentum=0.85,
                             bias_lr_scale=64.0, lookahead=True, tta=2, evaluations=1, warmup=0.2)  # fmt: skip
    out = fit(
        _fast_model(data),
        data,
        test,
        build_strategy(strategy, options),
        Augment(),
        settings,
        progress=False,
    )
    assert out["final"]["test_accuracy"] > 0.5, out["final"]
    assert out["timing"]["forward"] > 0


def test_fp16_with_gradient_scaler(monkeypatch):
    """The T4 path (no bf16): fp16 autocast with a GradScaler trains and stays finite."""
    monkeypatch.setattr(train_mod, "amp_dtype", lambda device: torch.float16)
    data, test = _data(2048), _data(500, seed=1)
    settings = TrainSettings(batch_size=256, budget="epochs", budget_amount=6, lr=0.5, momentum=0.85,
                             bias_lr_scale=64.0, evaluations=1, warmup=0.2)  # fmt: skip
    out = fit(
        _fast_model(data),
        data,
        test,
        build_strategy("uniform"),
        Augment(),
        settings,
        progress=False,
    )
    assert out["final"]["test_accuracy"] > 0.5
    assert torch.isfinite(torch.tensor(out["final"]["train_loss"]))


def test_scoring_leaves_batch_norm_alone_on_cuda():
    data = _data(1024)
    model = _fast_model(data)
    captured = {}

    class Spy(build_strategy("uniform").__class__):
        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            captured["score_fn"] = self.score_fn

    settings = TrainSettings(batch_size=128, budget="steps", budget_amount=2, evaluations=1)
    fit(model, data, data, Spy(), Augment(), settings, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.arange(512, device="cuda")
    losses_all, _ = captured["score_fn"](idx)
    losses_part, _ = captured["score_fn"](idx[:7])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(losses_part, losses_all[:7], rtol=2e-2, atol=2e-2)


# every registered strategy but selective backprop, which reads one count back per scored chunk by
# design, and InfoBatch, which reads the number kept once per epoch (their docstrings say so);
# small-data options where a default needs more steps
_SYNC_FREE = {name: {"loss": {"warmup_epochs": 0}, "prediction_subset": {"kind": "p", "subset": 0.5, "warmup_epochs": 0},
                     "obs": {}, "per": {}}.get(name, {})
              for name in STRATEGIES if name not in ("selective_backprop", "infobatch")}  # fmt: skip


@pytest.mark.parametrize("strategy", sorted(_SYNC_FREE))
def test_select_and_observe_make_no_host_sync(strategy):
    options = _SYNC_FREE[strategy]
    n, b = 4096, 128
    s = build_strategy(strategy, options)
    gen = torch.Generator(device="cuda").manual_seed(0)
    labels = (torch.arange(n) % 10).cuda()

    def score_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(idx.numel(), device="cuda"), torch.randn(idx.numel(), 10, device="cuda")

    s.setup(n, b, torch.device("cuda"), gen, score_fn, labels)
    logits = torch.randn(b, 10, device="cuda")
    for step in range(3):  # the first calls may allocate and log; steady state is what counts
        idx, _ = s.select(step)
        s.observe(idx, torch.rand(b, device="cuda"), logits)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, 3 + n // b):
            if step % max(1, n // b // 25) == 0:
                continue  # logging steps are allowed to read back
            idx, _ = s.select(step)
            s.observe(idx, torch.rand(b, device="cuda"), logits)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _cuda_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(10, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    ).cuda()


def _blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (n,), generator=g)
    return torch.randn(n, 10, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 10).float(), y


@pytest.mark.parametrize("method", ["loss", "infobatch", "tau", "hard"])
def test_adapters_learn_on_cuda_and_their_loss_calls_never_wait(method):
    """An ordinary loop with each adapter on CUDA: the steady-state loss() calls, backward and step
    make no host synchronisation (checked with sync_debug_mode), and the model learns."""
    import ismod

    x_all, y_all = _blobs(1024)
    x_pinned, y_pinned = x_all.pin_memory(), y_all.pin_memory()
    model = _cuda_classifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    n, b = 1024, 64
    sampler = {
        "loss": lambda: ismod.LossSampler(n, b),
        "infobatch": lambda: ismod.InfoBatchSampler(n, b, num_epochs=4),
        "tau": lambda: ismod.TauSwitchSampler(model, n, b, threshold=1.01, batch_norm="train"),
        "hard": lambda: ismod.adapters.StrategyBatchSampler("uniform", n, 2 * b),
    }[method]()
    hard = ismod.HardExampleLoss(model) if method == "hard" else None
    for epoch in range(4):
        for step, batch in enumerate(sampler):
            index = torch.tensor(batch)
            x = x_pinned[index].pin_memory().cuda(non_blocking=True)
            y = y_pinned[index].pin_memory().cuda(non_blocking=True)
            strict = epoch >= 1 and step >= 3
            if strict:
                torch.cuda.set_sync_debug_mode("error")
            try:
                if method in ("loss", "infobatch"):
                    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
                    loss = sampler.loss(losses)
                elif method == "tau":
                    loss = sampler.loss(x, y)
                else:
                    loss = hard.loss(x, y)
                    sampler.loss(torch.zeros(2 * b, device="cuda"))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_all.cuda()).argmax(1).cpu() == y_all).float().mean()
    assert accuracy > 0.8
    if method == "tau":
        assert sampler.importance_steps > 0


def test_adapters_refuse_a_nan_loss_on_cuda_without_waiting_at_the_step():
    """On CUDA the check counts bad values on the device and raises once the count has reached the
    host: at a later loss() call or, at the latest, at state_dict()."""
    import ismod

    sampler = ismod.LossSampler(256, 32)
    batches = iter(sampler)
    next(batches)
    losses = torch.ones(32, device="cuda")
    losses[5] = float("nan")
    sampler.loss(losses)
    with pytest.raises(ValueError, match="NaN.*clamp them"):
        sampler.state_dict()


def test_tau_switch_sampler_resumes_exactly_on_cuda():
    import io

    import ismod
    from torch import nn

    def run(stop=None, blob=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        sampler = ismod.TauSwitchSampler(model, 256, 16, threshold=1.0, seed=1, batch_norm="train")
        g = torch.Generator().manual_seed(2)
        x_all, y_all = torch.randn(256, 8, generator=g), torch.randint(4, (256,), generator=g)
        done, seen = 0, []
        if blob is not None:
            state = torch.load(io.BytesIO(blob), weights_only=False)
            model.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
            sampler.load_state_dict(state["sampler"])
            done = state["done"]
        for _ in range(sampler.epoch, 6):
            for batch in sampler:
                x, y = x_all[batch].cuda(), y_all[batch].cuda()
                loss = sampler.loss(x, y)
                opt.zero_grad(), loss.backward(), opt.step()
                seen.append(batch)
                done += 1
                if done == stop:
                    buffer = io.BytesIO()
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                                "sampler": sampler.state_dict(), "done": done}, buffer)  # fmt: skip
                    return seen, model, buffer.getvalue()
        return seen, model, None

    full, model, _ = run()
    first, _, blob = run(stop=37)
    rest, resumed, _ = run(blob=blob)
    assert first + rest == full
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), resumed.state_dict().values())
    )
