"""The firewall's behaviour on tampered hosts, run by the scenario's side_effect step
(side_effect.yml), before verify: a policy that would lock the administrators out is
refused by preflight and by the role before any change; with the guard off, applied over
real SSH, it is rolled back by the host; a flow removed and put back; Docker and the whole
host restarted. Each test leaves the hosts as converged, which verify's zone matrix checks.
"""

from __future__ import annotations

import json
import subprocess
import time

from conftest import (
    ADDRESS,
    CONTROLLER,
    ENV,
    EPHEMERAL,
    FIREWALL,
    HOSTS,
    INVENTORY,
    SCENARIO,
    matrix,
    our_rules,
    probe_from,
    sh,
    ssh_from_controller,
    start_listeners,
)
from toolkit.ansible_run import run_playbook


def _lockout_vars(**extra) -> str:
    flows = [
        {"name": "public-web", "services": ["https", "http"], "from": ["any"]},
        {"name": "outside-ssh", "services": ["ssh"], "from": ["outside"]},
    ]
    return json.dumps({"firewall_flows": flows, **extra})


def _snapshot(host: str) -> tuple[list[str], str]:
    return our_rules(host), sh(host, "sha256sum /etc/cluster-firewall/rules.v4").stdout


def test_policy_without_admin_ssh_refused_by_preflight_before_anything():
    before = _snapshot("fw-ops")
    run = run_playbook(SCENARIO / "converge.yml", INVENTORY, "-e", _lockout_vars(), env=ENV)
    assert run.rc != 0
    messages = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "Refuse a firewall policy" in messages and "admin network 172.30.4.1/32" in messages, messages
    assert "Firewall |" not in " ".join(run.task_names())  # the firewall role never started
    assert _snapshot("fw-ops") == before


def test_policy_without_admin_ssh_refused_by_the_role_before_anything():
    before = _snapshot("fw-ops")
    # The playbook's own preflight would refuse first (the test above): skip it to reach the role.
    run = run_playbook(
        FIREWALL, INVENTORY, "--limit", "fw-ops", "--skip-tags", "preflight", "-e", _lockout_vars(), env=ENV
    )
    assert run.rc != 0
    failures = run.failures()["fw-ops"]
    assert len(failures) == 1 and "Refuse a wrong policy" in failures[0], failures
    assert "admin network 172.30.4.1/32" in failures[0] and "locked out" in failures[0]
    assert _snapshot("fw-ops") == before


def test_lockout_policy_with_guard_off_is_rolled_back_over_real_ssh():
    """Applied over real SSH, the policy cuts the controller off; the host restores its rules."""
    before = _snapshot("fw-ops")
    ssh_vars = {
        "ansible_connection": "ssh",
        "ansible_host": ADDRESS["fw-ops"],
        "ansible_user": "labadmin",
        "ansible_ssh_private_key_file": str(EPHEMERAL / "fw_key"),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "firewall_rollback_timeout": 15,
    }
    began = time.monotonic()
    run = run_playbook(
        FIREWALL,
        INVENTORY,
        "--limit",
        "fw-ops",
        "--skip-tags",
        "preflight",  # it refuses this policy, and the one-host connection vars given to every host
        "-e",
        _lockout_vars(firewall_lockout_guard=False, **ssh_vars),
        env=ENV,
    )
    took = time.monotonic() - began
    assert run.rc != 0, run.stdout[-3000:]
    failures = run.failures()["fw-ops"]
    final = failures[-1]
    assert "did not keep the new rules" in final and "restored its previous rules" in final, failures
    assert "not confirmed within 15s" in final
    applied = [t for t in run.task_names() if "Apply the staged rules" in t]
    assert applied, "the rules were never applied, so nothing was rolled back"
    assert ssh_from_controller("fw-ops").returncode == 0  # reachable again, by a new connection
    assert _snapshot("fw-ops") == before
    status = json.loads(sh("fw-ops", "/usr/local/sbin/cluster-firewall status").stdout)
    assert status["pending"] is False and "not confirmed" in status["rolled_back"]["reason"]
    print(f"lock-out run with rollback took {took:.0f}s")


def test_removing_a_flow_removes_its_rules_and_putting_it_back_restores_them(listeners):
    flows = [
        {"name": "admin-ssh", "services": ["ssh"], "from": ["172.30.4.1/32"]},
        {"name": "public-web", "services": ["https", "http"], "from": ["any"]},
        {"name": "edge-to-serving", "services": ["llm_serving"], "from": ["edge"], "to": ["app"]},
        {"name": "outside-ssh", "services": ["ssh"], "from": ["outside"]},
    ]  # no monitoring, app-to-data or consoles
    extra = json.dumps({"firewall_flows": flows})
    run = run_playbook(FIREWALL, INVENTORY, "--limit", "fw-gpu", "-e", extra, env=ENV)
    assert run.rc == 0, run.stdout[-3000:]
    assert not any("monitoring" in r for r in our_rules("fw-gpu"))
    assert set(probe_from("fw-ops", [(ADDRESS["fw-gpu"], 9100), (ADDRESS["fw-gpu"], 8000)]).values()) == {"timeout"}
    back = run_playbook(FIREWALL, INVENTORY, "--limit", "fw-gpu", env=ENV)
    assert back.rc == 0
    assert set(probe_from("fw-ops", [(ADDRESS["fw-gpu"], 9100), (ADDRESS["fw-gpu"], 8000)]).values()) == {"open"}


def test_docker_restart_keeps_the_jump_and_the_drop_in_puts_it_back(listeners):
    sh("fw-gpu", "systemctl restart docker")
    assert our_rules("fw-gpu").count("-A DOCKER-USER -j CLUSTER-FW-DOCKER") == 1
    sh("fw-gpu", "iptables -D DOCKER-USER -j CLUSTER-FW-DOCKER && systemctl restart docker")
    assert our_rules("fw-gpu").count("-A DOCKER-USER -j CLUSTER-FW-DOCKER") == 1
    sh(
        "fw-gpu",
        "for i in $(seq 30); do docker ps -q -f name=serving -f status=running | grep -q . && exit 0; sleep 1; done",
    )
    assert matrix(["fw-client", "fw-edge"], ["fw-gpu"]) == []


def test_rules_come_back_after_a_restart_before_docker(listeners):
    """A container restart starts from empty tables: the unit restores our chains, and creates
    DOCKER-USER with our jump before Docker starts and publishes the port again."""
    before = our_rules("fw-gpu")
    subprocess.run(["docker", "restart", "fw-gpu"], check=True, capture_output=True, timeout=120)
    wait = "docker ps -q -f name=serving -f status=running | grep -q . && exit 0"
    sh("fw-gpu", f"for i in $(seq 90); do {wait}; sleep 1; done; exit 1")
    assert sh("fw-gpu", "systemctl is-active cluster-firewall").stdout.strip() == "active"
    assert our_rules("fw-gpu") == before
    start_listeners("fw-gpu")
    assert matrix([*HOSTS, CONTROLLER], ["fw-gpu"]) == []
