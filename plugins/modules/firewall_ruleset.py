#!/usr/bin/python
"""Ansible module: compare the firewall role's own chains in force with the policy; stage the fix."""

from __future__ import annotations

DOCUMENTATION = r"""
module: firewall_ruleset
short_description: Compare the firewall's own iptables chains in force with the wanted rules, and stage the fix
description:
  - Reads the filter table with C(iptables-save) / C(ip6tables-save) and keeps only the named chains
    and the jumps into them (C(-A INPUT -j CHAIN), C(-A DOCKER-USER -j CHAIN)). Every other chain
    (Docker's, Kubernetes', an operator's) is ignored and never touched.
  - The wanted rules are put into the same form by restoring them into a throwaway network
    namespace (C(unshare --net)) and saving them again, so the comparison is exact whatever
    spelling the rules file uses.
  - Never changes the firewall. When the chains or hooks differ, and not in check mode, it writes
    an C(iptables-restore --noflush) input per family that rewrites those chains and adds a
    missing hook or deletes a duplicate one in one transaction; the caller restores it (for
    example with community.general.iptables_state and its rollback).
  - Reports C(changed) when the host differs from the policy, with the difference in diff mode.
options:
  rules:
    description:
      - Per family (V(ipv4), V(ipv6)), the iptables-restore text of the filter table that declares and
        fills the role's chains. A family left out is not compared.
    type: dict
    required: true
  hooks:
    description:
      - Jumps into the role's chains. C(chain) is the built-in or foreign chain, C(target) ours.
        With C(if_exists), the hook is wanted only while the chain exists (DOCKER-USER).
    type: list
    elements: dict
    required: true
  stage_dir:
    description: Where the restore inputs are written (mode 0700), as C(apply.v4) / C(apply.v6).
    type: path
    default: /run/cluster-firewall
requirements: [iptables, unshare (util-linux), root]
"""

EXAMPLES = r"""
- name: Compare the rules in force with the policy
  firewall_ruleset:
    rules:
      ipv4: "{{ lookup('ansible.builtin.template', 'etc/cluster-firewall/rules.v4.j2') }}"
    hooks:
      - {chain: INPUT, target: CLUSTER-FW-INPUT}
      - {chain: DOCKER-USER, target: CLUSTER-FW-DOCKER, if_exists: true}
  register: ruleset
"""

