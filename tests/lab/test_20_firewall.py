"""The zone firewall on the lab: the seed's three zones with the real service catalogue.

A listener is put on every probed port where no real service listens yet, so a refused
connection never counts as blocked; then every host and the controller probe every other
host's service ports. Allowed flows connect, everything else times out (DROP).
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator

import pytest
import yaml
from conftest import ROOT, Lab, _summary
from toolkit import netprobe

pytestmark = pytest.mark.usefixtures("converged")

CONTROLLER = "controller"
UNLISTED = 7777  # in no flow
CATALOGUE = yaml.safe_load((ROOT / "inventories/lab/group_vars/all/services.yml").read_text())["cluster_services"]
COMPARE = "firewall : Firewall | Compare the rules in force with the policy"


def service_ports(svc: dict) -> list[int]:
    """A single port, or the first, a middle and the last port of a range."""
    first, last = svc["port"], svc.get("port_end", svc["port"])
    return sorted({first, (first + last) // 2, last})


def expected(lab: Lab) -> list[tuple[set[str], set[str], set[str]]]:
    """The policy of the issue, in (sources, destinations, services) allowed; nothing else is."""
    everyone = {*lab.hosts(), CONTROLLER}
    return [
        ({CONTROLLER}, set(lab.hosts()), {"ssh"}),  # admin network -> SSH everywhere
        (everyone, set(lab.hosts("edge")), {"https", "http"}),  # anyone -> the edge
        (set(lab.hosts("dmz")), set(lab.hosts("app")), {"llm_serving"}),  # edge -> serving
        (
            set(lab.hosts("ops")),
            set(lab.hosts()),
            {"node_exporter", "dcgm_exporter", "edge_metrics", "llm_serving", "object_storage_metrics"},
        ),
        (set(lab.hosts("app")), set(lab.hosts("data")), {"image_registry", "object_storage"}),  # app -> data zone
        ({CONTROLLER}, set(lab.hosts("storage")), {"object_storage"}),  # operators -> S3
        (set(lab.hosts()), set(lab.hosts("storage")), {"object_storage"}),  # every host's backups -> S3
        # the storage cluster's own traffic, between its hosts only
        (set(lab.hosts("storage")), set(lab.hosts("storage")), {"ceph_mon", "ceph_mon_v1", "ceph_daemons"}),
        ({CONTROLLER}, set(lab.hosts("ops")), {"prometheus", "alertmanager", "grafana"}),  # consoles
        (set(lab.hosts()), set(lab.hosts("ops")), {"audit_log"}),  # every host's audit trail -> the log server
        # the secrets store: the app zone, operators and monitoring reach the API; raft between its nodes
        ({CONTROLLER, *lab.hosts("app"), *lab.hosts("ops")}, set(lab.hosts("vault")), {"vault"}),
        (set(lab.hosts("vault")), set(lab.hosts("vault")), {"vault", "vault_cluster"}),
    ]


def ports_of(lab: Lab, host: str) -> dict[int, str]:
    """port -> service, for every catalogue service that runs on the host, plus an unlisted port."""
    out = {UNLISTED: "unlisted"}
    for name, svc in CATALOGUE.items():
        if svc["group"] == "all" or svc["group"] in groups_of(lab, host):
            out.update({p: name for p in service_ports(svc)})
    return out


def groups_of(lab: Lab, host: str) -> tuple[str, ...]:
    return next(h.groups for h in lab.topo.hosts if h.name == host)


def probe_from(lab: Lab, source: str, targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    if source == CONTROLLER:
        return netprobe.probe_here(targets)
    return netprobe.parse(targets, lab.exec(source, netprobe.probe_command(targets)).stdout)


@pytest.fixture(scope="module")
def probed_ports(converged: Lab) -> Iterator[dict[str, dict[int, str]]]:
    """Listeners where nothing listens yet; the ports that accept on each host's lab address."""
    result, pids = {}, {}
    for host in converged.hosts():
        ports = ports_of(converged, host)
        pids[host] = converged.exec(host, netprobe.listener_command(ports)).stdout.strip()
        targets = [(converged.address(host), p) for p in ports]
        for _ in range(20):
            outcome = probe_from(converged, host, targets)  # from the host itself: loopback, allowed
            if set(outcome.values()) == {"open"}:
                break
            time.sleep(0.5)
        loopback_only = sorted(p for (_, p), o in outcome.items() if o != "open")
        if loopback_only:
            warnings.warn(f"{host}: ports {loopback_only} accept only on loopback; not probed", stacklevel=1)
        result[host] = {p: s for p, s in ports.items() if p not in loopback_only}
    yield result
    for host, pid in pids.items():
        converged.exec(host, f"kill {pid}", check=False)


