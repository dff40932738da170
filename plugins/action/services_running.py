"""Action plugin: make sure systemd units are enabled and running, asking systemctl first.

    - name: Monitoring | Services enabled and running
      services_running:
        name: [prometheus, prometheus-alertmanager, alert-log-receiver.service]
        daemon_reload: true

Takes `name` (a unit or a list of units), `enabled` (true or false), `state` (`started`)
and `daemon_reload` (default false) with the meaning they have in
ansible.builtin.systemd_service: `enabled` or `state` or both (a unit that must only be
enabled, one that must only run). It first asks systemd about every unit in one
`systemctl show` on the host; when each is loaded, active (with `state`), enabled or
disabled (with `enabled`), and its unit file needs no daemon-reload, the task is done (ok,
nothing changed, no module run). Otherwise it runs ansible.builtin.systemd_service for each unit
that is not in state, with the task's arguments (the daemon-reload with the first), which
starts, enables and reports as that module does. An empty list (one computed from the
inventory) is ok and does nothing.

Why: each module run costs its host about 0.1 s of CPU compiling ansible's module_utils
from the module's zip, and a site checks dozens of units per run; `systemctl show` is one
command over the existing connection (docs/benchmarks/noop-rerun.md). Anything the probe
does not answer plainly (a unit activating, static, masked, generated, not found, a failed
probe) goes to the module, so the result is always what systemd_service alone would do.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

# Unit names as systemctl takes them (with or without the .service suffix, templates' @).
_UNIT = re.compile(r"^[A-Za-z0-9:_.@\\-]+$")
PROPERTIES = "Id,LoadState,ActiveState,UnitFileState,NeedDaemonReload"
ARGUMENTS = {"name", "enabled", "state", "daemon_reload"}


def unit_names(value: Any) -> list[str]:
    """The task's `name` (a unit or a list) as a list of names."""
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value or [] if str(v).strip()]


def parse_show(output: str) -> list[dict[str, str]]:
    """`systemctl show -p ...` of several units: one dict per unit, in the order asked."""
    units: list[dict[str, str]] = []
    for block in output.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props:
            units.append(props)
    return units


def out_of_state(names: list[str], show_output: str, enabled: bool | None, started: bool) -> list[str]:
    """The units that systemd_service would have to act on, or all of them when in doubt.

    `enabled` None: enablement is not asked for; `started` False: neither is running."""
    units = parse_show(show_output)
    if len(units) != len(names):
        return list(names)
    wanted = None if enabled is None else ("enabled" if enabled else "disabled")
    return [
        name
        for name, props in zip(names, units, strict=True)
        if not (
            props.get("LoadState") == "loaded"
            and props.get("NeedDaemonReload") == "no"
            and (not started or props.get("ActiveState") == "active")
            and (wanted is None or props.get("UnitFileState") == wanted)
        )
    ]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        unknown = sorted(set(args) - ARGUMENTS)
        if unknown:
            raise AnsibleActionFail(
                f"services_running takes {', '.join(sorted(ARGUMENTS))}; not {', '.join(unknown)}"
                " (use ansible.builtin.systemd_service for anything else)"
            )
        if "name" not in args:
            raise AnsibleActionFail("services_running needs `name`: the units to enable and start")
        names = unit_names(args["name"])
        bad = [n for n in names if not _UNIT.match(n)]
        if bad:
            raise AnsibleActionFail(f"services_running: not a systemd unit name: {', '.join(bad)}")
        state = args.get("state")
        if state not in (None, "started"):
            raise AnsibleActionFail(
                f"services_running starts units (state: started), not state: {state};"
                " use ansible.builtin.systemd_service (a handler) to restart or stop one"
            )
        enabled = None if args.get("enabled") is None else boolean(args["enabled"], strict=True)
        if state is None and enabled is None:
            raise AnsibleActionFail("services_running needs `enabled`, `state: started` or both")
        daemon_reload = boolean(args.get("daemon_reload", False), strict=True)

        if not names:  # a list computed from the inventory may be empty: nothing to do
            result.update(changed=False, msg="no units", units=[])
            return result
        probe = self._low_level_execute_command(
            f"systemctl show --property={PROPERTIES} -- " + " ".join(shlex.quote(n) for n in names),
            sudoable=False,  # reading a unit's state needs no root
        )
        started = state == "started"
        todo = out_of_state(names, probe.get("stdout", ""), enabled, started) if probe.get("rc") == 0 else list(names)
        if not todo:
            result.update(changed=False, msg=f"all {len(names)} unit(s) in state", units=names)
            return result

        results: list[dict[str, Any]] = []
        for index, name in enumerate(todo):
            module_args: dict[str, Any] = {"name": name}
            if enabled is not None:
                module_args["enabled"] = enabled
            if started:
                module_args["state"] = state
            if daemon_reload and index == 0:
                module_args["daemon_reload"] = True
            unit_result = self._execute_module(
                "ansible.builtin.systemd_service", module_args=module_args, task_vars=task_vars
            )
            unit_result.pop("status", None)  # systemd's whole property list: noise in the result
            results.append({"name": name, **unit_result})
            if unit_result.get("failed"):
                result.update(
                    failed=True,
                    changed=any(r.get("changed") for r in results),
                    msg=f"{name}: {unit_result.get('msg', 'systemd_service failed')}",
                    results=results,
                )
                return result
        result.update(changed=any(r.get("changed") for r in results), units=names, results=results)
        return result
