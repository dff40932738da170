"""Strategy plugin: Mitogen's `mitogen_linear`, found through the pinned `mitogen` package.

Ansible loads strategy plugins by path (ansible.cfg `strategy_plugins`); Mitogen ships its
strategy inside its Python package, whose path depends on the virtual environment. This
file is that plugin, loaded from the package the virtual environment holds
(requirements.txt pins it). Mitogen runs each host's modules in one persistent Python
process over the SSH connection, instead of starting Python for every task: a no-op re-run
of the site takes about half as long (docs/benchmarks/noop-rerun.md). Connections Mitogen
does not know (such as community.docker.docker) run as with the linear strategy.

Additions to Mitogen's strategy, for one reason: Ansible forks a worker process for every
task and host, and what a worker computes, imports or caches dies with it. Work that every
worker would repeat is done once here, in the strategy's process, before the workers fork
(each found in a py-spy profile of a no-op re-run; measured in docs/benchmarks/noop-rerun.md):

- The installed collections are listed once per run. Mitogen's planner lists every
  collection directory (importing each collection's package and parsing its
  meta/runtime.yml) each time a task runs a collection's module; with the ~100 collections
  of the `ansible` package that was the largest single item in the profile.
- Caches ansible-core fills lazily are filled first. The Jinja filters and tests: the first
  template with a filter makes a worker load every filter and test plugin file outside
  collections (0.15 s of CPU; a quarter of the workers' CPU in a profile of the site's
  re-run). The mappings between a task result's keys and its fields (typing.get_type_hints
  over a dataclass: a quarter of a worker's CPU in a profile of 80 `ping` tasks), the JSON
  profiles that decode module results, and isinstance()'s answers for the plain types of a
  result against the collections.abc types that wrap_var asks about (another tenth of it).
- Mitogen's module scanner compiles each source file once per run. To find what a module
  imports from module_utils, it compiles the module and every module_utils file reached,
  for each module a run uses: basic.py and the rest again for every module (1.7 of the
  1.9 CPU-seconds its multiplexer spent scanning in the site's no-op re-run).
- The garbage collector is frozen while a worker forks. A worker that runs the cyclic
  collector over the objects it inherited writes to every one of them, so the kernel copies
  the strategy's heap page by page into a process that lives a fraction of a second. Frozen
  objects are not scanned (Python's gc.freeze documentation describes this use); unfreezing
  right after the fork leaves the strategy's own collection as it was.

And three additions for the strategy's own process, the critical path of a run (it forks
and collects every worker, one after the other):

- Mitogen returns the host's Python interpreter as a fact with every task's result, so the
  strategy stored each host's facts anew in the fact cache (JSON-encoded and written) for
  every task: 227 times in the site's re-run. It now does so only after a discovery, as
  ansible-core does (32 times; the rest are the roles' own facts).
- It waits for results on an event (WokenByResults) instead of ansible-core's 1 ms sleep
  between looks. In the site's no-op re-run its thread was put on a CPU 17,000 times, each
  time after waiting behind the workers; now about 3,300 times. A worker's inventory request
  (add_host, group_by), which the worker waits on, wakes it too.
- Tasks that need no worker run without one (WithoutWorker): a task whose condition is
  false for a host (the strategy evaluates it as the worker would and posts the worker's
  skip; 86 of the 565 workers of the site's no-op re-run did nothing else), and a task whose
  action runs wholly on the controller (assert, debug, fail, set_fact,
  validate_argument_spec, includes: 157 of the about 480 workers left).

The pre-fork caches, the collector freeze and the wait on an event also apply where Mitogen
is missing and the plain linear strategy runs. If a later ansible-core moves what the
second item fills, it fills nothing and the workers do the work as before
(tests/unit/test_strategy_plugin.py fails, so a pin update notices).
"""

from __future__ import annotations

import collections
import functools
import gc
import queue
import threading

from ansible.errors import AnsibleError
from ansible.utils.display import Display

display = Display()

try:  # for warm_worker_caches(), skipped_result() and run_on_controller(), optimisations only
    from ansible._internal._display_utils import DeferredWarningContext
    from ansible._internal._task import TaskContext, UnifiedTaskResult, WireTaskResult
    from ansible.executor.task_executor import TaskExecutor
    from ansible.module_utils.common.json import Direction, get_module_decoder, get_module_encoder
    from ansible.playbook.task import Task
    from ansible.plugins import loader as plugin_loader
    from ansible.plugins.loader import filter_loader, test_loader
    from ansible.utils.unsafe_proxy import wrap_var
except ImportError:
    UnifiedTaskResult = None


