"""plugins/strategy/mitogen_linear: the opt-in accelerated strategy, and its fall-back to linear.

Acceleration must never break a run: where Mitogen cannot load, or refuses the installed
ansible-core, a real playbook still runs to the end under ansible-core's linear strategy,
and one line says why.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from ansible.plugins.strategy.linear import StrategyModule as Linear
from conftest import ROOT, load_plugin
from toolkit.ansible_run import run_playbook

PLUGIN = "plugins/strategy/mitogen_linear.py"

# Two hosts over the local connection: enough for a module, a fact, a condition and a loop.
PLAYBOOK = """
- name: A small real play
  hosts: all
  gather_facts: false
  tasks:
    - name: Run a module
      ansible.builtin.command: echo {{ inventory_hostname }}
      register: echoed
      changed_when: false
    - name: Use its result
      ansible.builtin.set_fact:
        said: "{{ echoed.stdout }}"
    - name: Loop and condition
      ansible.builtin.assert:
        that: said == inventory_hostname
      loop: [1, 2]
      when: item > 1
"""
INVENTORY = "h1 ansible_connection=local\nh2 ansible_connection=local\n"

# Loaded before ansible-playbook (PYTHONPATH): ansible-core then reports a release that
# Mitogen refuses at import with AnsibleError, as it does for a release it does not support.
UNSUPPORTED_CORE = "import ansible\nansible.__version__ = '2.9.27'\n"


def _mro_modules(strategy: type) -> list[str]:
    return [c.__module__ for c in strategy.__mro__]


def test_mitogen_strategy_when_the_package_is_there() -> None:
    strategy = load_plugin(PLUGIN).StrategyModule
    assert "ansible_mitogen.strategy" in _mro_modules(strategy)
    assert issubclass(strategy, Linear)


def test_linear_and_one_line_without_mitogen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "ansible_mitogen" or m.startswith("ansible_mitogen.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ansible_mitogen", None)  # the import fails
    strategy = load_plugin(PLUGIN).StrategyModule
    assert strategy is Linear
    err = capsys.readouterr().err
    assert "mitogen is not installed" in err
    assert "running ansible.builtin.linear instead" in err
    assert len(err.strip().splitlines()) == 1


def test_no_private_interfaces() -> None:
    """Public interfaces only: no private module of ansible-core or Mitogen, no underscore attributes of theirs."""
    source = (ROOT / PLUGIN).read_text()
    assert "ansible._internal" not in source
    assert not re.findall(r"\._(?!_)\w+", source)


def _run(tmp_path: Path, strategy: str, extra_env: dict[str, str] | None = None):
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "hosts.ini").write_text(INVENTORY)
    env = {"ANSIBLE_STRATEGY": strategy, "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    env.update(extra_env or {})
    return run_playbook(tmp_path / "play.yml", tmp_path / "hosts.ini", env=env, timeout=300)


@pytest.mark.parametrize("strategy", ["linear", "mitogen_linear"])
def test_a_real_playbook_runs_under_both(tmp_path: Path, strategy: str) -> None:
    run = _run(tmp_path, strategy)
    assert run.rc == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.total("failures") == 0
    assert run.stats["h1"]["ok"] == 3
    assert "running ansible.builtin.linear instead" not in run.stderr


def test_a_refused_ansible_core_runs_the_playbook_under_linear(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(UNSUPPORTED_CORE)
    run = _run(tmp_path, "mitogen_linear", {"PYTHONPATH": str(shim)})
    assert run.rc == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.total("failures") == 0
    assert run.stats["h1"]["ok"] == 3 and run.stats["h2"]["ok"] == 3
    why = [line for line in run.stderr.splitlines() if "mitogen_linear:" in line]
    assert len(why) == 1, run.stderr
    assert "Mitogen cannot run with this ansible-core" in why[0]
    assert "(2.9.27): Your version of Ansible ((2, 9, 27)) is too old" in why[0]
    assert "running ansible.builtin.linear instead" in why[0]