def test_zone_matrix_on_the_lab(converged: Lab, probed_ports):
    rules = expected(converged)
    wrong = []
    for source in [*converged.hosts(), CONTROLLER]:
        targets = [(converged.address(d), p) for d in converged.hosts() if d != source for p in probed_ports[d]]
        for (address, port), outcome in probe_from(converged, source, targets).items():
            dest = next(h for h in converged.hosts() if converged.address(h) == address)
            service = probed_ports[dest][port]
            ok = any(source in s and dest in d and service in svc for s, d, svc in rules)
            want = "open" if ok else "timeout"
            if outcome != want:
                wrong.append(f"{source} -> {dest}:{port} ({service}): {outcome}, expected {want}")
    assert wrong == []


def test_every_host_has_its_zone_rules_in_force_and_for_boot(converged: Lab):
    for host in converged.hosts():
        saved = converged.exec(host, "iptables-save -t filter").stdout.splitlines()
        assert saved.count("-A INPUT -j CLUSTER-FW-INPUT") == 1, host
        assert converged.exec(host, "systemctl is-enabled cluster-firewall && systemctl is-active cluster-firewall")
        rules = converged.exec(host, "cat /etc/cluster-firewall/rules.v4").stdout
        assert rules.startswith("#") and "*filter" in rules, host
    # The DMZ host allows the public door to anyone; the app hosts do not.
    edge, gpu = converged.hosts("edge")[0], converged.hosts("gpu_nodes")[0]
    assert (
        '--dport 443 -m comment --comment "public-web: https" -j ACCEPT' in converged.exec(edge, "iptables -S").stdout
    )
    assert "--dport 443" not in converged.exec(gpu, "iptables -S CLUSTER-FW-INPUT").stdout


def test_firewall_drift_shows_in_check_diff_and_a_role_run_repairs_it(converged: Lab, probed_ports):
    gpu, ops = converged.hosts("gpu_nodes")[0], converged.hosts("ops")[0]
    source = f"{converged.address(ops)}/32"
    rule = f'-s {source} -p tcp -m tcp --dport 9100 -m comment --comment "monitoring: node_exporter" -j ACCEPT'
    converged.exec(gpu, f"iptables -D CLUSTER-FW-INPUT {rule}")
    # Without its jump from DOCKER-USER, the firewall no longer filters published ports.
    converged.exec(gpu, "iptables -D DOCKER-USER -j CLUSTER-FW-DOCKER")
    target = [(converged.address(gpu), 9100)]
    assert probe_from(converged, ops, target) == {target[0]: "timeout"}

    check = converged.playbook("--check", "--diff", "--tags", "firewall")
    assert check.rc == 0, _summary(check)
    assert check.changed_tasks() == {gpu: [COMPARE]}
    diff = next(
        json.dumps(res.get("diff"))
        for play in check.data["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == COMPARE
        for host, res in task["hosts"].items()
        if host == gpu
    )
    assert "--dport 9100" in diff and "-A DOCKER-USER -j CLUSTER-FW-DOCKER" in diff

    fix = converged.playbook("--tags", "firewall", "--limit", gpu)
    assert fix.rc == 0, _summary(fix)
    assert COMPARE in fix.changed_tasks()[gpu]
    assert probe_from(converged, ops, target) == {target[0]: "open"}
    saved = converged.exec(gpu, "iptables-save -t filter").stdout.splitlines()
    assert saved.count("-A DOCKER-USER -j CLUSTER-FW-DOCKER") == 1
    again = converged.playbook("--check", "--tags", "firewall", "--limit", gpu)
    assert again.rc == 0 and again.changed_tasks() == {}


def test_controller_ssh_is_never_rate_limited(converged: Lab):
    edge = converged.hosts("edge")[0]
    assert [converged.ssh(edge, "true").returncode for _ in range(6)] == [0] * 6
