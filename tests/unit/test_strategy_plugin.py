"""plugins/strategy/mitogen_linear: Mitogen's strategy where the package is installed, linear otherwise."""

from __future__ import annotations

import gc
import sys

import ansible.collections.list
import ansible_mitogen.planner
import pytest
from ansible._internal._task import UnifiedTaskResult
from ansible.plugins.loader import filter_loader, test_loader
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


def test_collections_listed_once_in_the_strategy_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers fork from the strategy's process: the list made there is the one every task uses."""
    calls: list[int] = []
    installed = [b"/venv/ansible_collections/ansible/posix", b"/venv/ansible_collections/community/crypto"]
    monkeypatch.setattr(ansible.collections.list, "list_collection_dirs", lambda: calls.append(1) or installed)
    monkeypatch.setattr(ansible_mitogen.planner, "_load_collections", None)
    # The strategies' own runs (Mitogen's, then linear's) are not the point here.
    monkeypatch.setattr(Linear, "run", lambda self, iterator, play_context: 0)
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "run", lambda self, iterator, play_context: 0)

    assert object.__new__(module.StrategyModule).run(None, None) == 0
    assert calls == [1], "listed in the strategy's process, before any worker forks"

    class Invocation:  # the one attribute Mitogen's planner fills
        def __init__(self) -> None:
            self._extra_sys_paths: set[str] = set()

    for _ in range(3):  # three tasks that run collection modules
        invocation = Invocation()
        ansible_mitogen.planner._load_collections(invocation)
        assert invocation._extra_sys_paths == {p.decode() for p in installed}
    assert calls == [1], "not listed again"


def test_workers_fork_with_the_collector_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's collector must not scan (and so copy) the heap it inherits; the strategy's own is unfrozen after."""
    frozen_at_fork: list[int] = []
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    monkeypatch.setattr(
        module.ansible_mitogen.strategy.StrategyMixin,
        "_queue_task",
        lambda self, host, task, task_vars, play_context: frozen_at_fork.append(gc.get_freeze_count()),
    )
    strategy = object.__new__(module.StrategyModule)
    gc.unfreeze()
    before = gc.get_freeze_count()

    strategy._queue_task(None, None, {}, None)
    assert frozen_at_fork[0] > 0, "objects frozen while the worker forks"
    assert gc.get_freeze_count() == before == 0, "unfrozen after"

    def fork_fails(self, host, task, task_vars, play_context):
        raise OSError("fork failed")

    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "_queue_task", fork_fails)
    with pytest.raises(OSError):
        strategy._queue_task(None, None, {}, None)
    assert gc.get_freeze_count() == 0, "unfrozen when the fork fails too"


def test_worker_caches_filled_before_the_workers_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """What every worker would compute for its result is computed once, in the strategy's process."""
    result_fields = UnifiedTaskResult.get_result_key_to_resolved_field_mapping
    result_fields.cache_clear()
    for name in [m for m in sys.modules if "._json._profiles._module_" in m]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(Linear, "run", lambda self, iterator, play_context: 0)
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "run", lambda self, iterator, play_context: 0)
    monkeypatch.setattr(module, "collection_dirs", tuple)  # not the point here
    for loader in (filter_loader, test_loader):
        monkeypatch.setattr(loader, "_cached_non_collection_wrappers", {})

    object.__new__(module.StrategyModule).run(None, None)
    assert result_fields.cache_info().currsize == 2
    # Every filter and test outside collections loaded, not only the one asked for.
    assert {"bool", "to_json", "ansible.builtin.regex_replace"} <= set(filter_loader._cached_non_collection_wrappers)
    assert {"failed", "ansible.builtin.version"} <= set(test_loader._cached_non_collection_wrappers)
    assert {"legacy_m2c", "legacy_c2m", "modern_m2c", "modern_c2m"} <= {
        m.rpartition("._module_")[2] for m in sys.modules if "._json._profiles._module_" in m
    }

    # A worker asks the way ansible-core asks (keyword argument): answered from the cache.
    UnifiedTaskResult.from_module_result_dict({"changed": False, "ping": "pong"})
    UnifiedTaskResult.from_action_result_dict({"changed": False})
    assert result_fields.cache_info().currsize == 2, "no new entry: the worker's calls hit the cache"
