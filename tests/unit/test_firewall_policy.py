"""The firewall policy compiler (plugins/filter/firewall_policy.py): rules, refusals, lock-out guard."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import yaml
from conftest import load_plugin

ROOT = Path(__file__).resolve().parents[2]
fp = load_plugin("plugins/filter/firewall_policy.py")

SERVICES = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/services.yml").read_text())["cluster_services"]
ADMIN = ["172.31.242.1/32"]
HOSTS = {"edge1": "172.31.242.11", "gpu1": "172.31.242.21", "gpu2": "172.31.242.22", "ops1": "172.31.242.31"}
GROUPS = {
    "all": list(HOSTS),
    "ungrouped": [],
    "dmz": ["edge1"],
    "app": ["gpu1", "gpu2"],
    "data": ["ops1"],
    "edge": ["edge1"],
    "gpu_nodes": ["gpu1", "gpu2"],
    "ops": ["ops1"],
    "storage": ["ops1"],
    "container_hosts": ["gpu1", "gpu2", "ops1"],
}
HOSTVARS = {h: {"ansible_host": a} for h, a in HOSTS.items()}


def _render(value, context):
    """Template the Jinja in an inventory value, as Ansible would."""
    if isinstance(value, str) and "{{" in value:
        env = jinja2.Environment()
        expr = value.strip()[2:-2]
        return env.compile_expression(expr)(**context)
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, context) for k, v in value.items()}
    return value


def default_flows() -> list[dict]:
    flows = yaml.safe_load((ROOT / "roles/firewall/defaults/main.yml").read_text())["firewall_flows"]
    return _render(flows, {"firewall_admin_networks": ADMIN})


def lab_flows() -> list[dict]:
    flows = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/firewall.yml").read_text())["firewall_flows"]
    return _render(flows, {"cluster_admin_networks": ADMIN, "cluster_services": SERVICES})


def compile_for(host: str, flows=None, **kwargs):
    args = {
        "host": host,
        "groups": GROUPS,
        "hostvars": HOSTVARS,
        "services": SERVICES,
        "admin_networks": ADMIN,
        "ssh_exempt": ADMIN,
    }
    args.update(kwargs)
    return fp.compile_policy(default_flows() if flows is None else flows, **args)


def accepted(policy) -> set[tuple[str, str, str]]:
    """(service, port spec, source) for every accepted flow."""
    return {
        (a["service"], f"{a['port']}" if a["port"] == a["port_end"] else f"{a['port']}:{a['port_end']}", src)
        for a in policy["allowed"]
        for src in a["from"]
    }


def rules(policy, chain: str, family: int = 4) -> list[str]:
    return next(c["rules"] for c in policy[f"ipv{family}"]["chains"] if c["name"] == chain)


# The seed's three-zone policy on the lab, written as the spec says it, independently of the code.
EXPECTED = {
    "edge1": {
        ("ssh", "22", "172.31.242.1/32"),
        ("https", "443", "0.0.0.0/0"),
        ("https", "443", "::/0"),
        ("http", "80", "0.0.0.0/0"),
        ("http", "80", "::/0"),
        ("node_exporter", "9100", "172.31.242.31/32"),
        ("edge_metrics", "3903", "172.31.242.31/32"),
    },
    "gpu1": {
        ("ssh", "22", "172.31.242.1/32"),
        ("llm_serving", "8000:8015", "172.31.242.11/32"),
        ("llm_serving", "8000:8015", "172.31.242.31/32"),
        ("node_exporter", "9100", "172.31.242.31/32"),
        ("dcgm_exporter", "9400", "172.31.242.31/32"),
    },
    "ops1": {
        ("ssh", "22", "172.31.242.1/32"),
        ("node_exporter", "9100", "172.31.242.31/32"),
        ("image_registry", "5000", "172.31.242.21/32"),
        ("image_registry", "5000", "172.31.242.22/32"),
        ("prometheus", "9090", "172.31.242.1/32"),
        ("alertmanager", "9093", "172.31.242.1/32"),
        ("grafana", "3000", "172.31.242.1/32"),
        # The audit trail from every host, the log server's own included (issue 23).
        ("audit_log", "6514", "172.31.242.11/32"),
        ("audit_log", "6514", "172.31.242.21/32"),
        ("audit_log", "6514", "172.31.242.22/32"),
        ("audit_log", "6514", "172.31.242.31/32"),
        # Object storage (issue 21): the managers' metrics from the monitoring host (itself),
        # S3 from the GPU nodes and the operators, the Ceph cluster ports between storage hosts.
        ("object_storage_metrics", "9283", "172.31.242.31/32"),
        ("object_storage", "7480", "172.31.242.21/32"),
        ("object_storage", "7480", "172.31.242.22/32"),
        ("object_storage", "7480", "172.31.242.1/32"),
        # Every host's restic repository (issue 22).
        ("object_storage", "7480", "172.31.242.11/32"),
        ("object_storage", "7480", "172.31.242.31/32"),
        ("ceph_mon", "3300", "172.31.242.31/32"),
        ("ceph_mon_v1", "6789", "172.31.242.31/32"),
        ("ceph_daemons", "6800:7300", "172.31.242.31/32"),
    },
}


@pytest.mark.parametrize("host", sorted(EXPECTED))
def test_seed_policy_allows_exactly_the_designed_flows(host):
    policy = compile_for(host)
    assert policy["problems"] == [] and policy["lockout"] == []
    assert accepted(policy) == EXPECTED[host]


@pytest.mark.parametrize("host", sorted(HOSTS))
def test_lab_policy_compiles_to_the_role_default_rules(host):
    """The lab's firewall.yml (written with zones) and the role default (function groups) agree."""
    lab, default = compile_for(host, lab_flows()), compile_for(host)
    assert lab["problems"] == []
    for family in (4, 6):
        strip = [[r.split(" -m comment")[0] for r in c["rules"]] for c in lab[f"ipv{family}"]["chains"]]
        want = [[r.split(" -m comment")[0] for r in c["rules"]] for c in default[f"ipv{family}"]["chains"]]
        assert strip == want


