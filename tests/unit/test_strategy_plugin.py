"""plugins/strategy/mitogen_linear: Mitogen's strategy where the package is installed, linear otherwise."""

from __future__ import annotations

import collections
import gc
import queue
import sys
import threading
import time
import types
from pathlib import Path

import ansible.collections.list
import ansible.executor.module_common
import ansible.modules
import ansible_mitogen.module_finder
import ansible_mitogen.planner
import ansible_mitogen.transport_config
import pytest
from ansible._internal._task import UnifiedTaskResult
from ansible.errors import AnsibleError
from ansible.plugins.loader import filter_loader, test_loader
from ansible.plugins.strategy.linear import StrategyModule as Linear
from conftest import load_plugin
from toolkit.ansible_run import run_playbook

# What the strategy's _queue_task reads of a task that goes to a worker (a module, no condition).
A_MODULE_TASK = types.SimpleNamespace(action="ping", resolved_action="ansible.builtin.ping", when=[])


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

    # The work done before the fork is not Mitogen's: the plain strategy does it too.
    frozen_at_fork: list[int] = []

    def queue_task(self, host, task, task_vars, play_context):
        frozen_at_fork.append(gc.get_freeze_count())

    monkeypatch.setattr(Linear, "_queue_task", queue_task)
    gc.unfreeze()
    object.__new__(strategy)._queue_task(None, A_MODULE_TASK, {}, None)
    assert frozen_at_fork[0] > 0
    assert gc.get_freeze_count() == 0


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

    strategy._queue_task(None, A_MODULE_TASK, {}, None)
    assert frozen_at_fork[0] > 0, "objects frozen while the worker forks"
    assert gc.get_freeze_count() == before == 0, "unfrozen after"

    def fork_fails(self, host, task, task_vars, play_context):
        raise OSError("fork failed")

    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "_queue_task", fork_fails)
    with pytest.raises(OSError):
        strategy._queue_task(None, A_MODULE_TASK, {}, None)
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


class _FakeTqm:
    def __init__(self) -> None:
        self._terminated = False
        self.dead = False

    def has_dead_workers(self) -> bool:
        return self.dead


class _FakeStrategy:
    """The parts of ansible-core's StrategyBase that the result wait uses."""

    def __init__(self, tqm: _FakeTqm) -> None:
        self._tqm = tqm
        self._results: collections.deque[str] = collections.deque()
        self._rpc_queue: queue.Queue[threading.Event] = queue.Queue()
        self._pending_results = 0
        self.looks = 0

    def _process_pending_results(self, iterator: object) -> list[str]:
        self.looks += 1
        while not self._rpc_queue.empty():  # a worker's inventory request, answered
            self._rpc_queue.get().set()
        done = []
        while self._results:
            done.append(self._results.popleft())
            self._pending_results -= 1
        return done


def _waiting_strategy(module: object) -> object:
    class Strategy(module.WokenByResults, _FakeStrategy):  # type: ignore[name-defined]
        pass

    return Strategy(_FakeTqm())


def test_results_wake_the_strategy_instead_of_a_polling_loop() -> None:
    """Both strategies wait on the event; a result added at any moment is collected, without busy looks."""
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    assert module.WokenByResults in module.StrategyModule.__mro__
    strategy = _waiting_strategy(module)
    assert isinstance(strategy._results, module.ResultQueue)
    strategy.DEAD_WORKER_CHECK_S = 30.0  # no look on a timeout, however slow the machine

    strategy._pending_results = 3

    def worker_results() -> None:  # as ansible-core's results thread adds them
        for name in ("gpu1", "gpu2", "ops1"):
            time.sleep(0.05)
            strategy._results.append(name)

    thread = threading.Thread(target=worker_results)
    thread.start()
    assert strategy._wait_on_pending_results(None) == ["gpu1", "gpu2", "ops1"]
    thread.join()
    assert strategy._pending_results == 0
    # Polling every millisecond would have looked ~150 times. The event wakes it once a result
    # (twice where a result lands between the clear and the look): at most 1 + 2 * 3.
    assert strategy.looks <= 7


def test_an_inventory_request_wakes_the_strategy() -> None:
    """A worker running add_host or group_by waits for the strategy to answer: the request must wake it."""
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    strategy = _waiting_strategy(module)
    strategy.DEAD_WORKER_CHECK_S = 30.0  # only the request can wake it in time
    strategy._pending_results = 1
    answered = threading.Event()

    def worker() -> None:  # asks, and once answered posts its result
        time.sleep(0.05)
        strategy._rpc_queue.put(answered)
        if answered.wait(5):
            strategy._results.append("gpu1")
        else:  # not answered: end the wait, so that the test fails instead of hanging
            strategy._tqm._terminated = True

    thread = threading.Thread(target=worker)
    thread.start()
    assert strategy._wait_on_pending_results(None) == ["gpu1"]
    thread.join()
    assert answered.is_set()


