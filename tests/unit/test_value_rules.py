"""The value rules engine (plugins/action/value_rules.py) and every role's rules file."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT, load_plugin

rules_engine = load_plugin("plugins/action/value_rules.py")
ALL_RULES = rules_engine.load_all_rules(ROOT / "roles")


def test_only_broken_rules_are_listed_with_value_and_fix():
    rules = {"min": 1, "max": 4, "fix": "a level from 1 to 4"}
    assert rules_engine.check("level", 2, rules) == []
    assert rules_engine.check("level", 7, rules) == ["level is 7: it must be at most 4. Fix: a level from 1 to 4"]
    assert rules_engine.check("level", 0, {"min": 1, "max": 4}) == [
        "level is 0: it must be at least 1. Fix: set it to a value that is 1 to 4"
    ]


@pytest.mark.parametrize(
    ("rules", "good", "bad", "says"),
    [
        ({"regex": "[0-9]+[.][0-9]+"}, "1.2", "1.2.x", "must match"),
        ({"non_empty": True}, ["a"], [], "must not be empty"),
        ({"min_items": 1, "max_items": 2}, [1], [1, 2, 3], "at most 2 items (has 3)"),
        ({"unique": True}, [1, 2], [1, 2, 1], "must not repeat an item (repeats 1)"),
        ({"unique_by": "name"}, [{"name": "a"}, {"name": "b"}], [{"name": "a"}, {"name": "a"}], "unique name"),
        ({"ip_address": True}, "2001:db8::1", "10.0.0.300", "must be an IP address"),
        ({"ip_network": True}, "10.0.0.0/8", "10.0.0.1/8", "has host bits set"),
        ({"ip_network": True}, "10.0.0.0/8", "10.0.0.0/33", "is not a network"),
        ({"port": True}, 443, 70000, "1-65535"),
        ({"port": True}, 443, "https", "must be a number"),
        ({"elements": {"min": 0}}, [0, 1], [1, -1], "value[1] is -1"),
        ({"keys": {"regex": "[a-z.]+"}}, {"vm.x": 1}, {"VM X": 1}, "value key 'VM X'"),
        ({"values": {"port": True}}, {"a": 1}, {"a": 0}, "value.a is 0"),
    ],
)
def test_each_rule_accepts_the_good_and_names_the_bad(rules, good, bad, says):
    assert rules_engine.check("value", good, rules) == []
    problems = rules_engine.check("value", bad, rules)
    assert len(problems) == 1 and says in problems[0], problems


def test_ordered_pairs_and_options_of_list_items():
    rules = {"first": {"port": True, "at_most": "last"}, "last": {"port": True}}
    assert rules_engine.check_settings(rules, {"first": 8000, "last": 8015}) == []
    assert (
        "first is 9000: it must be at most last (8015)"
        in rules_engine.check_settings(rules, {"first": 9000, "last": 8015})[0]
    )
    items = {"options": {"port": {"port": True}}}
    assert rules_engine.check("inst", [{"name": "chat", "port": 0}], items)[0].startswith("inst[chat].port is 0")


def test_a_secret_value_is_never_shown():
    problems = rules_engine.check("token", "hunter2-but-short", {"regex": "[a-f0-9]{64}", "secret": True})
    assert problems and "hunter2" not in problems[0] and "not shown" in problems[0]


def test_a_typo_in_a_rules_file_is_refused():
    with pytest.raises(rules_engine.RuleError, match="unknown rule"):
        rules_engine.validate_rules({"maximum": 3}, "x")


def test_every_rule_names_a_setting_of_its_role_and_the_defaults_follow_it():
    """A rule for a setting that does not exist would check nothing; a default that breaks
    its own rule would stop every run."""
    assert len(ALL_RULES) >= 20
    for role, rules in ALL_RULES.items():
        spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
        options = {n for entry in spec["argument_specs"].values() for n in (entry.get("options") or {})}
        defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
        for name in rules:
            assert name in options or (role == "preflight" and name.startswith("cluster_")), (role, name)
        plain = {n: v for n, v in defaults.items() if not (isinstance(v, str) and "{{" in v)}
        assert rules_engine.check_settings(rules, plain) == [], role


def test_descriptions_for_the_readme():
    assert rules_engine.describe({"min": 1, "max": 4}) == "1 to 4"
    assert rules_engine.describe({"port": True, "at_most": "b"}) == "a port (1-65535); at most `b`"
