"""Where the lab keeps its things, and how its hosts are made: the one source for the lab
CLI, the benchmarks, the tests and molecule.

Paths: `.lab/` holds the lab's own state (SSH key, vault password, dockerd log), `.cache/`
what can be rebuilt (fact cache, VM images, tool downloads, logs). The systemd-container
recipe is `systemd-host.yml` beside this file; molecule/shared/create.yml reads the same file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]

# The lab's own state, created by `scripts/lab up` (gitignored).
STATE = ROOT / ".lab"
SSH_KEY = STATE / "ssh" / "id_ed25519"  # inventories/lab/group_vars/all/lab.yml names it too
KNOWN_HOSTS = STATE / "ssh" / "known_hosts"
VAULT_PASS = STATE / "vault-pass"
# The cluster CA, copied from a lab host by `scripts/lab summary` (labkit.pki); the Vault
# lookup reads its own copy, one per lab inventory (vault.State.ca_copy).
CA_COPY = STATE / "ca.crt"

# Rebuildable caches (gitignored; `make clean` removes them).
CACHE = ROOT / ".cache"
FACT_CACHE = CACHE / "facts"  # ansible.cfg fact_caching_connection
VM_IMAGES = CACHE / "vm-images"
MOLECULE_LOGS = CACHE / "molecule-logs"
PROMETHEUS_TOOLS = CACHE / "prometheus-tools"

# The lab site: inventory and entry point.
INVENTORY = ROOT / "inventories" / "lab"
SITE = ROOT / "playbooks" / "site.yml"

SYSTEMD_HOST_RECIPE = Path(__file__).resolve().parent / "systemd-host.yml"


@cache
def systemd_host() -> dict[str, Any]:
    """The systemd-container recipe: capabilities, cgroupns_mode, security_opts, volumes, tmpfs."""
    return yaml.safe_load(SYSTEMD_HOST_RECIPE.read_text())


def systemd_run_args() -> list[str]:
    """The recipe as `docker run` options."""
    recipe = systemd_host()
    argv = ["--cgroupns", recipe["cgroupns_mode"]]
    for option, key in (
        ("--cap-add", "capabilities"),
        ("--security-opt", "security_opts"),
        ("--volume", "volumes"),
        ("--tmpfs", "tmpfs"),
    ):
        for value in recipe[key]:
            argv += [option, value]
    return argv
