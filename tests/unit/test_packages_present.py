"""packages_present: apt runs only when dpkg says a package is missing, with the task's arguments."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleActionFail
from conftest import action_with_probe, load_plugin

plugin = load_plugin("plugins/action/packages_present.py")

DPKG = "curl ii  7.88.1-10\nchrony ii  4.3-2\nlibc6:amd64 ii  2.36-9\nnginx rc  1.22.1-9\nrestic ii  0.14.0-1+b5\n"


def test_missing_is_what_dpkg_does_not_report_installed() -> None:
    assert plugin.missing(["curl", "chrony", "libc6"], DPKG) == []
    # removed with its configuration left ("rc") is not installed; unknown names are missing
    assert plugin.missing(["curl", "nginx", "mtail"], DPKG) == ["nginx", "mtail"]


def test_names_from_a_list_or_a_comma_separated_string() -> None:
    assert plugin.package_names(["curl", " chrony "]) == ["curl", "chrony"]
    assert plugin.package_names("curl, chrony") == ["curl", "chrony"]


def action(args: dict, dpkg_stdout: str, dpkg_rc: int = 0):
    return action_with_probe(
        plugin, args, {"rc": dpkg_rc, "stdout": dpkg_stdout}, {"changed": True, "stdout": "apt ran"}
    )


def test_nothing_missing_means_apt_is_not_run() -> None:
    act = action({"name": ["curl", "chrony"], "update_cache": True, "cache_valid_time": 3600}, DPKG)
    result = act.run(task_vars={})
    assert result["changed"] is False
    act._execute_module.assert_not_called()
    query = act._low_level_execute_command.call_args.args[0]
    assert query.startswith("dpkg-query -W") and query.endswith("-- curl chrony")


def test_a_missing_package_runs_apt_with_the_task_arguments() -> None:
    args = {"name": ["curl", "mtail"], "state": "present", "install_recommends": False}
    act = action(args, "curl ii  7.88.1-10\n", dpkg_rc=1)
    result = act.run(task_vars={})
    assert result["changed"] is True
    act._execute_module.assert_called_once()
    assert act._execute_module.call_args.args[0] == "ansible.builtin.apt"
    assert act._execute_module.call_args.kwargs["module_args"] == args


def test_a_version_pin_is_installed_when_dpkg_s_version_matches_it_as_apt_decides() -> None:
    assert plugin.missing(["restic=0.14.0*", "chrony=4.3-2"], DPKG) == []
    assert plugin.missing(["restic=0.16.*", "chrony=4.3", "curl=7.88.1-10"], DPKG) == ["restic=0.16.*", "chrony=4.3"]


def test_an_installed_pin_needs_no_apt_and_dpkg_is_asked_for_the_name() -> None:
    act = action({"name": "restic=0.14.0*", "cache_valid_time": 3600}, DPKG)
    assert act.run(task_vars={})["changed"] is False
    act._execute_module.assert_not_called()
    assert act._low_level_execute_command.call_args.args[0].endswith("-- restic")


def test_a_pin_dpkg_does_not_match_runs_apt_with_the_task_arguments() -> None:
    args = {"name": ["grafana=11.2.0"], "allow_downgrade": True}
    act = action(args, "grafana ii  11.3.0\n")
    act.run(task_vars={})
    act._execute_module.assert_called_once()
    assert act._execute_module.call_args.kwargs["module_args"] == args


def test_other_version_relations_go_straight_to_apt() -> None:
    act = action({"name": ["grafana>=11.2.0"]}, "")
    act.run(task_vars={})
    act._low_level_execute_command.assert_not_called()
    act._execute_module.assert_called_once()


def test_only_state_present() -> None:
    with pytest.raises(AnsibleActionFail, match="state: absent"):
        action({"name": ["curl"], "state": "absent"}, DPKG).run(task_vars={})