def test_default_deny_is_last_and_state_rules_first():
    chain = rules(compile_for("gpu1"), fp.CHAIN_INPUT)
    assert chain[0].startswith("-m conntrack --ctstate RELATED,ESTABLISHED")
    assert chain[1].startswith("-i lo ")
    assert chain[-1].endswith("-j DROP") and " -s " not in chain[-1] and "--dport" not in chain[-1]


def test_ssh_goes_through_the_rate_limit_and_exempt_sources_skip_it():
    policy = compile_for("gpu1")
    ssh_jump = [r for r in rules(policy, fp.CHAIN_INPUT) if "--dport 22 " in r]
    assert ssh_jump == [
        '-s 172.31.242.1/32 -p tcp -m tcp --dport 22 -m comment --comment "admin-ssh: ssh" -j CLUSTER-FW-SSH'
    ]
    chain = rules(policy, fp.CHAIN_SSH)
    assert chain[0].startswith("-s 172.31.242.1/32 ") and chain[0].endswith("-j ACCEPT")
    assert "-m recent --set --name cluster_fw_ssh --rsource" in chain[1]
    assert "--update --seconds 60 --hitcount 4 --name cluster_fw_ssh --rsource" in chain[2]
    assert chain[2].endswith("-j DROP") and chain[3].endswith("-j ACCEPT")


def test_rate_limit_numbers_are_variables():
    chain = rules(compile_for("gpu1", ssh_rate_limit_seconds=30, ssh_rate_limit_hitcount=6), fp.CHAIN_SSH)
    assert "--update --seconds 30 --hitcount 6 " in chain[2]
    off = rules(compile_for("gpu1", ssh_rate_limit=False), fp.CHAIN_SSH)
    assert not any("recent" in r for r in off)


@pytest.mark.parametrize("hitcount", [1, 21])
def test_impossible_hitcount_is_refused(hitcount):
    assert any("hitcount" in p for p in compile_for("gpu1", ssh_rate_limit_hitcount=hitcount)["problems"])


