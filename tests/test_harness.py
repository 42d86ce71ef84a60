"""The training harness: data loading, models, strategy interface, schedules, results, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg

from ismod import experiments
from ismod.augment import Augment
from ismod.data import ImageData, load_cifar
from ismod.experiments import Config, Result, config_hash, run, run_or_load
from ismod.models import MODELS, build_model
from ismod.strategies import Strategy, Uniform, build_strategy
from ismod.train import TrainSettings, fit, lr_factor

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird"]


def make_tree(root: Path, per_class: int = 12, test_per_class: int = 4) -> Path:
    """A tiny CIFAR-like image-folder tree: each class's images have a distinct mean colour."""
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            folder = root / "cifar10-jpeg" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = torch.randint(0, 60, (3, 32, 32), generator=g, dtype=torch.uint8)
                img[c] += 150  # the class signal
                write_jpeg(img, str(folder / f"{i:04d}.jpg"), quality=95)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ISMOD_CACHE", str(tmp_path / "cache"))


# --- data ---------------------------------------------------------------------------------------


def test_load_image_folder_tree(tree):
    train = load_cifar("cifar10", "train", root=tree)
    assert train.images.shape == (36, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes == CLASSES and torch.equal(
        torch.bincount(train.labels), torch.tensor([12, 12, 12])
    )
    assert train.source == "CIFAR-10 (JPEG q75 copy)"
    # the class signal survived decoding: channel c is brightest for class c
    brightest = train.images.float().mean((2, 3)).argmax(1)
    assert torch.equal(brightest, train.labels)


def test_load_from_tar_and_cache(tree, tmp_path):
    archive_root = tmp_path / "packed"
    archive_root.mkdir()
    with tarfile.open(archive_root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree / "cifar10-jpeg", arcname="cifar10-jpeg")
    a = load_cifar("cifar10", "test", root=archive_root)
    b = load_cifar("cifar10", "test", root=tree)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    cached = list((tmp_path / "cache").glob("cifar10-jpeg-test-*.pt"))
    assert cached, "decoded arrays were not cached"
    c = load_cifar("cifar10", "test", root=archive_root)  # from the cache
    assert torch.equal(a.images, c.images)


def test_environment_variable_and_subset(tree, monkeypatch):
    monkeypatch.setenv("ISMOD_DATA", str(tree))
    sub = load_cifar("cifar10", "train", subset=9, seed=1)
    assert len(sub) == 9 and torch.equal(torch.bincount(sub.labels), torch.tensor([3, 3, 3]))


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"looked in: .*cifar10-jpeg.*ISMOD_DATA.*download=True"
    ):
        load_cifar("cifar10", "train", root=tmp_path)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="name must be"):
        load_cifar("mnist")
    with pytest.raises(ValueError, match="split must be"):
        load_cifar("cifar10", "val")


# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "wrn28_2"])
def test_models_give_logits(name):
    model = build_model(name, num_classes=7).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model.classifier, torch.nn.Linear)


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("name", ["small_cnn", "fast_cnn_narrow"])
def test_a_network_without_batch_norm_does_not_couple_its_batch(name, norm):
    """With group or layer norm in place of every batch norm, a sample's training-mode output and
    gradient are the same whichever batch it is in (with batch norm they are not)."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    coupled = build_model(name)
    model = build_model(name, norm=norm)
    coupled.load_state_dict(model.state_dict(), strict=False)  # the shared convolutions and head
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    frozen = [n for n, p in build_model(name).named_parameters() if not p.requires_grad]
    assert frozen == [
        n for n, p in model.named_parameters() if not p.requires_grad
    ]  # γ frozen alike
    model.train(), coupled.train()
    assert torch.allclose(model(x)[:3], model(x[:3]), atol=1e-5)
    assert not torch.allclose(coupled(x)[:3], coupled(x[:3]), atol=1e-3)

    def grad_of_first(batch):
        model.zero_grad()
        model(batch)[0].sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(
        grad_of_first(x), grad_of_first(torch.cat([x[:1], x[3:]])), atol=1e-5, rtol=1e-4
    )


def test_unknown_model():
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vgg")
    assert set(MODELS) >= {"small_cnn", "resnet18", "wrn28_2"}


# --- strategy interface and schedules ----------------------------------------------------------


def test_uniform_covers_each_epoch_once_and_round_trips():
    s = Uniform()
    s.setup(10, 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    epoch0 = torch.cat([s.select(i)[0] for i in range(3)])
    assert epoch0.unique().numel() == 9 and s.select(0)[1] is None
    t = Uniform()
    t.setup(10, 3, torch.device("cpu"), torch.Generator().manual_seed(99))
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.select(2)[0], epoch0[6:9])
    epoch1 = torch.cat([s.select(i)[0] for i in range(3, 6)])
    assert epoch1.unique().numel() == 9 and not torch.equal(epoch1, epoch0)


def test_strategy_is_the_extension_point():
    class EveryOther(Strategy):
        name = "every-other"

        def select(self, step):
            idx = torch.arange(0, self.num_items, 2)[: self.batch_size]
            return idx, torch.full((len(idx),), 2.0)

        def observe(self, indices, losses, logits):
            self.seen = (indices.clone(), losses.shape, logits.shape)

    data = ImageData(
        torch.randint(0, 255, (20, 3, 32, 32), dtype=torch.uint8),
        torch.arange(20) % 2,
        ["a", "b"],
        "synthetic",
    )
    s = EveryOther()
    fit(
        build_model("small_cnn", 2),
        data,
        data,
        s,
        Augment(num_classes=2),
        TrainSettings(batch_size=4, budget="steps", budget_amount=3, evaluations=1, lr=0.05),
        progress=False,
    )
    assert (
        torch.equal(s.seen[0], torch.tensor([0, 2, 4, 6]))
        and s.seen[1] == (4,)
        and s.seen[2] == (4, 2)
    )


def test_build_strategy_errors():
    with pytest.raises(ValueError, match="strategy must be one of"):
        build_strategy("oracle")
    with pytest.raises(ValueError, match="strategy_options"):
        build_strategy("uniform", {"temperature": 2})


@pytest.mark.parametrize(
    "kwargs, points",
    [
        ({"schedule": "constant"}, {0: 1, 0.5: 1, 1: 1}),
        (
            {"schedule": "step", "milestones": (0.5, 0.8), "gamma": 0.2},
            {0.1: 1, 0.5: 0.2, 0.9: 0.04},
        ),
        ({"schedule": "linear", "warmup": 0.0}, {0: 1, 0.25: 0.75, 1: 0}),
        ({"schedule": "onecycle", "warmup": 0.2}, {0: 0, 0.1: 0.5, 0.2: 1, 0.6: 0.5, 1: 0}),
    ],
)
def test_lr_schedules(kwargs, points):
    settings = TrainSettings(**kwargs)
    for progress, expected in points.items():
        assert lr_factor(settings, progress) == pytest.approx(expected)


# --- configs and results -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model": "vgg"}, "model must be one of"),
        ({"strategy": "magic"}, "strategy must be one of"),
        ({"budget_amount": 0}, "budget_amount must be > 0"),
        ({"budget": "hours"}, "budget must be one of"),
        ({"batch_size": 10_000, "subset": 100}, "batch_size 10000 exceeds subset 100"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"norm": "instance"}, "norm must be one of"),
        # a strategy's options are checked by its constructor before any data is loaded
        (
            {"strategy": "presample", "strategy_options": {"presample": 0.5}},
            "presample .* must be >= 1",
        ),
        (
            {"strategy": "loss", "strategy_options": {"temprature": 2.0}},
            "strategy_options for 'loss'",
        ),
    ],
)
def test_bad_configs_fail_before_training(changes, match, tree):
    config = experiments.get_config("smoke-uniform", **changes)
    with pytest.raises(ValueError, match=match):
        run(config, data_root=tree, progress=False)


def test_batch_larger_than_dataset_fails_before_training(tree):
    with pytest.raises(ValueError, match="batch_size 64 exceeds the 36 training samples"):
        run(experiments.get_config("smoke-uniform", subset=None), data_root=tree, progress=False)


def tiny_config(**changes) -> Config:
    base = dict(subset=None, test_subset=None, batch_size=8, budget="steps", budget_amount=12, evaluations=3,
                lr=0.05, checkpoint_every_steps=5)  # fmt: skip
    return experiments.get_config("smoke-uniform", **{**base, **changes})


def test_step_costs_charge_each_arm_its_own_scoring_and_borrow_only_for_an_arm_that_scores_nothing(
    tree,
):
    from ismod.bench import step_costs

    sb = tiny_config(strategy="selective_backprop", strategy_options={"beta": 3.0})
    arms = {"uniform": tiny_config(), "selective backprop": sb}
    with pytest.raises(ValueError, match="score_like names arms that configs lacks"):
        step_costs(arms, score_like={"uniform": "prioritised replay"}, data_root=tree)
    with pytest.raises(ValueError, match="scores samples itself"):
        step_costs(
            arms, score_like={"selective backprop": "uniform"}, steps=2, rounds=1, data_root=tree
        )
    costs = step_costs(
        arms, score_like={"uniform": "selective backprop"}, steps=2, rounds=1, data_root=tree
    )
    # selective backprop scores its candidates (about β + 1 per trained sample), uniform none; the
    # measured seconds are differences of two clocks, so only their sign floor is promised here (the
    # arithmetic on the clock is tested with a stubbed clock below)
    assert costs["scored_per_step"]["uniform"] == 0
    assert costs["scored_per_step"]["selective backprop"] >= sb.batch_size
    assert costs["score_seconds"]["uniform"] == costs["score_seconds"]["selective backprop"] >= 0
    assert all(v >= 0 for v in costs["step_seconds"].values())


def test_step_costs_on_a_stubbed_clock_charge_per_scored_sample_borrow_and_clamp_noise(monkeypatch):
    """``step_costs`` on a clock we set: each arm's seconds per step and per scored sample are exact,
    a borrowed score cost equals the named arm's, and a difference that noise made negative is set to 0
    with a warning naming the arm."""
    from types import SimpleNamespace

    from ismod.bench import step_costs
    from ismod.train import TRAINED_SAMPLE_FORWARDS

    # lr → (seconds per step, selection seconds per scored sample, samples scored per step)
    clock = {0.01: (0.10, 0.0, 0), 0.02: (0.25, 0.002, 96), 0.03: (-0.05, -0.001, 48)}

    def fake_run(config, **_):
        step_s, score_s, scored = clock[config.lr]
        k = config.budget_amount
        selection = score_s * scored * k
        forwards = TRAINED_SAMPLE_FORWARDS * config.batch_size * k + scored * k
        return SimpleNamespace(final={"train_time": 3.0 + step_s * k + selection,
                                      "forward_passes": forwards},
                               timing={"selection": 0.5 + selection})  # fmt: skip

    monkeypatch.setattr(experiments, "run", fake_run)
    arms = {"uniform": tiny_config(lr=0.01), "scorer": tiny_config(lr=0.02)}
    costs = step_costs(arms, score_like={"uniform": "scorer"}, steps=10, rounds=3)
    assert costs["scored_per_step"] == {"uniform": 0, "scorer": 96}
    assert costs["score_seconds"]["scorer"] == pytest.approx(0.002, rel=1e-9)
    assert costs["score_seconds"]["uniform"] == costs["score_seconds"]["scorer"]  # borrowed
    # uniform is charged its borrowed score cost only per sample it scored: none
    assert costs["step_seconds"] == pytest.approx({"uniform": 0.10, "scorer": 0.25}, rel=1e-9)
    with pytest.warns(RuntimeWarning, match="'noisy' measured .* set to 0") as caught:
        noisy = step_costs({"noisy": tiny_config(lr=0.03)}, steps=10, rounds=1)
    assert {"score_seconds", "step_seconds"} <= {str(w.message).split()[1] for w in caught}
    assert noisy["score_seconds"]["noisy"] == 0.0 and noisy["step_seconds"]["noisy"] == 0.0


def test_result_round_trip_and_provenance(tree, tmp_path):
    result = run(tiny_config(), data_root=tree, progress=False)
    assert [h["step"] for h in result.history] == [0, 4, 8, 12]
    assert {
        "step",
        "epoch",
        "wall_time",
        "samples_seen",
        "train_loss",
        "train_accuracy",
        "test_accuracy",
        "test_loss",
    } <= set(result.history[-1])
    assert (
        0 <= result.history[-1]["train_accuracy"] <= 1
        and result.history[0]["train_accuracy"] is None
    )
    with_eval = run(tiny_config(train_eval_size=9), data_root=tree, progress=False)
    assert {"train_eval_loss", "train_eval_accuracy"} <= set(with_eval.history[-1])
    assert config_hash(tiny_config(train_eval_size=0)) == config_hash(
        tiny_config()
    )  # default: hash unchanged
    prov = result.provenance
    assert prov["data_source"] == "CIFAR-10 (JPEG q75 copy)" and prov["config_hash"] == config_hash(
        tiny_config()
    )
    assert {"ismod_version", "git_commit", "torch_version", "device", "seed", "date"} <= set(prov)
    assert set(result.timing["per_step"]) == {
        "selection",
        "data",
        "forward_backward",
        "communication",
        "optimizer",
        "forward",
        "backward",
    }
    per_step = result.timing["per_step"]
    assert per_step["forward"] + per_step["backward"] == pytest.approx(
        per_step["forward_backward"], rel=1e-6
    )
    path = tmp_path / "r.json"
    result.save(path)
    again = Result.load(path)
    assert again.config == result.config and again.history == result.history
    assert again.config_hash == config_hash(tiny_config())


def test_run_or_load_reuses_only_exact_matches(tree, tmp_path, monkeypatch):
    calls = []
    real_run = experiments.run

    def counting_run(config, **kwargs):
        calls.append(config)
        return real_run(config, **kwargs)

    monkeypatch.setattr(experiments, "run", counting_run)
    a = run_or_load(tiny_config(), tmp_path, data_root=tree, progress=False)
    b = run_or_load(tiny_config(), tmp_path, data_root=tree, progress=False)
    assert len(calls) == 1 and a.history == b.history
    run_or_load(tiny_config(seed=1), tmp_path, data_root=tree, progress=False)
    assert len(calls) == 2
    # a corrupt file is recomputed, never served
    path = experiments.result_path(tiny_config(), tmp_path)
    path.write_text("{not json")
    run_or_load(tiny_config(), tmp_path, data_root=tree, progress=False)
    assert len(calls) == 3 and Result.load(path).config_hash == config_hash(tiny_config())
    # a file whose config was edited does not match its hash and is recomputed
    data = json.loads(path.read_text())
    data["config"]["lr"] = 0.5
    path.write_text(json.dumps(data))
    run_or_load(tiny_config(), tmp_path, data_root=tree, progress=False)
    assert len(calls) == 4


# --- checkpoint and resume ---------------------------------------------------------------------


def _process_state(pid: int) -> str:
    """The state letter of a process in /proc (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _cli(tree: Path, out: Path, *extra: str) -> list[str]:
    sets = ["subset=None", "test_subset=None", "batch_size=4", "budget='steps'", "budget_amount=300",
            "evaluations=3", "lr=0.05", "checkpoint_every_steps=10", "checkpoint_every_seconds=1e9"]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "ismod",
        "run",
        "smoke-uniform",
        "--out",
        str(out),
        "--data",
        str(tree),
        "--no-progress",
        "--keep-checkpoint",
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd + list(extra)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_state(tree, tmp_path):
    env = dict(os.environ, ISMOD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    whole = tmp_path / "whole.json"
    subprocess.run(_cli(tree, whole), check=True, env=env, cwd=ROOT, timeout=600)

    killed = tmp_path / "killed.json"
    ckpt = killed.with_suffix(".ckpt.pt")
    # The run stops itself (SIGSTOP) right after writing its checkpoint at step 100, and is killed
    # there: no race between the run and this test's polling, however busy the machine is.
    stop_at_100 = (
        "import os, runpy, signal, sys\n"
        "import ismod.train as t\n"
        "save = t._Loop.save_checkpoint\n"
        "def save_then_stop(self):\n"
        "    save(self)\n"
        "    if self.state.step >= 100:\n"
        "        os.kill(os.getpid(), signal.SIGSTOP)\n"
        "t._Loop.save_checkpoint = save_then_stop\n"
        "sys.argv = ['ismod', *sys.argv[1:]]\n"
        "runpy.run_module('ismod', run_name='__main__')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", stop_at_100, *_cli(tree, killed)[3:]], env=env,
                            cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 600  # a bound on a hang, not on the machine's speed
    while proc.poll() is None and _process_state(proc.pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before its checkpoint at step 100"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(ckpt, weights_only=False)["loop"]["step"]
    assert not killed.exists() and 100 <= step < 300
    subprocess.run(_cli(tree, killed, "--resume"), check=True, env=env, cwd=ROOT, timeout=600)

    a, b = Result.load(whole), Result.load(killed)
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)  # no gaps, no repeats, same values
    final_a = torch.load(whole.with_suffix(".ckpt.pt"), weights_only=False)["model"]
    final_b = torch.load(ckpt, weights_only=False)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_resume_refuses_another_configs_checkpoint(tree, tmp_path):
    ckpt = tmp_path / "c.pt"
    run(tiny_config(), data_root=tree, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="belongs to another config"):
        run(tiny_config(lr=0.01), data_root=tree, checkpoint=ckpt, resume=True, progress=False)


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ISMOD_DATA"),
    reason="ISMOD_DATA is not set (CI points it at the offline CIFAR-10 copy)",
)
def test_short_real_data_run(tmp_path):
    config = experiments.get_config(
        "smoke-uniform", subset=4000, test_subset=2000, batch_size=128, budget_amount=4
    )
    result = run(config, progress=False)
    assert result.provenance["train_size"] == 4000
    # 10 classes: chance is 10%; four short epochs on real images clearly beat it
    assert result.final["test_accuracy"] > 0.25


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "strategy, options",
    [("loss", {"warmup_epochs": 1, "subset": 0.5, "smoothing": 0.2}), ("per", {}), ("selective_backprop", {"history": 16}),
     ("prediction_subset", {"kind": "c", "warmup_epochs": 1}), ("presample", {"threshold": 1.0, "tau_momentum": 0.5})],
)  # fmt: skip
def test_interrupted_strategy_run_resumes_identically(
    tree, tmp_path, monkeypatch, strategy, options
):
    """A run interrupted after a checkpoint and resumed gives the history of an uninterrupted run."""
    config = tiny_config(
        strategy=strategy, strategy_options=options, budget_amount=14, checkpoint_every_steps=4
    )
    whole = run(config, data_root=tree, progress=False)
    assert "sampling" in whole.history[-1] or strategy in ("selective_backprop", "presample")
    if (
        strategy == "presample"
    ):  # the switch happened before the interruption point, so resume crosses phases
        assert 0 < whole.history[-1]["switch_step"] < 10

    cls = type(build_strategy(strategy, options))
    real_select = cls.select

    def failing_select(self, step):
        if step == 10:
            raise _Interrupt
        return real_select(self, step)

    ckpt = tmp_path / "c.pt"
    monkeypatch.setattr(cls, "select", failing_select)
    with pytest.raises(_Interrupt):
        run(config, data_root=tree, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(cls, "select", real_select)
    assert torch.load(ckpt, weights_only=False)["loop"]["step"] == 8
    resumed = run(config, data_root=tree, checkpoint=ckpt, resume=True, progress=False)
    timings = ("wall_time", "t_forward", "t_backward")  # measured times differ from run to run
    strip = lambda h: [{k: v for k, v in r.items() if k not in timings} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)


@pytest.mark.slow
def test_torchrun_runs_the_cli_on_two_processes(tree, tmp_path):
    """``torchrun --nproc_per_node=2 -m ismod run ...``: both ranks train, rank 0 alone writes the result."""
    import subprocess
    import sys

    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ismod", "run",
           "smoke-uniform", "--set", "subset=None", "--set", "test_subset=None", "--set", "batch_size=8", "--set", "budget=steps",
           "--set", "budget_amount=6", "--set", "evaluations=2", "--data", str(tree), "--out", str(out), "--no-progress"]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved") == 1  # one writer
    result = Result.load(out)
    assert result.provenance["world_size"] == 2 and result.final["steps"] == 6


