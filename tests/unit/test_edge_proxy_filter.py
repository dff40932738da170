"""The edge's upstream pool from the serving facts (plugins/filter/edge_proxy.py)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_plugin

_filter = load_plugin("plugins/filter/edge_proxy.py")
edge_proxy_api_key_entries = _filter.edge_proxy_api_key_entries
edge_proxy_endpoints = _filter.edge_proxy_endpoints


def _ep(**kw):
    base = {"instance": "chat", "model": "m", "colour": "blue", "port": 8000, "weight": 100, "state": "active"}
    return base | kw


def test_endpoints_of_every_host_sorted_and_addressed_by_ansible_host():
    facts = {
        "gpu2": {"endpoints": [_ep(port=8001, colour="green", weight=10), _ep()]},
        "gpu1": {"endpoints": [_ep()]},
    }
    out = edge_proxy_endpoints(facts, {"gpu1": "10.0.0.21", "gpu2": "10.0.0.22"})
    assert [(e["host"], e["address"], e["port"], e["weight"]) for e in out] == [
        ("gpu1", "10.0.0.21", 8000, 100),
        ("gpu2", "10.0.0.22", 8000, 100),
        ("gpu2", "10.0.0.22", 8001, 10),
    ]


def test_hosts_without_fact_contribute_nothing_and_name_is_the_fallback_address():
    out = edge_proxy_endpoints({"gpu1": {}, "gpu2": None, "gpu3": {"endpoints": [_ep()]}}, {"gpu3": ""})
    assert [(e["host"], e["address"]) for e in out] == [("gpu3", "gpu3")]


def test_ipv6_addresses_are_bracketed():
    out = edge_proxy_endpoints({"gpu1": {"endpoints": [_ep()]}}, {"gpu1": "fd00::21"})
    assert out[0]["address"] == "[fd00::21]"


def test_instance_filter_keeps_only_named_instances():
    facts = {"gpu1": {"endpoints": [_ep(), _ep(instance="code", port=8002)]}}
    assert [e["instance"] for e in edge_proxy_endpoints(facts, {}, ["code"])] == ["code"]


def test_states_and_defaults_pass_through():
    facts = {"gpu1": {"endpoints": [{"instance": "chat", "port": "8000"}, _ep(port=8001, state="draining")]}}
    out = edge_proxy_endpoints(facts)
    assert [(e["port"], e["weight"], e["state"]) for e in out] == [(8000, 100, "active"), (8001, 100, "draining")]


@pytest.mark.parametrize(
    ("fact", "message"),
    [
        ({"endpoints": [_ep(state="paused")]}, "state is 'paused'"),
        ({"endpoints": [_ep(port="eighty")]}, "port is 'eighty'"),
        ({"endpoints": [_ep(port=70000)]}, "outside 1-65535"),
        ({"endpoints": [_ep(weight=0)]}, "outside 1-100"),
        ({"endpoints": "oops"}, "not a JSON object"),
        ("Unable to read the fact", "not a JSON object"),
    ],
)
def test_malformed_facts_fail_with_host_and_field_named(fact, message):
    with pytest.raises(AnsibleFilterError, match="gpu1") as err:
        edge_proxy_endpoints({"gpu1": fact})
    assert message in str(err.value)


def test_two_endpoints_on_one_address_and_port_are_refused():
    facts = {"gpu1": {"endpoints": [_ep()]}, "gpu2": {"endpoints": [_ep()]}}
    with pytest.raises(AnsibleFilterError, match=r"share 10\.0\.0\.5:8000"):
        edge_proxy_endpoints(facts, {"gpu1": "10.0.0.5", "gpu2": "10.0.0.5"})


def test_api_keys_as_client_key_pairs_with_rotation_lists():
    keys = {"b-client": "k2", "a-client": ["k1-old", "k1-new"]}
    assert edge_proxy_api_key_entries(keys) == [
        {"client": "a-client", "key": "k1-old"},
        {"client": "a-client", "key": "k1-new"},
        {"client": "b-client", "key": "k2"},
    ]


def test_api_keys_not_a_mapping_give_nothing_to_render():
    assert edge_proxy_api_key_entries("oops") == []
    assert edge_proxy_api_key_entries(None) == []


ROLE_KEYS = {
    "plain": "k-plain",
    "rotating": ["k-old", "k-new"],
    "auditor": {"key": "k-aud", "role": "auditor"},
    "limited": {"keys": ["k-lim1", "k-lim2"], "role": "user", "models": ["m1", "m2"]},
}


def test_api_key_entries_with_roles_render_every_key():
    assert [e["key"] for e in edge_proxy_api_key_entries(ROLE_KEYS)] == [
        "k-aud", "k-lim1", "k-lim2", "k-plain", "k-old", "k-new",
    ]  # fmt: skip


def test_api_clients_default_to_users_of_every_model():
    assert _filter.edge_proxy_api_clients(ROLE_KEYS) == [
        {"client": "auditor", "role": "auditor", "models": None},
        {"client": "limited", "role": "user", "models": ["m1", "m2"]},
        {"client": "plain", "role": "user", "models": None},
        {"client": "rotating", "role": "user", "models": None},
    ]


def test_api_key_problems_name_the_client_and_never_the_key():
    keys = {
        "ok": {"key": "secret-value-1", "role": "admin"},
        "boss": {"key": "secret-value-2", "role": "boss"},
        "both": {"key": "secret-value-3", "keys": ["secret-value-4"]},
        "models": {"key": "secret-value-5", "models": "m1"},
        "typo": {"key": "secret-value-6", "rol": "user"},
        "empty": [],
    }
    problems = _filter.edge_proxy_api_key_problems(keys)
    assert len(problems) == 5, problems
    assert any("client boss: role 'boss'" in p for p in problems)
    assert any("client typo: unknown field(s) rol" in p for p in problems)
    assert not any("secret-value" in p for p in problems)
    assert _filter.edge_proxy_api_key_problems(ROLE_KEYS) == []
    assert _filter.edge_proxy_api_key_problems("oops") == ["it is not a mapping of client names to entries"]
