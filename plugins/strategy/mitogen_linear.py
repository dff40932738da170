"""Strategy plugin: Mitogen's `mitogen_linear`, found through the pinned `mitogen` package.

Ansible loads strategy plugins by path (ansible.cfg `strategy_plugins`); Mitogen ships its
strategy inside its Python package, whose path depends on the virtual environment. This
file is that plugin, loaded from the package the virtual environment holds
(requirements.txt pins it). Mitogen runs each host's modules in one persistent Python
process over the SSH connection, instead of starting Python for every task: a no-op re-run
of the site takes about half as long (docs/benchmarks/noop-rerun.md). Connections Mitogen
does not know (such as community.docker.docker) run as with the linear strategy.
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
    _Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)

    class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
        pass