def test_published_ports_are_matched_by_original_destination_port():
    chain = rules(compile_for("gpu1"), fp.CHAIN_DOCKER)
    assert (
        "-s 172.31.242.11/32 -p tcp -m conntrack --ctorigdstport 8000:8015 -m comment --comment "
        '"edge-to-serving: llm_serving" -j RETURN'
    ) in chain
    assert chain[0].startswith("-m conntrack --ctstate RELATED,ESTABLISHED") and chain[0].endswith("-j RETURN")
    assert [r for r in chain if r.startswith("-i ")] == [
        '-i docker0 -m comment --comment "from containers" -j RETURN',
        '-i br-+ -m comment --comment "from containers" -j RETURN',
    ]
    assert chain[-2:] == [
        '-o docker0 -m comment --comment "everything else into containers: denied" -j DROP',
        '-o br-+ -m comment --comment "everything else into containers: denied" -j DROP',
    ]
    assert fp.CHAIN_DOCKER not in [c["name"] for c in compile_for("gpu1", docker_user=False)["ipv4"]["chains"]]


def test_removing_a_flow_removes_its_rules():
    flows = [f for f in default_flows() if f["name"] != "monitoring"]
    policy = compile_for("gpu1", flows)
    text = "\n".join(r for c in policy["ipv4"]["chains"] for r in c["rules"])
    assert "monitoring" not in text and "172.31.242.31" not in text
    assert ("node_exporter", "9100", "172.31.242.31/32") not in accepted(policy)


def test_removing_a_host_removes_its_rules():
    groups = {**GROUPS, "all": ["edge1", "gpu1", "ops1"], "app": ["gpu1"], "gpu_nodes": ["gpu1"]}
    policy = compile_for("ops1", groups=groups)
    assert ("image_registry", "5000", "172.31.242.22/32") not in accepted(policy)
    assert ("image_registry", "5000", "172.31.242.21/32") in accepted(policy)


def test_to_narrows_a_flow_to_some_of_the_services_hosts():
    flows = [
        *default_flows(),
        {"name": "edge-node-exporter", "services": ["node_exporter"], "from": ["dmz"], "to": ["app"]},
    ]
    assert ("node_exporter", "9100", "172.31.242.11/32") in accepted(compile_for("gpu1", flows))
    assert ("node_exporter", "9100", "172.31.242.11/32") not in accepted(compile_for("ops1", flows))


def test_ipv6_sources_only_in_ipv6_rules():
    flows = [*default_flows(), {"name": "v6-ops", "services": ["node_exporter"], "from": ["2001:db8::/64"]}]
    policy = compile_for("gpu1", flows)
    assert not any("2001:db8" in r for c in policy["ipv4"]["chains"] for r in c["rules"])
    assert any(r.startswith("-s 2001:db8::/64 -p tcp") for r in rules(policy, fp.CHAIN_INPUT, 6))


@pytest.mark.parametrize(
    ("flow", "expected"),
    [
        ({"name": "x", "services": ["node_exportr"], "from": ["ops"]}, "did you mean 'node_exporter'"),
        ({"name": "x", "services": ["node_exporter"], "from": ["opz"]}, "did you mean 'ops'"),
        ({"name": "x", "services": ["node_exporter"], "from": ["10.0.0.1/24"]}, "did you mean 10.0.0.0/24"),
        ({"name": "x", "services": ["node_exporter"], "from": ["ops"], "to": ["ap"]}, "did you mean 'app'"),
        ({"name": "x", "services": ["node_exporter"], "from": ["ops"], "source": ["a"]}, "unknown key(s) source"),
        ({"name": "x", "services": [], "from": ["ops"]}, "services must be a non-empty list"),
        ({"name": "bad name", "services": ["ssh"], "from": ["ops"]}, "name 'bad name'"),
        ({"name": "x", "services": ["prometheus"], "from": ["ops"], "to": ["app"]}, "allows nothing"),
    ],
)
def test_policy_mistakes_are_refused_with_a_fix(flow, expected):
    problems = compile_for("gpu1", [*default_flows(), flow])["problems"]
    assert any(expected in p for p in problems), problems


def test_optional_flows_are_skipped_where_the_inventory_lacks_their_group_or_service():
    """A site without the storage layer: no `storage` group, no storage services."""
    groups = {k: v for k, v in GROUPS.items() if k != "storage"}
    services = {k: v for k, v in SERVICES.items() if v["group"] != "storage"}
    policy = compile_for("ops1", groups=groups, services=services)
    assert policy["problems"] == []
    assert not {a for a in accepted(policy) if a[0].startswith(("object_storage", "ceph_"))}
    not_optional = [{**f, "optional": False} for f in default_flows()]
    assert compile_for("ops1", not_optional, groups=groups, services=services)["problems"]
    # The price of `optional`: a misspelt group is skipped too; only a layer's own flows are optional.
    typo = {"name": "x", "services": ["node_exporter"], "from": ["opz"], "optional": True}
    assert compile_for("ops1", [*default_flows(), typo])["problems"] == []


