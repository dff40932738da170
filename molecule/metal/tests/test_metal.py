"""Kernel-level behaviour of the converged VM, read only (molecule verify): os_tuning's live
values and the kernel command line waiting for a reboot, host_hardening's kernel side
(auditd, process accounting, live sysctls, the module blacklist), the LUKS volumes, crypttab,
the clevis binding, the escrowed headers and the host's copies of them. What needs the VM changed (refusals, rotation,
reboots) is tests/tamper_metal.py, run after this by the side_effect step.
"""

from __future__ import annotations

import json
import re

from conftest import (
    CACHE_KEY,
    DEV,
    ESCROW,
    HEADER_COPIES,
    KEY_1,
    check_hardening_live,
    check_os_tuning_live,
    escrowed_header,
    header_opens,
    host_copy_matches_escrow,
    luks_meta,
    opens,
    sh,
)


def test_os_tuning_values_are_live_before_any_reboot(host):
    before = json.loads(sh(host, "cat /var/lib/metal-baseline.json").stdout)
    # The fresh kernel had its own values; the converge changed the running kernel.
    assert before["swappiness"] != "1"
    assert "[never]" not in before["thp"]
    check_os_tuning_live(host)


def test_kernel_command_line_waits_for_the_reboot(host):
    cmdline = host.file("/proc/cmdline").content_string
    assert "BOOT_IMAGE=/boot/vmlinuz" in cmdline  # GRUB booted this kernel
    assert "transparent_hugepage=never" not in cmdline
    assert "transparent_hugepage=never" in sh(host, "cat /boot/grub/grub.cfg").stdout  # update-grub ran
    assert host.file("/run/reboot-required").exists


def test_hardening_is_live_before_any_reboot(host):
    before = json.loads(sh(host, "cat /var/lib/metal-baseline.json").stdout)
    # The fresh kernel had its own values and loaded dccp; the converge changed both.
    assert before["kptr_restrict"] != "2"
    assert before["dccp_loads"] == "yes"
    check_hardening_live(host)


def test_auditd_takes_its_configuration_without_complaint(host):
    # auditd 3.0.9 logs "The dispatcher option is deprecated - line N" at start for audispd's
    # old settings (dispatcher, disp_qos); the role's file has none, nor anything else it flags.
    log = sh(host, "journalctl --boot --no-pager -o cat -t auditd").stdout
    assert "Init complete" in log  # auditd restarted with the role's configuration
    assert not re.search(r"deprecated|- line \d+", log), log


# --- LUKS: the converged volumes -----------------------------------------------------------


def test_fresh_disk_is_luks2_aes_xts_512_argon2id(host):
    meta = luks_meta(host, DEV + "fresh")
    assert meta["segments"]["0"]["encryption"] == "aes-xts-plain64"
    slots = list(meta["keyslots"].values())
    assert len(slots) == 1
    assert slots[0]["key_size"] * 8 == 512
    assert slots[0]["kdf"]["type"] == "argon2id"
    assert opens(host, DEV + "fresh", KEY_1)


def test_volume_is_open_and_mounted(host):
    status = sh(host, "cryptsetup status models").stdout
    assert "is active and is in use" in status
    assert "aes-xts-plain64" in status
    mount = host.mount_point("/srv/models")
    assert mount.exists
    assert mount.device == "/dev/mapper/models"
    assert mount.filesystem == "ext4"


def test_crypttab_fstab_and_key_file(host):
    crypttab = sh(host, "cat /etc/crypttab").stdout
    line = next(entry for entry in crypttab.splitlines() if entry.startswith("models "))
    uuid = sh(host, f"cryptsetup luksUUID {DEV}fresh").stdout.strip()
    assert line.split() == ["models", f"UUID={uuid}", "/etc/cryptsetup-keys.d/models.key", "luks,nofail,headless=true"]
    fstab = host.file("/etc/fstab").content_string
    assert any(e.split()[:2] == ["/dev/mapper/models", "/srv/models"] and "nofail" in e for e in fstab.splitlines())
    assert sh(host, "stat -c '%U %G %a' /etc/cryptsetup-keys.d/models.key").stdout.split() == ["root", "root", "400"]
    assert sh(host, "stat -c '%U %G %a' /etc/cryptsetup-keys.d").stdout.split() == ["root", "root", "700"]


def test_dependent_service_requires_the_mount(host):
    dropin = host.file("/etc/systemd/system/metal-model-server.service.d/60-luks-models.conf")
    assert "RequiresMountsFor=/srv/models" in dropin.content_string
    props = host.run("systemctl show --property RequiresMountsFor metal-model-server.service").stdout
    assert "/srv/models" in props


def test_clevis_volume_is_bound_to_tang_and_has_no_key_file(host):
    meta = luks_meta(host, DEV + "clevis")
    assert "clevis" in [t["type"] for t in meta["tokens"].values()]
    assert host.mount_point("/srv/cache").device == "/dev/mapper/cache"
    assert sh(host, "test -e /etc/cryptsetup-keys.d/cache.key", ok=False).rc != 0
    line = next(e for e in sh(host, "cat /etc/crypttab").stdout.splitlines() if e.startswith("cache "))
    assert line.split()[2:] == ["none", "luks,nofail,_netdev"]
    # The secret's key stays in a keyslot as the recovery key.
    assert opens(host, DEV + "clevis", CACHE_KEY)


def test_headers_are_escrowed_encrypted(host):
    raw = (ESCROW / "models.header.vault").read_bytes()
    assert raw.startswith(b"$ANSIBLE_VAULT;1.2;AES256;luks_header_backup")
    header = escrowed_header("models")
    assert header[:6] == b"LUKS\xba\xbe"
    assert sh(host, f"cryptsetup luksUUID {DEV}fresh").stdout.strip().encode() in header[:512]
    assert len(raw) < 4 * 1024 * 1024  # compact: unused keyslot areas are not kept
    assert header_opens(host, "models", DEV + "fresh", KEY_1)
    assert header_opens(host, "cache", DEV + "clevis", CACHE_KEY)


def test_each_volume_keeps_a_root_only_copy_of_its_header_on_the_host(host):
    assert sh(host, f"stat -c '%U %G %a' {HEADER_COPIES}").stdout.split() == ["root", "root", "700"]
    assert sorted(sh(host, f"ls {HEADER_COPIES}").stdout.split()) == ["cache.header.gz", "models.header.gz"]
    for volume, device in (("models", DEV + "fresh"), ("cache", DEV + "clevis")):
        path = f"{HEADER_COPIES}/{volume}.header.gz"
        assert sh(host, f"stat -c '%U %G %a' {path}").stdout.split() == ["root", "root", "400"], volume
        # A real header of this volume: cryptsetup reads the unpacked copy (a scratch file,
        # removed) and finds the device's UUID.
        dump = sh(host, f"t=$(mktemp) && gunzip -c {path} > $t && cryptsetup luksDump $t; rc=$?; rm -f $t; exit $rc")
        uuid = sh(host, f"cryptsetup luksUUID {device}").stdout.strip()
        assert re.search(r"^UUID:\s+(\S+)$", dump.stdout, re.M).group(1) == uuid, volume
        assert re.search(r"^Version:\s+2$", dump.stdout, re.M), volume
        # The same bytes as the controller's escrow (which test_headers_are_escrowed_encrypted
        # opens the volume with).
        assert host_copy_matches_escrow(host, volume), volume
