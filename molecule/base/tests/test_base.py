"""Behaviour of the base layer on a converged host, read only: SSH, upgrades, tuning, journal.

What needs a tampered host (sshd killed, an administrator without a key) is in side_effect.yml.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SSH = "ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5"


@pytest.fixture(scope="module")
def client_key(host):
    """The admin's private key, inside the host, for an SSH client on loopback."""
    key = base64.b64encode((EPHEMERAL / "admin_key").read_bytes()).decode()
    host.run_expect(
        [0],
        f"install -d -m 700 /root/.ssh-test && echo {key} | base64 -d > /root/.ssh-test/id "
        "&& chmod 600 /root/.ssh-test/id",
    )
    return "/root/.ssh-test/id"


def test_key_login_works(host, client_key):
    out = host.run(f"{SSH} -i {client_key} opsadmin@127.0.0.1 id -un")
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "opsadmin"


def test_admin_has_passwordless_sudo(host, client_key):
    out = host.run(f"{SSH} -i {client_key} opsadmin@127.0.0.1 sudo -n id -u")
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_password_login_refused(host):
    host.run_expect([0], "id pwprobe || useradd -m pwprobe; echo 'pwprobe:Probe-Pass-1' | chpasswd")
    out = host.run(
        f"sshpass -p Probe-Pass-1 {SSH.replace('BatchMode=yes', 'BatchMode=no')} "
        "-o PreferredAuthentications=password,keyboard-interactive -o PubkeyAuthentication=no "
        "pwprobe@127.0.0.1 true"
    )
    assert out.rc != 0
    # The server offers only public keys: passwords are not even tried.
    assert "Permission denied (publickey)" in out.stderr


def test_root_login_refused(host, client_key):
    host.run_expect(
        [0], "install -d -m 700 /root/.ssh && ssh-keygen -y -f /root/.ssh-test/id > /root/.ssh/authorized_keys"
    )
    try:
        out = host.run(f"{SSH} -i {client_key} root@127.0.0.1 true")
        assert out.rc != 0
        assert "Permission denied" in out.stderr
    finally:
        host.run("rm -f /root/.ssh/authorized_keys")


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        ("Ciphers=aes128-cbc", "no matching cipher found"),
        ("Ciphers=aes256-cbc", "no matching cipher found"),
        ("KexAlgorithms=diffie-hellman-group14-sha1", "no matching key exchange method"),
        ("KexAlgorithms=diffie-hellman-group1-sha1", "no matching key exchange method"),
        # A MAC is negotiated only with a non-AEAD cipher, so force one.
        ("Ciphers=aes128-ctr -o MACs=hmac-sha1", "no matching MAC found"),
    ],
)
def test_weak_algorithms_refused(host, client_key, option, refusal):
    out = host.run(f"{SSH} -o {option} -i {client_key} opsadmin@127.0.0.1 true")
    assert out.rc != 0
    assert refusal in out.stderr


def test_effective_sshd_settings(host):
    settings = dict(
        line.split(" ", 1)
        for line in host.check_output("sshd -T -C user=opsadmin,host=x,addr=127.0.0.1").splitlines()
        if " " in line
    )
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] == "no"
    assert settings["pubkeyauthentication"] == "yes"
    assert settings["x11forwarding"] == "no"
    assert "cbc" not in settings["ciphers"]
    assert "sha1" not in settings["kexalgorithms"]


def test_unattended_upgrade_skips_held_and_pinned_stacks(host):
    out = host.run("unattended-upgrade --dry-run --debug 2>&1")
    assert out.rc == 0, out.stdout
    upgrade_lines = [line for line in out.stdout.splitlines() if "Packages that will be upgraded:" in line]
    assert upgrade_lines, out.stdout[-3000:]
    upgraded = upgrade_lines[-1].split(":", 1)[1].split()
    assert "llmlab-probe-free" in upgraded  # proves the test origin is eligible at all
    assert "llmlab-probe-held" not in upgraded  # apt-mark hold is respected
    assert "nvidia-probe-driver" not in upgraded  # the GPU stack blocklist


def test_unattended_upgrades_never_reboot(host):
    out = host.check_output("apt-config dump Unattended-Upgrade::Automatic-Reboot")
    assert '"false"' in out


def test_swappiness_persisted(host):
    conf = host.file("/etc/sysctl.d/60-cluster-tuning.conf")
    assert conf.contains(r"^vm.swappiness = 1$")


def test_transparent_hugepages_off_on_the_kernel_command_line(host):
    cmdline = host.check_output(
        'sh -c \'. /etc/default/grub; for f in /etc/default/grub.d/*.cfg; do . "$f"; done; '
        'echo "$GRUB_CMDLINE_LINUX_DEFAULT"\''
    )
    assert cmdline.split() == ["quiet", "transparent_hugepage=never"]


def test_boot_time_tuning_unit(host):
    assert host.service("os-tuning").is_enabled
    host.run_expect([0], "systemd-analyze verify --man=no /etc/systemd/system/os-tuning.service")


def test_login_and_service_limits(host):
    # The container's own hard limits cap what a login gets here; the live values are checked
    # in the VM scenario. Here: the files pam_limits and systemd read.
    limits_file = host.file("/etc/security/limits.d/60-cluster-tuning.conf")
    limits = [line.split() for line in limits_file.content_string.splitlines()]
    assert ["*", "hard", "nofile", "1048576"] in limits
    assert ["*", "hard", "memlock", "unlimited"] in limits
    manager = host.check_output("systemd-analyze cat-config systemd/system.conf")
    assert "DefaultLimitNOFILE=1048576" in manager


def test_persistent_journal_with_limits(host):
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=2G" in config
    assert host.file("/var/log/journal").is_directory
    assert host.run("journalctl --header | grep -q '/var/log/journal'").rc == 0


def test_time_sync_configured(host):
    host.run_expect([0], "chronyd -p -f /etc/chrony/chrony.conf")
    assert host.service("chrony").is_enabled
