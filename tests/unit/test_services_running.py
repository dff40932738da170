"""services_running: systemd_service runs only for units systemctl reports out of state."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleActionFail
from conftest import action_with_probe, load_plugin

plugin = load_plugin("plugins/action/services_running.py")


def show(*units: tuple[str, str, str, str]) -> str:
    """systemctl show output for (Id, ActiveState, UnitFileState, NeedDaemonReload) tuples."""
    return (
        "\n\n".join(
            f"Id={i}\nLoadState=loaded\nActiveState={a}\nUnitFileState={u}\nNeedDaemonReload={n}"
            for i, a, u, n in units
        )
        + "\n"
    )


RUNNING = show(("prometheus.service", "active", "enabled", "no"), ("backup.timer", "active", "enabled", "no"))


def test_units_in_state_need_nothing() -> None:
    assert plugin.out_of_state(["prometheus", "backup.timer"], RUNNING, enabled=True, started=True) == []


@pytest.mark.parametrize(
    "state",
    [
        ("prometheus.service", "inactive", "enabled", "no"),
        ("prometheus.service", "activating", "enabled", "no"),
        ("prometheus.service", "active", "disabled", "no"),
        ("prometheus.service", "active", "static", "no"),
        ("prometheus.service", "active", "enabled", "yes"),
    ],
)
def test_anything_but_plainly_running_and_enabled_goes_to_the_module(state) -> None:
    output = show(state, ("backup.timer", "active", "enabled", "no"))
    assert plugin.out_of_state(["prometheus", "backup.timer"], output, enabled=True, started=True) == ["prometheus"]


def test_enabled_false_wants_disabled() -> None:
    output = show(("x.service", "active", "disabled", "no"))
    assert plugin.out_of_state(["x"], output, enabled=False, started=True) == []
    assert plugin.out_of_state(["x"], output, enabled=True, started=True) == ["x"]


def test_a_short_answer_means_every_unit_goes_to_the_module() -> None:
    assert plugin.out_of_state(["a", "b"], show(("a.service", "active", "enabled", "no")), True, True) == ["a", "b"]
    not_found = "Id=c.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\nNeedDaemonReload=no\n"
    assert plugin.out_of_state(["c"], not_found, True, True) == ["c"]


def test_only_what_the_task_asks_for_is_checked() -> None:
    stopped_enabled = show(("x.service", "inactive", "enabled", "no"))
    assert plugin.out_of_state(["x"], stopped_enabled, enabled=True, started=False) == []
    running_static = show(("x.service", "active", "static", "no"))
    assert plugin.out_of_state(["x"], running_static, enabled=None, started=True) == []


def action(args: dict, show_stdout: str, show_rc: int = 0, module_result: dict | None = None):
    return action_with_probe(
        plugin,
        args,
        {"rc": show_rc, "stdout": show_stdout},
        module_result or {"changed": True, "status": {"a": "b"}},
    )


def test_all_running_means_no_module_run() -> None:
    act = action({"name": ["prometheus", "backup.timer"], "enabled": True, "state": "started"}, RUNNING)
    result = act.run(task_vars={})
    assert result["changed"] is False
    act._execute_module.assert_not_called()
    command = act._low_level_execute_command.call_args.args[0]
    assert command.startswith("systemctl show --property=") and command.endswith("-- prometheus backup.timer")


def test_only_units_out_of_state_run_the_module_daemon_reload_once() -> None:
    output = show(
        ("a.service", "inactive", "enabled", "no"),
        ("b.service", "active", "enabled", "no"),
        ("c.service", "failed", "disabled", "no"),
    )
    act = action({"name": ["a", "b", "c"], "enabled": True, "state": "started", "daemon_reload": True}, output)
    result = act.run(task_vars={})
    assert result["changed"] is True
    calls = [c.kwargs["module_args"] for c in act._execute_module.call_args_list]
    assert [c["name"] for c in calls] == ["a", "c"]
    assert calls[0]["daemon_reload"] is True and "daemon_reload" not in calls[1]
    assert all(c["state"] == "started" and c["enabled"] is True for c in calls)
    assert act._execute_module.call_args.args[0] == "ansible.builtin.systemd_service"
    assert "status" not in result["results"][0]


def test_a_failed_probe_hands_every_unit_to_the_module() -> None:
    act = action({"name": "a", "state": "started"}, "", show_rc=1)
    act.run(task_vars={})
    act._execute_module.assert_called_once()


def test_a_failing_unit_fails_the_task_naming_it() -> None:
    output = show(("a.service", "failed", "enabled", "no"), ("b.service", "failed", "enabled", "no"))
    act = action(
        {"name": ["a", "b"], "state": "started"},
        output,
        module_result={"failed": True, "msg": "Unable to start service a"},
    )
    result = act.run(task_vars={})
    assert result["failed"] is True and result["msg"].startswith("a: Unable to start")
    assert act._execute_module.call_count == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"name": "a", "state": "restarted"}, "state: restarted"),
        ({"name": "a", "masked": False}, "not masked"),
        ({"state": "started"}, "needs `name`"),
        ({"name": "a; reboot", "state": "started"}, "not a systemd unit name"),
        ({"name": "a"}, "needs `enabled`, `state: started` or both"),
    ],
)
def test_bad_arguments_are_refused(args, message) -> None:
    with pytest.raises(AnsibleActionFail, match=message):
        action(args, RUNNING).run(task_vars={})


def test_an_empty_list_does_nothing() -> None:
    act = action({"name": [], "state": "started"}, RUNNING)
    assert act.run(task_vars={})["changed"] is False
    act._low_level_execute_command.assert_not_called()
    act._execute_module.assert_not_called()
