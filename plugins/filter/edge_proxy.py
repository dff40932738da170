"""Filters of the edge_proxy role: the serving endpoints the edge sends traffic to.

The serving role publishes its endpoints as a local fact on every GPU node
(docs/serving-edge-contract.md); the edge renders its upstream pool from them. This filter
turns the facts of a host group into one validated, sorted list, so the template stays
simple and a malformed fact fails the run with a message naming the host and the field.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

STATES = ("active", "draining", "down")


def _address(host: str, address: Any) -> str:
    value = str(address or "").strip() or host
    try:
        if ipaddress.ip_address(value).version == 6:
            return f"[{value}]"
    except ValueError:
        pass
    return value


def _int(host: str, index: int, ep: dict, key: str, low: int, high: int) -> int:
    value = ep.get(key)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise AnsibleFilterError(
            f"llm_serving fact of {host}: endpoints[{index}].{key} is {value!r}, not an integer "
            f"({low}-{high}). Re-run the llm_serving role on {host}; it writes "
            "/etc/ansible/facts.d/llm_serving.fact (docs/serving-edge-contract.md)."
        )
    number = int(value)
    if not low <= number <= high:
        raise AnsibleFilterError(
            f"llm_serving fact of {host}: endpoints[{index}].{key} is {number}, outside {low}-{high}."
        )
    return number


def edge_proxy_endpoints(
    facts: dict[str, Any], addresses: dict[str, Any] | None = None, instances: list[str] | None = None
) -> list[dict[str, Any]]:
    """Serving endpoints from {host: llm_serving fact}, as the edge's upstream pool needs them.

    facts: the `ansible_facts.ansible_local.llm_serving` value of each backend host (None or {} when the
        host publishes nothing: it contributes no endpoint).
    addresses: {host: ansible_host}; a host without one is addressed by its inventory name.
    instances: keep only endpoints of these serving instances (empty: all).

    Returns dicts with host, address, port, instance, model, colour, weight, state, sorted by
    host then port, so the rendered file changes only when an endpoint does.
    """
    if not isinstance(facts, dict):
        raise AnsibleFilterError(f"edge_proxy_endpoints expects a mapping of host to fact, got {type(facts).__name__}")
    addresses = addresses or {}
    wanted = set(instances or [])
    out: list[dict[str, Any]] = []
    for host in sorted(facts):
        fact = facts[host]
        if fact in (None, "", {}):
            continue
        if not isinstance(fact, dict) or not isinstance(fact.get("endpoints", []), list):
            raise AnsibleFilterError(
                f"llm_serving fact of {host} is not a JSON object with an `endpoints` list: {str(fact)[:200]!r}. "
                f"Fix or remove /etc/ansible/facts.d/llm_serving.fact on {host} (re-run the llm_serving role)."
            )
        for index, ep in enumerate(fact.get("endpoints", [])):
            if not isinstance(ep, dict):
                raise AnsibleFilterError(f"llm_serving fact of {host}: endpoints[{index}] is not an object")
            state = ep.get("state", "active")
            if state not in STATES:
                raise AnsibleFilterError(
                    f"llm_serving fact of {host}: endpoints[{index}].state is {state!r}; "
                    f"it must be one of {', '.join(STATES)}."
                )
            instance = str(ep.get("instance", ""))
            if wanted and instance not in wanted:
                continue
            out.append(
                {
                    "host": host,
                    "address": _address(host, addresses.get(host)),
                    "port": _int(host, index, ep, "port", 1, 65535),
                    "weight": _int(host, index, ep, "weight", 1, 100) if "weight" in ep else 100,
                    "state": state,
                    "instance": instance,
                    "model": str(ep.get("model", "")),
                    "colour": str(ep.get("colour", "")),
                }
            )
    seen: dict[tuple[str, int], str] = {}
    for ep in out:
        key = (ep["address"], ep["port"])
        if key in seen:
            raise AnsibleFilterError(
                f"two serving endpoints share {ep['address']}:{ep['port']} ({seen[key]} and {ep['host']}): "
                "give each host its own ansible_host, and each instance its own port."
            )
        seen[key] = ep["host"]
    return sorted(out, key=lambda ep: (ep["host"], ep["port"]))


ROLES = ("admin", "user", "auditor")
_CLIENT_FIELDS = ("key", "keys", "role", "models")
# A model name in an allow-list: what serving engines publish as the model id.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def _entry_keys(value: Any) -> list[Any]:
    """The keys of one client's entry: a key, a list of keys, or {key|keys, role, models}."""
    if isinstance(value, dict):
        value = value.get("keys", value.get("key"))
    return value if isinstance(value, list) else [value]


def edge_proxy_api_key_entries(keys: Any) -> list[dict[str, str]]:
    """{client: entry} from the secrets layer as [{client, key}], sorted by client.

    An entry is a key, a list of keys (while rotating), or {key|keys, role, models}.
    Anything else yields an empty list; the role's checks then refuse it with a message that
    never contains a key.
    """
    if not isinstance(keys, dict):
        return []
    out = []
    for client in sorted(keys, key=str):
        for key in _entry_keys(keys[client]):
            out.append({"client": str(client), "key": "" if key is None else str(key)})
    return out


def edge_proxy_api_clients(keys: Any) -> list[dict[str, Any]]:
    """[{client, role, models}] sorted by client: a plain key is a `user` of every served
    model (models None); `models` is the client's model allow-list otherwise."""
    if not isinstance(keys, dict):
        return []
    out = []
    for client in sorted(keys, key=str):
        entry = keys[client] if isinstance(keys[client], dict) else {}
        models = entry.get("models")
        out.append(
            {
                "client": str(client),
                "role": str(entry.get("role", "user")),
                "models": None if models is None else [str(m) for m in models],
            }
        )
    return out


def edge_proxy_api_key_problems(keys: Any) -> list[str]:
    """What is wrong with the API key entries' structure (roles, model lists), one message
    each, naming the client and never a key. Key format and sharing are checked apart."""
    if not isinstance(keys, dict):
        return ["it is not a mapping of client names to entries"]
    problems = []
    for client in sorted(keys, key=str):
        entry = keys[client]
        if not isinstance(entry, dict):
            if isinstance(entry, list) and not entry:
                problems.append(f"client {client}: an empty list of keys")
            continue
        unknown = sorted(set(map(str, entry)) - set(_CLIENT_FIELDS))
        if unknown:
            problems.append(
                f"client {client}: unknown field(s) {', '.join(unknown)} (known: {', '.join(_CLIENT_FIELDS)})"
            )
        if ("key" in entry) == ("keys" in entry):
            problems.append(f"client {client}: give exactly one of `key` (one key) or `keys` (a list, while rotating)")
        elif "keys" in entry and (not isinstance(entry["keys"], list) or not entry["keys"]):
            problems.append(f"client {client}: `keys` must be a non-empty list of keys")
        role = entry.get("role", "user")
        if role not in ROLES:
            problems.append(f"client {client}: role {role!r} is not one of {', '.join(ROLES)}")
        models = entry.get("models")
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and _MODEL.match(m) for m in models)
        ):
            problems.append(
                f"client {client}: `models` must be a list of model names (letters, digits, . _ : / -), "
                "or left out for every served model"
            )
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "edge_proxy_endpoints": edge_proxy_endpoints,
            "edge_proxy_api_key_entries": edge_proxy_api_key_entries,
            "edge_proxy_api_clients": edge_proxy_api_clients,
            "edge_proxy_api_key_problems": edge_proxy_api_key_problems,
        }