RETURN = r"""
families:
  description: Per family compared, C(in_sync), C(staged) (the restore input path, or null) and C(hooks).
  type: dict
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule

TOOLS = {"ipv4": ("iptables-save", "iptables-restore"), "ipv6": ("ip6tables-save", "ip6tables-restore")}
STAGE_NAME = {"ipv4": "apply.v4", "ipv6": "apply.v6"}


def filter_table(save_text: str) -> list[str]:
    """The lines of the *filter section of iptables-save output (without comments)."""
    out, inside = [], False
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            inside = line == "*filter"
            continue
        if inside and line == "COMMIT":
            inside = False
            continue
        if inside and line and not line.startswith("#"):
            out.append(line)
    return out


def declared_chains(lines: list[str]) -> list[str]:
    return [line[1:].split()[0] for line in lines if line.startswith(":")]


def hook_line(hook: dict) -> str:
    return f"-A {hook['chain']} -j {hook['target']}"


def ours(lines: list[str], chains: list[str], hooks: list[dict]) -> tuple[list[str], dict[str, int]]:
    """Our chains (declaration and rules, in saved order) and how often each hook appears."""
    wanted = set(chains)
    body = []
    for line in lines:
        if line.startswith(":") and line[1:].split()[0] in wanted:
            body.append(":" + line[1:].split()[0])
        elif line.startswith("-A ") and line.split()[1] in wanted:
            body.append(line)
    counts = {hook_line(h): lines.count(hook_line(h)) for h in hooks}
    return body, counts


def render(body: list[str], counts: dict[str, int]) -> str:
    hooks = [line for line, n in sorted(counts.items()) for _ in range(n)]
    return "\n".join(["# jumps into the role's chains", *hooks, "# the role's chains", *body]) + "\n"


def hook_fixes(hooks: list[dict], counts: dict[str, int], present: set[str]) -> list[str]:
    """Restore lines that leave exactly one jump per wanted hook."""
    fixes = []
    for hook in hooks:
        line = hook_line(hook)
        if hook.get("if_exists") and hook["chain"] not in present:
            continue
        n = counts.get(line, 0)
        if n == 0:
            fixes.append(f"-I {hook['chain']} 1 -j {hook['target']}")
        fixes += [f"-D {hook['chain']} -j {hook['target']}"] * max(0, n - 1)
    return fixes


def stage_text(rules: str, fixes: list[str]) -> str:
    """The rules with the hook fixes inside the same transaction (before the last COMMIT)."""
    lines = rules.rstrip("\n").splitlines()
    last = max(i for i, line in enumerate(lines) if line.strip() == "COMMIT")
    return "\n".join(lines[:last] + fixes + lines[last:]) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "rules": {"type": "dict", "required": True},
            "hooks": {"type": "list", "elements": "dict", "required": True},
            "stage_dir": {"type": "path", "default": "/run/cluster-firewall"},
        },
        supports_check_mode=True,
    )
    module.run_command_environ_update = {"LANGUAGE": "C", "LC_ALL": "C"}
    rules: dict = module.params["rules"]
    hooks: list[dict] = module.params["hooks"]
    stage_dir: str = module.params["stage_dir"]
    unknown = sorted(set(rules) - set(TOOLS))
    if unknown:
        module.fail_json(msg=f"rules: unknown families {unknown}; use ipv4 and ipv6")
    for hook in hooks:
        if not isinstance(hook.get("chain"), str) or not isinstance(hook.get("target"), str):
            module.fail_json(msg=f"hooks: each needs chain and target, got {hook!r}")
    unshare = module.get_bin_path("unshare", required=True)

    families: dict[str, dict] = {}
    before, after = [], []
    for family in ("ipv4", "ipv6"):
        if family not in rules:
            continue
        text = str(rules[family])
        if family == "ipv6" and not os.path.exists("/proc/net/if_inet6"):
            module.fail_json(msg="IPv6 is disabled in this kernel: set firewall_ipv6: false for this host")
        if "COMMIT" not in text.split():
            module.fail_json(msg=f"rules.{family} has no COMMIT line: it is not an iptables-restore input")
        save_bin = module.get_bin_path(TOOLS[family][0], required=True)
        restore_bin = module.get_bin_path(TOOLS[family][1], required=True)
        rc, live_text, err = module.run_command([save_bin, "-t", "filter"])
        if rc != 0:
            module.fail_json(msg=f"{save_bin} -t filter failed: {err.strip()}", rc=rc)
        rc, want_text, err = module.run_command(
            [unshare, "--net", "--", "sh", "-c", '"$1" && "$2" -t filter', "sh", restore_bin, save_bin], data=text
        )
        if rc != 0:
            module.fail_json(
                msg=(
                    f"the {family} rules could not be loaded into a scratch network namespace (unshare --net, needs "
                    f"root): {err.strip()}"
                ),
                rc=rc,
            )
        want_lines = filter_table(want_text)
        chains = [c for c in declared_chains(want_lines) if c not in ("INPUT", "FORWARD", "OUTPUT")]
        live_lines = filter_table(live_text)
        present = set(declared_chains(live_lines))
        live_body, live_counts = ours(live_lines, chains, hooks)
        want_body, _ = ours(want_lines, chains, [])
        want_counts = {hook_line(h): 1 for h in hooks if not (h.get("if_exists") and h["chain"] not in present)}
        have = render(live_body, {k: v for k, v in live_counts.items() if v})
        want = render(want_body, want_counts)
        in_sync = have == want
        header = f"# {family} filter table\n"
        before.append(header + have)
        after.append(header + want)
        staged = None
        path = os.path.join(stage_dir, STAGE_NAME[family])
        if not in_sync and not module.check_mode:
            os.makedirs(stage_dir, mode=0o700, exist_ok=True)
            fixes = hook_fixes(hooks, live_counts, present)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(stage_text(text, fixes))
            staged = path
        elif in_sync and not module.check_mode and os.path.exists(path):
            os.remove(path)  # a stale input from an interrupted run; nothing to apply
        families[family] = {
            "in_sync": in_sync,
            "staged": staged,
            "hooks": {line: live_counts.get(line, 0) for line in map(hook_line, hooks)},
        }

    changed = not all(f["in_sync"] for f in families.values())
    result = {"changed": changed, "families": families}
    if changed:
        drifted = [f for f, v in families.items() if not v["in_sync"]]
        result["msg"] = f"the rules in force differ from the policy ({', '.join(drifted)})"
    else:
        result["msg"] = "the rules in force match the policy"
    if module._diff:
        result["diff"] = {
            "before_header": "rules in force (iptables-save)",
            "after_header": "rules of the policy",
            "before": "".join(before),
            "after": "".join(after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