@pytest.mark.parametrize("override, message", [
    ("lr=abc", "lr must be a number, got 'abc' (str)"),
    ("batch_size=1.5", "batch_size must be an integer, got 1.5"),
    ("crop=1", "crop must be True or False, got 1"),
    ("subset='x'", "subset must be an integer or None"),
    ("momentum=1.5", "momentum must lie in [0, 1)"),
])  # fmt: skip
def test_cli_names_the_bad_field_and_what_it_accepts(override, message):
    out = subprocess.run([sys.executable, "-m", "ismod", "run", "smoke-uniform", "--set", override],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_cli_run_removes_its_checkpoint_once_the_result_is_saved(tree, tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "ismod", "run", "smoke-uniform", "--out", str(out), "--data", str(tree), "--no-progress",
           "--set", "subset=None", "--set", "test_subset=None", "--set", "batch_size=8", "--set", "budget='steps'",
           "--set", "budget_amount=3", "--set", "evaluations=1"]  # fmt: skip
    env = dict(os.environ, ISMOD_CACHE=str(tmp_path / "cache"))
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=300)
    assert out.exists() and not out.with_suffix(".ckpt.pt").exists()


def test_saved_or_measured_reuses_only_the_same_identity(tmp_path):
    from ismod.experiments import saved_or_measured

    calls = []

    def measure():
        calls.append(1)
        return {"accuracy": 0.5 + len(calls)}

    path = tmp_path / "page.json"
    first, prov = saved_or_measured(path, {"epochs": 6, "code": "a"}, measure)
    again, _ = saved_or_measured(path, {"epochs": 6, "code": "a"}, measure)
    assert first == again == {"accuracy": 1.5} and len(calls) == 1 and prov["git_commit"]
    changed, _ = saved_or_measured(
        path, {"epochs": 6, "code": "b"}, measure
    )  # other code: measured
    assert changed == {"accuracy": 2.5} and len(calls) == 2
    fresh, _ = saved_or_measured(path, {"epochs": 6, "code": "b"}, measure, reuse=False)
    assert fresh == {"accuracy": 3.5}
    path.write_text("{not json")
    assert saved_or_measured(path, {"epochs": 6, "code": "b"}, measure)[0] == {"accuracy": 4.5}


