"""Host hardening on every lab host kind, judged by third-party auditors and by behaviour.

- Lynis (Debian package, installed for the test and purged after) on each kind of host (edge,
  GPU, ops): the hardening index over the tests a container can pass is at least 85 (the
  tests only a kernel of its own can pass are listed in toolkit.hardening_audit, with why;
  the VM scenario counts them). Reports are kept under .cache/lab-artifacts/hardening/.
- ssh-audit (PyPI, pinned): no failure and no warning on any host.
- The audit trail: a sudo command on a GPU node appears in the ops host's audit store.
- File integrity: an edited watched file raises the integrity alert; a converge afterwards
  restores the file and takes a new baseline, and the alert resolves.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from conftest import ROOT, Lab, _summary, wait_for
from toolkit.hardening_audit import CONTAINER_UNREACHABLE, lynis_index, lynis_lost, ssh_audit_problems

pytestmark = pytest.mark.usefixtures("converged")

ARTIFACTS = ROOT / ".cache" / "lab-artifacts" / "hardening"
STORE = "/var/log/cluster-audit"
TARGET = 85
KINDS = ["edge", "gpu_nodes", "ops"]


def _alerts(lab: Lab, name: str, host: str) -> list[dict]:
    ops = lab.hosts("ops")[0]
    code = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9090/api/v1/alerts').read().decode())"
    out = lab.exec(ops, f'python3 -c "{code}"')
    alerts = json.loads(out.stdout)["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == name and a["labels"].get("host") == host]


@pytest.mark.parametrize("kind", KINDS)
def test_lynis_hardening_index_per_host_kind(converged: Lab, kind: str):
    host = converged.hosts(kind)[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    converged.exec(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends lynis")
    try:
        converged.exec(host, "cd /tmp && lynis audit system --quick --no-colors > /var/log/lynis-console.txt 2>&1")
        report = converged.exec(host, "cat /var/log/lynis-report.dat").stdout
        log = converged.exec(host, "cat /var/log/lynis.log").stdout
        console = converged.exec(host, "cat /var/log/lynis-console.txt").stdout
    finally:
        # Purged, so the auditor leaves no trace in the integrity baseline's files.
        converged.exec(host, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q lynis", check=False)
    for name, text in (("report.dat", report), ("log", log), ("console.txt", console)):
        (ARTIFACTS / f"lynis-{kind}-{host}.{name}").write_text(text)
    raw = int(next(line.split("=", 1)[1] for line in report.splitlines() if line.startswith("hardening_index=")))
    reachable = lynis_index(log, leave_out=CONTAINER_UNREACHABLE)
    lost = {t: p for t, p in sorted(lynis_lost(log).items(), key=lambda x: -x[1]) if t not in CONTAINER_UNREACHABLE}
    assert reachable >= TARGET, f"{host}: index {reachable} (all tests: {raw}); points lost: {lost}"


@pytest.mark.parametrize("kind", KINDS)
def test_ssh_audit_no_failure_no_warning(converged: Lab, kind: str):
    ssh_audit = shutil.which("ssh-audit")
    assert ssh_audit, "ssh-audit (requirements.txt) is not in the test environment"
    host = converged.hosts(kind)[0]
    proc = subprocess.run(
        [ssh_audit, "-j", converged.address(host)], capture_output=True, text=True, timeout=120, check=False
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"ssh-audit-{kind}-{host}.json").write_text(proc.stdout)
    assert ssh_audit_problems(json.loads(proc.stdout)) == [], host


def test_a_sudo_command_appears_in_the_ops_hosts_audit_store(converged: Lab):
    gpu, ops = converged.hosts("gpu_nodes")[0], converged.hosts("ops")[0]
    marker = f"hardening-probe-{time.time_ns()}"
    out = converged.ssh(gpu, f"sudo -n /bin/echo {marker}")
    assert out.returncode == 0, out.stderr

    def files_with_marker() -> list[str]:
        return converged.exec(ops, f"grep -rl {marker} {STORE}", check=False).stdout.split()

    found = wait_for("the sudo record on the log server", files_with_marker, timeout=60)
    line = converged.exec(ops, f"grep -rh {marker} {STORE}").stdout
    assert "sudo" in line and "COMMAND=/bin/echo" in line, line
    # Filed under the sender, not under the log server itself.
    assert all(f"{STORE}/{ops}/" not in path for path in found), found


def test_an_edited_watched_file_alerts_and_a_converge_afterwards_does_not(converged: Lab):
    gpu = converged.hosts("gpu_nodes")[0]
    converged.exec(gpu, "echo 'tampered by the lab suite' >> /etc/issue.net")
    check = converged.exec(gpu, "/usr/local/sbin/cluster-integrity-check", check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    wait_for("HostIntegrityChanged firing", lambda: [a for a in _alerts(converged, "HostIntegrityChanged", gpu)
                                                   if a["state"] == "firing"])  # fmt: skip

    run = converged.playbook("--tags", "host_hardening", "--limit", gpu)
    assert run.rc == 0, _summary(run)
    assert "tampered" not in converged.exec(gpu, "cat /etc/issue.net").stdout
    assert converged.exec(gpu, "/usr/local/sbin/cluster-integrity-check", check=False).returncode == 0
    wait_for("HostIntegrityChanged resolved", lambda: not _alerts(converged, "HostIntegrityChanged", gpu), timeout=180)
    # And a second run changes nothing (the baseline is not retaken).
    again = converged.playbook("--tags", "host_hardening", "--limit", gpu)
    assert again.rc == 0 and again.changed_tasks() == {}, again.changed_tasks()
