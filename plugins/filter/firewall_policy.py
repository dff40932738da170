"""Filter plugin: compile the zone firewall policy of the inventory into one host's iptables rules.

The policy is a list of allowed flows. Each names services from the shared catalogue
(`cluster_services`: name -> port, optional port_end, protocol, the inventory group that
runs it) and where the traffic may come from: `any`, an inventory group (a zone is a group),
an inventory host, or an IPv4/IPv6 address or CIDR. An optional `to` narrows the flow to
the service's hosts that are also in these groups. Everything not allowed is denied.

`firewall_policy` returns, for one host:
  problems  what is wrong with the policy (fatal; each names the flow or variable and the fix)
  lockout   why the administrators could lose SSH to this host (fatal while the guard is on)
  ipv4/ipv6 {"chains": [{"name": ..., "rules": [...]}, ...]}: rule specifications (without the
            leading `-A CHAIN`) for the role's own chains, in order
  allowed   the accepted flows on this host, for reports and tests

Addresses come from the inventory only (`firewall_addresses`, else `ansible_host`), never
from facts or DNS, so a run limited to one host compiles exactly the rules a full run does.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CHAIN_INPUT = "CLUSTER-FW-INPUT"
CHAIN_SSH = "CLUSTER-FW-SSH"
CHAIN_DOCKER = "CLUSTER-FW-DOCKER"
RECENT_NAME = {4: "cluster_fw_ssh", 6: "cluster_fw_ssh6"}
ANY = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
FLOW_KEYS = frozenset({"name", "services", "from", "to", "description", "optional"})
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
INTERFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}\+?$")
DENY_ACTIONS = ("DROP", "REJECT")
LOG_LIMIT_RE = re.compile(r"^[0-9]+/(second|minute|hour|day|sec|min|s|m|h|d)$")

ICMP4 = [
    ("3", "ICMP destination unreachable (path MTU discovery)"),
    ("11", "ICMP time exceeded"),
    ("12", "ICMP parameter problem"),
]
ICMP6 = [
    ("1", "ICMPv6 destination unreachable"),
    ("2", "ICMPv6 packet too big (path MTU discovery)"),
    ("3", "ICMPv6 time exceeded"),
    ("4", "ICMPv6 parameter problem"),
]
# Neighbour discovery only from the link itself (hop limit 255), multicast listener
# discovery only from link-local routers.
NDP = [("134", "router advertisement"), ("135", "neighbour solicitation"), ("136", "neighbour advertisement")]
MLD = [("130", "MLD query"), ("131", "MLD report"), ("132", "MLD done"), ("143", "MLDv2 report")]


def _close(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _label(net: IPNetwork) -> str:
    return "any" if net.prefixlen == 0 else net.with_prefixlen


def _src(net: IPNetwork) -> str:
    return "" if net.prefixlen == 0 else f"-s {net.with_prefixlen} "


def parse_network(value: str) -> tuple[IPNetwork | None, str | None]:
    """An address or CIDR as a network, or an error text (host bits set, not an address)."""
    try:
        return ipaddress.ip_network(value, strict=True), None
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None, "not an IP address or CIDR"
    return None, f"has host bits set; did you mean {loose.with_prefixlen}?"


class Policy:
    """One host's view of the inventory's firewall policy."""

    def __init__(
        self,
        host: str,
        groups: Mapping[str, list[str]],
        hostvars: Mapping[str, Any],
        services: Any,
        admin_networks: Any,
    ) -> None:
        self.host = host
        self.groups = groups
        self.hostvars = hostvars
        self.services = services if isinstance(services, Mapping) else {}
        self.admin_networks = admin_networks
        self.problems: list[str] = []
        self._addresses: dict[str, list[IPNetwork]] = {}
        if not isinstance(services, Mapping):
            self.problems.append(
                "firewall_services (default: cluster_services) must be the service catalogue, a mapping of "
                "service names to {port, protocol, group}"
            )
        for name in self.services:
            if not NAME_RE.match(str(name)):
                self.problems.append(
                    f"cluster_services: service name '{name}' must be letters, digits, '.', '_' or '-' "
                    "(it is written into rule comments)"
                )

    # -- inventory lookups -------------------------------------------------------------------
    def host_addresses(self, host: str) -> list[IPNetwork]:
        """Addresses a host's traffic comes from: firewall_addresses, else ansible_host."""
        if host in self._addresses:
            return self._addresses[host]
        hv = self.hostvars[host]
        configured = hv.get("firewall_addresses") if "firewall_addresses" in hv else None
        values = _as_list(configured) or [hv.get("ansible_host", host) if "ansible_host" in hv else host]
        nets = []
        for value in values:
            net, error = parse_network(str(value))
            if net is None:
                origin = "firewall_addresses" if configured else "ansible_host"
                self.problems.append(
                    f"host {host}: {origin} '{value}' {error}. The firewall needs addresses, not names (rules must "
                    f"not depend on DNS): set firewall_addresses: [<its IP addresses>] for {host}"
                )
                continue
            nets.append(net)
        self._addresses[host] = nets
        return nets

    def resolve(self, entry: Any, where: str) -> list[IPNetwork]:
        """`any`, an inventory group or host, or an address/CIDR, as networks."""
        text = str(entry)
        if text == "any":
            return [ANY[4], ANY[6]]
        if text in self.groups and text != "ungrouped":
            return [net for member in self.groups[text] for net in self.host_addresses(member)]
        if text in self.groups.get("all", []):
            return self.host_addresses(text)
        net, error = parse_network(text)
        if net is not None:
            return [net]
        if error and "host bits" in error:
            self.problems.append(f"{where}: '{text}' {error}")
        else:
            hint = _close(text, [g for g in self.groups if g != "ungrouped"] + list(self.groups.get("all", [])))
            self.problems.append(
                f"{where}: '{text}' is not 'any', an inventory group (zone) or host, or an IP address/CIDR{hint}"
            )
        return []

    def members(self, names: list[Any], where: str) -> set[str]:
        hosts: set[str] = set()
        for name in names:
            text = str(name)
            if text in self.groups:
                hosts.update(self.groups[text])
            elif text in self.groups.get("all", []):
                hosts.add(text)
            else:
                hint = _close(text, list(self.groups) + list(self.groups.get("all", [])))
                self.problems.append(f"{where}: '{text}' is not an inventory group or host{hint}")
        return hosts

    def service(self, name: str, where: str) -> dict[str, Any] | None:
        svc = self.services.get(name)
        if svc is None:
            self.problems.append(
                f"{where}: service '{name}' is not in the service catalogue (cluster_services)"
                + _close(name, self.services)
            )
            return None
        if not isinstance(svc, Mapping):
            self.problems.append(f"cluster_services.{name} must be a mapping with port, protocol and group")
            return None
        port, end = svc.get("port"), svc.get("port_end", svc.get("port"))
        proto = svc.get("protocol", "tcp")
        if not isinstance(port, int) or not isinstance(end, int) or not 1 <= port <= end <= 65535:
            self.problems.append(f"cluster_services.{name}: port {port!r} (port_end {end!r}) is not a valid port range")
            return None
        if proto not in ("tcp", "udp"):
            self.problems.append(f"cluster_services.{name}: protocol {proto!r} must be tcp or udp")
            return None
        group = svc.get("group")
        if group not in self.groups:
            self.problems.append(f"cluster_services.{name}: group {group!r} is not an inventory group")
            return None
        return {"name": name, "port": port, "end": end, "proto": proto, "hosts": set(self.groups[group])}


