"""Strategy plugin: Mitogen's `mitogen_linear`, found through the pinned `mitogen` package.

Ansible loads strategy plugins by path (ansible.cfg `strategy_plugins`); Mitogen ships its
strategy inside its Python package, whose path depends on the virtual environment. This
file is that plugin, loaded from the package the virtual environment holds
(requirements.txt pins it). Mitogen runs each host's modules in one persistent Python
process over the SSH connection, instead of starting Python for every task: a no-op re-run
of the site takes about half as long (docs/benchmarks/noop-rerun.md). Connections Mitogen
does not know (such as community.docker.docker) run as with the linear strategy.

One addition to Mitogen's strategy: the list of installed collections is made once per run.
Mitogen's planner lists every collection directory (importing each collection's package and
parsing its meta/runtime.yml) each time a task runs a collection's module, in the worker
process Ansible forks for that task and host, so nothing it learns is kept. With the ~100
collections of the `ansible` package that was the largest single item in a py-spy profile of
a no-op re-run; listed once here, in the strategy's own process before the workers fork,
every worker inherits the list and the imported packages (controller CPU per re-run of the
lab: 38.6 -> 36.9 s, docs/benchmarks/noop-rerun.md).
"""

from __future__ import annotations

try:
    import ansible_mitogen.loaders
    import ansible_mitogen.strategy
except ImportError:  # not installed (e.g. collections from Galaxy only): plain linear, slower
    from ansible.plugins.strategy.linear import StrategyModule as _Plain
    from ansible.utils.display import Display

    Display().warning(
        "mitogen_linear: the Python package mitogen is not installed (requirements.txt pins it); "
        "running the linear strategy"
    )

    class StrategyModule(_Plain):
        pass

else:
    import functools

    import ansible.collections.list
    import ansible_mitogen.planner

    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    @functools.cache
    def collection_dirs() -> tuple[str, ...]:
        """The installed collections' directories, as Mitogen's planner lists them (fixed for a run)."""
        return tuple(path.decode("utf-8") for path in ansible.collections.list.list_collection_dirs())

    def _load_collections(invocation) -> None:
        """Mitogen's planner._load_collections, from the list made once per run."""
        invocation._extra_sys_paths.update(collection_dirs())

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
        def run(self, iterator, play_context):
            # Here, in the strategy's process: the workers fork from it with the list made.
            collection_dirs()
            ansible_mitogen.planner._load_collections = _load_collections
            return super().run(iterator, play_context)
