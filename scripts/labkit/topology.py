"""The lab's hosts: read from inventories/lab/topology.yml, written out as the inventory.

`topology.yml` names every host, its zone, its function groups and its host number on the
lab network. `scripts/lab up` creates exactly those containers and writes `hosts.yml` so
that `ansible-playbook -i inventories/lab` reaches them. LLMLAB_INSTANCE=N moves a whole
second lab onto its own network and container names, so two can run side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .shell import LabError

# Hosts in this group run containers: their /var/lib/docker is a Docker volume.
CONTAINER_HOSTS_GROUP = "container_hosts"
INSTANCE_ENV = "LLMLAB_INSTANCE"


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    zone: str
    groups: tuple[str, ...]

    @property
    def runs_containers(self) -> bool:
        return CONTAINER_HOSTS_GROUP in self.groups


@dataclass(frozen=True)
class LabNetwork:
    name: str
    subnet: str
    gateway: str


@dataclass(frozen=True)
class Topology:
    instance: int
    network: LabNetwork
    hosts: tuple[LabHost, ...]
    zones: tuple[str, ...]
    group_children: dict[str, tuple[str, ...]]
    # Groups the site's playbooks name that the lab leaves without hosts (written as empty
    # groups, so a play for one says "no hosts matched" rather than warning of a bad pattern).
    empty_groups: tuple[str, ...] = ()

    @property
    def container_prefix(self) -> str:
        return "llmlab-" if self.instance == 0 else f"llmlab{self.instance}-"

    def container(self, host: str) -> str:
        return self.container_prefix + host


def instance_number() -> int:
    raw = os.environ.get(INSTANCE_ENV, "0") or "0"
    if not raw.isdigit() or not 0 <= int(raw) <= 15:
        raise LabError(f"{INSTANCE_ENV}={raw!r}: use a number from 0 to 15")
    return int(raw)


def load(topology_file: Path, instance: int | None = None) -> Topology:
    instance = instance_number() if instance is None else instance
    spec: dict[str, Any] = yaml.safe_load(topology_file.read_text())
    octet = int(spec["network"].get("third_octet_base", 240)) + instance
    base = f"172.31.{octet}"
    name = spec["network"]["name"] + (str(instance) if instance else "")
    network = LabNetwork(name=name, subnet=f"{base}.0/24", gateway=f"{base}.1")
    hosts, zones = [], []
    for host, h in spec["hosts"].items():
        number = int(h["number"])
        if not 2 <= number <= 254:
            raise LabError(f"{topology_file}: host {host} number {number} must be 2..254")
        zones.append(h["zone"])
        member = {h["zone"], *h.get("groups", [])}
        for parent, children in (spec.get("group_children") or {}).items():
            if member & set(children):
                member.add(parent)
        hosts.append(LabHost(host, f"{base}.{number}", h["zone"], tuple(sorted(member))))
    addresses = [h.address for h in hosts]
    if len(set(addresses)) != len(addresses):
        raise LabError(f"{topology_file}: two hosts share a host number")
    return Topology(
        instance=instance,
        network=network,
        hosts=tuple(hosts),
        zones=tuple(dict.fromkeys(zones)),
        group_children={k: tuple(v) for k, v in (spec.get("group_children") or {}).items()},
        empty_groups=tuple(spec.get("empty_groups") or ()),
    )


def inventory(topo: Topology) -> dict[str, Any]:
    """The Ansible YAML inventory for this topology (written to inventories/lab/hosts.yml)."""
    children: dict[str, Any] = {}
    for zone in topo.zones:
        children[zone] = {"hosts": {h.name: {"ansible_host": h.address} for h in topo.hosts if h.zone == zone}}
    plain_groups = sorted({g for h in topo.hosts for g in h.groups} - set(topo.zones) - set(topo.group_children))
    for group in plain_groups:
        children[group] = {"hosts": {h.name: None for h in topo.hosts if group in h.groups}}
    for parent, kids in topo.group_children.items():
        children[parent] = {"children": {k: None for k in kids}}
    for group in topo.empty_groups:
        children.setdefault(group, {})
    return {
        "all": {
            "vars": {
                "lab_instance": topo.instance,
                "lab_network": {
                    "name": topo.network.name,
                    "subnet": topo.network.subnet,
                    "gateway": topo.network.gateway,
                },
                # Each host's address, for settings that name another host's (without hostvars,
                # which preflight's evaluation of the inventory does not have).
                "lab_addresses": {h.name: h.address for h in topo.hosts},
            },
            "children": children,
        }
    }


def write_inventory(topo: Topology, path: Path) -> bool:
    """Write hosts.yml; True when its content changed."""
    body = "# Written by `scripts/lab up` from topology.yml; edit topology.yml instead.\n" + yaml.safe_dump(
        inventory(topo), sort_keys=False, default_flow_style=False
    )
    if path.exists() and path.read_text() == body:
        return False
    path.write_text(body)
    return True
