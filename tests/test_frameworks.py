"""The own-loop page's recipes for torchdata's StatefulDataLoader, Lightning and Accelerate, run as the
page prints them (each code block is read from the notebook's markdown), on a small model at smoke
scale: a recipe the page shows is a recipe that runs."""

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ismod

PAGE = Path(__file__).resolve().parents[1] / "book" / "own_loop.ipynb"


def recipe(name: str) -> str:
    cells = json.loads(PAGE.read_text())["cells"]
    markdown = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    blocks = re.findall(r"```python\n(# recipe: ([\w-]+)\n.*?)```", markdown, re.DOTALL)
    found = {title: code for code, title in blocks}
    assert name in found, f"the own-loop page has no '# recipe: {name}' block"
    return found[name]


def setting() -> dict:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(3, (192,), generator=g)
    x = torch.randn(192, 10, generator=g) + 2.0 * nn.functional.one_hot(y, 10).float()
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return {"ismod": ismod, "torch": torch, "DataLoader": DataLoader, "train": TensorDataset(x, y),
            "model": model, "optimizer": optimizer, "BATCH": 16, "EPOCHS": 2}  # fmt: skip


def learnt(sampler) -> bool:
    """The sampler saw losses: its scores moved off their starting value."""
    scores = sampler.strategy.state_dict()["scores"]
    return bool((scores != scores[0]).any())


@pytest.mark.slow
def test_the_stateful_dataloader_recipe_saves_mid_epoch_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("torchdata")
    monkeypatch.chdir(tmp_path)
    space = setting()
    exec(recipe("StatefulDataLoader"), space)
    space["train_from"]()
    saved = torch.load("checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1  # the last save came from the second epoch
    whole = [p.detach().clone() for p in space["model"].parameters()]
    space["train_from"]("checkpoint.pt")  # resumes inside the second epoch and finishes it
    # the resumed run trains the batches the whole run trained after the save, to the same weights
    assert all(torch.equal(a, p) for a, p in zip(whole, space["model"].parameters()))


@pytest.mark.slow
def test_the_lightning_recipe_trains_with_the_batch_sampler_it_was_given():
    pytest.importorskip("lightning")
    space = setting()
    exec(recipe("Lightning"), space)
    module = space["trainer"].lightning_module
    sampler = module.sampler
    assert isinstance(sampler, ismod.LossSampler) and sampler.epoch == space["EPOCHS"]
    assert space["trainer"].train_dataloader.batch_sampler is sampler  # not replaced
    assert learnt(sampler)


@pytest.mark.slow
def test_the_accelerate_recipe_trains_with_the_batch_sampler_it_was_given():
    pytest.importorskip("accelerate")
    space = setting()
    exec(recipe("Accelerate"), space)
    sampler = space["sampler"]
    assert sampler.epoch == space["EPOCHS"] and learnt(sampler)


def test_the_rho_loss_recipe_trains_the_irreducible_model_then_selects_from_the_rest():
    space = {**setting(), "BATCH": 4}  # candidate batches of 40 from the 96 samples not held out
    start = [p.detach().clone() for p in space["model"].parameters()]
    exec(recipe("RHO-LOSS"), space)
    method, irreducible = space["method"], space["irreducible"]
    assert (
        isinstance(method, ismod.ReducibleLossSelection) and method.irreducible_model is irreducible
    )
    assert method.candidates == 2 * 2 * 40 and method.trained == 2 * 2 * 4  # 2 epochs of 2 batches
    moved = [not torch.equal(a, p) for a, p in zip(start, irreducible.parameters())]
    assert all(moved) and irreducible is not space["model"]  # trained, and a model of its own
    assert not set(space["holdout"].indices) & set(space["rest"].indices)
