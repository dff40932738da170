"""The base layer on every lab host, seen from the controller over real SSH.

What the base roles do on a host (sshd settings, refused logins, tuning files) is asserted
once, in molecule/base; here only what the site adds: every host takes the administrator.
"""

from __future__ import annotations

import pytest
from conftest import Lab

pytestmark = pytest.mark.usefixtures("converged")


def test_administrator_key_login_and_sudo_everywhere(converged: Lab):
    for host in converged.hosts():
        out = converged.ssh(host, "sudo -n id -u")
        assert out.returncode == 0 and out.stdout.strip() == "0", f"{host}: {out.stderr}"
