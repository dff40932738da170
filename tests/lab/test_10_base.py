"""The base layer on every lab host, seen from the controller over real SSH."""

from __future__ import annotations

import pytest
from conftest import Lab

pytestmark = pytest.mark.usefixtures("converged")


def test_administrator_key_login_and_sudo_everywhere(converged: Lab):
    for host in converged.hosts():
        out = converged.ssh(host, "sudo -n id -u")
        assert out.returncode == 0 and out.stdout.strip() == "0", f"{host}: {out.stderr}"


def test_password_and_root_logins_refused_everywhere(converged: Lab):
    for host in converged.hosts():
        argv_user = converged.ssh(host, "true", user="root")
        assert argv_user.returncode != 0, f"{host}: root login accepted"
        out = converged.exec(
            host,
            "sshd -T -C user=labadmin,host=x,addr=127.0.0.1 | grep -E '^(passwordauthentication|permitrootlogin) '",
        )
        assert sorted(out.stdout.split("\n")[:2]) == ["passwordauthentication no", "permitrootlogin no"], host


def test_swappiness_and_thp_settings_persisted_everywhere(converged: Lab):
    for host in converged.hosts():
        conf = converged.exec(host, "cat /etc/sysctl.d/60-cluster-tuning.conf").stdout
        assert "vm.swappiness = 1" in conf.splitlines(), host
        script = converged.exec(host, "cat /usr/local/sbin/os-tuning-apply").stdout
        assert "transparent_hugepage/enabled never" in script, host
