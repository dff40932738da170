"""The cluster_secret lookup: one interface, two backends."""

from __future__ import annotations

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
