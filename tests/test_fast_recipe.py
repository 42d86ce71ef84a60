"""The gpu scale's fast recipe: the whitened network, its optimiser groups, schedule, lookahead, TTA,
and the result-reuse rules (data source, behaviour version). CPU-only; the CUDA paths are in test_cuda.py."""

import pytest
import torch

from ismod import experiments, runner, suites
from ismod.augment import Augment
from ismod.data import ImageData, data_source
from ismod.experiments import BEHAVIOUR_VERSION, Config, Result, load_saved, result_path
from ismod.models import FastCNN, build_model, initialize_from_data
from ismod.strategies import build_strategy
from ismod.train import TrainSettings, _Lookahead, _param_groups, _tta_logits, fit, lr_factor


def test_whitening_layer_whitens_the_patches_it_was_fitted_on():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=g) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    x = x + 0.8 * x.roll(1, dims=3)  # neighbouring pixels correlated, as in images
    model = FastCNN()
    initialize_from_data(model, x)
    out = torch.nn.functional.conv2d(
        x, model.whiten.weight[:12]
    )  # the positive half of the filters
    cov = torch.cov(out.permute(1, 0, 2, 3).reshape(12, -1))
    assert torch.allclose(cov, torch.eye(12), atol=0.02), (
        cov
    )  # eps = 5e-4 shrinks the diagonal by < 1%
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.weight.requires_grad
    assert all(
        not bn.weight.requires_grad
        for bn in model.modules()
        if isinstance(bn, torch.nn.BatchNorm2d)
    )


def test_data_initialisation_is_a_no_op_for_other_models():
    model = build_model("small_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initialize_from_data(model, torch.randn(8, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_onecycle_runs_from_initial_to_1_to_final():
    s = TrainSettings(schedule="onecycle", warmup=0.23, initial_lr=0.2, final_lr=0.07)
    assert lr_factor(s, 0.0) == pytest.approx(0.2)
    assert lr_factor(s, 0.23) == pytest.approx(1.0)
    assert lr_factor(s, 0.115) == pytest.approx(0.6)
    assert lr_factor(s, 1.0) == pytest.approx(0.07)
    assert (
        lr_factor(TrainSettings(schedule="onecycle", warmup=0.2), 1.0) == 0.0
    )  # defaults unchanged


def test_param_groups_scale_batch_norm_like_airbench():
    model = FastCNN()
    legacy = _param_groups(model, TrainSettings())
    assert [g["weight_decay"] for g in legacy] == [5e-4, 0.0]
    s = TrainSettings(bias_lr_scale=64.0, weight_decay=1e-3)
    weights, norms = _param_groups(model, s)
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()
                 if p.requires_grad}  # fmt: skip
    assert {id(p) for p in norms["params"]} == bn_params and norms["lr_scale"] == 64.0
    assert norms["weight_decay"] * norms["lr_scale"] == pytest.approx(
        weights["weight_decay"]
    )  # same lr·wd
    assert id(model.whiten.bias) in {
        id(p) for p in weights["params"]
    }  # a bias, not a norm: decays as weights
    assert id(model.whiten.weight) not in {
        id(p) for g in (weights, norms) for p in g["params"]
    }  # frozen


def test_lookahead_pulls_every_fifth_step_and_hands_over_at_the_end():
    model = torch.nn.Linear(3, 2)
    la = _Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    la.step(3, 10)  # not a multiple of 5: nothing
    assert torch.equal(model.weight, start + 1.0)
    la.step(5, 10)  # d = 0.95⁵ · 0.5³
    d = 0.95**5 * 0.5**3
    assert torch.allclose(model.weight, start + (1 - d)) and torch.allclose(
        la.slow["weight"], model.weight
    )
    with torch.no_grad():
        model.weight.add_(1.0)
    la.finish()
    assert torch.allclose(model.weight, start + (1 - d))  # the slow copy, the last steps discarded


def test_test_time_augmentation_levels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(_tta_logits(model, x, 0), model(x))
    assert torch.allclose(_tta_logits(model, x, 1), 0.5 * (model(x) + model(x.flip(3))))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    mirror = lambda z: 0.5 * (model(z) + model(z.flip(3)))  # noqa: E731
    want = 0.5 * mirror(x) + 0.25 * (mirror(padded[:, :, :8, :8]) + mirror(padded[:, :, 2:, 2:]))
    assert torch.allclose(_tta_logits(model, x, 2), want)


