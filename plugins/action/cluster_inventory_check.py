"""Action plugin: validate the whole inventory on the controller, before any host changes.

It runs once, connects to no host, and checks:
  * zones: `cluster_zones` names existing groups and every host is in exactly one of them;
  * required groups exist and have hosts;
  * removed variables are gone (with the migration hint);
  * every role variable set in the inventory exists in that role's meta/argument_specs.yml
    (a misspelling gets a "did you mean"), and has the type the spec says;
  * cluster-wide `cluster_*` variables against preflight's own spec;
  * operator-provided certificates (pki) parse, are not expiring and match their keys.
All problems are reported together, each naming the host, the variable and the fix.
"""

from __future__ import annotations

import base64
import datetime
import difflib
import importlib.util
import ipaddress
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from ansible.errors import AnsibleError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_ssh_public_key,
)


def _load_engine(path: Path | None = None, name: str = "llm_cluster_value_rules") -> Any:
    """The value rules engine lives in the `value_rules` action beside this file (Ansible loads
    plugins by path, so it is imported by path too); the vault role's PGP key checks in the
    `vault_pgp` filter."""
    path = path or Path(__file__).with_name("value_rules.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


value_rules = _load_engine()
vault_pgp = _load_engine(Path(__file__).parents[1] / "filter" / "vault_pgp.py", "llm_cluster_vault_pgp")
object_storage = _load_engine(Path(__file__).parents[1] / "filter" / "object_storage.py", "llm_cluster_object_storage")
edge_proxy = _load_engine(Path(__file__).parents[1] / "filter" / "edge_proxy.py", "llm_cluster_edge_proxy")

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
        if host and host not in hosts_by_message[key]:
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


# Administrators' keys: ed25519 (preferred), ECDSA on the NIST curves, RSA of 3072 bits or
# more (NIST SP 800-57: 2048-bit RSA is not enough past 2030), and the FIDO security-key
# variants of ed25519 and ECDSA. DSA and short RSA keys are refused (OpenSSH itself
# dropped DSA and refuses RSA below 1024 bits).
RSA_MIN_BITS = 3072
SK_KEY_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def check_ssh_key(where: str, key: Any) -> str | None:
    """One problem (or None) for one administrator key; a private key is never echoed."""
    if not isinstance(key, str):
        return f"{where} must be one line of an OpenSSH public key (a string)"
    text = key.strip()
    if "PRIVATE KEY" in text or text.startswith("-----BEGIN"):
        return (
            f"{where} is a PRIVATE key (not shown): remove it from the inventory now, treat it as leaked "
            "(make a new key pair), and paste the public key (the .pub file, one line) instead"
        )
    fields = text.split()
    shown = f"{fields[0]} ...{' ' + fields[2] if len(fields) > 2 else ''}" if fields else "''"
    fix = "paste the whole line of the administrator's ~/.ssh/id_ed25519.pub (make one with ssh-keygen -t ed25519)"
    if len(fields) >= 2 and fields[0] in SK_KEY_TYPES:
        try:
            blob = base64.b64decode(fields[1], validate=True)
            ok = blob[4 : 4 + int.from_bytes(blob[:4], "big")].decode() == fields[0]
        except (ValueError, UnicodeDecodeError):
            ok = False
        return None if ok else f"{where} ({shown}) does not parse as an OpenSSH public key: {fix}"
    try:
        public = load_ssh_public_key(text.encode())
    except (ValueError, TypeError):
        return f"{where} ({shown}) does not parse as an OpenSSH public key: {fix}"
    except Exception as exc:  # unsupported key types (DSA in recent cryptography releases)
        return f"{where} ({shown}) is of a refused type ({exc.__class__.__name__}): use ed25519, ECDSA or RSA >= 3072"
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < RSA_MIN_BITS:
        return (
            f"{where} ({shown}) is an RSA key of {public.key_size} bits: at least {RSA_MIN_BITS} are needed; "
            "make an ed25519 key (ssh-keygen -t ed25519) or an RSA key of 4096 bits"
        )
    if not isinstance(public, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        return f"{where} ({shown}) is of a refused type: use ed25519, ECDSA or RSA >= {RSA_MIN_BITS}"
    return None


def check_admin_keys(users: Any) -> list[str]:
    errors = []
    for i, user in enumerate(users if isinstance(users, list) else []):
        if not isinstance(user, Mapping):
            continue
        for j, key in enumerate(user.get("ssh_keys") or []):
            where = f"cluster_admin_users[{user.get('name', i)}].ssh_keys[{j}]"
            if isinstance(key, str) and _PLACEHOLDER.search(key):
                continue  # reported once, as a placeholder
            problem = check_ssh_key(where, key)
            if problem:
                errors.append(problem)
    return errors


# What inventories/example ships for the operator to replace: marked names, names under the
# .example top-level domain (RFC 2606: they never resolve), documentation addresses
# (RFC 5737, RFC 3849) as host addresses or admin networks, and the counting digest that
# stands for the serving image's (it would pull nothing, on every GPU node, at converge).
_PLACEHOLDER = re.compile(r"ReplaceWith|REPLACE[_-]?ME|CHANGE[_-]?ME|(?:0123456789abcdef){4}")
_EXAMPLE_NAME = re.compile(r"(?<![\w.-])(?:[a-z0-9-]+\.)+example(?::[0-9]+)?(?![\w.-])", re.I)
DOC_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _documentation_address(text: str) -> bool:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return any(net.version == d.version and net.subnet_of(d) for d in DOC_NETWORKS)


def check_placeholders(name: str, value: Any) -> list[str]:
    """Values copied from inventories/example and not replaced yet."""
    fix = "it is a placeholder from inventories/example: replace it with your site's value"
    errors = []
    for path, text in _strings(value, name):
        if _PLACEHOLDER.search(text):
            shown = "" if name == "cluster_secrets" else f" ({text.split()[-1][:40]})"
            errors.append(f"{path} still holds the example's placeholder{shown}: {fix}")
        elif name == "cluster_secrets":
            continue  # a secret's value is never shown
        elif _EXAMPLE_NAME.search(text) and "{{" not in text:
            errors.append(f"{path} is '{text}', a name under .example (never resolves): {fix}")
        elif name in ("ansible_host", "cluster_admin_networks") and _documentation_address(text):
            errors.append(f"{path} is {text}, a documentation address (RFC 5737/3849): {fix}")
    return errors


def _version(text: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", str(text))[:4])


def load_defaults(roles_dir: Path) -> dict[str, Any]:
    """Every role's plain (untemplated) defaults: the pins a host gets when the inventory sets none."""
    out: dict[str, Any] = {}
    for f in sorted(roles_dir.glob("*/defaults/main.yml")):
        for k, v in (yaml.safe_load(f.read_text()) or {}).items():
            if not (isinstance(v, str) and "{{" in v):
                out[k] = v
    return out


def check_compatibility(pins: Mapping[str, Any], table: Mapping[str, Any]) -> list[str]:
    """Pinned versions that cannot work together, with the nearest working choice."""
    errors = []
    cuda, driver = str(pins.get("cuda_toolkit_version", "")), str(pins.get("nvidia_driver_version", ""))
    major, minor = cuda.split(".", maxsplit=1)[0], ".".join(cuda.split(".")[:2])
    min_driver = table["cuda_min_driver"].get(major)
    if cuda and min_driver is None:
        errors.append(
            f"cuda_toolkit_version {cuda}: CUDA {major} is not in the compatibility table "
            f"(roles/preflight/files/compatibility.yml knows CUDA {', '.join(table['cuda_min_driver'])})"
        )
    elif cuda and driver and _version(driver) < _version(min_driver):
        fits = [c for c, d in table["cuda_release_driver"].items() if _version(d) <= _version(driver)]
        nearest = max(fits, key=_version) if fits else None
        errors.append(
            f"cuda_toolkit_version {cuda} needs NVIDIA driver {min_driver} or later (CUDA {major}), but "
            f"nvidia_driver_version is {driver}: raise nvidia_driver_version to "
            f"{table['cuda_release_driver'].get(minor, min_driver)}"
            + (f", or pin a CUDA {nearest} release for driver {driver}" if nearest else "")
        )
    for lib, setting, enabled in (
        ("nccl", "cuda_toolkit_nccl_version", "cuda_toolkit_nccl"),
        ("cudnn", "cuda_toolkit_cudnn_version", "cuda_toolkit_cudnn"),
    ):
        need = table[f"{lib}_min_for_cuda"].get(major)
        have = pins.get(setting)
        if cuda and need and have and pins.get(enabled, True) and _version(have) < _version(need):
            errors.append(
                f"{setting} {have} has no build for CUDA {major} (cuda_toolkit_version {cuda}): "
                f"pin {lib.upper() if lib == 'nccl' else 'cuDNN'} {need} or later, or a CUDA release it was built for"
            )
    if (
        pins.get("container_runtime_package_source") == "docker_ce"
        and pins.get("nvidia_container_toolkit_mode") == "cdi"
        and _version(pins.get("container_runtime_docker_ce_version", "0")) < _version(table["docker_min_for_cdi"])
    ):
        errors.append(
            f"nvidia_container_toolkit_mode cdi needs Docker {table['docker_min_for_cdi']} or later, but "
            f"container_runtime_docker_ce_version is {pins.get('container_runtime_docker_ce_version')}: "
            f"raise it, or set nvidia_container_toolkit_mode to auto"
        )
    return errors


PINS = (
    "cuda_toolkit_version",
    "nvidia_driver_version",
    "cuda_toolkit_nccl",
    "cuda_toolkit_nccl_version",
    "cuda_toolkit_cudnn",
    "cuda_toolkit_cudnn_version",
    "container_runtime_package_source",
    "container_runtime_docker_ce_version",
    "nvidia_container_toolkit_mode",
)


# Settings that name a group, a host or a catalogue service (checked where the inventory sets them).
GROUP_SETTINGS = (
    "edge_proxy_backend_group",
    "llm_serving_peer_group",
    "llm_serving_edge_group",
    "prometheus_serving_group",
)
SERVICE_SETTINGS = ("firewall_ssh_service", "prometheus_dcgm_service")


def check_references(hostvars_of: Mapping[str, Any], groups: Mapping[str, list[str]], services: Any) -> list[str]:
    """Names of groups, hosts, services and serving ports refer to what exists."""
    errors = []
    services = services if isinstance(services, Mapping) else {}
    for name in GROUP_SETTINGS:
        if name in hostvars_of and hostvars_of[name] not in groups:
            errors.append(f"{name} names group '{hostvars_of[name]}', which the inventory does not have")
    if "pki_ca_host" in hostvars_of and hostvars_of["pki_ca_host"] not in groups.get("all", []):
        errors.append(f"pki_ca_host names host '{hostvars_of['pki_ca_host']}', which the inventory does not have")
    for name in SERVICE_SETTINGS:
        if name in hostvars_of and hostvars_of[name] not in services:
            errors.append(f"{name} names service '{hostvars_of[name]}', which cluster_services does not have")
    for job, svc in (hostvars_of.get("prometheus_scrape_services") or {}).items():
        if svc not in services:
            errors.append(
                f"prometheus_scrape_services.{job} names service '{svc}', which cluster_services does not have"
            )
    instances = hostvars_of.get("llm_serving_instances") or []
    serving = services.get("llm_serving") if isinstance(services.get("llm_serving"), Mapping) else None
    seen: dict[int, str] = {}
    for inst in instances if isinstance(instances, list) else []:
        if not isinstance(inst, Mapping) or not isinstance(inst.get("port"), int):
            continue
        port, name = inst["port"], inst.get("name", "?")
        if serving and not serving["port"] <= port <= serving.get("port_end", serving["port"]):
            errors.append(
                f"llm_serving_instances[{name}].port {port} is outside the catalogue's serving range "
                f"{serving['port']}-{serving.get('port_end', serving['port'])} (cluster_services.llm_serving): "
                "the firewall and the edge only know that range; pick a port inside it"
            )
        if port in seen:
            errors.append(
                f"llm_serving_instances[{name}].port {port} is already taken by instance {seen[port]} on this host"
            )
        seen[port] = name
    return errors


def check_admins(hostvars_of: Mapping[str, Any]) -> list[str]:
    """Who may log in and from where; key-only SSH needs a key for every administrator."""
    users = hostvars_of.get("cluster_admin_users") or []
    if not users or not hostvars_of.get("cluster_admin_networks"):
        return [
            "cluster_admin_users and cluster_admin_networks must both be set: the first says who may "
            "log in (with which SSH keys), the second where SSH is allowed from. Without them the "
            "hardened hosts would admit nobody"
        ]
    password = hostvars_of.get("ssh_hardening_password_authentication", False)
    if str(password).lower() in ("true", "yes", "1", "on"):
        return []
    keyless = [str(u.get("name")) for u in users if isinstance(u, Mapping) and not u.get("ssh_keys")]
    if not keyless:
        return []
    return [
        f"ssh_hardening_password_authentication is false (key-only SSH), but cluster_admin_users "
        f"{', '.join(keyless)} have no ssh_keys: they would be locked out. Give each an SSH public key "
        "in cluster_admin_users[].ssh_keys"
    ]


def check_vault(hostvars: Mapping[str, Any], groups: Mapping[str, list[str]]) -> tuple[list[str], list[str]]:
    """The secrets store's raft group and keyholders (roles/vault): an odd number of nodes, at
    least 3 (1 for a lab, with a warning), every keyholder's PGP public key parseable, the
    unseal threshold within the number of shares (one per keyholder). Errors, warnings."""
    named = {str(hostvars[h]["vault_group"]) for h in groups.get("all", []) if "vault_group" in hostvars[h]}
    group_name = sorted(named)[0] if named else "vault"
    nodes = list(groups.get(group_name, []))
    if not nodes:
        return [], []
    errors, warnings = [], []
    if len(nodes) == 1:
        warnings.append(
            f"group '{group_name}' has one host ({nodes[0]}): no failover. Fine for a lab; "
            "use 3 or 5 nodes on a real site"
        )
    elif len(nodes) < 3 or len(nodes) % 2 == 0:
        errors.append(
            f"group '{group_name}' has {len(nodes)} hosts ({', '.join(nodes)}): raft needs an odd number, at "
            "least 3 (1 for a lab), so that a majority survives a lost node"
        )
    first = hostvars[nodes[0]]
    keyholders = first.get("vault_keyholders", [])
    errors += vault_pgp.vault_keyholder_problems(keyholders, None)
    threshold = first.get("vault_key_threshold", 2)
    shares = len(keyholders) if isinstance(keyholders, list) else 0
    if isinstance(threshold, int) and shares and threshold > shares:
        errors.append(
            f"vault_key_threshold is {threshold}: it must be at most the number of keyholders ({shares}), "
            "one share each; add keyholders or lower the threshold"
        )
    return errors, warnings


def check_object_storage(
    hostvars: Mapping[str, Any], groups: Mapping[str, list[str]], defaults: Mapping[str, Any]
) -> list[str]:
    """The storage cluster (roles/object_storage): monitors, OSDs against the replicas, the
    failure domain, devices listed once, identities and buckets; the rules are the role's own
    (plugins/filter/object_storage.py)."""
    named = {
        str(hostvars[h]["object_storage_group"]) for h in groups.get("all", []) if "object_storage_group" in hostvars[h]
    }
    group_name = sorted(named)[0] if named else str(defaults.get("object_storage_group", "storage"))
    hosts = groups.get(group_name, [])
    if not hosts:
        return []
    first = hostvars[hosts[0]]
    settings = {
        name: first[name] if name in first else defaults.get(name, value)
        for name, value in object_storage.SETTINGS.items()
    }
    return object_storage.topology_problems(group_name, groups, hostvars, settings, defaults)


# Inventory-level connection settings that defeat the plays' `become: true`: an inventory
# variable outranks a play keyword.
def check_connection(hostvars_of: Mapping[str, Any]) -> list[str]:
    errors = []
    become = hostvars_of.get("ansible_become")
    if become is not None and str(become).lower() in ("false", "no", "0", "off"):
        errors.append(
            "ansible_become is false in the inventory: it outranks the plays' `become: true`, so every role "
            "would run unprivileged and fail at its first privileged task. Remove ansible_become from the "
            "inventory (the plays ask for root themselves)"
        )
    user = hostvars_of.get("ansible_become_user")
    if user not in (None, "root"):
        errors.append(f"ansible_become_user is '{user}' in the inventory: the roles need root; remove it")
    return errors


def check_secrets(
    host: str,
    hostvars_of: Mapping[str, Any],
    defaults: Mapping[str, Any],
    needs: list[Mapping[str, Any]],
    groups: Mapping[str, list[str]],
) -> list[tuple[str, str]]:
    """(secret name, who reads it) for each secret a role of this run reads on this host and
    the secrets backend does not have (presence only; the value is never read)."""
    if hostvars_of.get("cluster_secrets_backend", "ansible_vault") != "ansible_vault":
        return []
    store = hostvars_of.get("cluster_secrets") or {}
    store = store if isinstance(store, Mapping) else {}
    missing = []
    for need in needs:
        if host not in groups.get(need.get("group", "all"), []):
            continue
        value = lambda n: hostvars_of[n] if n in hostvars_of else defaults.get(n)  # noqa: E731
        if "when" in need and not value(need["when"]):
            continue
        if "equals" in need and value(need["when"]) != need["equals"]:
            continue
        setting = value(need["setting"])
        if need.get("item_key"):
            names = [
                (str(i[need["item_key"]]), f"{need['setting']}[{i.get('name', '?')}].{need['item_key']}")
                for i in setting or []
                if isinstance(i, Mapping) and i.get(need["item_key"])
            ]
        else:
            names = [(str(setting), need["setting"])] if setting else []
        missing += [(n, f"{need['role']} ({via})") for n, via in names if n not in store]
    return missing


def check_edge_api_keys(hostvars_of: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """The edge's API key entries (roles, model allow-lists), when an ansible_vault
    `cluster_secrets` holds them; a missing secret is check_secrets' to report. Messages name
    the client, never a key."""
    if hostvars_of.get("cluster_secrets_backend", "ansible_vault") != "ansible_vault":
        return []
    store = hostvars_of.get("cluster_secrets") or {}
    setting = "edge_proxy_api_keys_secret"
    name = str(hostvars_of.get(setting, defaults.get(setting)))
    if not isinstance(store, Mapping) or name not in store:
        return []
    return [
        f"cluster secret '{name}' ({setting}): {problem}; an entry is a key, a list of keys, or "
        "{key: KEY (or keys: [OLD, NEW]), role: admin|user|auditor, models: [MODEL, ...]}"
        for problem in edge_proxy.edge_proxy_api_key_problems(store[name])
    ]


def _public_der(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def check_provided_certificates(
    hostvars_of: Mapping[str, Any],
    defaults: Mapping[str, Any],
    now: datetime.datetime | None = None,
) -> list[str]:
    """pki_certificates entries with `provider: provided`: the chain parses as PEM X.509, the
    leaf (first) is not expired nor inside pki's renewal window, and the key in the secret named
    by private_key_secret parses and matches the leaf. The key is read only from an ansible_vault
    `cluster_secrets` that holds it (a missing secret is check_secrets' to report; another
    backend is not read here); no key or secret value is ever put in a message."""
    certificates = hostvars_of.get("pki_certificates")
    if not isinstance(certificates, list):
        return []
    now = now or datetime.datetime.now(datetime.UTC)
    window = hostvars_of.get("pki_renew_before_days", defaults.get("pki_renew_before_days", 30))
    try:
        window = int(window)
    except (TypeError, ValueError):
        window = 30  # a wrong type is reported by the type check
    store: Any = {}
    if hostvars_of.get("cluster_secrets_backend", "ansible_vault") == "ansible_vault":
        store = hostvars_of.get("cluster_secrets") or {}
    store = store if isinstance(store, Mapping) else {}
    errors = []
    for i, entry in enumerate(certificates):
        if not isinstance(entry, Mapping) or entry.get("provider") != "provided":
            continue
        where = f"pki_certificates[{entry.get('name', i)}]"
        pem = entry.get("certificate")
        try:
            chain = x509.load_pem_x509_certificates(str(pem or "").encode())
        except ValueError:
            chain = []
        if not chain:
            errors.append(
                f"{where}.certificate does not parse as a PEM X.509 certificate chain: paste the certificate "
                "(-----BEGIN CERTIFICATE----- ...), leaf first, then its intermediates"
            )
            continue
        leaf = chain[0]
        subject = leaf.subject.rfc4514_string() or "no subject"
        not_after = leaf.not_valid_after_utc
        expiry = not_after.strftime("%Y-%m-%d %H:%M UTC")
        if not_after <= now:
            errors.append(
                f"{where}.certificate ({subject}) expired on {expiry} (notAfter): get it renewed and paste the new one"
            )
        elif not_after - now <= datetime.timedelta(days=window):
            errors.append(
                f"{where}.certificate ({subject}) expires on {expiry} (notAfter), within pki_renew_before_days "
                f"({window} days): get it renewed and paste the new one"
            )
        secret = entry.get("private_key_secret")
        if not secret or str(secret) not in store:
            continue
        value = store[str(secret)]
        try:
            key = None if isinstance(value, (Mapping, list)) else load_pem_private_key(str(value).encode(), None)
        except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: the key is encrypted
            key = None
        if key is None:
            errors.append(
                f"{where}.private_key_secret: secret '{secret}' (value not shown) does not parse as an unencrypted "
                "PEM private key: store the certificate's key, -----BEGIN PRIVATE KEY----- ..., in that secret"
            )
        elif _public_der(key.public_key()) != _public_der(leaf.public_key()):
            errors.append(
                f"{where}.private_key_secret: the key in secret '{secret}' (not shown) does not match the public key "
                f"of the certificate ({subject}): store the key the certificate was issued for, or paste the "
                "certificate of this key"
            )
    return errors


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
    for name, value in sorted({**cluster_values, **{n: v for vs in by_role.values() for n, v in vs.items()}}.items()):
        errors += [f"host {host}: {msg}" for msg in check_placeholders(name, value)]
    if "cluster_admin_users" in cluster_values:
        errors += [f"host {host}: {msg}" for msg in check_admin_keys(cluster_values["cluster_admin_users"])]
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
        defaults = load_defaults(roles_dir)
        table = yaml.safe_load((roles_dir / "preflight" / "files" / "compatibility.yml").read_text())
        check_roles = set(args.get("check_roles") or [])
        check_roles = set(role_specs) if "all" in check_roles else check_roles
        needs = [n for n in args.get("secrets") or [] if n["role"] in check_roles]
        addresses = {}
        for host in sorted(groups.get("all", [])):
            host_vars = hostvars[host]
            errors += check_host_variables(host, host_vars, role_specs, cluster_spec, removed, rules)
            errors += [f"host {host}: {msg}" for msg in check_connection(host_vars) + check_admins(host_vars)]
            errors += [
                f"host {host}: {msg}" for msg in check_references(host_vars, groups, task_vars.get("cluster_services"))
            ]
            if host in groups.get("gpu_nodes", []):
                pins = {k: host_vars[k] if k in host_vars else defaults.get(k) for k in PINS}
                errors += [f"host {host}: {msg}" for msg in check_compatibility(pins, table)]
            for name, reader in check_secrets(host, host_vars, defaults, needs, groups):
                errors.append(
                    f"host {host}: secret '{name}', read by {reader}, is not in cluster_secrets: add it to "
                    "group_vars/all/secrets.vault.yml (secrets.vault.yml.example says how to generate it; "
                    "`ansible-vault edit` the file)"
                )
            if "pki" in check_roles:
                errors += [f"host {host}: {msg}" for msg in check_provided_certificates(host_vars, defaults)]
            if "edge_proxy" in check_roles and host in groups.get("edge", []):
                errors += [f"host {host}: {msg}" for msg in check_edge_api_keys(host_vars, defaults)]
            if host_vars.get("ansible_connection", "ssh") != "local":
                addresses[host] = str(host_vars.get("ansible_host", host))
                errors += [f"host {host}: {msg}" for msg in check_placeholders("ansible_host", addresses[host])]
        errors += check_addresses(addresses)
        vault_errors, vault_warnings = check_vault(hostvars, groups)
        errors += vault_errors
        errors += check_object_storage(hostvars, groups, defaults)
        errors = merge_host_messages(errors, groups)
        result["changed"] = False
        if vault_warnings:
            result["warnings"] = vault_warnings
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
