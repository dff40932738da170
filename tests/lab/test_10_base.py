"""The base layer (common, os_tuning, ssh_hardening) on the lab's hosts.

Logins are tried from the controller over the lab network, through the firewall, the way an
operator logs in. What needs a tampered host (sshd killed, an administrator without a key, a
test double apt repository) puts the host back afterwards: later tests (drift, the example
site) check that the hosts hold exactly the inventory's state. The kernel command line
(transparent hugepages) and live limits need a kernel of their own: molecule/metal.
"""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, Lab, _summary, wait_for
from labkit.layout import SSH_KEY

pytestmark = pytest.mark.usefixtures("converged")


def _edge(lab: Lab) -> str:
    return lab.hosts("edge")[0]


def _login(lab: Lab, host: str, user: str, *options: str) -> subprocess.CompletedProcess[str]:
    """A login attempt with every message of ssh's kept: the tests read why it was refused."""
    return lab.ssh(host, "true", user=user, options=options, quiet=False)


def test_administrator_key_login_and_sudo_everywhere(converged: Lab):
    for host in converged.hosts():
        out = converged.ssh(host, "sudo -n id -u")
        assert out.returncode == 0 and out.stdout.strip() == "0", f"{host}: {out.stderr}"


def test_password_login_is_not_even_offered(converged: Lab):
    out = _login(converged, _edge(converged), "labadmin", "-o", "PubkeyAuthentication=no")
    assert out.returncode != 0
    # The server lists the methods it accepts: public keys only.
    assert "Permission denied (publickey)" in out.stderr, out.stderr


def test_root_login_refused_even_with_an_authorized_key(converged: Lab):
    host = _edge(converged)
    public = SSH_KEY.with_suffix(".pub").read_text().strip()
    converged.exec(host, f"install -d -m 700 /root/.ssh && echo '{public}' > /root/.ssh/authorized_keys")
    try:
        out = _login(converged, host, "root")
    finally:
        converged.exec(host, "rm -f /root/.ssh/authorized_keys")
    assert out.returncode != 0 and "Permission denied" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (["-o", "Ciphers=aes128-cbc"], "no matching cipher found"),
        (["-o", "Ciphers=aes256-cbc"], "no matching cipher found"),
        (["-o", "KexAlgorithms=diffie-hellman-group14-sha1"], "no matching key exchange method"),
        (["-o", "KexAlgorithms=diffie-hellman-group1-sha1"], "no matching key exchange method"),
        # A MAC is negotiated only with a non-AEAD cipher, so force one.
        (["-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha1"], "no matching MAC found"),
    ],
)
def test_weak_algorithms_refused(converged: Lab, options: list[str], refusal: str):
    out = _login(converged, _edge(converged), "labadmin", *options)
    assert out.returncode != 0
    assert refusal in out.stderr, out.stderr


def test_effective_sshd_settings(converged: Lab):
    out = converged.exec(_edge(converged), "sshd -T -C user=labadmin,host=x,addr=127.0.0.1").stdout
    settings = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "no"
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["x11forwarding"] == "no"
    assert "cbc" not in settings["ciphers"]
    assert "sha1" not in settings["kexalgorithms"]


def test_sshd_comes_back_after_a_crash(converged: Lab):
    host = _edge(converged)
    converged.exec(host, 'kill -9 "$(systemctl show -p MainPID --value ssh)"')

    def serving() -> bool:
        state = converged.exec(host, "systemctl is-active ssh", check=False).stdout.strip()
        return state == "active" and converged.ssh(host, "true").returncode == 0

    wait_for("sshd restarted by its unit", serving, timeout=30, interval=1)


def test_the_lockout_guard_refuses_an_administrator_without_a_key(converged: Lab):
    host = _edge(converged)
    before = converged.exec(host, "sha256sum /etc/ssh/sshd_config").stdout
    converged.exec(host, "useradd -m nokey")
    try:
        run = converged.playbook(
            "--tags", "ssh_hardening", "--limit", host,
            "-e", '{"ssh_hardening_key_check_users": ["labadmin", "nokey"]}',
        )  # fmt: skip
    finally:
        converged.exec(host, "userdel -r nokey")
    assert run.rc != 0, _summary(run)
    assert "account(s) 'nokey' would be locked out" in str(run.failures()), _summary(run)
    assert converged.exec(host, "sha256sum /etc/ssh/sshd_config").stdout == before


