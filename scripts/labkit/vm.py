"""Debian virtual machines for kernel-level tests: a bootable disk image, run with QEMU.

Containers share the host's kernel, so LUKS (dm-crypt), live sysctls, transparent
hugepages, the GRUB kernel command line and reboots are tested in a VM. Nested KVM hangs on
our machines; QEMU's software emulation (TCG) works, so that is what runs here.

The image is built locally, like the container images (images.py), from a recipe under
`vm-images/<name>/` (suite, packages, `customize.sh` run in the debootstrap root) and cached
by a hash of the recipe and of this file: `.cache/vm-images/<name>-<hash>.qcow2`. It is a
partitioned disk (MBR, one ext4 root partition) with GRUB in its boot sector, so a VM boots
through GRUB and gets the kernel command line that `/etc/default/grub(.d)` describes. GRUB
is installed by the image's own `grub-install` on a first boot (`init=` a one-shot script),
which needs neither loop devices nor mounts on the build machine.

A running VM lives in a state directory: a copy-on-write overlay of the image, spare data
disks (raw files, each with a serial so the guest sees `/dev/disk/by-id/virtio-<name>`), a
generated SSH key (handed to the guest through QEMU's firmware config), QEMU's pid file and
the serial console log. SSH reaches it on a loopback port forward.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import images, layout, progress
from .engine import apt_install
from .shell import LabError, ok, run

ROOT = layout.ROOT
RECIPES = Path(__file__).resolve().parent / "vm-images"
CACHE = layout.VM_IMAGES
ADMIN_USER = "labadmin"
FINALIZE_SCRIPT = "/usr/local/sbin/llmlab-image-finalize"
FINALIZE_MARK = "LLMLAB-IMAGE-FINALIZED"
# Part of every image's hash: bump it when build_image() lays out the disk differently.
LAYOUT_VERSION = "mbr-ext4-grub-1"
# The file `ext4` data disks carry, for tests that prove data survives a refused format.
PRECIOUS_FILE = "precious.txt"
PRECIOUS_TEXT = "llmlab: data that must survive\n"
DISK_CONTENTS = ("blank", "ext4", "gpt")

# Build-machine commands and the Debian packages that provide them.
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "sfdisk": "fdisk",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def ensure_tools(commands: list[str]) -> None:
    """Install the Debian packages behind missing commands (root only), without recommends."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return
    packages = sorted({HOST_TOOLS[c] for c in missing})
    if os.geteuid() != 0:
        raise LabError(
            f"missing {', '.join(missing)}; install them with "
            f"`sudo apt-get install --no-install-recommends {' '.join(packages)}` and run again"
        )
    with progress.step(f"installing {' '.join(packages)} from the distribution"):
        apt_install(["--no-install-recommends", *packages])