def warm_worker_caches() -> None:
    """Fill the caches every worker would otherwise fill for itself (see the module's docstring)."""
    if UnifiedTaskResult is None:
        return
    try:  # an optimisation only: where ansible-core has changed these, the workers fill their own
        # Called as ansible-core calls them: functools.cache tells keyword from positional arguments.
        for source_is_module in (True, False):
            UnifiedTaskResult.get_result_key_to_resolved_field_mapping(source_is_module=source_is_module)
        for for_callback in (True, False):
            for for_round_trip in (True, False):
                UnifiedTaskResult._get_field_name_to_result_key_mapping(
                    for_callback=for_callback, for_round_trip=for_round_trip
                )
        for profile in ("legacy", "modern"):
            for direction in Direction:
                get_module_decoder(profile, direction)
                get_module_encoder(profile, direction)
        # The first filter or test looked up by short name loads every plugin file of the
        # kind outside collections (ansible.builtin's, plugins/filter): 0.15 s of CPU.
        filter_loader.get_with_context("bool")
        test_loader.get_with_context("failed")
        # isinstance() against collections.abc types caches per type, in the process that asks.
        wrap_var({"str": ["text", b"bytes", 1, 1.5, True, None, {"dict": ()}, {"set"}]})
    except (AttributeError, TypeError, ValueError):
        return


def skipped_result(host, task, task_vars, play_context, loader):
    """The result a worker would return for the task on the host when its condition is false; else None.

    The steps of ansible-core's worker up to its condition (executor/process/worker.py,
    TaskExecutor.run and _execute_internal), on the same variables: the strategy's, the
    search path, and the connection's "magic" variables of the task's play context. Only
    for tasks whose condition a worker evaluates once, before anything else: no loop (its
    condition is per item) and no delegation (its variables are another host's).
    """
    if not task.when or task.loop_with or task.loop is not None or task.delegate_to:
        return None
    variables = dict(task_vars)
    variables["ansible_search_path"] = search_path = task.get_search_path()
    if loader.get_basedir() not in search_path:
        search_path.append(loader.get_basedir())
    with TaskContext.create(task=task, task_vars=variables, host_name=host.name) as task_ctx:
        with DeferredWarningContext(variables=variables) as warning_ctx:
            # Most conditions hold, and go to a worker, which decides with all its variables.
            # Only a condition found false is evaluated again with the connection's variables
            # (which the worker adds, such as ansible_host), the costlier part (3 ms).
            if task._resolve_conditional_with_item(task.when, variables)[0]:
                return None
            with_magic = dict(variables)
            context = play_context.set_task_and_variable_override(
                task=task, variables=variables, templar=task_ctx.task_templar
            )
            context.post_validate(templar=task_ctx.task_templar)
            context.remote_addr = context.remote_addr or host.address
            context.update_vars(with_magic)
            condition_holds, false_condition = task._resolve_conditional_with_item(task.when, with_magic)
            if condition_holds:
                return None
            utr = UnifiedTaskResult.record_conditional_false(false_condition)
            task.update_result_no_log(task_ctx.task_templar, utr)
        utr.finalize_warnings(warning_ctx)
        utr.finalize_registered_values()
    return utr


# ansible-core's actions that run wholly in the controller's process: no module, no file or
# command on the host, no request to the strategy (group_by and add_host make one, and the
# strategy answers it: they stay in workers). Includes return their file and arguments.
CONTROLLER_ACTIONS = frozenset(
    f"ansible.builtin.{name}" for name in ("assert", "debug", "fail", "set_fact", "validate_argument_spec")
)
INCLUDE_ACTIONS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name in ("include_tasks", "include_role")
)


def runs_on_controller(task) -> bool:
    """Whether the task runs in the strategy's process: a controller-only action that neither waits nor retries.

    A worker's waits (loop pause, until/retries, a timeout's alarm) would stop the strategy;
    delegation reads another host's variables. A templated value of those keywords counts as set.
    """
    if task.action not in INCLUDE_ACTIONS and task.resolved_action not in CONTROLLER_ACTIONS:
        return False
    if task.delegate_to or task.async_val or task.timeout or task.until or task.retries is not None:
        return False
    return not (task.loop_control and task.loop_control.pause)


def run_on_controller(host, task, task_vars, play_context, loader, final_q, variable_manager):
    """What a worker does with the task for the host (executor/process/worker.py, WorkerProcess._run), here.

    On a copy of the task: the executor templates the task's fields in place, and the
    strategy's task is the one every host shares. The worker's copy is its forked memory.
    """
    task = task.copy()
    with TaskContext.create(task=task, task_vars=dict(task_vars), host_name=host.name):
        task.squash()
        executor = TaskExecutor(
            host, play_context, loader, plugin_loader.get_plugin_loader_namespace(), final_q, variable_manager
        )
        utr = executor.run()
        utr.finalize_registered_values()
    # As the worker does: callbacks consult these two on the task the result carries.
    task.ignore_errors = utr.ignore_errors
    task.ignore_unreachable = utr.ignore_unreachable
    return WireTaskResult.create(host=host, task=task, utr=utr)


