"""Action plugin: validate the whole inventory on the controller, before any host changes.

It runs once, connects to no host, and checks:
  * zones: `cluster_zones` names existing groups and every host is in exactly one of them;
  * required groups exist and have hosts;
  * removed variables are gone (with the migration hint);
  * every role variable set in the inventory exists in that role's meta/argument_specs.yml
    (a misspelling gets a "did you mean"), and has the type the spec says;
  * cluster-wide `cluster_*` variables against preflight's own spec.
All problems are reported together, each naming the host, the variable and the fix.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from ansible.errors import AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase


def _load_engine() -> Any:
    """The value rules engine lives in the `value_rules` action beside this file (Ansible loads
    plugins by path, so it is imported by path too)."""
    path = Path(__file__).with_name("value_rules.py")
    spec = importlib.util.spec_from_file_location("llm_cluster_value_rules", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


value_rules = _load_engine()

# Variables Ansible itself defines or that connection plugins read; never role inputs.
MAGIC_PREFIXES = ("ansible_", "molecule_", "lab_", "_")
MAGIC_NAMES = frozenset(
    {
        "inventory_hostname",
        "inventory_hostname_short",
        "inventory_dir",
        "inventory_file",
        "group_names",
        "groups",
        "hostvars",
        "omit",
        "playbook_dir",
        "role_names",
        "environment",
        "play_hosts",
        "module_setup",
        "ansible_facts",
    }
)
SIMILARITY = 0.82
_DOC_KEYS = ("description", "version_added")
_HOST_MESSAGE = re.compile(r"^host (\S+): (.*)$", re.S)


def load_role_specs(roles_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Map role name -> its `main` entry point options, from every meta/argument_specs.yml."""
    specs: dict[str, dict[str, dict[str, Any]]] = {}
    for spec_file in sorted(roles_dir.glob("*/meta/argument_specs.yml")):
        data = yaml.safe_load(spec_file.read_text()) or {}
        options: dict[str, dict[str, Any]] = {}
        for entry in (data.get("argument_specs") or {}).values():
            options.update(entry.get("options") or {})
        specs[spec_file.parent.parent.name] = options
    return specs


def inventory_variables(hostvars: Mapping[str, Any]) -> list[str]:
    return [k for k in hostvars if k not in MAGIC_NAMES and not k.startswith(MAGIC_PREFIXES)]