def _check_flow(policy: Policy, index: int, flow: Any, seen: set[str]) -> tuple[str, list[Any], list[Any], Any] | None:
    where = f"firewall_flows[{index}]"
    if not isinstance(flow, Mapping):
        policy.problems.append(f"{where} must be a mapping with name, services and from")
        return None
    name = flow.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        policy.problems.append(f"{where}: name {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
        return None
    where = f"firewall_flows '{name}'"
    if name in seen:
        policy.problems.append(f"{where}: another flow has the same name; names must be unique")
    seen.add(name)
    unknown = sorted(set(flow) - FLOW_KEYS)
    if unknown:
        policy.problems.append(
            f"{where}: unknown key(s) {', '.join(unknown)} "
            "(a flow has name, services, from, and optionally to, description and optional)"
        )
    services, sources, targets = _as_list(flow.get("services")), _as_list(flow.get("from")), flow.get("to")
    if not services:
        policy.problems.append(f"{where}: services must be a non-empty list of service names from cluster_services")
        return None
    if not sources:
        policy.problems.append(f"{where}: from must be a non-empty list (any, inventory groups or hosts, CIDRs)")
        return None
    if targets is not None and not _as_list(targets):
        policy.problems.append(f"{where}: to must be a non-empty list of inventory groups or hosts when set")
        return None
    return name, services, sources, targets


def _flow_applies(policy: Policy, services: list[Any], sources: list[Any], targets: Any) -> bool:
    """Whether an `optional: true` flow's services are all in the catalogue with hosts (a
    declared, empty group such as the example's `storage: {}` is a layer not deployed yet)
    and the groups or hosts it names all exist in the inventory (`any` and addresses do)."""
    for name in map(str, services):
        svc = policy.services.get(name)
        if not isinstance(svc, Mapping) or not policy.groups.get(str(svc.get("group"))):
            return False
    for entry in [*sources, *(_as_list(targets) or [])]:
        text = str(entry)
        if text == "any" or text in policy.groups or text in policy.hostvars:
            continue
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False
    return True


def compile_policy(
    flows: Any,
    *,
    host: str,
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Any],
    services: Any,
    admin_networks: Any,
    ssh_service: str = "ssh",
    ssh_exempt: Any = None,
    ssh_rate_limit: bool = True,
    ssh_rate_limit_seconds: int = 60,
    ssh_rate_limit_hitcount: int = 4,
    lockout_guard: bool = True,
    allow_ping: bool = True,
    deny_action: str = "DROP",
    log_denied: bool = False,
    log_limit: str = "5/min",
    docker_user: bool = True,
    container_interfaces: Any = ("docker0", "br-+"),
) -> dict[str, Any]:
    policy = Policy(host, groups, hostvars, services, admin_networks)
    problems = policy.problems
    if host not in groups.get("all", [host]):
        problems.append(f"host {host} is not in the inventory")
    flow_list = _as_list(flows)
    if flow_list is None:
        problems.append("firewall_flows must be a list of flows (name, services, from, optional to)")
        flow_list = []
    if deny_action not in DENY_ACTIONS:
        problems.append(f"firewall_deny_action is {deny_action!r}; use DROP or REJECT")
    if not isinstance(ssh_rate_limit_seconds, int) or ssh_rate_limit_seconds < 1:
        problems.append("firewall_ssh_rate_limit_seconds must be a whole number of seconds, at least 1")
    if not isinstance(ssh_rate_limit_hitcount, int) or not 2 <= ssh_rate_limit_hitcount <= 20:
        problems.append(
            "firewall_ssh_rate_limit_hitcount must be 2..20 (the kernel's xt_recent keeps 20 packets per source; "
            "1 would drop every connection)"
        )
    if log_denied and not LOG_LIMIT_RE.match(str(log_limit)):
        problems.append(f"firewall_log_limit {log_limit!r} must look like 5/min")
    interfaces = _as_list(container_interfaces) or []
    for name in interfaces:
        if not INTERFACE_RE.match(str(name)):
            problems.append(
                f"firewall_docker_container_interfaces: {name!r} is not an interface name (br-+ is a prefix)"
            )

    ssh = policy.service(ssh_service, "firewall_ssh_service") if ssh_service in policy.services else None
    if ssh_service not in policy.services:
        problems.append(
            f"firewall_ssh_service '{ssh_service}' is not in the service catalogue (cluster_services): "
            "the rate limit and the lock-out guard need to know the SSH port"
        )

    # (source network, service, flow name) for every accepted flow on this host, in policy order
    accepts: list[tuple[IPNetwork, dict[str, Any], str]] = []
    allowed: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, flow in enumerate(flow_list):
        checked = _check_flow(policy, index, flow, seen)
        if checked is None:
            continue
        name, service_names, sources, targets = checked
        if flow.get("optional") and not _flow_applies(policy, service_names, sources, targets):
            # A layer this site does not have (no such service or group): nothing to allow.
            continue
        where = f"firewall_flows '{name}'"
        nets: list[IPNetwork] = []
        for entry in sources:
            nets += policy.resolve(entry, f"{where}: from")
        target_hosts = policy.members(_as_list(targets) or [], f"{where}: to") if targets is not None else None
        for service_name in service_names:
            svc = policy.service(str(service_name), where)
            if svc is None:
                continue
            dest = svc["hosts"] if target_hosts is None else svc["hosts"] & target_hosts
            if not dest:
                problems.append(
                    f"{where}: no host runs service '{svc['name']}' there (its group and the flow's to have no host "
                    "in common), so the flow allows nothing: fix to, or the service's group"
                )
                continue
            if host not in dest:
                continue
            unique = list(dict.fromkeys(nets))
            allowed.append(
                {
                    "flow": name,
                    "service": svc["name"],
                    "protocol": svc["proto"],
                    "port": svc["port"],
                    "port_end": svc["end"],
                    "from": [n.with_prefixlen for n in unique],
                    "ipv4": [_label(n) for n in unique if n.version == 4],
                    "ipv6": [_label(n) for n in unique if n.version == 6],
                }
            )
            accepts += [(net, svc, name) for net in unique]

    exempt_nets: list[IPNetwork] = []
    for entry in _as_list(ssh_exempt) or []:
        exempt_nets += policy.resolve(entry, "firewall_ssh_rate_limit_exempt")

    lockout = _lockout(policy, accepts, ssh, admin_networks) if lockout_guard else []

    result: dict[str, Any] = {"problems": problems, "lockout": lockout, "allowed": allowed}
    for family in (4, 6):
        result[f"ipv{family}"] = {
            "chains": _chains(
                family,
                accepts,
                ssh,
                exempt_nets,
                ssh_rate_limit=ssh_rate_limit,
                seconds=ssh_rate_limit_seconds,
                hitcount=ssh_rate_limit_hitcount,
                allow_ping=allow_ping,
                deny_action=deny_action,
                log_denied=log_denied,
                log_limit=log_limit,
                docker_user=docker_user,
                interfaces=[str(i) for i in interfaces],
            )
        }
    return result