class WithoutWorker:
    """Mixin for a strategy: what a worker would do on the controller alone is done in the strategy's process.

    A worker per task and host is forked and collected by the strategy's process, the run's
    critical path (a fork alone is 8 ms in the site's no-op re-run), also when it never
    reaches the host. Two kinds of task stay here:

    - A task whose condition is false for the host (86 of the 565 workers of the site's
      no-op re-run did nothing else). The strategy evaluates the condition as the worker
      would and, when it is false, posts the worker's skip itself. A condition that holds,
      fails, or is per loop item goes to a worker.
    - A task of an action that runs wholly on the controller: assert, debug, fail, set_fact,
      validate_argument_spec, and the includes (157 of the about 480 workers left).
      ansible-core's TaskExecutor runs it here, as in a worker, on a copy of the task.

    Either result is put on the results queue, as a worker puts its own (pickled, then
    converted by the results thread), so callbacks, `register` and the stats see what a
    worker's result shows (tests/unit/test_strategy_plugin.py compares playbooks' reports
    with ansible-core's linear strategy). One difference: these tasks run one host after the other, as the
    strategy queues them, where workers would run side by side; a slow lookup in one (a
    secrets store over the network) costs its time once per host.
    """

    def _queue_task(self, host, task, task_vars, play_context):
        if UnifiedTaskResult is not None and runs_on_controller(task):
            self._start_without_worker(host, task, task_vars, play_context)
            self._final_q.put(self._result_on_controller(host, task, task_vars, play_context))
            return
        try:
            utr = skipped_result(host, task, task_vars, play_context, self._loader) if UnifiedTaskResult else None
        except Exception as ex:  # the worker evaluates it again and reports what is wrong
            display.debug(f"mitogen_linear: the skip check of {task} on {host} failed: {ex!r}")
            utr = None
        if utr is None:
            return super()._queue_task(host, task, task_vars, play_context)

        self._start_without_worker(host, task, task_vars, play_context)
        self._final_q.put(
            WireTaskResult(
                host_name=host.name,
                task_uuid=task._uuid,
                # The worker reports these two as the result resolved them (its copy of the task).
                task_fields=dict(
                    task.dump_attrs(), ignore_errors=utr.ignore_errors, ignore_unreachable=utr.ignore_unreachable
                ),
                utr=utr,
            )
        )

    def _start_without_worker(self, host, task, task_vars, play_context):
        """The strategy's bookkeeping of a queued task (ansible-core's _queue_task), without the fork."""
        self._queued_task_cache[(host.name, task._uuid)] = {
            "host": host,
            "task": task,
            "task_vars": task_vars,
            "play_context": play_context,
        }
        self._tqm.send_callback("v2_runner_on_start", host, task)
        self._pending_results += 1

    def _result_on_controller(self, host, task, task_vars, play_context):
        """The task's result for the host, for the results queue (after the loop items the executor put there)."""
        try:
            return run_on_controller(
                host, task, task_vars, play_context, self._loader, self._final_q, self._variable_manager
            )
        except Exception as ex:  # reported as the worker reports a result it cannot send
            try:
                raise AnsibleError("Task result omitted: running it in the strategy's process failed.") from ex
            except AnsibleError as wrapped:
                utr = UnifiedTaskResult.create_from_action_exception(wrapped)
                utr.finalize_registered_values()
                # A blank task of the same identity, as the worker does: nothing from the one that failed.
                blank = Task()
                blank._uuid = task._uuid
                return WireTaskResult.create(host=host, task=blank, utr=utr)


class PreparedFork:
    """Mixin for a strategy: the workers fork from a process that did their common work."""

    def run(self, iterator, play_context):
        warm_worker_caches()
        return super().run(iterator, play_context)

    def _queue_task(self, host, task, task_vars, play_context):
        # The worker forks inside; both calls only move the collector's lists (O(1)).
        gc.freeze()
        try:
            return super()._queue_task(host, task, task_vars, play_context)
        finally:
            gc.unfreeze()


class ResultQueue(collections.deque):
    """The strategy's queue of task results, with an event set whenever one is added."""

    def __init__(self, iterable=()):
        super().__init__(iterable)
        self.arrived = threading.Event()

    def append(self, result):
        super().append(result)
        self.arrived.set()


class RequestQueue(queue.Queue):
    """The strategy's queue of workers' inventory requests (add_host, group_by), setting an event on each.

    The worker that asks waits for the answer, which the strategy's process gives when it
    next looks at its results.
    """

    def __init__(self, arrived):
        super().__init__()
        self.arrived = arrived

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        self.arrived.set()