@dataclass(frozen=True)
class VmRecipe:
    base: images.Recipe
    disk_size: str

    @classmethod
    def load(cls, name: str) -> VmRecipe:
        path = RECIPES / name
        spec_file = path / "recipe.yml"
        if not spec_file.is_file():
            known = ", ".join(sorted(p.name for p in RECIPES.iterdir() if p.is_dir()))
            raise LabError(f"no VM image recipe '{name}' (known: {known})")
        spec = yaml.safe_load(spec_file.read_text())
        base = images.Recipe(
            name=name,
            path=path,
            suite=spec["suite"],
            variant=spec.get("variant", "minbase"),
            packages=tuple(spec.get("packages", [])),
            tag=f"vm:{name}",
            changes=(),
        )
        return cls(base=base, disk_size=str(spec.get("vm", {}).get("disk_size", "4G")))

    def digest(self) -> str:
        """The recipe's hash (its files and the mirror) plus how this module lays out the disk."""
        h = hashlib.sha256(self.base.digest().encode())
        h.update(f"{LAYOUT_VERSION}\n{self.disk_size}\n{FINALIZE}".encode())
        return h.hexdigest()

    def image_path(self) -> Path:
        return CACHE / f"{self.base.name}-{self.digest()[:16]}.qcow2"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One builder at a time per recipe (two scenarios may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


FINALIZE = f"""#!/bin/sh
# Last step of the image build, run once as PID 1 (init=) on the image's first boot:
# install GRUB into the disk's boot sector, write grub.cfg, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mount -o remount,rw /
if grub-install --target=i386-pc /dev/vda && update-grub; then
    rm -f {FINALIZE_SCRIPT}
    echo {FINALIZE_MARK} > /dev/ttyS0
fi
sync
echo u > /proc/sysrq-trigger
echo o > /proc/sysrq-trigger
sleep 30
"""


def _finalize_boot(root: Path, disk: Path, root_uuid: str, log: Path) -> None:
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    initrds = sorted(root.glob("boot/initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"the image root has no kernel or initrd under {root / 'boot'} (is linux-image-amd64 listed?)")
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi",
        "-m",
        "1024",
        "-smp",
        "2",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{log}",
        "-kernel",
        str(kernels[-1]),
        "-initrd",
        str(initrds[-1]),
        "-append",
        f"root=UUID={root_uuid} rw console=ttyS0,115200 init={FINALIZE_SCRIPT} panic=-1",
        "-drive",
        f"file={disk},format=raw,if=virtio,cache=unsafe",
    ]
    run(argv, timeout=900)
    text = log.read_text(errors="replace")
    if FINALIZE_MARK not in text:
        raise LabError(f"installing GRUB in the image failed; console log tail:\n{text[-3000:]}")


def build_image(recipe: VmRecipe, target: Path) -> None:
    """debootstrap, customize, lay out the partitioned disk, install GRUB, convert to qcow2."""
    work = Path(tempfile.mkdtemp(prefix=f"build-{recipe.base.name}-", dir=target.parent))
    try:
        root = work / "root"
        with progress.step(f"debootstrap {recipe.base.suite} with {len(recipe.base.packages)} packages"):
            images.build_rootfs(recipe.base, root)
        root_uuid = str(uuid.uuid4())
        (root / "etc" / "fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
        finalize = root / FINALIZE_SCRIPT.lstrip("/")
        finalize.parent.mkdir(parents=True, exist_ok=True)
        finalize.write_text(FINALIZE)
        finalize.chmod(0o755)
        disk = work / "disk.raw"
        part = work / "root.ext4"
        size = _bytes(recipe.disk_size)
        with progress.step(f"partitioned {recipe.disk_size} disk (MBR, ext4 root)"):
            _sparse_file(disk, size)
            run(["sfdisk", "--quiet", str(disk)], input_text="label: dos\nstart=2048, type=83, bootable\n")
            _sparse_file(part, size - 2048 * 512)
            run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-d", str(root), str(part)], timeout=900)
            run(["dd", f"if={part}", f"of={disk}", "bs=4M", "seek=1M", "oflag=seek_bytes", "conv=notrunc,sparse"])
            part.unlink()
        with progress.step("first boot: grub-install and update-grub inside the VM"):
            _finalize_boot(root, disk, root_uuid, work / "finalize-console.log")
        with progress.step(f"converting to {target.name}"):
            tmp = work / "image.qcow2"
            run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(tmp)], timeout=900)
            os.replace(tmp, target)
    finally:
        _remove_build_dir(work)


def _remove_build_dir(work: Path) -> None:
    """Unmount what a failed debootstrap may have left mounted inside, then remove the tree."""
    prefix = str(work) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        run(["umount", "--lazy", mountpoint], check=False)
    if any(line.split()[1].startswith(prefix) for line in Path("/proc/mounts").read_text().splitlines()):
        progress.warn(f"{work} still has mounts inside; left in place, remove it by hand")
        return
    shutil.rmtree(work, ignore_errors=True)


def _sparse_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        handle.truncate(size)


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)", size.strip().upper())
    if not match:
        raise LabError(f"size '{size}' is not a number with an optional K, M, G or T suffix")
    return int(match[1]) * 1024 ** " KMGT".index(match[2] or " ")


def ensure_image(name: str, *, force: bool = False) -> Path:
    """Path of the recipe's image, built when missing or out of date."""
    recipe = VmRecipe.load(name)
    target = recipe.image_path()
    with _lock(CACHE / f"{name}.lock"):
        if target.exists() and not force:
            progress.info(f"VM image {target.name} is current")
            return target
        if os.geteuid() != 0:
            raise LabError("building VM images needs root (debootstrap and chroot); run as root")
        ensure_tools(["debootstrap", "mkfs.ext4", "sfdisk", "qemu-img", "qemu-system-x86_64"])
        with progress.step(f"building VM image {target.name} from recipe '{name}'"):
            build_image(recipe, target)
        for stale in CACHE.glob(f"{name}-*.qcow2"):
            if stale != target:
                stale.unlink()
    return target