def _lockout(
    policy: Policy, accepts: list[tuple[IPNetwork, dict[str, Any], str]], ssh: dict[str, Any] | None, admins: Any
) -> list[str]:
    host = policy.host
    admin_list = _as_list(admins)
    if not admin_list:
        return [
            f"{host}: cluster_admin_networks (firewall_admin_networks) is empty, so no administrator could be "
            "allowed SSH: list where operators and the Ansible controller connect from"
        ]
    if ssh is None:
        return []
    if host not in ssh["hosts"]:
        return [
            f"{host}: the service catalogue says SSH ({ssh['name']}) does not listen on {host} (its group leaves the "
            "host out), so no flow can allow it: administrators would be locked out"
        ]
    problems = []
    for entry in admin_list:
        admin, error = parse_network(str(entry))
        if admin is None:
            policy.problems.append(f"cluster_admin_networks: '{entry}' {error}")
            continue
        covered = any(
            net.version == admin.version
            and admin.subnet_of(net)  # type: ignore[arg-type]
            and svc["proto"] == "tcp"
            and svc["port"] <= ssh["port"] <= svc["end"]
            for net, svc, _ in accepts
        )
        if not covered:
            problems.append(
                f"{host}: firewall_flows allow no SSH (tcp/{ssh['port']}) from admin network {admin.with_prefixlen} "
                "(cluster_admin_networks): the administrators and the Ansible controller would be locked out. "
                f"Keep a flow such as {{name: admin-ssh, services: [{ssh['name']}], from: <cluster_admin_networks>}}, "
                "or correct cluster_admin_networks"
            )
    return problems