def _synthetic(n: int, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[:, 0] = (labels * 25).to(torch.uint8)[:, None, None]
    return ImageData(images, labels, [str(i) for i in range(10)], "synthetic")


def test_fast_recipe_learns_and_resumes_with_lookahead(tmp_path):
    data, test = _synthetic(512), _synthetic(200, 1)
    settings = TrainSettings(batch_size=64, budget="steps", budget_amount=20, lr=0.5, momentum=0.85, bias_lr_scale=64.0,
                             lookahead=True, tta=2, evaluations=2, warmup=0.2, checkpoint_every_steps=5)  # fmt: skip

    def model():
        torch.manual_seed(0)
        m = FastCNN()
        initialize_from_data(m, Augment()(data.images[:128], data.labels[:128], train=False)[0])
        return m

    whole = fit(model(), data, test, build_strategy("uniform"), Augment(), settings, progress=False)
    assert whole["final"]["test_accuracy"] > 0.3  # chance is 0.1

    class Stop(Exception):
        pass

    strategy = build_strategy("uniform")
    real = strategy.select

    def stop_at_12(step):
        if step == 12:
            raise Stop
        return real(step)

    strategy.select = stop_at_12
    ckpt = tmp_path / "c.pt"
    with pytest.raises(Stop):
        fit(model(), data, test, strategy, Augment(), settings, progress=False, checkpoint=ckpt)
    resumed = fit(model(), data, test, build_strategy("uniform"), Augment(), settings, progress=False, checkpoint=ckpt,
                  resume=True)  # fmt: skip
    strip = lambda h: [{k: v for k, v in r.items() if k != "wall_time"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(whole["history"])


def test_fast_recipe_config_is_airbench94_in_mean_loss_terms():
    c = experiments.get_config("cifar10-fast-uniform")
    # airbench: lr 11.5 per 1024 summed samples over (1 + 1/(1 − 0.85)); with the mean loss ×1024
    assert c.lr == pytest.approx(11.5 / (1 + 1 / 0.15))
    assert c.lr * c.weight_decay == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))
    assert (c.batch_size, c.momentum, c.label_smoothing, c.crop_padding, c.tta) == (
        1024,
        0.85,
        0.2,
        2,
        2,
    )
    base = suites.fast_base("x")
    assert (base.label_smoothing, base.lookahead, base.tta, base.final_lr) == (0.0, False, 0, 0.0)


def test_data_source_names_what_would_be_loaded(tmp_path):
    assert data_source("cifar10", tmp_path) == "CIFAR-10 (torchvision)"
    (tmp_path / "cifar10-jpeg.tar.gz").write_bytes(b"")
    assert data_source("cifar10", tmp_path) == "CIFAR-10 (JPEG q75 copy)"
    with pytest.raises(ValueError, match="name"):
        data_source("mnist", tmp_path)


def test_saved_results_are_served_only_for_the_same_data_and_behaviour(tmp_path):
    config = Config(name="x")
    prov = {"data_source": "CIFAR-10 (JPEG q75 copy)", "behaviour_version": BEHAVIOUR_VERSION}
    Result(config.to_dict(), prov, [], {}, {}).save(result_path(config, tmp_path))
    assert load_saved(config, tmp_path, data="CIFAR-10 (JPEG q75 copy)") is not None
    assert load_saved(config, tmp_path) is not None  # display: any data, shown with its provenance
    assert load_saved(config, tmp_path, data="CIFAR-10 (torchvision)") is None
    assert load_saved(config.replace(lr=0.3), tmp_path) is None
    old = dict(prov, behaviour_version=BEHAVIOUR_VERSION - 1)
    Result(config.to_dict(), old, [], {}, {}).save(result_path(config, tmp_path))
    assert load_saved(config, tmp_path) is None
    del old["behaviour_version"]  # results from before versions were recorded count as version 1
    Result(config.to_dict(), old, [], {}, {}).save(result_path(config, tmp_path))
    assert load_saved(config, tmp_path) is None


def test_amp_dtype_is_fp16_before_ampere(monkeypatch):
    from ismod import train

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # a T4
    assert train.amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    assert train.amp_dtype(torch.device("cuda")) == torch.bfloat16
    assert train.amp_dtype(torch.device("cpu")) == torch.bfloat16


def test_saved_results_are_found_from_a_colab_like_working_directory(tmp_path, monkeypatch):
    # Colab's setup cell clones the repository and works from its book/ folder; results_dir("results")
    # is relative to that working directory, as in the book's own build
    book = tmp_path / "clone" / "book"
    config = suites.chapter5("gpu")["uniform"][0]
    saved = Result(config.to_dict(), {"behaviour_version": BEHAVIOUR_VERSION, "data_source": "CIFAR-10 (JPEG q75 copy)"},
                   [], {}, {})  # fmt: skip
    saved.save(result_path(config, book / "results" / "gpu"))
    monkeypatch.chdir(book)
    monkeypatch.delenv(experiments.RESULTS_ENV, raising=False)
    found = runner.load_suite(suites.chapter5("gpu"), experiments.results_dir("results") / "gpu")
    assert list(found) == ["uniform"] and found["uniform"][0].config == config.to_dict()


def test_saved_results_dir_reads_the_books_runs_whatever_ismod_results_says(tmp_path, monkeypatch):
    # a page's pilots are read from the runs shipped with the book, also when a test (or a reader)
    # points new results elsewhere
    book = tmp_path / "book"
    config = suites.chapter5_weighted_pilot("cpu")["forced, batch norm (weighted statistics)"][0]
    saved = Result(config.to_dict(), {"behaviour_version": BEHAVIOUR_VERSION, "data_source": "CIFAR-10 (JPEG q75 copy)"},
                   [], {}, {})  # fmt: skip
    saved.save(result_path(config, book / "results" / "cpu"))
    monkeypatch.chdir(book)
    monkeypatch.setenv(experiments.RESULTS_ENV, str(tmp_path / "scratch"))
    assert experiments.results_dir("results") == tmp_path / "scratch"
    found = runner.load_suite(
        suites.chapter5_weighted_pilot("cpu"), experiments.saved_results_dir("cpu")
    )
    assert [runs[0].config for runs in found.values()] == [config.to_dict()]
    with pytest.raises(FileNotFoundError, match="book_results"):
        experiments.saved_results_dir("gpu")