def test_result_wait_still_notices_a_dead_worker_and_an_interrupted_run() -> None:
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    strategy = _waiting_strategy(module)
    strategy._pending_results = 1
    strategy._tqm.dead = True  # killed before it posted its result
    with pytest.raises(AnsibleError, match="dead state"):
        strategy._wait_on_pending_results(None)

    strategy._tqm.dead = False
    threading.Timer(0.05, lambda: setattr(strategy._tqm, "_terminated", True)).start()
    assert strategy._wait_on_pending_results(None) == []  # returns within the check interval
    assert strategy._pending_results == 1


class _Action:
    """What Mitogen's interpreter discovery reads and writes on an action plugin."""

    def __init__(self) -> None:
        self._discovered_interpreter_key = None
        self._mitogen_discovering_interpreter = False


def test_interpreter_fact_returned_only_after_a_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fact in a result makes the strategy rewrite the host's fact cache; a cached interpreter is not news."""
    monkeypatch.setattr(
        ansible_mitogen.transport_config,
        "run_interpreter_discovery_if_necessary",
        ansible_mitogen.transport_config.run_interpreter_discovery_if_necessary,
    )
    monkeypatch.setattr(Linear, "run", lambda self, iterator, play_context: 0)
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "run", lambda self, iterator, play_context: 0)
    monkeypatch.setattr(module, "collection_dirs", tuple)
    object.__new__(module.StrategyModule).run(None, None)
    discovery = ansible_mitogen.transport_config.run_interpreter_discovery_if_necessary
    assert discovery is module._interpreter_fact_when_discovered

    # Known from the host's cached facts: Mitogen's own code answers, and no fact goes back.
    action = _Action()
    task_vars = {"ansible_facts": {"discovered_interpreter_python": "/usr/bin/python3"}}
    assert discovery("auto_silent", [], task_vars, action, False) == "/usr/bin/python3"
    assert action._discovered_interpreter_key is None

    # Discovered now: the fact goes back, to be cached.
    def discovers(s, candidates, task_vars, action, rediscover_python):
        action._discovered_interpreter_key = "discovered_interpreter_python"
        return "/usr/bin/python3.12"

    monkeypatch.setattr(module, "_run_interpreter_discovery", discovers)
    action = _Action()
    assert discovery("auto_silent", [], {"ansible_facts": {}}, action, False) == "/usr/bin/python3.12"
    assert action._discovered_interpreter_key == "discovered_interpreter_python"
    # Rediscovery (Mitogen's docker connection) is Mitogen's own business.
    action = _Action()
    discovery("auto_silent", [], task_vars, action, True)
    assert action._discovered_interpreter_key == "discovered_interpreter_python"

    # A second load of the plugin wraps Mitogen's function, not its own wrapper.
    again = load_plugin("plugins/strategy/mitogen_linear.py")
    assert again._run_interpreter_discovery is module._interpreter_fact_when_discovered.__wrapped__


SKIPS_PLAYBOOK = """
- hosts: all
  gather_facts: false
  vars:
    answer: 42
  tasks:
    - name: Skipped and registered
      ansible.builtin.command: /bin/false
      when: answer == 0
      register: skipped_reg
    - name: The registered skip, as a later task sees it
      ansible.builtin.debug:
        var: skipped_reg
    - name: Runs on one host, skips on the other (a host variable)
      ansible.builtin.debug:
        msg: ran
      when: flag | bool
    - name: Skipped, with a templated ignore_errors and no_log
      ansible.builtin.command: /bin/false
      when: answer < 0
      ignore_errors: "{{ answer > 1 }}"
      no_log: true
    - name: Runs, on a variable only the worker's play context adds
      ansible.builtin.debug:
        msg: "{{ ansible_host }}"
      when: ansible_host is defined
    - name: Skipped include
      ansible.builtin.include_tasks: nowhere.yml
      when: answer == 1
    - name: Skipped block
      when: answer == 2
      block:
        - name: In the skipped block
          ansible.builtin.debug:
            msg: never
    - name: Skipped, its condition writes the process that evaluates it
      ansible.builtin.command: /bin/false
      when: lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ pid_log) == 'never'
    - name: Skipped again, the same way
      ansible.builtin.command: /bin/false
      when: lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ pid_log) == 'never'
    - name: Skipped per item (a loop goes to a worker)
      ansible.builtin.command: "echo {{ item }}"
      loop: [1, 2]
      when: item > 2
    - name: An undefined variable in the condition fails the task
      ansible.builtin.debug:
        msg: never
      when: not_defined_anywhere
      ignore_errors: true
"""


