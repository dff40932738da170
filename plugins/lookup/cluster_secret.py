"""Lookup plugin: one way for every role to read a secret, whatever backs it."""

from __future__ import annotations

DOCUMENTATION = r"""
name: cluster_secret
short_description: Read a cluster secret from the configured backend
description:
  - Roles read every secret (API keys, LUKS keys, passwords) with this lookup, so the
    backend can move from an ansible-vault file to HashiCorp Vault without touching a role.
  - With C(cluster_secrets_backend=ansible_vault) (the default) the secret is the key NAME of
    the C(cluster_secrets) variable, which lives in a vault-encrypted group_vars file.
  - With C(cluster_secrets_backend=hashi_vault) the secret is the C(value) field of the KV v2
    entry C(<cluster_secrets_hashi_vault_prefix>/NAME) in the mount
    C(cluster_secrets_hashi_vault_mount), read with community.hashi_vault (connection
    settings from the usual VAULT_ADDR / VAULT_TOKEN environment or the
    C(cluster_secrets_hashi_vault_options) dict, e.g. C(url), C(ca_cert) (the cluster CA; TLS
    is always verified), C(auth_method=approle) with C(role_id) and C(secret_id)).
  - With AppRole the plugin logs in once per run and connection settings, and reads every
    secret with that token (one login, one audit entry, not one per task and host). Lookups
    run in Ansible's forked workers, so the token is kept in a file (mode 0600) in the run's
    own temporary directory on the controller (C(local_tmp), removed when the run ends), and
    renewed by a new login when it is about to expire.
  - A secret that is not in Vault (the server answers "Invalid or missing path") gives
    C(default) when one is given.
options:
  _terms:
    description: Secret names.
    required: true
  default:
    description: Value returned when the secret does not exist (otherwise that is an error).
"""

EXAMPLES = r"""
- name: Read the API keys the edge accepts
  ansible.builtin.set_fact:
    __edge_api_keys: "{{ lookup('cluster_secret', 'edge_api_keys') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: The secret values, in the order of the names.
  type: list
"""

import contextlib
import fcntl
import hashlib
import json
import os
import time
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.plugins.loader import lookup_loader
from ansible.plugins.lookup import LookupBase

BACKENDS = ("ansible_vault", "hashi_vault")
_MISSING = object()
# A token that expires sooner than this is not used: a new login replaces it.
TOKEN_MARGIN_S = 30


class LookupModule(LookupBase):
    def run(self, terms: list[str], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        variables = variables or {}
        default = kwargs.get("default", _MISSING)
        backend = self._var(variables, "cluster_secrets_backend", "ansible_vault")
        if backend not in BACKENDS:
            raise AnsibleError(f"cluster_secrets_backend is '{backend}'; it must be one of {', '.join(BACKENDS)}")
        reader = self._from_vault_file if backend == "ansible_vault" else self._from_hashi_vault
        return [reader(str(name), variables, default) for name in terms]

    def _var(self, variables: dict[str, Any], name: str, fallback: Any = None) -> Any:
        if name not in variables:
            return fallback
        return self._templar.template(variables[name])

    def _from_vault_file(self, name: str, variables: dict[str, Any], default: Any) -> Any:
        store = self._var(variables, "cluster_secrets", {}) or {}
        if not isinstance(store, dict):
            raise AnsibleError("cluster_secrets must be a mapping of secret names to values")
        if name in store:
            return store[name]
        if default is not _MISSING:
            return default
        raise AnsibleError(
            f"secret '{name}' is not in cluster_secrets. Add it to the inventory's vault-encrypted "
            f"file (`ansible-vault edit inventories/<site>/group_vars/all/secrets.vault.yml`), "
            f"or for the lab run `scripts/lab up`, which generates missing lab secrets."
        )

    def _from_hashi_vault(self, name: str, variables: dict[str, Any], default: Any) -> Any:
        mount = self._var(variables, "cluster_secrets_hashi_vault_mount", "secret")
        prefix = self._var(variables, "cluster_secrets_hashi_vault_prefix", "llm-cluster")
        connection = dict(self._var(variables, "cluster_secrets_hashi_vault_options", {}) or {})
        if connection.get("validate_certs") is False:
            raise AnsibleError(
                "cluster_secrets_hashi_vault_options.validate_certs is false: the secrets store's certificate "
                "must be verified; set ca_cert to the cluster CA (/etc/ssl/cluster/ca.crt on the hosts) instead"
            )
        path = f"{prefix}/{name}" if prefix else name
        reader = self._collection_lookup("vault_kv2_get")
        try:
            options, cached = self._logged_in(connection, variables)
            try:
                result = reader.run([path], variables=variables, engine_mount_point=mount, **options)[0]
            except AnsibleError as exc:
                # A token revoked or expired early (a Vault restored from a snapshot): log in again, once.
                if not cached or "permission denied" not in str(exc).lower():
                    raise
                self._forget_token(connection)
                options, _ = self._logged_in(connection, variables)
                result = reader.run([path], variables=variables, engine_mount_point=mount, **options)[0]
        except AnsibleError as exc:
            message = str(exc).lower()
            if default is not _MISSING and ("not found" in message or "invalid or missing path" in message):
                return default
            raise AnsibleError(f"secret '{name}': reading {mount}/{path} from Vault failed: {exc}") from exc
        data = result.get("secret", {})
        if "value" not in data:
            raise AnsibleError(f"secret '{name}': Vault entry {mount}/{path} has no 'value' field")
        return data["value"]

    def _collection_lookup(self, name: str) -> Any:
        plugin = lookup_loader.get(f"community.hashi_vault.{name}", loader=self._loader, templar=self._templar)
        if plugin is None:
            raise AnsibleError("cluster_secrets_backend=hashi_vault needs the community.hashi_vault collection")
        return plugin

    @staticmethod
    def _token_file(options: dict[str, Any]) -> str:
        """Where this run keeps the token of these connection settings: the run's own
        temporary directory (0700, shared by the forked workers, removed at the end of the
        run), named by a hash of the settings so no credential shows in a file name."""
        key = json.dumps(sorted((k, str(v)) for k, v in options.items()))
        return os.path.join(
            C.DEFAULT_LOCAL_TMP, f"cluster-secret-token-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        )

    def _forget_token(self, options: dict[str, Any]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._token_file(options))

    def _logged_in(self, options: dict[str, Any], variables: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """AppRole: log in once per run and connection settings, then read with the token.
        Returns the options to read with, and whether the token came from this run's cache."""
        if options.get("auth_method") != "approle":
            return options, False
        kept = {k: v for k, v in options.items() if k not in ("auth_method", "role_id", "secret_id", "mount_point")}
        path = self._token_file(options)
        # One worker logs in while the others wait, then read what it wrote.
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path) as f:
                    saved = json.load(f)
                if saved["expires"] > time.time() + TOKEN_MARGIN_S:
                    return {**kept, "auth_method": "token", "token": saved["token"]}, True
            except (OSError, ValueError, KeyError, TypeError):
                pass
            login = self._collection_lookup("vault_login")
            auth = login.run([], variables=variables, **options)[0]["auth"]
            # lease_duration 0 means no expiry (a periodic or root token): keep it for the run.
            ttl = int(auth.get("lease_duration") or 0) or 10**9
            fd = os.open(f"{path}.new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"token": auth["client_token"], "expires": time.time() + ttl}, f)
            os.replace(f"{path}.new", path)
            return {**kept, "auth_method": "token", "token": auth["client_token"]}, False