def _relaxed(options: Mapping[str, dict[str, Any]], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The spec of just these options, with `required` dropped (defaults fill the rest)."""
    out = {}
    for name in names:
        spec = {k: v for k, v in options[name].items() if k not in (*_DOC_KEYS, "required", "default")}
        if "options" in spec:
            spec["options"] = {
                sub: {k: v for k, v in subspec.items() if k not in _DOC_KEYS}
                for sub, subspec in spec["options"].items()
            }
        out[name] = spec
    return out


def type_errors(options: Mapping[str, dict[str, Any]], values: Mapping[str, Any]) -> list[str]:
    if not values:
        return []
    result = ArgumentSpecValidator(_relaxed(options, values)).validate(dict(values))
    return [str(msg) for msg in result.error_messages]


def check_zones(groups: Mapping[str, list[str]], zones: Any) -> list[str]:
    if not isinstance(zones, list) or not zones or not all(isinstance(z, str) for z in zones):
        return ["cluster_zones must be a non-empty list of inventory group names, e.g. [dmz, app, data]"]
    errors = [
        f"cluster_zones names zone '{z}' but the inventory has no group '{z}': "
        f"add `{z}:` with its hosts under `all.children`"
        for z in zones
        if z not in groups
    ]
    for host in sorted(groups.get("all", [])):
        member_of = [z for z in zones if host in groups.get(z, [])]
        if not member_of:
            errors.append(f"host {host} is in no zone: add it to exactly one of the groups {', '.join(zones)}")
        elif len(member_of) > 1:
            errors.append(f"host {host} is in zones {', '.join(member_of)}: a host belongs to exactly one zone")
    return errors


def check_required_groups(groups: Mapping[str, list[str]], required: Iterable[str]) -> list[str]:
    return [
        f"group '{g}' is missing or has no hosts: the cluster needs at least one host in '{g}'"
        for g in required
        if not groups.get(g)
    ]


def check_addresses(addresses: Mapping[str, str]) -> list[str]:
    """Two inventory hosts with one address are one machine configured twice."""
    seen: dict[str, str] = {}
    errors = []
    for host, address in sorted(addresses.items()):
        if address in seen:
            errors.append(
                f"hosts {seen[address]} and {host} share ansible_host {address}: each host needs its own address"
            )
        else:
            seen[address] = host
    return errors


def check_services(services: Any, groups: Mapping[str, list[str]]) -> list[str]:
    """The service catalogue: ports in range, known protocols, groups that exist, no clashes."""
    if services is None:
        return [
            "cluster_services (the service catalogue) is not set: "
            "copy group_vars/all/services.yml from inventories/example"
        ]
    if not isinstance(services, Mapping):
        return ["cluster_services must be a mapping of service names to {port, protocol, group}"]
    errors: list[str] = []
    taken: dict[tuple[str, str, int], str] = {}
    for name, svc in sorted(services.items()):
        where = f"cluster_services.{name}"
        if not isinstance(svc, Mapping):
            errors.append(f"{where} must be a mapping with port, protocol and group")
            continue
        port, end = svc.get("port"), svc.get("port_end", svc.get("port"))
        if not isinstance(port, int) or not isinstance(end, int) or not 1 <= port <= end <= 65535:
            errors.append(
                f"{where}: port {port!r} (port_end {end!r}) must be integers with 1 <= port <= port_end <= 65535"
            )
            continue
        proto = svc.get("protocol", "tcp")
        if proto not in ("tcp", "udp"):
            errors.append(f"{where}: protocol {proto!r} must be tcp or udp")
        group = svc.get("group")
        if group not in groups:
            errors.append(f"{where}: group {group!r} is not an inventory group")
            continue
        for p in range(port, end + 1):
            key = (str(group), str(proto), p)
            if key in taken:
                errors.append(f"{where}: port {proto}/{p} on group {group} is already used by {taken[key]}")
                break
            taken[key] = name
    return errors


def merge_host_messages(errors: list[str], groups: Mapping[str, list[str]] | None = None) -> list[str]:
    """'host a: X' and 'host b: X' become 'hosts a, b: X' (group_vars mistakes repeat per host),
    and 'group g (hosts a, b): X' when exactly the hosts of group g have it (where it was set)."""
    hosts_by_message: dict[str, list[str]] = {}
    order: list[str] = []
    for error in errors:
        match = _HOST_MESSAGE.match(error)
        host, key = (match.group(1), match.group(2)) if match else ("", error)
        if key not in hosts_by_message:
            hosts_by_message[key] = []
            order.append(key)
        if host:
            hosts_by_message[key].append(host)
    out = []
    for key in order:
        hosts = hosts_by_message[key]
        if not hosts:
            out.append(key)
        else:
            group = _group_of(hosts, groups or {})
            where = f"{'host' if len(hosts) == 1 else 'hosts'} {', '.join(hosts)}"
            out.append(f"group {group} ({where}): {key}" if group else f"{where}: {key}")
    return out


def _group_of(hosts: list[str], groups: Mapping[str, list[str]]) -> str | None:
    """The group whose hosts are exactly these (several hosts only; `all` first, then the
    smallest group name), or None."""
    if len(hosts) < 2:
        return None
    wanted = set(hosts)
    names = sorted((g for g, members in groups.items() if set(members) == wanted), key=lambda g: (g != "all", g))
    return names[0] if names else None


def check_host_variables(
    host: str,
    hostvars: Mapping[str, Any],
    role_specs: Mapping[str, Mapping[str, dict[str, Any]]],
    cluster_spec: Mapping[str, dict[str, Any]],
    removed: Mapping[str, str],
    rules: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Check one host's inventory variables; values are evaluated only where checked."""
    errors: list[str] = []
    names = inventory_variables(hostvars)
    known = {n for opts in role_specs.values() for n in opts} | set(cluster_spec)
    by_role: dict[str, dict[str, Any]] = {}
    cluster_values: dict[str, Any] = {}
    for name in sorted(names):
        if name in removed:
            errors.append(f"host {host}: variable {name} was removed: {removed[name]}")
            continue
        role = next((r for r in sorted(role_specs, key=len, reverse=True) if name.startswith(r + "_")), None)
        if name in cluster_spec or (role is not None and name in role_specs[role]):
            try:
                value = hostvars[name]
            except AnsibleError as exc:
                errors.append(f"host {host}: variable {name} cannot be evaluated: {exc}")
                continue
            if name in cluster_spec:
                cluster_values[name] = value
            else:
                by_role.setdefault(str(role), {})[name] = value
            continue
        if role is not None or name.startswith("cluster_"):
            owner = f"role {role}" if role else "the cluster settings"
            errors.append(f"host {host}: unknown variable {name} ({owner} has no such option){_hint(name, known)}")
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=SIMILARITY)
        if close:
            errors.append(f"host {host}: unknown variable {name}; did you mean {close[0]}?")
    rules = rules or {}
    for role, values in sorted(by_role.items()):
        wrong = type_errors(role_specs[role], values)
        errors += [f"host {host}: role {role}: {msg}" for msg in wrong]
        errors += [f"host {host}: {msg}" for msg in _rule_errors(rules.get(role, {}), values, wrong)]
    wrong = type_errors(cluster_spec, cluster_values)
    errors += [f"host {host}: {msg}" for msg in wrong]
    errors += [f"host {host}: {msg}" for msg in _rule_errors(rules.get("preflight", {}), cluster_values, wrong)]
    return errors


