"""The cluster_secret lookup: one interface, two backends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from conftest import load_plugin

plugin = load_plugin("plugins/lookup/cluster_secret.py")


def _lookup(variables: dict, *names: str, **kwargs):
    loader = DataLoader()
    lookup = plugin.LookupModule(loader=loader, templar=Templar(loader=loader, variables=variables))
    return lookup.run(list(names), variables=variables, **kwargs)


def test_reads_from_the_vault_file_variables():
    assert _lookup({"cluster_secrets": {"a": "1", "b": [2]}}, "a", "b") == ["1", [2]]


def test_missing_secret_names_the_fix():
    with pytest.raises(AnsibleError, match=r"secret 'api' is not in cluster_secrets.*ansible-vault edit"):
        _lookup({"cluster_secrets": {}}, "api")


def test_default_for_a_missing_secret():
    assert _lookup({}, "api", default="none") == ["none"]


def test_unknown_backend_is_refused():
    with pytest.raises(AnsibleError, match="must be one of ansible_vault, hashi_vault"):
        _lookup({"cluster_secrets_backend": "aws"}, "x")


def test_hashi_vault_backend_reads_the_value_field(monkeypatch):
    calls = []

    class FakeKv2:
        def run(self, terms, variables=None, **kwargs):
            calls.append((terms, kwargs))
            return [{"secret": {"value": "s3cret"}}]

    monkeypatch.setattr(plugin.lookup_loader, "get", lambda name, **_: FakeKv2())
    variables = {"cluster_secrets_backend": "hashi_vault", "cluster_secrets_hashi_vault_mount": "kv"}
    assert _lookup(variables, "edge_api_keys") == ["s3cret"]
    assert calls == [(["llm-cluster/edge_api_keys"], {"engine_mount_point": "kv"})]


def _fake_vault(monkeypatch, run_dir, secrets: dict, logins: list, reads: list):
    """Doubles of community.hashi_vault's lookups, raising what the real ones raise against
    OpenBao 2.7 (molecule/vault runs the real server)."""

    class FakeKv2:
        def run(self, terms, variables=None, **kwargs):
            reads.append(kwargs.get("token"))
            if kwargs.get("token") == "expired":
                raise AnsibleError("Forbidden: Permission Denied to path ['secret/data/llm-cluster/a'].")
            if terms[0] not in secrets:
                message = f"Invalid or missing path ['{terms[0]}'] with secret version 'latest'."
                raise AnsibleError(message + " Check the path or secret version.")
            return [{"secret": {"value": secrets[terms[0]]}}]

    class FakeLogin:
        def run(self, terms, variables=None, **kwargs):
            logins.append(kwargs)
            return [{"auth": {"client_token": f"token-{len(logins)}", "lease_duration": 600}}]

    plugins = {"community.hashi_vault.vault_kv2_get": FakeKv2(), "community.hashi_vault.vault_login": FakeLogin()}
    monkeypatch.setattr(plugin.lookup_loader, "get", lambda name, **_: plugins[name])
    # The run's own temporary directory on the controller, where the token is kept.
    monkeypatch.setattr(plugin.C, "DEFAULT_LOCAL_TMP", str(run_dir))


APPROLE = {
    "cluster_secrets_backend": "hashi_vault",
    "cluster_secrets_hashi_vault_options": {
        "url": "https://vault1:8200", "ca_cert": "/ca.crt", "auth_method": "approle", "role_id": "r", "secret_id": "s",
    },
}  # fmt: skip


def test_hashi_vault_missing_secret_gives_the_default(monkeypatch, tmp_path):
    _fake_vault(monkeypatch, tmp_path, {"llm-cluster/a": "1"}, [], [])
    assert _lookup(APPROLE, "a", "missing", default="none") == ["1", "none"]


def test_hashi_vault_missing_secret_without_default_names_the_path(monkeypatch, tmp_path):
    _fake_vault(monkeypatch, tmp_path, {}, [], [])
    with pytest.raises(AnsibleError, match=r"secret 'missing': reading secret/llm-cluster/missing from Vault failed"):
        _lookup(APPROLE, "missing")


def test_hashi_vault_approle_logs_in_once_per_run_and_reads_with_the_token(monkeypatch, tmp_path):
    logins, reads = [], []
    _fake_vault(monkeypatch, tmp_path, {"llm-cluster/a": "1", "llm-cluster/b": "2"}, logins, reads)
    assert _lookup(APPROLE, "a", "b") == ["1", "2"]
    # A later task runs in another forked worker, with a new plugin instance: same token.
    assert _lookup(APPROLE, "a") == ["1"]
    assert len(logins) == 1 and logins[0]["role_id"] == "r" and logins[0]["ca_cert"] == "/ca.crt"
    assert reads == ["token-1", "token-1", "token-1"]
    (token_file,) = [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"cluster-secret-token-[0-9a-f]{16}", token_file.name)  # no credential in the name


def test_hashi_vault_token_about_to_expire_is_replaced(monkeypatch, tmp_path):
    logins, reads = [], []
    _fake_vault(monkeypatch, tmp_path, {"llm-cluster/a": "1"}, logins, reads)
    _lookup(APPROLE, "a")
    later = plugin.time.time() + 600 - plugin.TOKEN_MARGIN_S + 1
    monkeypatch.setattr(plugin.time, "time", lambda: later)
    _lookup(APPROLE, "a")
    assert reads == ["token-1", "token-2"]


def test_hashi_vault_revoked_token_logs_in_again(monkeypatch, tmp_path):
    logins, reads = [], []
    _fake_vault(monkeypatch, tmp_path, {"llm-cluster/a": "1"}, logins, reads)
    options = APPROLE["cluster_secrets_hashi_vault_options"]
    Path(plugin.LookupModule._token_file(options)).write_text('{"token": "expired", "expires": 9e18}')
    assert _lookup(APPROLE, "a") == ["1"]
    assert reads == ["expired", "token-1"]


def test_hashi_vault_fresh_token_denied_is_not_retried(monkeypatch, tmp_path):
    """A policy that denies the read fails at once, with no loop of logins."""
    logins, reads = [], []
    _fake_vault(monkeypatch, tmp_path, {}, logins, reads)
    kv2 = plugin.lookup_loader.get("community.hashi_vault.vault_kv2_get")

    def denied(terms, variables=None, **kwargs):
        reads.append(kwargs.get("token"))
        raise AnsibleError("Forbidden: Permission Denied to path ['secret/data/llm-cluster/a'].")

    monkeypatch.setattr(kv2, "run", denied)
    with pytest.raises(AnsibleError, match="Permission Denied"):
        _lookup(APPROLE, "a")
    assert len(logins) == 1 and reads == ["token-1"]


def test_hashi_vault_refuses_unverified_tls():
    variables = {
        "cluster_secrets_backend": "hashi_vault",
        "cluster_secrets_hashi_vault_options": {"validate_certs": False},
    }
    with pytest.raises(AnsibleError, match="must be verified; set ca_cert"):
        _lookup(variables, "a")
