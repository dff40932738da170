#!/bin/sh
# Runs inside the debootstrap root (chroot) once, at image build time.
set -eu

# Every container must get its own SSH host keys: drop the baked ones and create them at
# first boot, before sshd's own config test runs.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/10-host-keys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT

# The lab's administrative user: key-only (the key is put in at container start), sudo
# without password, as on a freshly provisioned server.
useradd --create-home --shell /bin/bash labadmin
usermod -p '*' labadmin
echo 'labadmin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/labadmin
chmod 0440 /etc/sudoers.d/labadmin

# Units that make no sense in a container and only slow boot or fail.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-firstboot.service systemd-remount-fs.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done

# Docker provides hostname and resolv.conf; a baked machine-id would be shared by all hosts.
: > /etc/machine-id
rm -f /etc/hostname /var/lib/dbus/machine-id
# A server's usual sources: the release, its updates and its security archive, on the mirror
# debootstrap used (deb.debian.org's layout puts the security archive beside the release).
mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
codename=$(awk '/^deb /{print $3; exit}' /etc/apt/sources.list)
cat > /etc/apt/sources.list <<SOURCES
deb $mirror $codename main
deb $mirror $codename-updates main
deb ${mirror%/debian}/debian-security $codename-security main
SOURCES
apt-get update -q

# Keep the package lists: apt treats a fresh empty list directory as up to date.
apt-get clean
rm -rf /var/log/*.log /tmp/* /var/tmp/*
