"""Host hardening on the converged host, read only: the audit trail, file integrity, kernel and
login settings, and what third-party auditors (ssh-audit, Lynis) make of the host.

What needs a tampered host (an edited watched file, a re-baseline) and the Lynis run itself
are in side_effect.yml; here their results are read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from toolkit.hardening_audit import CONTAINER_UNREACHABLE, lynis_index, lynis_lost, ssh_audit_problems

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"
STORE = "/var/log/cluster-audit"
TARGET = 85


def test_a_sudo_command_reaches_the_audit_store(host):
    key = host.run("test -f /root/.ssh-test/id || echo missing").stdout.strip()
    if key == "missing":
        pytest.skip("the admin key is installed by test_base.py's client_key fixture")
    marker = "hardening-probe-" + os.urandom(4).hex()
    out = host.run(f"{SSH} -i /root/.ssh-test/id opsadmin@127.0.0.1 sudo -n /bin/echo {marker}")
    assert out.rc == 0, out.stderr
    found = host.run(f"for i in $(seq 1 20); do grep -rl {marker} {STORE} && exit 0; sleep 0.5; done; exit 1")
    assert found.rc == 0, host.run(f"ls -lR {STORE}").stdout
    line = host.check_output(f"grep -rh {marker} {STORE}")
    assert "sudo" in line and "opsadmin" in line and "COMMAND=/bin/echo" in line


def _send_over_tls(host, marker: str, with_certificate: bool) -> None:
    """One RFC 5424 message to the log server's TLS port, as a sender host would send it."""
    cert = "-cert /etc/ssl/cluster/server.crt -key /etc/ssl/cluster/private/server.key" if with_certificate else ""
    host.run(
        f"(printf '<86>1 - tlsprobe probe - - - {marker}\\n'; sleep 2) | timeout 10 openssl s_client -quiet "
        f"-connect 127.0.0.1:6514 -CAfile /etc/ssl/cluster/ca.crt {cert}"
    )


def test_the_log_server_stores_only_what_a_certificate_of_the_cluster_ca_sends(host):
    accepted, refused = "tls-accepted-" + os.urandom(4).hex(), "tls-refused-" + os.urandom(4).hex()
    _send_over_tls(host, accepted, with_certificate=True)
    _send_over_tls(host, refused, with_certificate=False)
    found = host.run(f"for i in $(seq 1 20); do grep -rq {accepted} {STORE} && exit 0; sleep 0.5; done; exit 1")
    assert found.rc == 0, host.run(f"ls -lR {STORE}").stdout
    assert host.run(f"grep -rq {refused} {STORE}").rc != 0


def test_audit_rules_cover_the_seeds_concerns(host):
    rules = host.file("/etc/audit/rules.d/60-cluster.rules").content_string
    wanted = [
        "-w /etc/sudoers -p wa -k sudoers",
        "-w /etc/passwd -p wa -k identity",
        "-w /var/lib/openbao -p wa -k vault",
        "-w /etc/ssl/cluster -p wa -k cluster_pki",
        "-w /etc/cryptsetup-keys.d -p wa -k luks_keys",
        "-w /run/docker.sock -p wa -k docker_socket",
        "-F path=/usr/bin/sudo -F perm=x",
        "-k time_change",
        "init_module,finit_module,delete_module",
    ]
    assert [w for w in wanted if w not in rules] == []
    # The audit events go to syslog, which ships them.
    assert "active = yes" in host.file("/etc/audit/plugins.d/syslog.conf").content_string.splitlines()
    # auditd cannot run in a container (the kernel's audit interface is not namespaced): the
    # unit skips it there instead of failing; the VM runs it.
    assert host.service("auditd").is_enabled
    assert host.run("systemctl is-failed auditd acct").stdout.split() == ["inactive", "inactive"]


def test_audit_trail_retention_on_the_log_server(host):
    unit = host.check_output("systemctl cat cluster-audit-retention.service")
    assert "-mtime +183 -delete" in unit
    assert host.service("cluster-audit-retention.timer").is_running


