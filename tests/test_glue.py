"""ismod.glue: a string is stored as markdown (a word, not its repr), a number as it is; a bad key is
refused; without myst-nb the value is shown only when asked."""

import builtins
import sys

import pytest
from IPython.display import Markdown

from ismod.glue import glue


def _stored(monkeypatch):
    calls = []
    import myst_nb

    monkeypatch.setattr(
        myst_nb, "glue", lambda name, value, display: calls.append((name, value, display))
    )
    return calls


def test_a_string_is_glued_as_markdown_and_a_number_as_it_is(monkeypatch):
    calls = _stored(monkeypatch)
    glue("ch3_word", "higher")
    glue("ch3_gain", 8.1)
    (n1, v1, d1), (n2, v2, d2) = calls
    assert n1 == "ch3_word" and isinstance(v1, Markdown) and v1.data == "higher" and d1 is False
    assert n2 == "ch3_gain" and v2 == 8.1


def test_a_key_that_cannot_be_a_role_target_is_refused():
    with pytest.raises(ValueError, match="name must be"):
        glue("ch 3 gain", 1.0)


def test_without_myst_nb_the_value_is_shown_only_when_asked(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_myst(name, *args, **kwargs):
        if name == "myst_nb":
            raise ImportError("no myst_nb here")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "myst_nb", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_myst)
    glue("ch3_gain", 8.125)
    assert capsys.readouterr().out == ""
    glue("ch3_gain", 8.125, display=True)
    assert "8.125" in capsys.readouterr().out


def test_comparisons_are_glued_in_points_or_as_ratios_with_their_words(monkeypatch):
    import math

    from ismod.glue import comparison_values, glue_comparisons
    from ismod.verdicts import Comparison

    acc = {"comparison": Comparison("a", "u"), "seeds": 5, "mean": -0.0141, "low": -0.0336,
           "high": 0.0053, "verdict": "inconclusive"}  # fmt: skip
    loss = {"comparison": Comparison("a", "u", metric="train_eval_loss", transform=math.log, margin=math.log(1.25)),
            "seeds": 5, "mean": math.log(3.0), "low": math.log(2.0), "high": math.log(4.5),
            "verdict": "equivalent within ±0.223"}  # fmt: skip
    assert comparison_values(acc)["difference"] == pytest.approx(-1.41)
    assert comparison_values(loss)["high"] == pytest.approx(4.5)
    assert comparison_values(loss)["verdict"] == "equivalent within ±×1.25"
    untested = comparison_values({"comparison": Comparison("a", "u"), "seeds": 0})
    assert math.isnan(untested["difference"]) and untested["verdict"] == "exploratory"
    calls = _stored(monkeypatch)
    glue_comparisons("ch6", [acc, loss], ["acc", "loss"])
    stored = {name: value for name, value, _ in calls}
    assert stored["ch6_acc"] == pytest.approx(-1.41) and stored["ch6_loss"] == pytest.approx(3.0)
    assert stored["ch6_acc_verdict"].data == "inconclusive" and stored["ch6_loss_seeds"] == 5
    with pytest.raises(ValueError, match="names must name each"):
        glue_comparisons("ch6", [acc], ["acc", "loss"])
