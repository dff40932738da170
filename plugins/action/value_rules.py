"""Action plugin and rule engine: the value rules of a role's settings (meta/value_rules.yml).

Ansible's argument specs say a setting's type and choices; the value rules say what a value
of that type must also be: a range, a pattern, a list's length, unique items, an IP address
or network, a port. One file per role, beside meta/argument_specs.yml, is the source of
truth, read by three users:
  * preflight (cluster_inventory_check) checks every value the inventory sets, for every
    host, before any host is contacted;
  * the role itself, at its start, through this action (`value_rules: {path: ...}`), so a
    role run alone refuses bad input too (defaults included);
  * scripts/role-docs writes each setting's rules into the role README's variables table.

    value_rules:
      edge_proxy_waf_paranoia_level: {min: 1, max: 4}
      llm_serving_port_first: {port: true, at_most: llm_serving_port_last}
      cluster_admin_networks: {min_items: 1, unique: true, elements: {ip_network: true}}

Rules: min, max (numbers); non_empty; regex (full match, on strings); min_items, max_items,
unique, unique_by (lists); ip_address, ip_network (strict: no host bits), port (1-65535);
at_most / below (another setting of the same rules file: ordered pairs); elements (rules for
each list item), options (rules for the keys of a dict or of each dict of a list), keys and
values (rules for a dict's keys and values); secret (never show the value); fix (the
sentence that tells the operator what to do; a generic one is written otherwise).
Only broken rules are reported, each naming the setting, the value, the rule and the fix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase

RULES_FILE = "meta/value_rules.yml"
CHECKS = frozenset(
    {
        "min",
        "max",
        "non_empty",
        "regex",
        "min_items",
        "max_items",
        "unique",
        "unique_by",
        "ip_address",
        "ip_network",
        "port",
        "at_most",
        "below",
    }
)
NESTING = frozenset({"elements", "options", "keys", "values"})
ANNOTATIONS = frozenset({"secret", "fix"})
_SHOWN = 80


class RuleError(ValueError):
    """A rules file that does not follow the format (a toolkit bug, not an inventory one)."""


def validate_rules(rules: Any, where: str) -> None:
    """Refuse unknown rule names and wrong shapes, so a typo in a rules file is not a no-op."""
    if not isinstance(rules, Mapping):
        raise RuleError(f"{where}: rules must be a mapping")
    unknown = set(rules) - CHECKS - NESTING - ANNOTATIONS
    if unknown:
        raise RuleError(f"{where}: unknown rule(s) {', '.join(sorted(unknown))}")
    if "regex" in rules:
        re.compile(rules["regex"])
    for key in ("elements", "keys", "values"):
        if key in rules:
            validate_rules(rules[key], f"{where}.{key}")
    for sub, sub_rules in (rules.get("options") or {}).items():
        validate_rules(sub_rules, f"{where}.{sub}")


def load_rules_file(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text()) or {}
    rules = data.get("value_rules") or {}
    for name, rule in rules.items():
        validate_rules(rule, f"{path}: {name}")
    return rules


def load_all_rules(roles_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Map role name -> {setting: rules}, from every role's meta/value_rules.yml."""
    return {f.parents[1].name: load_rules_file(f) for f in sorted(roles_dir.glob(f"*/{RULES_FILE}"))}


def show(value: Any, rules: Mapping[str, Any]) -> str:
    if rules.get("secret"):
        return "(a secret value, not shown)"
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def describe(rules: Mapping[str, Any]) -> str:
    """The rules in words, for READMEs and messages."""
    parts = [b for b in (_bounds(rules, "min", "max", ""), _bounds(rules, "min_items", "max_items", " item(s)")) if b]
    if rules.get("port"):
        parts.append("a port (1-65535)")
    if rules.get("non_empty"):
        parts.append("not empty")
    if "regex" in rules:
        parts.append(f"matches `{rules['regex']}`")
    if rules.get("unique"):
        parts.append("no duplicates")
    if "unique_by" in rules:
        parts.append(f"unique {'/'.join(_as_list(rules['unique_by']))}")
    if rules.get("ip_address"):
        parts.append("an IP address")
    if rules.get("ip_network"):
        parts.append("a network in CIDR form (e.g. 192.0.2.0/24)")
    if "at_most" in rules:
        parts.append(f"at most `{rules['at_most']}`")
    if "below" in rules:
        parts.append(f"less than `{rules['below']}`")
    if "elements" in rules:
        parts.append(f"each item {describe(rules['elements'])}")
    if "keys" in rules:
        parts.append(f"each key {describe(rules['keys'])}")
    if "values" in rules:
        parts.append(f"each value {describe(rules['values'])}")
    for sub, sub_rules in (rules.get("options") or {}).items():
        parts.append(f"`{sub}` {describe(sub_rules)}")
    return "; ".join(parts)


def _bounds(rules: Mapping[str, Any], low: str, high: str, unit: str) -> str | None:
    if low in rules and high in rules:
        return f"{rules[low]} to {rules[high]}{unit}"
    if low in rules:
        return f"at least {rules[low]}{unit}"
    if high in rules:
        return f"at most {rules[high]}{unit}"
    return None


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if _is_number(value):
        return value
    if isinstance(value, str):
        try:
            return float(value) if "." in value else int(value)
        except ValueError:
            return None
    return None