def test_flows_of_a_service_whose_group_is_empty_wait_for_its_hosts():
    """A layer the site has not deployed yet (the example's `storage: {}`): no rule, no problem."""
    policy = compile_for("ops1", groups={**GROUPS, "storage": []})
    assert policy["problems"] == []
    assert not {a for a in accepted(policy) if a[0].startswith(("object_storage", "ceph_"))}
    assert ("object_storage", "7480", "172.31.242.21/32") in accepted(compile_for("ops1"))


def test_duplicate_flow_names_are_refused():
    problems = compile_for("gpu1", [*default_flows(), default_flows()[1]])["problems"]
    assert any("same name" in p for p in problems)


def test_hosts_need_addresses_not_names():
    hostvars = {**HOSTVARS, "ops1": {"ansible_host": "ops1.example.net"}}
    problems = compile_for("gpu1", hostvars=hostvars)["problems"]
    assert any("ops1" in p and "firewall_addresses" in p for p in problems), problems
    hostvars["ops1"]["firewall_addresses"] = ["10.1.0.31", "2001:db8::31"]
    policy = compile_for("gpu1", hostvars=hostvars)
    assert policy["problems"] == []
    assert ("node_exporter", "9100", "10.1.0.31/32") in accepted(policy)
    assert ("node_exporter", "9100", "2001:db8::31/128") in accepted(policy)


def test_a_policy_without_admin_ssh_is_a_lockout():
    flows = [f for f in default_flows() if f["name"] != "admin-ssh"]
    lockout = compile_for("edge1", flows)["lockout"]
    assert len(lockout) == 1
    assert "172.31.242.1/32" in lockout[0] and "locked out" in lockout[0]
    assert compile_for("edge1", flows, lockout_guard=False)["lockout"] == []


def test_admin_ssh_from_a_wider_network_or_any_covers_the_admin_network():
    flows = [f for f in default_flows() if f["name"] != "admin-ssh"]
    wide = [*flows, {"name": "ops-lan", "services": ["ssh"], "from": ["172.31.0.0/16"]}]
    assert compile_for("edge1", wide)["lockout"] == []
    anywhere = [*flows, {"name": "anyone", "services": ["ssh"], "from": ["any"]}]
    assert compile_for("edge1", anywhere)["lockout"] == []


def test_admin_ssh_to_only_some_hosts_locks_out_the_others():
    flows = [f for f in default_flows() if f["name"] != "admin-ssh"]
    flows.append({"name": "admin-ssh", "services": ["ssh"], "from": ADMIN, "to": ["ops"]})
    assert compile_for("ops1", flows)["lockout"] == []
    assert compile_for("gpu1", flows)["lockout"]


def test_ssh_missing_from_the_catalogue_is_refused():
    services = {k: v for k, v in SERVICES.items() if k != "ssh"}
    flows = [f for f in default_flows() if f["name"] != "admin-ssh"]
    problems = compile_for("gpu1", flows, services=services)["problems"]
    assert any("firewall_ssh_service 'ssh'" in p for p in problems)


def test_empty_admin_networks_is_a_lockout():
    assert compile_for("gpu1", admin_networks=[])["lockout"]


def test_host_addresses_filter():
    assert fp.host_addresses(HOSTVARS, ["gpu1"]) == {"gpu1": ["172.31.242.21/32"]}


def test_script_and_role_agree_on_names():
    script = load_plugin("roles/firewall/files/cluster-firewall")
    role_vars = yaml.safe_load((ROOT / "roles/firewall/vars/main.yml").read_text())
    assert script.INPUT_HOOK[1] == role_vars["_firewall_chain_input"] == fp.CHAIN_INPUT
    assert script.DOCKER_HOOK[1] == role_vars["_firewall_chain_docker"] == fp.CHAIN_DOCKER
    assert fp.CHAIN_SSH.startswith(script.PREFIX)
    assert role_vars["_firewall_conf_dir"] == script.CONF and role_vars["_firewall_stage_dir"] == script.STATE
