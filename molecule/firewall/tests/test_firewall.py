"""The zone firewall on four hosts, seen over the network: real TCP and SSH between the hosts
and from the controller (molecule's own `docker exec` connection is used only to set things up
and to look at the rules).

The tests run in file order: the zone matrix, the SSH rate limit, the refusals, the rollback
over real SSH, Docker restarts and a host restart (drift and its repair: tests/lab/test_20_firewall.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from toolkit import netprobe
from toolkit.ansible_run import run_playbook

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
# The security layer's firewall playbook: its pki and luks playbooks need secrets and disks
# this scenario does not have; they have scenarios of their own.
FIREWALL = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "playbooks" / "security" / "firewall.yml"
ENV = {"ANSIBLE_CACHE_PLUGIN": "memory"}

CONTROLLER = "controller"
ADDRESS = {"fw-edge": "172.30.4.11", "fw-gpu": "172.30.4.21", "fw-ops": "172.30.4.31", "fw-client": "172.30.4.41"}
HOSTS = sorted(ADDRESS)
UNLISTED = 7777  # in no flow: denied from everywhere
# The ports each host serves (its catalogue services), probed from everywhere else.
PORTS = {
    "fw-edge": [22, 80, 443, 3903, 9100, UNLISTED],
    "fw-gpu": [22, 8000, 8001, 8015, 9100, 9400, UNLISTED],  # 8000: published by Docker
    "fw-ops": [22, 3000, 5000, 9090, 9093, 9100, UNLISTED],
    "fw-client": [22, 9100, UNLISTED],
}
# The policy, written out from the issue: (sources, destinations, ports) allowed.
EVERYONE = {*HOSTS, CONTROLLER}
ALLOWED = [
    ({CONTROLLER}, set(HOSTS), {22}),  # admin network -> SSH everywhere
    ({"fw-client"}, set(HOSTS), {22}),  # outside-ssh (rate limited)
    (EVERYONE, {"fw-edge"}, {80, 443}),  # anyone -> the edge
    ({"fw-edge"}, {"fw-gpu"}, {8000, 8001, 8015}),  # edge -> serving
    ({"fw-ops"}, set(HOSTS), {9100}),  # monitoring -> node exporters
    ({"fw-ops"}, {"fw-gpu"}, {8000, 8001, 8015, 9400}),  # monitoring -> serving metrics, DCGM
    ({"fw-ops"}, {"fw-edge"}, {3903}),  # monitoring -> edge metrics
    ({"fw-gpu"}, {"fw-ops"}, {5000}),  # app -> the image registry (data zone)
    ({CONTROLLER}, {"fw-ops"}, {3000, 9090, 9093}),  # operators -> consoles
]
SSH_OPTS = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


def allowed(source: str, dest: str, port: int) -> bool:
    return any(source in s and dest in d and port in p for s, d, p in ALLOWED)


def sh(host: str, command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["docker", "exec", host, "sh", "-c", command], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: `{command[:200]}` exited {proc.returncode}: {proc.stderr or proc.stdout}")
    return proc


def probe_from(source: str, targets: list[tuple[str, int]], **kwargs) -> dict[tuple[str, int], str]:
    if source == CONTROLLER:
        return netprobe.probe_here(targets, **kwargs)
    return netprobe.parse(targets, sh(source, netprobe.probe_command(targets, **kwargs)).stdout)


def our_rules(host: str, family: str = "iptables") -> list[str]:
    """Our chains and the jumps into them, as iptables-save prints them."""
    lines = sh(host, f"{family}-save -t filter").stdout.splitlines()
    return [line for line in lines if "CLUSTER-FW" in line]


def ssh_from_controller(host: str, command: str = "true", timeout: float = 15) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", *SSH_OPTS.split(), "-o", "ConnectTimeout=8", "-i", str(EPHEMERAL / "fw_key"),
            f"labadmin@{ADDRESS[host]}", command]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def start_listeners(host: str) -> None:
    sh(host, netprobe.listener_command(PORTS[host]))
    targets = [("127.0.0.1", port) for port in PORTS[host]]
    for _ in range(20):
        if set(probe_from(host, targets, timeout=2).values()) == {"open"}:
            return
        time.sleep(0.5)
    raise AssertionError(f"{host}: not every probed port accepts connections: {probe_from(host, targets)}")


@pytest.fixture(scope="module")
def listeners() -> None:
    """Something accepts on every probed port of every host (found from the host itself)."""
    for host in HOSTS:
        start_listeners(host)


def matrix(sources: list[str], dests: list[str]) -> list[str]:
    """Probe every destination port from every source; return the disagreements with the policy."""
    wrong = []
    for source in sources:
        targets = [(ADDRESS[d], p) for d in dests if d != source for p in PORTS[d]]
        results = probe_from(source, targets)
        for (address, port), outcome in results.items():
            dest = next(h for h, a in ADDRESS.items() if a == address)
            want = "open" if allowed(source, dest, port) else "timeout"
            if outcome != want:
                wrong.append(f"{source} -> {dest}:{port}: {outcome}, expected {want}")
    return wrong


def test_zone_matrix_every_zone_to_every_other_both_directions(listeners):
    assert matrix([*HOSTS, CONTROLLER], HOSTS) == []


def test_the_published_port_is_the_container_behind_docker_user(listeners):
    # The edge gets the container's answer through Docker's DNAT...
    fetch = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://172.30.4.21:8000/', timeout=5).read().decode())\""  # noqa: E501
    assert sh("fw-edge", fetch).stdout.strip() == "served-by-container"
    # ...and the client is stopped in DOCKER-USER (INPUT never sees published ports).
    rules = our_rules("fw-gpu")
    assert "-A DOCKER-USER -j CLUSTER-FW-DOCKER" in rules
    assert any("--ctorigdstport 8000:8015" in r and "172.30.4.11/32" in r for r in rules)


def test_ssh_rate_limit_fourth_new_connection_in_a_minute_is_dropped():
    """From the client (allowed, not exempt): real SSH logins 1-3 work, the 4th is dropped."""
    sh("fw-edge", "echo / > /proc/net/xt_recent/cluster_fw_ssh")  # forget the matrix's probes
    ssh = f"ssh {SSH_OPTS} -o ConnectTimeout=4 -i /root/fw_key labadmin@{ADDRESS['fw-edge']} true"
    try:
        outcomes = [sh("fw-client", ssh, check=False).returncode for _ in range(4)]
        late = sh("fw-client", ssh, check=False)
    finally:
        sh("fw-edge", "echo / > /proc/net/xt_recent/cluster_fw_ssh")
    assert outcomes[:3] == [0, 0, 0], outcomes
    assert outcomes[3] != 0
    assert "timed out" in late.stderr, late.stderr
    # The controller (admin network, exempt) is never counted: many logins in a row work.
    assert [ssh_from_controller("fw-edge").returncode for _ in range(6)] == [0] * 6


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