def test_integrity_check_runs_daily_and_reports_a_clean_host(host):
    assert host.service("cluster-integrity-check.timer").is_running
    metrics = host.file("/var/lib/prometheus/node-exporter/cluster_integrity.prom").content_string
    assert 'cluster_integrity_changed_entries{kind="changed"} 0' in metrics
    # The re-baseline of side_effect.yml accepted the file added by hand, and said so in the trail.
    assert host.run(f"grep -rq 'new baseline accepts' {STORE}").rc == 0


def test_kernel_modules_and_settings_persisted(host):
    modprobe = host.file("/etc/modprobe.d/60-cluster-hardening.conf").content_string
    for module in ("dccp", "sctp", "rds", "tipc", "usb-storage", "firewire-core"):
        assert f"install {module} /bin/false" in modprobe
    sysctl = host.file("/etc/sysctl.d/61-cluster-hardening.conf").content_string.splitlines()
    wanted = [
        "net.ipv4.conf.all.accept_redirects = 0",
        "net.ipv4.conf.all.accept_source_route = 0",
        "net.ipv4.conf.all.log_martians = 1",
        "net.ipv4.conf.all.rp_filter = 1",
        "fs.suid_dumpable = 0",
    ]
    assert [w for w in wanted if w not in sysctl] == []
    # Docker needs forwarding: the role never turns it off.
    assert not any(line.startswith("net.ipv4.ip_forward") for line in sysctl)
    limits = host.file("/etc/security/limits.d/61-cluster-hardening.conf").content_string
    assert re.search(r"^\*\s+hard\s+core\s+0$", limits, re.M)


def test_login_defaults_banners_and_needrestart(host):
    defs = host.file("/etc/login.defs").content_string
    for pattern in (r"^UMASK\s+027$", r"^PASS_MAX_DAYS\s+365$", r"^SHA_CRYPT_MIN_ROUNDS\s+65536$"):
        assert re.search(pattern, defs, re.M), pattern
    assert "Authorised access only" in host.file("/etc/issue.net").content_string
    assert "$nrconf{restart} = 'l';" in host.file("/etc/needrestart/conf.d/60-cluster.conf").content_string
    assert host.run("grep -q pam_tmpdir /etc/pam.d/common-session").rc == 0


def test_only_ed25519_host_keys(host):
    keys = sorted(host.check_output("ls /etc/ssh/ | grep '^ssh_host_' || true").split())
    assert keys == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]


def test_ssh_audit_finds_no_failure_and_no_warning(host):
    ssh_audit = shutil.which("ssh-audit")
    assert ssh_audit, "ssh-audit (requirements.txt) is not in the test environment"
    address = host.check_output("hostname -I").split()[0]
    proc = subprocess.run([ssh_audit, "-j", address], capture_output=True, text=True, timeout=60, check=False)
    (EPHEMERAL / "ssh-audit.json").write_text(proc.stdout)
    assert ssh_audit_problems(json.loads(proc.stdout)) == []


def test_lynis_hardening_index(host):
    report = host.file("/var/log/lynis-report.dat").content_string
    log = host.file("/var/log/lynis.log").content_string
    (EPHEMERAL / "lynis-report.dat").write_text(report)
    raw = int(next(line.split("=", 1)[1] for line in report.splitlines() if line.startswith("hardening_index=")))
    reachable = lynis_index(log, leave_out=CONTAINER_UNREACHABLE)
    lost = {t: p for t, p in lynis_lost(log).items() if t not in CONTAINER_UNREACHABLE}
    # Printed on a pass too (the scenario's verifier runs pytest -s): the numbers of the issue note.
    print(f"Lynis hardening index: {raw} (all tests), {reachable} (without the container-unreachable ones)")
    print(f"Lynis points lost on reachable tests (README: each one left on purpose): {lost}")
    assert reachable >= TARGET, f"index {reachable} (all tests: {raw}); points lost: {lost}"