def _run_report(tmp_path: Path, playbook: str, strategy: str) -> tuple[dict, list[str]]:
    """The playbook's JSON report (without timings) and the processes that wrote to the file `pid_log` names."""
    (tmp_path / "play.yml").write_text(playbook)
    pid_log = tmp_path / f"pids-{strategy}"
    pid_log.touch()
    (tmp_path / "hosts").write_text(
        "a flag=true\nb flag=false\n"
        f"[all:vars]\nansible_connection=local\nansible_python_interpreter={sys.executable}\n"
    )
    run = run_playbook(
        tmp_path / "play.yml", tmp_path / "hosts", "-e", f"pid_log={pid_log}", env={"ANSIBLE_STRATEGY": strategy}
    )
    assert run.rc == 0 and run.data, run.stdout[-3000:] + run.stderr[-3000:]
    report = run.data

    def without_timings(value):
        if isinstance(value, dict):
            return {k: without_timings(v) for k, v in value.items() if k not in ("duration", "start", "end", "id")}
        if isinstance(value, list):
            return [without_timings(v) for v in value]
        return value

    # The json callback lists a task once per host for strategies it does not know as lock-step
    # (ours): one entry per task, with every host's result, whichever the strategy.
    tasks: dict[str, dict] = {}
    for entry in without_timings(report)["plays"][0]["tasks"]:
        tasks.setdefault(entry["task"]["path"], {"task": entry["task"], "hosts": {}})["hosts"].update(entry["hosts"])
    return {"tasks": list(tasks.values()), "stats": report["stats"]}, pid_log.read_text().split()


def test_false_conditions_skip_without_a_worker_with_the_workers_result(tmp_path: Path) -> None:
    """Every host and task reports what ansible-core's linear strategy reports; the skips came from one process."""
    linear, linear_pids = _run_report(tmp_path, SKIPS_PLAYBOOK, "linear")
    ours, our_pids = _run_report(tmp_path, SKIPS_PLAYBOOK, "mitogen_linear")
    assert ours == linear
    tasks = {task["task"]["name"]: task["hosts"] for task in ours["tasks"]}
    assert tasks["Runs on one host, skips on the other (a host variable)"]["b"]["skipped"] is True
    assert tasks["The registered skip, as a later task sees it"]["a"]["skipped_reg"]["false_condition"] == "answer == 0"
    assert "skipped" not in tasks["Runs, on a variable only the worker's play context adds"]["a"]
    assert tasks["An undefined variable in the condition fails the task"]["a"]["failed"] is True
    # Two tasks on two hosts: four workers under linear, the strategy's own process here (which
    # evaluates a false condition twice: the second time with the worker's connection variables).
    assert len(linear_pids) == len(set(linear_pids)) == 4
    assert len(our_pids) == 8 and len(set(our_pids)) == 1


CONTROLLER_ACTIONS_PLAYBOOK = """
- hosts: all
  gather_facts: false
  vars:
    answer: 42
  tasks:
    - name: Arguments that match their spec
      ansible.builtin.validate_argument_spec:
        argument_spec:
          answer: {type: int, required: true}
        provided_arguments:
          answer: "{{ answer }}"
    - name: Arguments that do not (a number for a dict), ignored
      ansible.builtin.validate_argument_spec:
        argument_spec:
          answer: {type: dict}
        provided_arguments:
          answer: "{{ answer }}"
      ignore_errors: true
      register: spec_result
    - name: An assertion that holds on one host and fails on the other, ignored
      ansible.builtin.assert:
        that: flag | bool
        fail_msg: "flag is off on {{ inventory_hostname }}"
        success_msg: flag is on
      ignore_errors: true
    - name: Facts set per host
      ansible.builtin.set_fact:
        doubled: "{{ answer * 2 }}"
        host_word: "{{ 'on' if flag | bool else 'off' }}"
    - name: A cacheable fact
      ansible.builtin.set_fact:
        remembered: "{{ host_word }}"
        cacheable: true
    - name: The facts and a registered failure, as a later task sees them; changed_when
      ansible.builtin.debug:
        msg: "{{ doubled }} {{ host_word }} {{ ansible_facts.remembered }} {{ spec_result.failed }}"
      changed_when: flag | bool
    - name: A fail where the flag is off, ignored
      ansible.builtin.fail:
        msg: "stop on {{ inventory_hostname }}"
      when: not (flag | bool)
      ignore_errors: true
    - name: A failed_when, ignored
      ansible.builtin.debug:
        msg: fine
      failed_when: answer == 42
      ignore_errors: true
    - name: Per item, one item skipped, registered
      ansible.builtin.debug:
        msg: "{{ item }}"
      loop: [1, 2, 3]
      when: item != 2
      register: per_item
    - name: The items, as a later task sees them
      ansible.builtin.debug:
        msg: "{{ per_item.results | map(attribute='skipped', default=false) | list }}"
    - name: Hidden
      ansible.builtin.debug:
        msg: a secret
      no_log: true
    - name: Once, for every host
      ansible.builtin.set_fact:
        first_host: "{{ inventory_hostname }}"
      run_once: true
    - name: Included tasks run
      ansible.builtin.include_tasks: included.yml
    - name: Included per item
      ansible.builtin.include_tasks: included.yml
      loop: [1, 2]
    - name: An included role, with its argument spec
      ansible.builtin.include_role:
        name: tiny
    - name: Which process ran it
      ansible.builtin.debug:
        msg: "{{ lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ pid_log) }}"
    - name: Which process ran it, again
      ansible.builtin.debug:
        msg: "{{ lookup('ansible.builtin.pipe', 'echo $PPID >> ' ~ pid_log) }}"
"""


