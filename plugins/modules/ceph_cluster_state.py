#!/usr/bin/python
"""Module: the cluster-wide state of a Ceph cluster that drifts: pools, CRUSH rule, OSDs in, mgr modules."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ceph_cluster_state
short_description: Keep a Ceph cluster's replication, CRUSH rule, OSDs and manager modules as declared
description:
  - Reads the cluster with the C(ceph) CLI (JSON output, the admin keyring of the host) and
    changes only what differs, so a re-run repairs drift and C(--check --diff) reports it
    without changing anything.
  - B(CRUSH rule) C(replicated_<failure_domain>) (a replicated rule under the root C(default)
    that places each copy in a different O(failure_domain)); created when missing. Rules
    are never edited; another failure domain is another rule, and the pools move to it.
  - B(Pools) (every pool of the cluster, including those RGW creates) get C(size),
    C(min_size) and the CRUSH rule above, which is also made the rule of pools created
    later (C(osd_pool_default_crush_rule)).
  - B(OSDs) that are up but marked out (an operator's C(ceph osd out), a forgotten
    maintenance) are marked in again. An OSD that is down and out is a failure, not drift;
    it is reported in C(osds_down) and left to the operator.
  - B(Manager modules) in O(mgr_modules) are enabled.
options:
  failure_domain:
    description:
      - CRUSH bucket type each replica must differ in (C(host) on real sites; C(osd) lets a
        one-host lab hold 3 copies).
    type: str
    choices: [host, osd]
    default: host
  size:
    description: Replicas of every pool.
    type: int
    default: 3
  min_size:
    description: Replicas that must be written before a write is acknowledged.
    type: int
    default: 2
  mgr_modules:
    description: Manager modules to enable.
    type: list
    elements: str
    default: []
  cluster:
    description: Cluster name (configuration C(/etc/ceph/<cluster>.conf)).
    type: str
    default: ceph
"""

RETURN = r"""
actions:
  description: The changes made (or, in check mode, that would be made), one line each.
  type: list
  returned: always
osds_down:
  description: OSDs that are down (ids), not repaired by this module.
  type: list
  returned: always
"""

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def rule_name(failure_domain: str) -> str:
    return f"replicated_{failure_domain}"


def plan(state: dict[str, Any], want: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(description, ceph arguments) for every change from `state` to `want`. Pure: unit tested.

    `state`: {"rules": {name: id}, "default_rule": id or -1, "pools": [{"pool_name", "size",
    "min_size", "crush_rule"}], "osds": [{"osd", "up", "in"}], "mgr_modules": [enabled names]}.
    While the rule does not exist, its id is not known: main() creates it first and plans
    again (check mode reports the steps with the id as "?")."""
    steps: list[tuple[str, list[str]]] = []
    rule = rule_name(want["failure_domain"])
    if rule not in state["rules"]:
        steps.append(
            (
                f"create CRUSH rule {rule} (one copy per {want['failure_domain']})",
                ["osd", "crush", "rule", "create-replicated", rule, "default", want["failure_domain"]],
            )
        )
    rule_id = state["rules"].get(rule)
    if rule_id is None or state["default_rule"] != rule_id:
        steps.append(
            (
                f"new pools get CRUSH rule {rule}",
                [
                    "config",
                    "set",
                    "global",
                    "osd_pool_default_crush_rule",
                    str(rule_id if rule_id is not None else "?"),
                ],
            )
        )
    for pool in state["pools"]:
        name = pool["pool_name"]
        if rule_id is None or pool["crush_rule"] != rule_id:
            steps.append((f"pool {name}: CRUSH rule -> {rule}", ["osd", "pool", "set", name, "crush_rule", rule]))
        # size before min_size: min_size may not exceed size.
        if pool["size"] != want["size"]:
            steps.append(
                (
                    f"pool {name}: size {pool['size']} -> {want['size']}",
                    ["osd", "pool", "set", name, "size", str(want["size"])],
                )
            )
        if pool["min_size"] != want["min_size"]:
            steps.append(
                (
                    f"pool {name}: min_size {pool['min_size']} -> {want['min_size']}",
                    ["osd", "pool", "set", name, "min_size", str(want["min_size"])],
                )
            )
    for osd in state["osds"]:
        if osd["up"] and not osd["in"]:
            steps.append((f"osd.{osd['osd']} is up but out: mark it in", ["osd", "in", str(osd["osd"])]))
    for module in want["mgr_modules"]:
        if module not in state["mgr_modules"]:
            steps.append((f"enable manager module {module}", ["mgr", "module", "enable", module]))
    return steps


class Ceph:
    def __init__(self, module: AnsibleModule, cluster: str) -> None:
        self.module = module
        self.base = [module.get_bin_path("ceph", required=True), "--cluster", cluster, "--connect-timeout", "30"]

    def run(self, args: list[str]) -> str:
        rc, out, err = self.module.run_command([*self.base, *args])
        if rc != 0:
            self.module.fail_json(msg=f"`ceph {' '.join(args)}` failed (rc {rc}): {err.strip() or out.strip()}")
        return out

    def read(self, args: list[str]) -> Any:
        return json.loads(self.run([*args, "--format", "json"]))

    def state(self) -> dict[str, Any]:
        rules = {r["rule_name"]: r["rule_id"] for r in self.read(["osd", "crush", "rule", "dump"])}
        dump = self.read(["osd", "dump"])
        modules = self.read(["mgr", "module", "ls"])
        default_rule = self.run(["config", "get", "mon", "osd_pool_default_crush_rule"]).strip()
        return {
            "rules": rules,
            "default_rule": int(default_rule) if default_rule.lstrip("-").isdigit() else -1,
            "pools": dump["pools"],
            "osds": dump["osds"],
            "mgr_modules": list(modules.get("enabled_modules", [])) + list(modules.get("always_on_modules", [])),
        }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "failure_domain": {"type": "str", "choices": ["host", "osd"], "default": "host"},
            "size": {"type": "int", "default": 3},
            "min_size": {"type": "int", "default": 2},
            "mgr_modules": {"type": "list", "elements": "str", "default": []},
            "cluster": {"type": "str", "default": "ceph"},
        },
        supports_check_mode=True,
    )
    want = module.params
    if not 1 <= want["min_size"] <= want["size"]:
        module.fail_json(msg=f"min_size {want['min_size']} must be between 1 and size ({want['size']})")
    ceph = Ceph(module, want["cluster"])
    state = ceph.state()
    steps = plan(state, want)
    if not module.check_mode and steps:
        if rule_name(want["failure_domain"]) not in state["rules"]:
            ceph.run(steps[0][1])  # the rule first: the other steps need its id
            steps = steps[:1] + plan(ceph.state(), want)
            for _, args in steps[1:]:
                ceph.run(args)
        else:
            for _, args in steps:
                ceph.run(args)
    down = [o["osd"] for o in state["osds"] if not o["up"]]
    actions = [text for text, _ in steps]
    module.exit_json(
        changed=bool(steps),
        actions=actions,
        osds_down=down,
        diff={"before": "", "after": "".join(f"{a}\n" for a in actions)} if steps else {},
    )


if __name__ == "__main__":
    main()
