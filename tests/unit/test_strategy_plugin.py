"""plugins/strategy/mitogen_linear: Mitogen's strategy where the package is installed, linear otherwise."""

from __future__ import annotations

import sys

import pytest
from ansible.plugins.strategy.linear import StrategyModule as Linear
from conftest import load_plugin


def test_mitogen_strategy_when_the_package_is_there() -> None:
    strategy = load_plugin("plugins/strategy/mitogen_linear.py").StrategyModule
    assert "ansible_mitogen.strategy" in [c.__module__ for c in strategy.__mro__]
    assert issubclass(strategy, Linear)


def test_plain_linear_without_mitogen(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m == "ansible_mitogen" or m.startswith("ansible_mitogen.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ansible_mitogen", None)  # import fails
    strategy = load_plugin("plugins/strategy/mitogen_linear.py").StrategyModule
    assert "ansible_mitogen.strategy" not in [c.__module__ for c in strategy.__mro__]
    assert issubclass(strategy, Linear)
    assert "mitogen is not installed" in capsys.readouterr().err