def test_controller_actions_run_without_a_worker_with_the_workers_result(tmp_path: Path) -> None:
    """Controller-only actions and includes report what linear reports; they ran in one process."""
    (tmp_path / "included.yml").write_text(
        '- name: In the include\n  ansible.builtin.set_fact:\n    from_include: "{{ doubled | int + 1 }}"\n'
    )
    (tmp_path / "roles/tiny/meta").mkdir(parents=True)
    (tmp_path / "roles/tiny/tasks").mkdir()
    (tmp_path / "roles/tiny/defaults").mkdir()
    (tmp_path / "roles/tiny/defaults/main.yml").write_text("tiny_word: small\n")
    (tmp_path / "roles/tiny/meta/argument_specs.yml").write_text(
        "argument_specs:\n  main:\n    options:\n      tiny_word: {type: str}\n"
    )
    (tmp_path / "roles/tiny/tasks/main.yml").write_text(
        "- name: In the role\n"
        "  ansible.builtin.debug:\n"
        '    msg: "{{ tiny_word }} {{ from_include }} {{ first_host }}"\n'
    )
    linear, linear_pids = _run_report(tmp_path, CONTROLLER_ACTIONS_PLAYBOOK, "linear")
    ours, our_pids = _run_report(tmp_path, CONTROLLER_ACTIONS_PLAYBOOK, "mitogen_linear")
    assert ours == linear
    tasks = {task["task"]["name"]: task["hosts"] for task in ours["tasks"]}
    assert tasks["An assertion that holds on one host and fails on the other, ignored"]["b"]["failed"] is True
    assert tasks["tiny : In the role"]["a"]["msg"] == "small 85 a"
    assert tasks["tiny : In the role"]["b"]["msg"] == "small 85 a"
    assert ours["stats"]["b"]["ignored"] == 4 and ours["stats"]["a"]["ignored"] == 2
    # Two tasks on two hosts: four workers under linear, the strategy's own process here.
    assert len(linear_pids) == len(set(linear_pids)) == 4
    assert len(our_pids) == 4 and len(set(our_pids)) == 1 and not set(our_pids) & set(linear_pids)


def test_mitogens_module_scanner_compiles_each_source_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scanning a second module does not compile the module_utils files the first one reached again."""
    monkeypatch.setattr(ansible_mitogen.module_finder, "compile", compile, raising=False)
    monkeypatch.setattr(Linear, "run", lambda self, iterator, play_context: 0)
    module = load_plugin("plugins/strategy/mitogen_linear.py")
    monkeypatch.setattr(module.ansible_mitogen.strategy.StrategyMixin, "run", lambda self, iterator, play_context: 0)
    monkeypatch.setattr(module, "collection_dirs", tuple)

    def scan(name: str) -> list:  # as Mitogen's ModuleDepService calls it
        return ansible_mitogen.module_finder.scan(
            module_name=f"ansible_module_{name}",
            module_path=str(Path(ansible.modules.__file__).parent / f"{name}.py"),
            search_path=(ansible.executor.module_common._MODULE_UTILS_PATH,),
        )

    unpatched = {name: scan(name) for name in ("ping", "command")}
    object.__new__(module.StrategyModule).run(None, None)
    assert ansible_mitogen.module_finder.compile is module._compile_once
    module._compile_once.cache_clear()

    assert scan("ping") == unpatched["ping"]
    assert scan("command") == unpatched["command"], "the same answer"
    shared = {path for _, path, _ in unpatched["ping"]} & {path for _, path, _ in unpatched["command"]}
    assert any(path.endswith("module_utils/basic.py") for path in shared)
    # Compiled: both modules, and each module_utils file once; basic.py and the rest of what
    # `command` shares with `ping` came from the cache.
    info = module._compile_once.cache_info()
    assert info.misses == 2 + len({path for result in unpatched.values() for _, path, _ in result})
    assert info.hits >= len(shared)