def _ports(svc: Mapping[str, Any]) -> str:
    return str(svc["port"]) if svc["port"] == svc["end"] else f"{svc['port']}:{svc['end']}"


def _chains(
    family: int,
    accepts: list[tuple[IPNetwork, dict[str, Any], str]],
    ssh: dict[str, Any] | None,
    exempt: list[IPNetwork],
    *,
    ssh_rate_limit: bool,
    seconds: int,
    hitcount: int,
    allow_ping: bool,
    deny_action: str,
    log_denied: bool,
    log_limit: str,
    docker_user: bool,
    interfaces: list[str],
) -> list[dict[str, Any]]:
    deny = f"-j {deny_action}"
    inp = [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {_comment('replies and related traffic')} -j ACCEPT",
        f"-i lo {_comment('loopback')} -j ACCEPT",
        f"-m conntrack --ctstate INVALID {_comment('invalid packets')} -j DROP",
    ]
    if family == 4:
        inp += [f"-p icmp -m icmp --icmp-type {t} {_comment(c)} -j ACCEPT" for t, c in ICMP4]
        if allow_ping:
            inp.append(f"-p icmp -m icmp --icmp-type 8 {_comment('ping')} -j ACCEPT")
    else:
        inp += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} {_comment(c)} -j ACCEPT" for t, c in ICMP6]
        if allow_ping:
            inp.append(f"-p ipv6-icmp -m icmp6 --icmpv6-type 128 {_comment('ping')} -j ACCEPT")
        inp += [
            f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -m hl --hl-eq 255 {_comment('NDP ' + c)} -j ACCEPT"
            for t, c in NDP
        ]
        inp += [f"-s fe80::/10 -p ipv6-icmp -m icmp6 --icmpv6-type {t} {_comment(c)} -j ACCEPT" for t, c in MLD]
    docker = [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {_comment('replies and related traffic')} -j RETURN",
        *(f"-i {i} {_comment('from containers')} -j RETURN" for i in interfaces),
    ]
    done: set[tuple[str, ...]] = set()
    for net, svc, flow in accepts:
        if net.version != family:
            continue
        is_ssh = ssh is not None and svc["name"] == ssh["name"]
        target = CHAIN_SSH if is_ssh else "ACCEPT"
        key = (net.with_prefixlen, svc["proto"], _ports(svc), target)
        if key in done:
            continue
        done.add(key)
        proto, ports, note = svc["proto"], _ports(svc), _comment(f"{flow}: {svc['name']}")
        inp.append(f"{_src(net)}-p {proto} -m {proto} --dport {ports} {note} -j {target}")
        docker.append(f"{_src(net)}-p {proto} -m conntrack --ctorigdstport {ports} {note} -j RETURN")
    if log_denied:
        prefix = "cluster-fw denied: "
        inp.append(f'-m limit --limit {log_limit} -j LOG --log-prefix "{prefix}"')
    inp.append(f"{_comment('everything else: denied')} {deny}")
    docker += [f"-o {i} {_comment('everything else into containers: denied')} {deny}" for i in interfaces]

    ssh_rules = [
        f"{_src(net)}{_comment('exempt from the SSH rate limit')} -j ACCEPT" for net in _unique(exempt, family)
    ]
    if ssh_rate_limit:
        name = RECENT_NAME[family]
        ssh_rules += [
            f"-m conntrack --ctstate NEW -m recent --set --name {name} --rsource "
            + _comment("count new SSH connections"),
            f"-m conntrack --ctstate NEW -m recent --update --seconds {seconds} --hitcount {hitcount} --name {name} "
            f"--rsource {_comment(f'SSH rate limit: {hitcount} new connections in {seconds}s')} -j DROP",
        ]
    ssh_rules.append(f"{_comment('SSH allowed')} -j ACCEPT")

    chains = [{"name": CHAIN_INPUT, "rules": inp}, {"name": CHAIN_SSH, "rules": ssh_rules}]
    if docker_user:
        chains.append({"name": CHAIN_DOCKER, "rules": docker})
    return chains


def _unique(nets: list[IPNetwork], family: int) -> list[IPNetwork]:
    return [n for n in dict.fromkeys(nets) if n.version == family]


def host_addresses(hostvars: Mapping[str, Any], hosts: Iterable[str]) -> dict[str, list[str]]:
    """host -> the addresses the firewall uses for it (for reports and tests)."""
    policy = Policy("", {"all": list(hosts)}, hostvars, {}, [])
    return {h: [n.with_prefixlen for n in policy.host_addresses(h)] for h in hosts}


def firewall_policy(flows: Any, **kwargs: Any) -> dict[str, Any]:
    return compile_policy(flows, **kwargs)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"firewall_policy": firewall_policy, "firewall_host_addresses": host_addresses}