# A TEST DOUBLE apt repository (tests/doubles/apt-repo): a held package, a free one and an
# NVIDIA-named one, each installed at 1.0 with 2.0 available. APT_CONFIG points these
# commands only at a copy of the host's apt.conf.d (the role's settings) plus one file that
# allows the test origin, like a security archive, and at the repository's own lists, so that
# unattended-upgrade reads three packages, not Debian's 60000 (two minutes of pinning).
PROBES = ["llmlab-probe-held", "llmlab-probe-free", "nvidia-probe-driver"]
REPO = "/srv/llmlab-testrepo"
TEST_APT_CONFIG = f"""Dir::Etc::sourcelist "{REPO}/sources.list";
Dir::Etc::sourceparts "-";
Dir::State::lists "{REPO}/lists/";
Dir::Etc::parts "{REPO}/apt.conf.d";
"""
TEST_ORIGIN = 'Unattended-Upgrade::Origins-Pattern { "origin=LLMLab-Test"; };'


def test_unattended_upgrades_skip_held_and_pinned_stacks_and_never_reboot(converged: Lab):
    host = converged.hosts("gpu_nodes")[0]
    builder = (ROOT / "tests/doubles/apt-repo/make-apt-repo").read_text()
    spec = "".join(f"{name} {version}\n" for name in PROBES for version in ("1.0", "2.0"))
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -q -y"
    test_apt = f"APT_CONFIG={REPO}/apt.conf"
    converged.exec(host, f"{apt} install --no-install-recommends apt-utils")
    try:
        converged.exec(
            host,
            f"mkdir -p {REPO}/lists/partial && cp -a /etc/apt/apt.conf.d {REPO}/ && "
            f"echo '{TEST_ORIGIN}' > {REPO}/apt.conf.d/99llmlab-test-origin && "
            f"cat > {REPO}/make-apt-repo <<'EOF'\n{builder}EOF\n"
            f"cat > {REPO}/apt.conf <<'EOF'\n{TEST_APT_CONFIG}EOF\n"
            f"echo 'deb [trusted=yes] file:{REPO}/debs ./' > {REPO}/sources.list",
        )
        converged.exec(host, f"sh {REPO}/make-apt-repo {REPO}/debs LLMLab-Test <<'EOF'\n{spec}EOF")
        converged.exec(
            host,
            f"{test_apt} apt-get update -q && {test_apt} {apt} install {' '.join(f'{p}=1.0' for p in PROBES)} "
            "&& apt-mark hold llmlab-probe-held",
        )
        out = converged.exec(host, f"{test_apt} unattended-upgrade --dry-run --debug 2>&1").stdout
        reboot = converged.exec(host, "apt-config dump Unattended-Upgrade::Automatic-Reboot").stdout
    finally:
        converged.exec(
            host,
            f"apt-mark unhold llmlab-probe-held; {apt} purge {' '.join(PROBES)} apt-utils; rm -rf {REPO}",
            check=False,
        )
    upgrade_lines = [line for line in out.splitlines() if "Packages that will be upgraded:" in line]
    assert upgrade_lines, out[-3000:]
    upgraded = upgrade_lines[-1].split(":", 1)[1].split()
    assert "llmlab-probe-free" in upgraded  # proves the test origin is eligible at all
    assert "llmlab-probe-held" not in upgraded  # apt-mark hold is respected
    assert "nvidia-probe-driver" not in upgraded  # the GPU stack blocklist
    assert '"false"' in reboot


def test_tuning_limits_journal_and_time_sync_persisted(converged: Lab):
    host = converged.hosts("gpu_nodes")[0]
    sysctl = converged.exec(host, "cat /etc/sysctl.d/60-cluster-tuning.conf").stdout.splitlines()
    assert "vm.swappiness = 1" in sysctl
    converged.exec(
        host, "systemctl is-enabled os-tuning && systemd-analyze verify --man=no /etc/systemd/system/os-tuning.service"
    )
    # The container's own hard limits cap what a login gets here (live values: molecule/metal);
    # here, the files pam_limits and systemd read.
    limits = [
        line.split()
        for line in converged.exec(host, "cat /etc/security/limits.d/60-cluster-tuning.conf").stdout.splitlines()
    ]
    assert ["*", "hard", "nofile", "1048576"] in limits
    assert ["*", "hard", "memlock", "unlimited"] in limits
    assert "DefaultLimitNOFILE=1048576" in converged.exec(host, "systemd-analyze cat-config systemd/system.conf").stdout
    assert "SystemMaxUse=2G" in converged.exec(host, "systemd-analyze cat-config systemd/journald.conf").stdout
    converged.exec(host, "test -d /var/log/journal && journalctl --header | grep -q /var/log/journal")
    converged.exec(host, "chronyd -p -f /etc/chrony/chrony.conf >/dev/null && systemctl is-enabled chrony")
