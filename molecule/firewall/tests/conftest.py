"""What the firewall scenario's tests share: the hosts, their addresses and ports, the policy
written out from the issue, probes over the network, and listeners on every probed port.

Used by tests/test_firewall.py (verify: only reads) and tests/tamper_firewall.py (run by the
side_effect step: refusals, a rollback, restarts; each puts the hosts back).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from toolkit import netprobe

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
