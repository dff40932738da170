"""The lab suite: the whole site on the lab, converged once per session, then tested.

Order matters and follows file names: test_00_site.py checks what the converge itself
reported (check mode on fresh hosts, failed=0, a second run with changed=0); layer tests
(test_10_base.py, ...) assert behaviour on the converged lab; test_90_drift.py tampers
with hosts, and test_95_example_site.py converges a site copied from inventories/example
onto the lab's hosts: both run after every behaviour test.

Environment:
  LAB_KEEP=1      leave the lab running afterwards (default: `scripts/lab down` at the end)
  LAB_REUSE=1     use a running, already converged lab as it is (skip the converges)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from labkit import topology
from labkit.layout import INVENTORY, ROOT, SITE, SSH_KEY, VAULT_PASS
from toolkit.ansible_run import PlaybookRun, run_lab

# What the lab tests import from here besides the fixtures.
__all__ = ["INVENTORY", "ROOT", "VAULT_PASS", "Lab", "quote", "wait_for"]


@dataclass
class Lab:
    topo: topology.Topology
    fresh: bool
    runs: dict[str, PlaybookRun] = field(default_factory=dict)

    def address(self, host: str) -> str:
        return next(h.address for h in self.topo.hosts if h.name == host)

    def hosts(self, group: str | None = None) -> list[str]:
        return [h.name for h in self.topo.hosts if group is None or group in h.groups]

    def playbook(self, *args: str, playbook: Path = SITE, env: dict[str, str] | None = None) -> PlaybookRun:
        """ansible-playbook against the lab inventory (JSON results)."""
        return run_lab(*args, playbook=playbook, env=env)

    def exec(self, host: str, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A root shell command on a lab host, through Docker (not through the firewall)."""
        proc = subprocess.run(
            ["docker", "exec", self.topo.container(host), "sh", "-c", command],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{host}: `{command}` exited {proc.returncode}: {proc.stderr or proc.stdout}")
        return proc

    def monitoring_api(self, path: str, port: int = 9090, **params: str) -> dict:
        """GET a Prometheus (9090) or Alertmanager (9093) API path, asked on the ops host itself
        (the firewall keeps both from the controller); the JSON answer."""
        url = f"http://127.0.0.1:{port}{path}" + (("?" + urllib.parse.urlencode(params)) if params else "")
        code = (
            f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=20).read().decode())"
        )
        return json.loads(self.exec(self.hosts("ops")[0], f"python3 -c {quote(code)}").stdout)

    def ssh(
        self,
        host: str,
        command: str,
        user: str = "labadmin",
        options: tuple[str, ...] | list[str] = (),
        quiet: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """A command over real SSH from the controller, as an administrator (or `user`), with
        extra ssh `options`. quiet=False keeps ssh's informational messages in stderr: a
        refused negotiation ("no matching cipher found") is one of them."""
        argv = [
            "ssh", "-i", str(SSH_KEY), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            *(["-o", "LogLevel=ERROR"] if quiet else []), *options,
            f"{user}@{self.address(host)}", command,
        ]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def _lab_cli(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "lab"), *args], check=True, cwd=ROOT)


@pytest.fixture(scope="session")
def lab() -> Lab:
    """The running lab; created fresh unless LAB_REUSE=1."""
    reuse = os.environ.get("LAB_REUSE") == "1"
    if not reuse:
        _lab_cli("down")
    _lab_cli("up")
    topo = topology.load(INVENTORY / "topology.yml")
    yield Lab(topo=topo, fresh=not reuse)
    if os.environ.get("LAB_KEEP") != "1" and not reuse:
        _lab_cli("down")


@pytest.fixture(scope="session")
def converged(lab: Lab) -> Lab:
    """The lab after `site.yml` ran: check mode on the fresh hosts, a converge, the secrets
    handed to the lab's Vault (`scripts/lab vault`, as `make lab` does), a second run, which
    reads every secret from Vault (cluster_secrets_backend hashi_vault)."""
    if lab.fresh:
        lab.runs["check_fresh"] = lab.playbook("--check")
        lab.runs["converge"] = lab.playbook()
        assert lab.runs["converge"].rc == 0, _summary(lab.runs["converge"])
        _lab_cli("vault")
        lab.runs["second"] = lab.playbook()
    return lab


@pytest.fixture(scope="session")
def api_keys() -> dict[str, str]:
    """The lab's edge API keys by client name (each client's current key), from its vault file."""
    out = subprocess.run(
        ["ansible-vault", "view", "--vault-password-file", str(VAULT_PASS),
         str(INVENTORY / "group_vars" / "all" / "secrets.vault.yml")],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    keys = yaml.safe_load(out.stdout)["cluster_secrets"]["edge_api_keys"]
    return {name: value[-1] if isinstance(value, list) else value for name, value in keys.items()}


def _summary(run: PlaybookRun) -> str:
    return f"rc={run.rc} failures={run.failures()}\nstderr tail:\n{run.stderr[-3000:]}"


def quote(s: str) -> str:
    return shlex.quote(s)


def wait_for(what: str, check, timeout: float = 120, interval: float = 3):
    """Poll check() until it returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
