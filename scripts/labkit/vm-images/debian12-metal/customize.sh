#!/bin/sh
# Runs inside the debootstrap root (chroot) once, at image build time. What a freshly
# installed server has, plus how the test harness logs in: the admin's public key comes
# from QEMU's firmware config at every boot (`-fw_cfg name=opt/llmlab/authorized_keys`),
# like a cloud image's metadata, so the image holds no key.
set -eu

# The administrative user: key-only, sudo without password.
useradd --create-home --shell /bin/bash labadmin
usermod -p '*' labadmin
echo 'labadmin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/labadmin
chmod 0440 /etc/sudoers.d/labadmin

cat > /usr/local/sbin/llmlab-fwcfg-keys <<'SCRIPT'
#!/bin/sh
# Installs the admin key handed over by QEMU (-fw_cfg name=opt/llmlab/authorized_keys).
set -eu
modprobe qemu_fw_cfg 2>/dev/null || true
src=/sys/firmware/qemu_fw_cfg/by_name/opt/llmlab/authorized_keys/raw
[ -r "$src" ] || exit 0
install -d -m 0700 -o labadmin -g labadmin /home/labadmin/.ssh
install -m 0600 -o labadmin -g labadmin "$src" /home/labadmin/.ssh/authorized_keys
SCRIPT
chmod 0755 /usr/local/sbin/llmlab-fwcfg-keys
cat > /etc/systemd/system/llmlab-fwcfg-keys.service <<'UNIT'
[Unit]
Description=Admin SSH key from the QEMU firmware config (test harness)
Before=ssh.service
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/llmlab-fwcfg-keys

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable llmlab-fwcfg-keys.service

# Host keys are made at first boot, so every VM from this image has its own: ed25519 only,
# since an RSA key takes seconds under software emulation.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/10-host-keys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
UNIT
echo 'HostKey /etc/ssh/ssh_host_ed25519_key' > /etc/ssh/sshd_config.d/10-host-keys.conf

# Network: DHCP from QEMU's user-mode network on the first Ethernet interface.
cat > /etc/systemd/network/10-ethernet.network <<'NET'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NET
systemctl enable systemd-networkd.service
ln -sf /dev/null /etc/systemd/system/systemd-networkd-wait-online.service
echo metal > /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 metal\n' > /etc/hosts

# GRUB: no menu delay, kernel and GRUB on the serial console (the harness logs it).
sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
    -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=ttyS0,115200"/' /etc/default/grub
cat >> /etc/default/grub <<'GRUB'
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
echo 'grub-pc grub-pc/install_devices multiselect /dev/vda' | debconf-set-selections

# Timers and units that would compete with the tests for the emulated CPU and the apt lock.
systemctl disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer getty@tty1.service
# The tang server answers only when a test starts it.
systemctl disable tangd.socket

# TEST VM ONLY: Ansible runs every module from a zip (AnsiballZ) and Python compiles zipped
# sources anew every time: seconds per task under software emulation. Cache the compiled
# code of zipped modules by the hash of their source. This changes no behaviour, only how
# fast a module starts (measured: about 40 % less time per task).
for site in /etc/python3.*/sitecustomize.py; do
    cat >> "$site" <<'PYTHON'

# --- llmlab test VM: cache compiled code of zipped modules (AnsiballZ) ---
import hashlib as _h
import marshal as _m
import os as _os
import sys as _s
import zipimport as _z


class _LlmlabCachingZipImporter(_z.zipimporter):
    def get_code(self, fullname):
        try:
            source = self.get_source(fullname)
        except Exception:
            source = None
        if source is None:
            return super().get_code(fullname)
        cache = f"/var/tmp/llmlab-pycache-{_os.getuid()}"
        path = _os.path.join(cache, _h.sha256(f"{_s.version}\0{fullname}\0{source}".encode()).hexdigest())
        try:
            with open(path, "rb") as handle:
                return _m.load(handle)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        code = compile(source, self.get_filename(fullname), "exec", dont_inherit=True)
        try:
            _os.makedirs(cache, mode=0o700, exist_ok=True)
            with open(f"{path}.{_os.getpid()}", "wb") as handle:
                _m.dump(code, handle)
            _os.replace(f"{path}.{_os.getpid()}", path)
        except OSError:
            pass
        return code


_s.path_hooks.insert(0, _LlmlabCachingZipImporter)
_s.path_importer_cache.clear()
PYTHON
done

# A server's usual sources on the mirror debootstrap used; keep the lists, so apt works
# at once (a fresh empty list directory counts as up to date).
mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
codename=$(awk '/^deb /{print $3; exit}' /etc/apt/sources.list)
cat > /etc/apt/sources.list <<SOURCES
deb $mirror $codename main
deb $mirror $codename-updates main
deb ${mirror%/debian}/debian-security $codename-security main
SOURCES
apt-get update -q
apt-get clean
# QEMU's user-mode network answers DNS here (set after the build's own apt-get).
echo 'nameserver 10.0.2.3' > /etc/resolv.conf
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /var/log/*.log
rm -rf /tmp/* /var/tmp/*
