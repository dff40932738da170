"""Shared by the VM scenario's two test files: the VM, the settings it was converged with,
and helpers that read its kernel, its volumes and the escrowed headers.

- tests/test_metal.py (molecule verify) only reads the converged VM;
- tests/tamper_metal.py (molecule side_effect, run after verify) changes it: refusals, key
  age, rotations, reboots, a lost key, keys kept in Vault.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
from ansible.parsing.vault import VaultLib, VaultSecret
from toolkit.ansible_run import PlaybookRun, run_playbook

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SCENARIO = Path(__file__).resolve().parents[1]
INVENTORY = EPHEMERAL / "inventory"
HOST = "metal-node"
ADMIN = "labadmin"  # scripts/labkit/vm.py ADMIN_USER
VM_STATE = EPHEMERAL / "vm" / HOST
ESCROW = EPHEMERAL / "luks-escrow" / HOST
HEADER_COPIES = "/var/backups/luks-headers"  # the luks role's luks_header_copy_dir (its default)
KEY_1 = "test-models-key-1"
KEY_2 = "test-models-key-2"
CACHE_KEY = "test-cache-recovery-key-1"
SCRATCH_KEY = "test-scratch-key"
ESCROW_SECRET = "test-escrow-passphrase"
DEV = "/dev/disk/by-id/virtio-"
PRECIOUS_TEXT = "llmlab: data that must survive\n"  # scripts/labkit/vm.py writes it on `ext4` disks
MODEL_FILE = "/srv/models/model.bin"
# The luks plays of playbooks/security.yml. The other roles' argument checks run even under
# --tags luks (Ansible tags them `always`) and need the site's settings (the firewall its
# service catalogue), which this one-host inventory does not have; they have scenarios of
# their own. So is the playbook's preflight: this one-host inventory is no site (no zones,
# edge or ops), and preflight has its own tests (tests/preflight).
LUKS_ONLY = ("--tags", "luks", "--skip-tags", "firewall,pki,preflight")


@pytest.fixture(scope="module")
def host():
    """The VM over plain SSH with a kept master connection (scripts/vm's login).

    Replaces molecule's `ansible://` host: that backend runs a whole Ansible command per
    check, seconds each under software emulation; this one costs one SSH channel.
    """
    login = json.loads((VM_STATE / "vm.json").read_text())
    return testinfra.get_host(
        f"ssh://{ADMIN}@127.0.0.1:{login['port']}",
        ssh_identity_file=str(VM_STATE / "id_ed25519"),
        controlpath=str(VM_STATE / "ssh-master"),
        ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
    )


def fresh_login(command: str) -> str:
    """Output of a command in a new SSH login (its own PAM session, so pam_limits applies now)."""
    argv = [str(ROOT / "scripts" / "vm"), "ssh", "--state", str(VM_STATE), command]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout


def sh(host, command: str, ok: bool = True):
    """Run a command as root in the VM; with ok=True it must succeed."""
    out = host.run("sudo sh -c " + shlex.quote(command))
    if ok:
        assert out.rc == 0, f"{command}: rc={out.rc} {out.stderr}"
    return out


def put(path: str, data: bytes) -> None:
    """Write a file in the VM (as root) over SSH, data on stdin."""
    argv = [str(ROOT / "scripts" / "vm"), "ssh", "--state", str(VM_STATE), f"sudo sh -c 'cat > {path}'"]
    subprocess.run(argv, input=data, check=True, timeout=120)


def wait_for(host, command: str, timeout: float = 240) -> bool:
    """Whether a command succeeds within the timeout (polled every 3 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(command).rc == 0:
            return True
        time.sleep(3)
    return False


def opens(host, device: str, key: str, header: str = "") -> bool:
    detached = f"--header {header} " if header else ""
    cmd = f"printf %s {shlex.quote(key)} | cryptsetup open --test-passphrase {detached}--key-file=- {device}"
    return sh(host, cmd, ok=False).rc == 0


def luks_meta(host, device: str) -> dict:
    return json.loads(sh(host, f"cryptsetup luksDump --dump-json-metadata {device}").stdout)


def signatures(host, device: str) -> list[str]:
    out = sh(host, f"wipefs --no-act --json {device}").stdout
    return [s["type"] for s in json.loads(out or "{}").get("signatures", [])]


def model_sha(host) -> str:
    return sh(host, f"sha256sum {MODEL_FILE}").stdout.split()[0]


def secrets(models: str = KEY_1, previous: str | None = None, **more: str) -> dict:
    values = {
        "luks_metal-node_models": models,
        "luks_metal-node_cache": CACHE_KEY,
        "luks_metal-node_scratch": SCRATCH_KEY,
        "luks_header_backup": ESCROW_SECRET,
    }
    if previous is not None:
        values["luks_metal-node_models_previous"] = previous
    return values | {f"luks_metal-node_{k}": v for k, v in more.items()}


def volumes(*extra: dict) -> list[dict]:
    base = [
        {"name": "models", "device": DEV + "fresh", "mount": "/srv/models", "services": ["metal-model-server"]},
        {
            "name": "cache",
            "device": DEV + "clevis",
            "mount": "/srv/cache",
            "unlock": "clevis",
            "services": ["metal-cache-server.service"],
        },
    ]
    return base + list(extra)


SCRATCH = {"name": "scratch", "device": DEV + "gpt", "force_format": True}


def playbook(tmp_path: Path, name: str, extra: dict | None = None, *args: str) -> PlaybookRun:
    argv = list(args)
    if extra:
        extra_file = tmp_path / f"extra-{len(list(tmp_path.iterdir()))}.json"
        extra_file.write_text(json.dumps(extra))
        argv += ["-e", f"@{extra_file}"]
    path = ROOT / "playbooks" / name if (ROOT / "playbooks" / name).exists() else SCENARIO / name
    # The default strategy, as operators run it (molecule.yml gives the scenario's own steps Mitogen).
    env = {"ANSIBLE_CACHE_PLUGIN": "memory", "ANSIBLE_STRATEGY": "linear"}
    return run_playbook(path, INVENTORY, *argv, env=env)


def failure_text(run: PlaybookRun) -> str:
    return " ".join(m for msgs in run.failures().values() for m in msgs)


# --- os_tuning: live values, before the reboot ---------------------------------------------


def check_os_tuning_live(host) -> None:
    assert host.file("/proc/sys/vm/swappiness").content_string.strip() == "1"
    assert host.file("/proc/sys/vm/max_map_count").content_string.strip() == "1048576"
    assert "[never]" in host.file("/sys/kernel/mm/transparent_hugepage/enabled").content_string
    assert "[never]" in host.file("/sys/kernel/mm/transparent_hugepage/defrag").content_string
    # Limits: a new login session (pam_limits) and the systemd manager's defaults for services.
    assert fresh_login("ulimit -n; ulimit -l").split() == ["1048576", "unlimited"]
    manager = host.run("systemctl show --property DefaultLimitNOFILE,DefaultLimitMEMLOCK").stdout
    assert "DefaultLimitNOFILE=1048576" in manager
    assert "DefaultLimitMEMLOCK=infinity" in manager


# --- host_hardening: what needs a kernel of its own -----------------------------------------
# The audit keys of the role's rules (roles/host_hardening/templates/etc/audit/rules.d).
AUDIT_KEYS = ("identity", "sudoers", "sshd_config", "luks_keys", "audit_config", "privileged", "time_change", "modules")


def audited_sudo(host) -> None:
    """A command run with sudo by the admin (logged in over SSH) is in the audit log."""
    marker = f"metal-audit-probe-{time.time_ns()}"
    assert host.run(f"sudo -n /bin/echo {marker}").rc == 0
    # sudo's USER_CMD record names the command; the exec rule on sudo (key `privileged`)
    # records the run with the admin's login uid.
    assert marker in sh(host, "ausearch --input-logs -m USER_CMD -i").stdout
    runs = sh(host, "ausearch --input-logs -k privileged -i").stdout
    assert "exe=/usr/bin/sudo" in runs
    assert f"auid={ADMIN}" in runs


def check_hardening_live(host) -> None:
    # auditd runs with the role's rules loaded, failing the kernel's way (-f 1: printk).
    assert host.service("auditd").is_running
    rules = sh(host, "auditctl -l").stdout  # watches end in `-k KEY`, syscall rules in `-F key=KEY`
    assert [k for k in AUDIT_KEYS if not re.search(rf"(-k |key=){k}$", rules, re.MULTILINE)] == [], rules
    status = sh(host, "auditctl -s").stdout.splitlines()
    assert "enabled 1" in status
    assert "failure 1" in status
    assert "backlog_limit 8192" in status
    audited_sudo(host)
    # Process accounting: the kernel writes a record for every process that ends.
    sh(host, "cp /bin/true /var/tmp/acct-probe && /var/tmp/acct-probe && rm /var/tmp/acct-probe")
    assert "acct-probe" in sh(host, "lastcomm --command acct-probe").stdout
    # Every setting of the role's sysctl file is the running kernel's value.
    configured = dict(
        (part.strip() for part in line.split("=", 1))
        for line in sh(host, "cat /etc/sysctl.d/99-zz-cluster-hardening.conf").stdout.splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert len(configured) > 30
    live = sh(host, "sysctl -n " + " ".join(configured)).stdout.splitlines()
    assert dict(zip(configured, live, strict=True)) == configured
    # Blacklisted modules: present in this kernel, refused on an explicit load.
    for module in ("dccp", "sctp", "usb-storage", "hfsplus", "udf"):
        assert sh(host, f"modinfo -F filename {module}").stdout.strip().endswith(".ko")
        refused = sh(host, f"modprobe {module}", ok=False)
        assert refused.rc != 0, module
        assert sh(host, f"grep -qw '^{module.replace('-', '_')}' /proc/modules", ok=False).rc != 0, module


def escrowed_header(volume: str) -> bytes:
    vault = VaultLib([("luks_header_backup", VaultSecret(ESCROW_SECRET.encode()))])
    plain = vault.decrypt((ESCROW / f"{volume}.header.vault").read_bytes())
    return gzip.decompress(base64.b64decode(plain))


def host_copy_matches_escrow(host, volume: str) -> bool:
    """Is the host's copy of the volume's header byte for byte the header the controller escrowed?"""
    on_host = sh(host, f"gunzip -c {HEADER_COPIES}/{volume}.header.gz | sha256sum").stdout.split()[0]
    return on_host == hashlib.sha256(escrowed_header(volume)).hexdigest()


def header_opens(host, volume: str, device: str, key: str) -> bool:
    """Does the escrowed header, used as a detached header, open the device with the key?"""
    put(f"/run/{volume}.header", escrowed_header(volume))
    try:
        return opens(host, device, key, header=f"/run/{volume}.header")
    finally:
        sh(host, f"rm -f /run/{volume}.header")