def test_a_group_norm_run_trains_and_is_a_run_of_its_own(tree, monkeypatch):
    """Config.norm reaches the network and the run's identity. (That the field left every saved
    batch-norm run's hash as it was is checked by test_suites against the saved runs.)"""
    built = []

    def spy(*args, **kwargs):
        built.append(experiments.build_model.__wrapped__(*args, **kwargs))
        return built[-1]

    spy.__wrapped__ = experiments.build_model
    monkeypatch.setattr(experiments, "build_model", spy)
    result = run(tiny_config(norm="group", budget_amount=4), data_root=tree, progress=False)
    (model,) = built
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert result.final["steps"] == 4 and result.final["train_loss"] > 0
    plain = tiny_config()
    assert experiments.config_hash(plain) != experiments.config_hash(plain.replace(norm="group"))


def test_weighted_batch_norm_normalises_each_importance_step_with_its_weights(tree, monkeypatch):
    """Presample(batch_norm="weighted") under fit: every importance step, and only those, runs inside
    ismod.batchnorm.weighted_statistics with that step's weights; no pass is added."""
    from ismod import train

    calls = []
    real = train.weighted_statistics

    def spy(model, weights):
        calls.append(weights.clone())
        return real(model, weights)

    monkeypatch.setattr(train, "weighted_statistics", spy)
    options = {"threshold": 1.0, "tau_momentum": 0.0, "batch_norm": "weighted"}
    result = run(tiny_config(strategy="presample", strategy_options=options, budget_amount=6), data_root=tree,
                 progress=False)  # fmt: skip
    b, steps = 8, 6
    importance = result.history[-1]["importance_steps"]
    assert 0 < importance <= steps and len(calls) == importance
    assert all(w.shape == (b,) and bool((w > 0).all()) for w in calls)
    assert result.final["forward_passes"] == pytest.approx(3.0 * b * steps + importance * 3 * b)
    assert math.isfinite(result.final["train_loss"])


def test_presample_batch_norm_trains_and_counts_its_extra_pass(tree):
    """Presample(batch_norm="presample") under fit: each importance step scores the presample of B
    and runs it once more for its batch-norm statistics; both are counted as forward passes."""
    options = {"threshold": 1.0, "tau_momentum": 0.0, "batch_norm": "presample"}
    result = run(tiny_config(strategy="presample", strategy_options=options, budget_amount=6), data_root=tree,
                 progress=False)  # fmt: skip
    b, steps = 8, 6
    importance = result.history[-1]["importance_steps"]
    assert 0 < importance <= steps and result.final["train_loss"] > 0
    assert result.final["forward_passes"] == pytest.approx(
        3.0 * b * steps + importance * 2 * (3 * b)
    )
