"""The preflight inventory checks, function by function."""

from __future__ import annotations

from conftest import ROOT, load_plugin

check = load_plugin("plugins/action/cluster_inventory_check.py")
SPECS = check.load_role_specs(ROOT / "roles")
CLUSTER_SPEC = {"cluster_zones": {"type": "list", "elements": "str"}}


def test_role_specs_are_read_for_every_role():
    assert {"common", "os_tuning", "ssh_hardening", "preflight"} <= set(SPECS)
    assert "os_tuning_sysctl" in SPECS["os_tuning"]


def test_zones_exactly_one_per_host():
    groups = {"all": ["a", "b", "c"], "dmz": ["a"], "app": ["a", "b"], "data": []}
    errors = check.check_zones(groups, ["dmz", "app", "data"])
    assert errors == [
        "host a is in zones dmz, app: a host belongs to exactly one zone",
        "host c is in no zone: add it to exactly one of the groups dmz, app, data",
    ]


def test_zone_without_group_and_bad_zone_list():
    assert "has no group 'dta'" in check.check_zones({"all": []}, ["dta"])[0]
    assert "non-empty list" in check.check_zones({"all": []}, "dmz")[0]


def test_required_groups_need_hosts():
    assert check.check_required_groups({"edge": [], "ops": ["o"]}, ["edge", "ops", "gpu_nodes"]) == [
        "group 'edge' is missing or has no hosts: the cluster needs at least one host in 'edge'",
        "group 'gpu_nodes' is missing or has no hosts: the cluster needs at least one host in 'gpu_nodes'",
    ]


def test_unknown_variables_get_a_suggestion_or_a_pointer():
    errors = check.check_host_variables(
        "h", {"os_tuning_swappines": 1, "ssh_hardening_ciphres": [], "my_site_var": 1}, SPECS, CLUSTER_SPEC, {}
    )
    assert "host h: unknown variable os_tuning_swappines" in errors[0]
    assert errors[1].endswith("did you mean ssh_hardening_ciphers?")
    assert len(errors) == 2  # a site's own variable without a known prefix is not ours to judge


def test_near_miss_of_a_known_name_without_its_prefix():
    errors = check.check_host_variables("h", {"comon_packages": []}, SPECS, CLUSTER_SPEC, {})
    assert errors == ["host h: unknown variable comon_packages; did you mean common_packages?"]


def test_types_follow_the_role_spec():
    errors = check.check_host_variables(
        "h", {"os_tuning_hugepages_2m": "many", "os_tuning_transparent_hugepages": "sometimes"}, SPECS, CLUSTER_SPEC, {}
    )
    text = " ".join(errors)
    assert "os_tuning_hugepages_2m" in text and "int" in text
    assert "os_tuning_transparent_hugepages" in text and "always, madvise, never" in text


def test_valid_values_pass_and_magic_variables_are_ignored():
    hostvars = {"os_tuning_hugepages_2m": 512, "ansible_host": "x", "inventory_hostname": "h", "_private": 1}
    assert check.check_host_variables("h", hostvars, SPECS, CLUSTER_SPEC, {}) == []


def test_removed_variable_carries_its_hint():
    errors = check.check_host_variables("h", {"old_var": 1}, SPECS, CLUSTER_SPEC, {"old_var": "use new_var"})
    assert errors == ["host h: variable old_var was removed: use new_var"]


def test_service_catalogue():
    groups = {"all": ["a"], "edge": ["a"]}
    services = {
        "ok": {"port": 443, "protocol": "tcp", "group": "edge"},
        "range": {"port": 8000, "port_end": 7999, "group": "edge"},
        "proto": {"port": 53, "protocol": "icmp", "group": "all"},
        "clash": {"port": 443, "protocol": "tcp", "group": "edge"},
        "nogroup": {"port": 1, "group": "vault"},
    }
    errors = check.check_services(services, groups)
    assert any(e.startswith("cluster_services.range: port 8000 (port_end 7999)") for e in errors)
    assert "cluster_services.proto: protocol 'icmp' must be tcp or udp" in errors
    assert any("port tcp/443 on group edge is already used by clash" in e for e in errors)
    assert "cluster_services.nogroup: group 'vault' is not an inventory group" in errors
    assert "not set" in check.check_services(None, groups)[0]


def test_duplicate_addresses_and_message_grouping():
    assert check.check_addresses({"a": "10.0.0.1", "b": "10.0.0.1", "c": "10.0.0.2"}) == [
        "hosts a and b share ansible_host 10.0.0.1: each host needs its own address"
    ]
    merged = check.merge_host_messages(["host a: X", "host b: X", "group bad", "host a: Y"])
    assert merged == ["hosts a, b: X", "group bad", "host a: Y"]