class WokenByResults:
    """Mixin for a strategy: it waits for its workers' results on an event, not by polling.

    ansible-core's strategy sleeps a millisecond (internal_poll_interval) between looks at
    its result queue, which ansible-core's results thread fills. On a busy controller each
    of those wake-ups queues the strategy's process for a CPU behind the workers it waits
    for. Woken by the result instead, it runs a fifth as often and acts on a result as soon
    as it is there. The timeout keeps ansible-core's checks for a dead worker and for
    an interrupted run (a worker killed before it answers posts no result). A worker's
    inventory request (add_host, group_by) wakes it too: the worker waits for the answer.
    """

    DEAD_WORKER_CHECK_S = 0.1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._results = ResultQueue(self._results)
        if hasattr(self, "_rpc_queue"):  # ansible-core 2.21: an empty queue.Queue here
            self._rpc_queue = RequestQueue(self._results.arrived)

    def _wait_on_pending_results(self, iterator):
        # ansible-core's loop (plugins/strategy/__init__.py), with the sleep replaced.
        ret_results = []
        while self._pending_results > 0 and not self._tqm._terminated:
            if self._tqm.has_dead_workers():
                raise AnsibleError("A worker was found in a dead state")
            # Cleared before looking: a result added after the look sets it again.
            self._results.arrived.clear()
            ret_results.extend(self._process_pending_results(iterator))
            if self._pending_results > 0:
                self._results.arrived.wait(self.DEAD_WORKER_CHECK_S)
        return ret_results


try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError:  # not installed (e.g. collections from Galaxy only): plain linear, slower
    from ansible.plugins.strategy.linear import StrategyModule as _Plain

    display.warning(
        "mitogen_linear: the Python package mitogen is not installed (requirements.txt pins it); "
        "running the linear strategy"
    )

    class StrategyModule(WithoutWorker, PreparedFork, WokenByResults, _Plain):
        pass

else:
    import ansible.collections.list
    import ansible_mitogen.module_finder
    import ansible_mitogen.planner
    import ansible_mitogen.transport_config

    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    @functools.cache
    def collection_dirs() -> tuple[str, ...]:
        """The installed collections' directories, as Mitogen's planner lists them (fixed for a run)."""
        return tuple(path.decode("utf-8") for path in ansible.collections.list.list_collection_dirs())

    def _load_collections(invocation) -> None:
        """Mitogen's planner._load_collections, from the list made once per run."""
        invocation._extra_sys_paths.update(collection_dirs())

    # Mitogen's own function, also where an earlier load of this file replaced it already.
    _run_interpreter_discovery = getattr(
        ansible_mitogen.transport_config.run_interpreter_discovery_if_necessary,
        "__wrapped__",
        ansible_mitogen.transport_config.run_interpreter_discovery_if_necessary,
    )

    def _interpreter_fact_when_discovered(s, candidates, task_vars, action, rediscover_python):
        """Mitogen's interpreter discovery, returning the interpreter as a fact only when it discovered it.

        Mitogen returns it with every task's result, also when it came from the host's cached
        facts; the strategy's process then stores the host's facts anew (JSON, in the fact
        cache) for every task and host. ansible-core returns it only after a discovery.
        """
        cached = not rediscover_python and (task_vars.get("ansible_facts") or {}).get("discovered_interpreter_python")
        interpreter = _run_interpreter_discovery(s, candidates, task_vars, action, rediscover_python)
        if cached:
            action._discovered_interpreter_key = None
        return interpreter

    _interpreter_fact_when_discovered.__wrapped__ = _run_interpreter_discovery

    @functools.cache
    def _compile_once(source, filename, mode):
        """compile() for Mitogen's module scanner, once per distinct source text.

        To find the module_utils a module imports, the scanner (ansible_mitogen.module_finder,
        in Mitogen's multiplexer process) compiles the module and every module_utils file it
        reaches, anew for each module: the same files (basic.py and the rest) once per module
        that a run uses.
        """
        return compile(source, filename, mode)

    class StrategyModule(WithoutWorker, PreparedFork, WokenByResults, ansible_mitogen.strategy.StrategyMixin, _Linear):
        def run(self, iterator, play_context):
            # Here, in the strategy's process: the workers fork from it with the list made.
            collection_dirs()
            ansible_mitogen.planner._load_collections = _load_collections
            ansible_mitogen.transport_config.run_interpreter_discovery_if_necessary = _interpreter_fact_when_discovered
            # Before Mitogen forks its multiplexer (the first play's run), which runs the scanner.
            ansible_mitogen.module_finder.compile = _compile_once
            return super().run(iterator, play_context)
