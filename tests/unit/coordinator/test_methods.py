"""Methods as plug-ins: every method a job spec may name is registered, and one whose optional
extra is missing is refused with the pip command that installs it."""

from __future__ import annotations

import pytest

from fedsynth.coordinator import methods
from fedsynth.coordinator.marginal_method import MarginalMethod
from fedsynth.protocols.spec import METHODS


def test_every_method_a_spec_may_name_is_registered() -> None:
    assert set(methods.REGISTRY) == set(METHODS)
    for name in METHODS:
        assert methods.get(name).name == name
    assert isinstance(methods.get("marginals"), MarginalMethod)


def test_an_unknown_method_is_refused_with_the_known_ones() -> None:
    with pytest.raises(methods.MethodUnavailable, match="'gan' is not one of"):
        methods.get("gan")


def test_a_method_whose_extra_is_missing_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(methods.REGISTRY, "heavy",
                        ("fedsynth_no_such_module.method", "Heavy", "heavy-extra"))
    with pytest.raises(methods.MethodUnavailable,
                       match=r'needs the optional extra .heavy-extra.: pip install -e "\.\['
                             r'heavy-extra\]"'):
        methods.get("heavy")
