"""scripts/labkit/vm.py: disk specs, sizes, the QEMU command line, the image hash, the host tools."""

from __future__ import annotations

import pytest
from conftest import load_plugin
from labkit import vm
from labkit.shell import LabError

cli = load_plugin("scripts/vm", "vm_cli")


def test_sizes():
    assert vm._bytes("64M") == 64 << 20
    assert vm._bytes("4g") == 4 << 30
    assert vm._bytes("512") == 512
    with pytest.raises(LabError):
        vm._bytes("4 GB")


@pytest.mark.parametrize("text", ["data", "Data:1M", "a:1M:xfs", "x" * 21 + ":1M", "a:lots"])
def test_bad_disk_specs_are_refused(text):
    with pytest.raises(LabError):
        vm.Disk.parse(text)


def test_disk_spec():
    assert vm.Disk.parse("ext4data:64M:ext4") == vm.Disk("ext4data", "64M", "ext4")
    assert vm.Disk.parse("fresh:256M").content == "blank"


def test_qemu_uses_software_emulation_a_loopback_forward_and_disk_serials(tmp_path):
    machine = vm.Vm(tmp_path / "node")
    argv = vm.qemu_argv(
        machine, tmp_path / "root.qcow2", [(vm.Disk("fresh", "1M"), tmp_path / "d.raw")], 2222, memory=1024, cpus=2
    )
    line = " ".join(argv)
    assert "-accel tcg" in line and "kvm" not in line
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in line
    assert "virtio-blk-pci,drive=disk-fresh,serial=fresh" in line
    assert f"name=opt/llmlab/authorized_keys,file={machine.key}.pub" in line


def test_image_hash_follows_the_recipe_and_the_disk_layout(monkeypatch):
    recipe = vm.VmRecipe.load("debian12-metal")
    first = recipe.digest()
    monkeypatch.setattr(vm, "LAYOUT_VERSION", "changed")
    assert recipe.digest() != first
    assert recipe.image_path().name.startswith("debian12-metal-")


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(LabError, match="debian12-metal"):
        vm.VmRecipe.load("nope")


@pytest.mark.parametrize("root", [True, False])
def test_vm_tools_installs_the_packages_of_missing_commands_as_root(monkeypatch, capsys, root):
    missing = {"qemu-img", "qemu-system-x86_64", "ssh-keygen"}
    installed: list[list[str]] = []
    monkeypatch.setattr(vm.shutil, "which", lambda cmd: None if cmd in missing else f"/usr/bin/{cmd}")
    monkeypatch.setattr(vm.os, "geteuid", lambda: 0 if root else 1000)
    monkeypatch.setattr(vm, "apt_install", installed.append)
    monkeypatch.setattr("sys.argv", ["scripts/vm", "tools"])
    assert cli.main() == (0 if root else 1)
    want = ["openssh-client", "qemu-system-x86", "qemu-utils"]
    if root:
        assert installed == [["--no-install-recommends", *want]]
    else:
        assert installed == []
        assert f"apt-get install --no-install-recommends {' '.join(want)}" in capsys.readouterr().err


def test_vm_tools_does_nothing_when_every_command_is_there(monkeypatch):
    monkeypatch.setattr(vm.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    monkeypatch.setattr(vm, "apt_install", lambda packages: pytest.fail(f"apt run for {packages}"))
    monkeypatch.setattr("sys.argv", ["scripts/vm", "tools"])
    assert cli.main() == 0
