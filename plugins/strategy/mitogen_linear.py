"""Strategy plugin `mitogen_linear`: the opt-in accelerated path, never a broken run.

The toolkit's default is ansible-core's own `linear` strategy (ansible.cfg sets none).
`ANSIBLE_STRATEGY=mitogen_linear` opts in to Mitogen (the `mitogen` package pinned in
requirements.txt): each host's modules run in one Python process kept over the SSH
connection instead of a new Python per task (docs/benchmarks/noop-rerun.md measures both
paths; docs/development.md says why acceleration is not the default).

This file is only Mitogen's own strategy, as its package ships it
(ansible_mitogen/plugins/strategy/mitogen_linear.py: its StrategyMixin over the linear
strategy), found through the package the virtual environment holds rather than a path into
it. Acceleration must never break a run: when Mitogen cannot be imported, or refuses the
installed ansible-core (it raises AnsibleError at import for a release it does not
support), or fails for any other reason while loading, the strategy is ansible-core's
`linear` and one line says why. Nothing here touches ansible-core's or Mitogen's private
interfaces.
"""

from __future__ import annotations

import ansible
from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible.utils.display import Display

DOCUMENTATION = """
    name: mitogen_linear
    short_description: Mitogen's linear strategy, or ansible.builtin.linear when Mitogen cannot run
    description:
      - Task execution as the linear strategy, with Mitogen's persistent per-host interpreter.
      - Falls back to ansible.builtin.linear, with one line saying why, when Mitogen cannot be
        loaded or does not support the installed ansible-core.
    author: llm-cluster maintainers
"""

display = Display()


def mitogen_strategy() -> tuple[type | None, str]:
    """Mitogen's strategy class, or None and the reason it cannot be used."""
    try:
        import ansible_mitogen.strategy  # noqa: PLC0415 (the import itself is what may fail)
    except ImportError as exc:
        return None, f"the Python package mitogen is not installed ({exc})"
    except Exception as exc:  # Mitogen refuses an ansible-core with AnsibleError, or worse
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
        return None, f"Mitogen cannot run with this ansible-core ({ansible.__version__}): {reason}"

    class MitogenLinearStrategy(ansible_mitogen.strategy.StrategyMixin, LinearStrategy):
        """Mitogen's StrategyMixin over ansible-core's linear strategy, as Mitogen's own plugin composes them."""

    return MitogenLinearStrategy, ""


_accelerated, _why_not = mitogen_strategy()
if _accelerated is None:
    display.display(f"mitogen_linear: {_why_not}; running ansible.builtin.linear instead", stderr=True)
    StrategyModule = LinearStrategy
else:
    StrategyModule = _accelerated
