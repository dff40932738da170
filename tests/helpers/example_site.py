"""A site made from inventories/example as the README's "Pointing it at real hosts" says:
copy the directory, set the addresses, the administrators and their keys, the admin
networks, NTP and apt mirrors and the image pin (every name under .example replaced), fill
the secrets and encrypt them with ansible-vault. Used by the preflight tests (addresses that
are never contacted) and by the lab suite (the lab's containers as the hosts)."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories" / "example"
# inventories/example/hosts.yml's documentation addresses, by host.
EXAMPLE_ADDRESSES = {"edge01": "198.51.100.10", "gpu01": "192.0.2.21", "gpu02": "192.0.2.22", "ops01": "203.0.113.31"}
COUNTING_DIGEST = "(?:0123456789abcdef){4}"  # the example's placeholder for the serving image's digest


def copy_example(
    dest: Path,
    addresses: dict[str, str],
    admin_networks: list[str],
    admin_users: list[dict[str, Any]],
    secret_values: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Steps 1-3 of the README into dest/mysite; returns (inventory, vault password file).
    `secret_values` replaces generated secrets by name (a value the hosts already depend on)."""
    site = dest / "mysite"
    shutil.copytree(EXAMPLE, site)
    hosts = site / "hosts.yml"
    text = hosts.read_text()
    for host, documentation_address in EXAMPLE_ADDRESSES.items():
        text = text.replace(documentation_address, addresses[host])
    hosts.write_text(text)
    cluster = site / "group_vars" / "all" / "cluster.yml"
    data = yaml.safe_load(cluster.read_text())
    data["cluster_admin_networks"] = admin_networks
    data["cluster_admin_users"] = admin_users
    cluster.write_text(yaml.safe_dump(data))
    base = site / "group_vars" / "all" / "base.yml"
    base.write_text("common_ntp_servers: [ntp1.corp.internal]\ncommon_apt_proxy: ''\n")
    for settings in (site / "group_vars").rglob("*.yml"):  # the other names under .example
        settings.write_text(settings.read_text().replace(".corp.example", ".corp.internal"))
    serving = site / "group_vars" / "all" / "serving.yml"  # the digest the site's mirror shows
    serving.write_text(re.sub(COUNTING_DIGEST, secrets.token_hex(32), serving.read_text()))
    example = (site / "group_vars" / "all" / "secrets.vault.yml.example").read_text()
    filled = yaml.safe_load(re.sub("REPLACE_ME", lambda _: secrets.token_hex(24), example))
    filled["cluster_secrets"].update(secret_values or {})
    secrets_file = site / "group_vars" / "all" / "secrets.vault.yml"
    secrets_file.write_text(yaml.safe_dump(filled))
    vault_pass = dest / "vault-pass"
    vault_pass.write_text(secrets.token_hex(16))
    vault = Path(sys.executable).with_name("ansible-vault")
    encrypt = [str(vault), "encrypt", "--vault-password-file", str(vault_pass), str(secrets_file)]
    subprocess.run(encrypt, check=True, capture_output=True)
    return site, vault_pass


def decrypt(secrets_file: Path, vault_pass: Path) -> dict[str, Any]:
    """The cluster_secrets of an ansible-vault encrypted secrets file."""
    view = [str(Path(sys.executable).with_name("ansible-vault")), "view", "--vault-password-file", str(vault_pass)]
    out = subprocess.run([*view, str(secrets_file)], check=True, capture_output=True, text=True).stdout
    return yaml.safe_load(out)["cluster_secrets"]