def _broken(rules: Mapping[str, Any], value: Any, others: Mapping[str, Any]) -> list[str]:
    """The rules (of this level, not nested) that the value breaks, in words."""
    out: list[str] = []
    num = _number(value)
    if ("min" in rules or "max" in rules or rules.get("port")) and num is None:
        return ["must be a number"]
    if "min" in rules and num < rules["min"]:
        out.append(f"must be at least {rules['min']}")
    if "max" in rules and num > rules["max"]:
        out.append(f"must be at most {rules['max']}")
    if rules.get("port") and not (isinstance(num, int) and 1 <= num <= 65535):
        out.append("must be a port number, 1-65535")
    for key, word, test in (("at_most", "at most", lambda a, b: a <= b), ("below", "less than", lambda a, b: a < b)):
        if key in rules and rules[key] in others:
            other = _number(others[rules[key]])
            if num is not None and other is not None and not test(num, other):
                out.append(f"must be {word} {rules[key]} ({other})")
    if rules.get("non_empty") and (value is None or (hasattr(value, "__len__") and len(value) == 0)):
        out.append("must not be empty")
    if "regex" in rules and not (isinstance(value, str) and re.fullmatch(rules["regex"], value)):
        out.append(f"must match {rules['regex']}")
    if isinstance(value, (list, tuple)):
        if "min_items" in rules and len(value) < rules["min_items"]:
            out.append(f"must have at least {rules['min_items']} item(s) (has {len(value)})")
        if "max_items" in rules and len(value) > rules["max_items"]:
            out.append(f"must have at most {rules['max_items']} items (has {len(value)})")
        if rules.get("unique"):
            seen: list[Any] = []
            dups = [v for v in value if v in seen or seen.append(v)]  # type: ignore[func-returns-value]
            if dups:
                out.append(f"must not repeat an item (repeats {show(dups[0], rules)})")
        if "unique_by" in rules:
            for attr in _as_list(rules["unique_by"]):
                keys = [v.get(attr) for v in value if isinstance(v, Mapping) and v.get(attr) is not None]
                dups = sorted({str(k) for k in keys if keys.count(k) > 1})
                if dups:
                    out.append(f"must have a unique {attr} per item ({', '.join(dups)} repeated)")
    elif any(k in rules for k in ("min_items", "max_items", "unique", "unique_by")):
        out.append("must be a list")
    if rules.get("ip_address"):
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            out.append("must be an IP address (such as 192.0.2.10 or 2001:db8::10)")
    if rules.get("ip_network"):
        try:
            ipaddress.ip_network(str(value), strict=True)
        except ValueError as exc:
            reason = "has host bits set" if "host bits" in str(exc) else "is not a network"
            out.append(f"must be a network in CIDR form such as 192.0.2.0/24 ({reason})")
    return out


def check(name: str, value: Any, rules: Mapping[str, Any], others: Mapping[str, Any] | None = None) -> list[str]:
    """Every broken rule of `name` (a setting, or a path inside one), with the fix."""
    others = others or {}
    problems = []
    broken = _broken(rules, value, others)
    if broken:
        own = {k: v for k, v in rules.items() if k not in NESTING}
        fix = rules.get("fix") or f"set it to a value that is {describe(own)}"
        long_list = isinstance(value, (list, tuple)) and len(repr(value)) > _SHOWN
        shown = f"a list of {len(value)} items" if long_list else None
        problems.append(f"{name} is {shown or show(value, rules)}: it {' and '.join(broken)}. Fix: {fix}")
    secret = {"secret": True} if rules.get("secret") else {}
    if "elements" in rules and isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problems += check(f"{name}[{i}]", item, {**rules["elements"], **secret}, others)
    if "keys" in rules and isinstance(value, Mapping):
        for key in value:
            problems += check(f"{name} key {key!r}", key, rules["keys"], others)
    if "values" in rules and isinstance(value, Mapping):
        for key, item in value.items():
            problems += check(f"{name}.{key}", item, {**rules["values"], **secret}, others)
    if "options" in rules:
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, item in items:
            if not isinstance(item, Mapping):
                continue
            label = item.get("name", i) if i is not None else None
            base = name if label is None else f"{name}[{label}]"
            for sub, sub_rules in rules["options"].items():
                if sub in item:
                    problems += check(f"{base}.{sub}", item[sub], {**sub_rules, **secret}, item)
    return problems


def check_settings(rules: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]) -> list[str]:
    """Check the settings present in `values` against their rules (absent ones are skipped)."""
    problems = []
    for name in sorted(values):
        if name in rules:
            problems += check(name, values[name], rules[name], values)
    return problems


class ActionModule(ActionBase):
    """`value_rules: {path: "{{ role_path }}"}` at a role's start: its settings, defaults
    included, against its meta/value_rules.yml. Runs on the controller; changes nothing."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        rules_path = Path(self._task.args["path"]) / RULES_FILE
        try:
            rules = load_rules_file(rules_path)
        except (OSError, RuleError, re.error) as exc:
            raise AnsibleError(f"cannot read the value rules {rules_path}: {exc}") from exc
        values = {}
        for name in rules:
            if name in task_vars:
                try:
                    values[name] = self._templar.template(task_vars[name])
                except AnsibleError:
                    continue  # a default that needs facts this host lacks: the task that reads it says so
        problems = check_settings(rules, values)
        result["changed"] = False
        result["problems"] = problems
        if problems:
            result["failed"] = True
            result["msg"] = f"{len(problems)} setting(s) break their rules; nothing was changed:\n  - " + "\n  - ".join(
                problems
            )
        else:
            result["msg"] = f"{len(values)} setting(s) follow their rules"
        return result
