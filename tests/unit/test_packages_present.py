"""packages_present: apt runs only when dpkg says a package is missing, with the task's arguments."""

from __future__ import annotations

from unittest import mock

import pytest
from ansible.errors import AnsibleActionFail
from conftest import load_plugin

plugin = load_plugin("plugins/action/packages_present.py")

DPKG = "curl ii \nchrony ii \nlibc6:amd64 ii \nnginx rc \n"


def test_missing_is_what_dpkg_does_not_report_installed() -> None:
    assert plugin.missing(["curl", "chrony", "libc6"], DPKG) == []
    # removed with its configuration left ("rc") is not installed; unknown names are missing
    assert plugin.missing(["curl", "nginx", "mtail"], DPKG) == ["nginx", "mtail"]


def test_names_from_a_list_or_a_comma_separated_string() -> None:
    assert plugin.package_names(["curl", " chrony "]) == ["curl", "chrony"]
    assert plugin.package_names("curl, chrony") == ["curl", "chrony"]


def action(args: dict, dpkg_stdout: str, dpkg_rc: int = 0):
    task = mock.MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = False
    act = plugin.ActionModule(task, mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), None)
    act._low_level_execute_command = mock.MagicMock(return_value={"rc": dpkg_rc, "stdout": dpkg_stdout})
    act._execute_module = mock.MagicMock(return_value={"changed": True, "stdout": "apt ran"})
    return act


def test_nothing_missing_means_apt_is_not_run() -> None:
    act = action({"name": ["curl", "chrony"], "update_cache": True, "cache_valid_time": 3600}, DPKG)
    result = act.run(task_vars={})
    assert result["changed"] is False
    act._execute_module.assert_not_called()
    query = act._low_level_execute_command.call_args.args[0]
    assert query.startswith("dpkg-query -W") and query.endswith("-- curl chrony")


def test_a_missing_package_runs_apt_with_the_task_arguments() -> None:
    args = {"name": ["curl", "mtail"], "state": "present", "install_recommends": False}
    act = action(args, "curl ii \n", dpkg_rc=1)
    result = act.run(task_vars={})
    assert result["changed"] is True
    act._execute_module.assert_called_once()
    assert act._execute_module.call_args.args[0] == "ansible.builtin.apt"
    assert act._execute_module.call_args.kwargs["module_args"] == args


def test_version_pins_go_straight_to_apt() -> None:
    act = action({"name": ["grafana=11.2.0"]}, "")
    act.run(task_vars={})
    act._low_level_execute_command.assert_not_called()
    act._execute_module.assert_called_once()


def test_only_state_present() -> None:
    with pytest.raises(AnsibleActionFail, match="state: absent"):
        action({"name": ["curl"], "state": "absent"}, DPKG).run(task_vars={})
