"""Preflight refuses a firewall policy that is wrong or would lock the administrators out,
before any host is contacted (the hosts here do not exist; only the controller runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from toolkit.ansible_run import run_playbook

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "playbooks" / "preflight.yml"
SERVICES = {
    "ssh": {"port": 22, "protocol": "tcp", "group": "all"},
    "https": {"port": 443, "protocol": "tcp", "group": "edge"},
    "node_exporter": {"port": 9100, "protocol": "tcp", "group": "all"},
}
FLOWS = [
    {"name": "admin-ssh", "services": ["ssh"], "from": ["10.20.0.0/24"]},
    {"name": "public-web", "services": ["https"], "from": ["any"]},
    {"name": "monitoring", "services": ["node_exporter"], "from": ["ops"]},
]


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBw/I6Cctv/B9P3JJYSawPlSi/edHCbmNaFGZHZW/oSk ops"


def inventory(tmp_path: Path, **overrides) -> Path:
    variables = {
        "cluster_name": "preflight-test",
        "cluster_zones": ["dmz", "app", "data"],
        "cluster_admin_networks": ["10.20.0.0/24"],
        "cluster_admin_users": [{"name": "ops", "ssh_keys": [KEY]}],
        "cluster_services": SERVICES,
        "firewall_flows": FLOWS,
        **overrides,
    }
    # Unreachable addresses (never a documentation range: preflight refuses those as the
    # example's placeholders): a test that contacted a host would time out and fail.
    data = {
        "all": {
            "vars": variables,
            "children": {
                "dmz": {"hosts": {"edge1": {"ansible_host": "10.255.113.11"}}},
                "app": {"hosts": {"gpu1": {"ansible_host": "10.255.113.21"}}},
                "data": {"hosts": {"ops1": {"ansible_host": "10.255.113.31"}}},
                "edge": {"hosts": {"edge1": None}},
                "gpu_nodes": {"hosts": {"gpu1": None}},
                "ops": {"hosts": {"ops1": None}},
            },
        }
    }
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def refusals(tmp_path: Path, **overrides) -> str:
    run = run_playbook(PREFLIGHT, inventory(tmp_path, **overrides), "-e", "ansible_timeout=3", timeout=300)
    assert run.rc != 0, run.stdout[-2000:]
    assert "preflight : Preflight | Gather facts" not in run.task_names(), "a host was contacted"
    return " ".join(m for msgs in run.failures().values() for m in msgs)


def test_policy_without_ssh_from_the_admin_network_is_refused(tmp_path):
    flows = [f for f in FLOWS if f["name"] != "admin-ssh"]
    messages = refusals(tmp_path, firewall_flows=flows)
    assert "Refuse a firewall policy" in messages
    assert "admin network 10.20.0.0/24" in messages and "locked out" in messages


def test_ssh_from_a_network_that_does_not_cover_the_admin_network_is_refused(tmp_path):
    flows = [{**FLOWS[0], "from": ["10.20.0.0/25"]}, *FLOWS[1:]]
    assert "admin network 10.20.0.0/24" in refusals(tmp_path, firewall_flows=flows)


@pytest.mark.parametrize(
    ("flow", "expected"),
    [
        ({"name": "x", "services": ["node_exportr"], "from": ["ops"]}, "did you mean 'node_exporter'"),
        ({"name": "x", "services": ["https"], "from": ["dmzz"]}, "did you mean 'dmz'"),
        ({"name": "x", "services": ["https"], "from": ["10.1.2.3/8"]}, "did you mean 10.0.0.0/8"),
    ],
)
def test_policy_mistakes_are_refused_with_the_fix(tmp_path, flow, expected):
    assert expected in refusals(tmp_path, firewall_flows=[*FLOWS, flow])


def test_a_valid_policy_passes_and_preflight_goes_on_to_the_hosts(tmp_path):
    run = run_playbook(PREFLIGHT, inventory(tmp_path), "-e", "ansible_timeout=3", timeout=300)
    failures = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "Refuse a firewall policy" not in failures
    assert "preflight : Preflight | Gather facts" in run.task_names()  # (the hosts do not exist)


def test_the_test_only_switch_lets_a_lockout_policy_through_to_the_role(tmp_path):
    flows = [f for f in FLOWS if f["name"] != "admin-ssh"]
    run = run_playbook(
        PREFLIGHT, inventory(tmp_path, firewall_flows=flows, firewall_lockout_guard=False), "-e", "ansible_timeout=3"
    )
    failures = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "Refuse a firewall policy" not in failures
    assert "preflight : Preflight | Gather facts" in run.task_names()
