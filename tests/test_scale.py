import pytest
import torch

from ismod.scale import by_scale, resolve_scale


def test_auto_follows_cuda(monkeypatch):
    monkeypatch.delenv("ISMOD_SCALE", raising=False)
    assert resolve_scale("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_scale("auto") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_scale() == "cpu"


def test_explicit_scale_kept(monkeypatch):
    monkeypatch.delenv("ISMOD_SCALE", raising=False)
    for s in ("smoke", "cpu", "gpu"):
        assert resolve_scale(s) == s
    assert resolve_scale(" CPU ") == "cpu"


def test_environment_overrides_parameter(monkeypatch):
    monkeypatch.setenv("ISMOD_SCALE", "smoke")
    assert resolve_scale("gpu") == "smoke"
    monkeypatch.setenv("ISMOD_SCALE", "")
    assert resolve_scale("gpu") == "gpu"


def test_bad_scale_names_its_source(monkeypatch):
    monkeypatch.delenv("ISMOD_SCALE", raising=False)
    with pytest.raises(ValueError, match="scale must be one of"):
        resolve_scale("tiny")
    monkeypatch.setenv("ISMOD_SCALE", "huge")
    with pytest.raises(ValueError, match="environment variable ISMOD_SCALE"):
        resolve_scale("cpu")


def test_by_scale():
    assert by_scale("smoke", smoke=1, cpu=2, gpu=3) == 1
    assert by_scale("gpu", smoke=1, cpu=2, gpu=3) == 3
    with pytest.raises(ValueError, match="resolve_scale"):
        by_scale("auto", smoke=1, cpu=2, gpu=3)


def test_paper_scale_is_opt_in(monkeypatch):
    monkeypatch.delenv("ISMOD_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_scale("auto") == "gpu"  # never "paper"
    assert resolve_scale("paper") == "paper"
    assert by_scale("paper", smoke=1, cpu=2, gpu=3) == 3  # the gpu value unless one is given
    assert by_scale("paper", smoke=1, cpu=2, gpu=3, paper=4) == 4