@dataclass(frozen=True)
class Disk:
    """A spare data disk: `blank` (zeros), `ext4` (a filesystem holding PRECIOUS_FILE) or `gpt` (an empty GPT)."""

    name: str
    size: str
    content: str = "blank"

    @classmethod
    def parse(cls, text: str) -> Disk:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,19}", parts[0]):
            raise LabError(f"disk '{text}': write NAME:SIZE[:CONTENT], NAME of a-z, 0-9 and '-' (at most 20)")
        disk = cls(*parts)
        if disk.content not in DISK_CONTENTS:
            raise LabError(f"disk '{text}': content must be one of {', '.join(DISK_CONTENTS)}")
        _bytes(disk.size)
        return disk

    def create(self, path: Path) -> None:
        _sparse_file(path, _bytes(self.size))
        if self.content == "ext4":
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / PRECIOUS_FILE).write_text(PRECIOUS_TEXT)
                run(["mkfs.ext4", "-q", "-F", "-L", self.name[:16], "-d", tmp, str(path)])
        elif self.content == "gpt":
            run(["sfdisk", "--quiet", str(path)], input_text="label: gpt\n")


@dataclass(frozen=True)
class Vm:
    """A VM's state directory and what is recorded there."""

    state: Path

    @property
    def key(self) -> Path:
        return self.state / "id_ed25519"

    @property
    def pidfile(self) -> Path:
        return self.state / "qemu.pid"

    @property
    def console(self) -> Path:
        return self.state / "console.log"

    @property
    def info_file(self) -> Path:
        return self.state / "vm.json"

    def info(self) -> dict:
        return json.loads(self.info_file.read_text()) if self.info_file.exists() else {}

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # Only a QEMU process of this state directory counts (pids are reused).
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return pid if str(self.pidfile) in cmdline else None

    def ssh_argv(self, *command: str, port: int | None = None) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(port or self.info()["port"]),
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            f"{ADMIN_USER}@127.0.0.1",
            *command,
        ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def qemu_argv(vm: Vm, overlay: Path, disks: list[tuple[Disk, Path]], port: int, *, memory: int, cpus: int) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-name",
        vm.state.name,
        # No default floppy, CD-ROM, VGA or parallel port: only what is listed below.
        "-nodefaults",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        str(memory),
        "-smp",
        str(cpus),
        "-display",
        "none",
        "-serial",
        f"file:{vm.console}",
        "-daemonize",
        "-pidfile",
        str(vm.pidfile),
        "-rtc",
        "base=utc",
        "-drive",
        f"file={overlay},format=qcow2,if=none,id=root,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=root,bootindex=0",
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-fw_cfg",
        f"name=opt/llmlab/authorized_keys,file={vm.key}.pub",
    ]
    for disk, path in disks:
        argv += [
            "-drive",
            f"file={path},format=raw,if=none,id=disk-{disk.name},cache=unsafe",
            "-device",
            f"virtio-blk-pci,drive=disk-{disk.name},serial={disk.name}",
        ]
    return argv


def up(
    state: Path,
    *,
    image: str,
    disks: list[Disk],
    memory: int = 1024,
    cpus: int = 2,
    boot_timeout: float = 600,
) -> dict:
    """Start the VM of a state directory (creating its disks on first use) and wait for SSH."""
    ensure_tools(["qemu-img", "qemu-system-x86_64", "sfdisk", "mkfs.ext4", "ssh", "ssh-keygen"])
    vm = Vm(state.resolve())
    vm.state.mkdir(parents=True, exist_ok=True)
    if not vm.key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmlab-vm", "-f", str(vm.key)])
    base = ensure_image(image)
    overlay = vm.state / "root.qcow2"
    if not overlay.exists():
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)])
    attached = []
    for disk in disks:
        path = vm.state / f"disk-{disk.name}.raw"
        if not path.exists():
            disk.create(path)
        attached.append((disk, path))
    if vm.pid() is None:
        port = _free_port()
        with progress.step(f"booting VM {vm.state.name} (QEMU, software emulation; SSH on 127.0.0.1:{port})"):
            run(qemu_argv(vm, overlay, attached, port, memory=memory, cpus=cpus))
            vm.info_file.write_text(json.dumps({"port": port, "disks": [d.name for d in disks]}))
            wait_ssh(vm, boot_timeout)
    info = vm.info()
    return {
        "instance": vm.state.name,
        "address": "127.0.0.1",
        "port": info["port"],
        "user": ADMIN_USER,
        "identity_file": str(vm.key),
    }


def wait_ssh(vm: Vm, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vm.pid() is None:
            raise LabError(f"QEMU exited; console log tail:\n{_tail(vm.console)}")
        if ok(vm.ssh_argv("true"), timeout=20):
            return
        time.sleep(2)
    raise LabError(f"no SSH login to the VM within {timeout:.0f}s; console log tail:\n{_tail(vm.console)}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no console log)"


def down(state: Path) -> None:
    """Stop the VM (its QEMU process only) and remove its state directory."""
    vm = Vm(state.resolve())
    pid = vm.pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if vm.pid() is None:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
    if vm.state.exists():
        shutil.rmtree(vm.state)