def _rule_errors(rules: Mapping[str, Any], values: Mapping[str, Any], type_messages: list[str]) -> list[str]:
    """The value rules of the settings whose type is right (a wrong type is reported once)."""
    typed = {n: v for n, v in values.items() if not any(n in m for m in type_messages)}
    return value_rules.check_settings(rules, typed)


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else "; see the role's README for its variables"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        roles_dir = Path(args["roles_dir"])
        cluster_spec = args.get("cluster_spec") or {}
        removed = args.get("removed_variables") or {}
        groups = task_vars["groups"]
        role_specs = load_role_specs(roles_dir)
        if not role_specs:
            raise AnsibleError(f"no role argument specs found under {roles_dir}")
        try:
            rules = value_rules.load_all_rules(roles_dir)
        except (OSError, value_rules.RuleError, re.error) as exc:
            raise AnsibleError(f"a role's value rules cannot be read: {exc}") from exc
        errors = check_zones(groups, task_vars.get("cluster_zones"))
        errors += check_required_groups(groups, args.get("required_groups") or [])
        errors += check_services(task_vars.get("cluster_services"), groups)
        hostvars = task_vars["hostvars"]
        addresses = {}
        for host in sorted(groups.get("all", [])):
            host_vars = hostvars[host]
            errors += check_host_variables(host, host_vars, role_specs, cluster_spec, removed, rules)
            if host_vars.get("ansible_connection", "ssh") != "local":
                addresses[host] = str(host_vars.get("ansible_host", host))
        errors += check_addresses(addresses)
        errors = merge_host_messages(errors, groups)
        result["changed"] = False
        result["problems"] = errors
        if errors:
            result["failed"] = True
            result["msg"] = (
                f"the inventory has {len(errors)} problem(s); nothing was changed on any host:\n  - "
                + "\n  - ".join(errors)
            )
        else:
            result["msg"] = f"inventory valid: {len(groups.get('all', []))} hosts, {len(role_specs)} role specs"
        return result
