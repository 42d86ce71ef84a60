"""Importance sampling under torch.distributed: two CPU processes (gloo, loopback) against one.

Each check spawns real processes, so these are marked slow; together they take well under a minute.
"""

import multiprocessing
import time

import pytest
import torch

import ddp_worker
from ismod.distributed import World, free_port

pytestmark = pytest.mark.slow

from ismod.strategies import STRATEGIES as REGISTRY

STRATEGIES = {
    "uniform": ("uniform", {}),
    "loss": ("loss", {"score": "last", "subset": 0.5, "warmup_epochs": 1}),
    # the switch forced (τ_th = 1), so that presamples are scored, split over ranks and resampled
    "upper bound, τ": (
        "presample",
        {"score": "bound", "threshold": 1.0, "tau_momentum": 0.0, "score_augmented": False},
    ),
    # scoring the augmented presample and training on those images: augmented alike on every rank
    "upper bound, τ, augmented scores": (
        "presample",
        {"score": "bound", "threshold": 1.0, "tau_momentum": 0.0, "score_augmented": True},
    ),
}
# every other registered strategy with its defaults (small-data options where a default needs more data)
SMALL = {"selective_backprop": {"history": 32}, "prediction_subset": {"kind": "p", "subset": 0.5},
         "rho_loss": {"reference_epochs": 1}}  # fmt: skip
STRATEGIES.update(
    {
        name: (name, SMALL.get(name, {}))
        for name in REGISTRY
        if name not in ("uniform", "loss", "presample")
    }
)


