#!/usr/bin/python
"""Module: which ModSecurity rules (by id) inspect given variables, read from rule files."""

from __future__ import annotations

DOCUMENTATION = r"""
module: modsecurity_rule_targets
short_description: List the ids of ModSecurity rules that inspect given variables
description:
  - Reads ModSecurity rule files (such as OWASP CRS's) and returns, for each variable in
    O(variables), the ids of the C(SecRule)s that carry O(tag) and name that variable among
    their targets. Chained rules have no id of their own and are not listed.
  - The reason is cost. libmodsecurity v3 checks every C(SecRuleUpdateTargetByTag) and every
    C(ctl:ruleRemoveTargetByTag) on every rule of every request, evaluating the rule's tags
    each time; the same exclusion written per rule id costs a number comparison. The
    edge_proxy role writes its exclusions by id from this list, which keeps them right
    for whichever CRS version the distribution ships.
  - Reads only; supports check mode.
options:
  files:
    description: The rule files, in load order.
    type: list
    elements: path
    required: true
  variables:
    description: Variable (collection) names, such as C(ARGS) or C(REQUEST_BODY). A rule
      counts when a target is the collection itself or one of its elements (C(ARGS:name));
      excluded (C(!ARGS:x)) and counted (C(&ARGS)) targets do not count.
    type: list
    elements: str
    required: true
  tag:
    description: Only rules with this tag (empty means every rule).
    type: str
    default: OWASP_CRS
"""

RETURN = r"""
ids:
  description: For each variable, the ids of the rules that inspect it, in ascending order.
  type: dict
  returned: success
  sample: {ARGS: [913120, 920230], REQUEST_BODY: [920260]}
rules:
  description: How many rules with an id (and the tag) the files hold.
  type: int
  returned: success
"""

import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule

_SECRULE = re.compile(r"^\s*SecRule\s+(?P<targets>\"[^\"]*\"|\S+)\s+(?P<rest>.*)$", re.IGNORECASE)
_ID = re.compile(r"(?:^|[\s\",])id:'?(\d+)")
_TAG = re.compile(r"(?:^|[\s\",])tag:'([^']*)'|(?:^|[\s\",])tag:([^,\"\s]+)")


def directives(text: str) -> list[str]:
    """The file's directives, one per line: continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def rule_targets(text: str, tag: str = "") -> dict[int, set[str]]:
    """{rule id: the collections it inspects} for the SecRules with an id (and the tag)."""
    found: dict[int, set[str]] = {}
    for directive in directives(text):
        m = _SECRULE.match(directive)
        if not m:
            continue
        rest = m.group("rest")
        rid = _ID.search(rest)
        if not rid:
            continue  # a chained rule: it belongs to the rule before it
        tags = {a or b for a, b in _TAG.findall(rest)}
        if tag and tag not in tags:
            continue
        collections = set()
        for raw in m.group("targets").strip('"').split("|"):
            target = raw.strip()
            if not target or target[0] in "!&":
                continue
            collections.add(target.split(":", 1)[0].upper())
        found[int(rid.group(1))] = collections
    return found


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {"type": "list", "elements": "path", "required": True},
            "variables": {"type": "list", "elements": "str", "required": True},
            "tag": {"type": "str", "default": "OWASP_CRS"},
        },
        supports_check_mode=True,
    )
    rules: dict[int, set[str]] = {}
    for path in module.params["files"]:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                rules.update(rule_targets(handle.read(), module.params["tag"]))
        except OSError as err:
            module.fail_json(msg=f"cannot read the rule file {path}: {err.strerror}")
    wanted = [v.upper() for v in module.params["variables"]]
    ids: dict[str, Any] = {v: sorted(rid for rid, cols in rules.items() if v in cols) for v in wanted}
    module.exit_json(changed=False, ids=ids, rules=len(rules))


if __name__ == "__main__":
    main()