def spawn(tmp_path, size: int = 2, timeout: float = 120, target=ddp_worker.worker, **kwargs):
    """Run ``target`` (default ``ddp_worker.worker``) on ``size`` processes; return {rank: result or error text}."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        ctx.Process(target=target, args=(r, size, port, str(tmp_path), kwargs)) for r in range(size)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    alive = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, f"ranks {alive} still running after {timeout} s (a hang)"
    out = {}
    for r in range(size):
        if (tmp_path / f"rank{r}.pt").exists():
            out[r] = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        elif (tmp_path / f"rank{r}.err").exists():
            out[r] = (tmp_path / f"rank{r}.err").read_text()
    return out


def assert_same_run(a, b, *, loss_rtol=1e-4):
    assert len(a["selected"]) == len(b["selected"])
    for step, ((ia, wa), (ib, wb)) in enumerate(zip(a["selected"], b["selected"])):
        assert torch.equal(ia, ib), f"step {step}: different global batches"
        assert (wa is None) == (wb is None)
        if wa is not None:
            torch.testing.assert_close(
                wa, wb, rtol=1e-5, atol=0, msg=f"step {step}: different weights"
            )
    for ha, hb in zip(a["history"], b["history"]):
        if ha["train_loss"] is not None:
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=loss_rtol)
        assert ha["test_loss"] == pytest.approx(hb["test_loss"], rel=loss_rtol)
        rows_a, rows_b = ha.get("tau_log", []), hb.get("tau_log", [])
        assert [(s, phase) for s, _, phase in rows_a] == [
            (s, phase) for s, _, phase in rows_b
        ]  # same switch steps
        assert [t for _, t, _ in rows_a] == pytest.approx([t for _, t, _ in rows_b], rel=1e-4)


@pytest.mark.parametrize("label", list(STRATEGIES))
def test_two_processes_make_the_decisions_of_one(label, tmp_path):
    name, options = STRATEGIES[label]
    single = ddp_worker.train(name, options, steps=14)
    ranks = spawn(tmp_path, strategy_name=name, options=options, steps=14)
    assert set(ranks) == {0, 1} and all(isinstance(v, dict) for v in ranks.values()), ranks
    assert_same_run(ranks[0], ranks[1], loss_rtol=0)  # the ranks agree exactly with each other
    assert_same_run(ranks[0], single)  # and with one process, up to float summation order
    if "scores" in single["state"]:
        torch.testing.assert_close(
            ranks[0]["state"]["scores"], single["state"]["scores"], rtol=1e-4, atol=1e-6
        )
    if label.startswith("upper"):
        tau = [row for h in ranks[0]["history"] for row in h.get("tau_log", [])]
        assert any(phase == 1 for _, _, phase in tau), (
            "the forced switch should have made importance steps"
        )
    # one process only pays for the clock marks around the (absent) collectives
    assert ranks[0]["timing"]["communication"] > 10 * single["timing"]["communication"]


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    name, options = STRATEGIES["loss"]
    single = ddp_worker.train(name, options, steps=14)
    ckpt = tmp_path / "run.pt"
    first = spawn(tmp_path, strategy_name=name, options=options, steps=7, checkpoint=str(ckpt))
    assert isinstance(first[0], dict) and ckpt.exists()
    resumed = ddp_worker.train(name, options, steps=14, checkpoint=str(ckpt), resume=True)
    later = single["selected"][7:]
    assert len(resumed["selected"]) == len(later)
    for (ia, wa), (ib, wb) in zip(resumed["selected"], later):
        assert torch.equal(ia, ib)
        if wa is not None:
            torch.testing.assert_close(wa, wb, rtol=1e-5, atol=0)
    torch.testing.assert_close(
        resumed["state"]["scores"], single["state"]["scores"], rtol=1e-4, atol=1e-6
    )


def test_a_dead_rank_fails_the_others_within_the_timeout(tmp_path):
    # spawn fails the test if a rank is still running after the timeout (a hang), so no clock is read
    # here: rank 0's own error, not the timeout, must be what ended it
    ranks = spawn(tmp_path, timeout=90, strategy_name="uniform", options={}, steps=14, die_at=3)
    assert 1 not in ranks  # it died without a word
    assert isinstance(ranks[0], str) and "another rank died" in ranks[0], ranks.get(0)


def test_a_seconds_budget_ends_on_the_same_step_on_every_rank(tmp_path):
    # each rank measures its own time; the harness takes the slowest rank's, so no rank waits alone in a collective
    ranks = spawn(tmp_path, strategy_name="uniform", options={}, steps=0, seconds=1.5)
    assert set(ranks) == {0, 1} and all(isinstance(v, dict) for v in ranks.values()), ranks
    assert len(ranks[0]["selected"]) == len(ranks[1]["selected"]) > 0
    assert ranks[0]["history"][-1]["wall_time"] == ranks[1]["history"][-1]["wall_time"] >= 1.5


def test_bad_setups_fail_before_training(tmp_path):
    ranks = spawn(tmp_path, strategy_name="uniform", options={}, steps=4, batch_size=15)
    assert all("not divisible by the world size 2" in ranks[r] for r in (0, 1)), ranks
    (tmp_path / "b").mkdir()
    ranks = spawn(
        tmp_path / "b",
        strategy_name="uniform",
        options={},
        steps=4,
        tag_by_rank=["a" * 64, "b" * 64],
    )
    assert all("disagree on the config hash" in ranks[r] for r in (0, 1)), ranks


def test_importance_sampler_in_a_ddp_loader_loop_matches_one_process(tmp_path):
    from ismod.sampling import ImportanceSampler

    n, per_rank, batch, epochs, seed = 50, 32, 8, 3, 5
    ranks = spawn(
        tmp_path,
        target=ddp_worker.sampler_loop,
        n=n,
        per_rank=per_rank,
        batch=batch,
        epochs=epochs,
        seed=seed,
    )
    assert set(ranks) == {0, 1}, ranks
    torch.testing.assert_close(
        ranks[0]["scores"], ranks[1]["scores"], rtol=0, atol=0
    )  # one distribution everywhere
    # one process drawing the global sequence (global batch 2 × 8) and updating with the global batches
    ref = ImportanceSampler(n, method="proportional")
    for epoch in range(epochs):
        drawn, _ = ref.sample(2 * per_rank, generator=torch.Generator().manual_seed(seed + epoch))
        for j in range(per_rank // batch):
            glob = drawn[2 * batch * j : 2 * batch * (j + 1)]
            k = epoch * (per_rank // batch) + j
            assert torch.equal(ranks[0]["batches"][k], glob[0::2]) and torch.equal(
                ranks[1]["batches"][k], glob[1::2]
            )
            ref.update(glob, ddp_worker.fake_losses(glob))
    torch.testing.assert_close(ranks[0]["scores"], ref.scores, rtol=0, atol=0)


def test_not_distributed_means_no_world():
    assert World.current() is None


@pytest.mark.parametrize("strategy_name", [None, "presample"])
def test_scores_and_selections_of_a_batch_norm_model_do_not_depend_on_the_sharding(
    strategy_name, tmp_path
):
    """Scoring runs in inference mode, so with the same weights a sample's score is the same whichever
    rank (and chunk) scores it, and 2 processes select exactly as 1 — for a model with BatchNorm."""
    single = ddp_worker.bn_scores(strategy_name)
    ranks = spawn(tmp_path, target=ddp_worker.bn_worker, strategy_name=strategy_name)
    assert set(ranks) == {0, 1} and all(isinstance(v, dict) for v in ranks.values()), ranks
    for r in (0, 1):
        torch.testing.assert_close(ranks[r]["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[r]["logits"], single["logits"], rtol=1e-5, atol=1e-6)
    if strategy_name is not None:
        (idx, w), (idx1, w1) = single["selected"], ranks[0]["selected"]
        assert torch.equal(idx, idx1) and torch.equal(ranks[1]["selected"][0], idx1)
        torch.testing.assert_close(w1, w)
