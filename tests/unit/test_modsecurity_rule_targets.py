"""modsecurity_rule_targets: which CRS rules (by id) the edge's per-id exclusions must name."""

from __future__ import annotations

from conftest import load_plugin

mod = load_plugin("plugins/modules/modsecurity_rule_targets.py")

# Shapes taken from CRS 3.3: continuation lines, a chain, quoted and bare tags, an excluded
# and a counted target, a rule of another rule set.
RULES = r"""
# SecRule ARGS "@rx commented" "id:1,tag:'OWASP_CRS'"
SecRule REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|REQUEST_COOKIES_NAMES|ARGS_NAMES|ARGS|XML:/* "@rx (?i)union" \
    "id:942100,\
    phase:2,\
    block,\
    t:none,t:urlDecodeUni,\
    tag:'application-multi',\
    tag:'OWASP_CRS',\
    ver:'OWASP_CRS/3.3.4'"

SecRule REQUEST_URI|REQUEST_BODY "@rx \x25" \
    "id:920260,phase:2,block,tag:'OWASP_CRS',\
    chain"
    SecRule ARGS "@rx x" "t:none"

SecRule &ARGS "@ge 255" "id:920380,phase:2,block,tag:OWASP_CRS"
SecRule !ARGS:foo|REQUEST_HEADERS "@rx y" "id:920999,phase:1,block,tag:'OWASP_CRS'"
SecRule ARGS:json.model "@rx z" "id:921999,phase:2,block,tag:'OWASP_CRS'"
SecRule ARGS "@rx site" "id:10001,phase:2,deny,tag:'site-local'"
SecMarker "END-REQUEST-942"
"""


def test_rules_with_an_id_and_their_collections() -> None:
    found = mod.rule_targets(RULES, "OWASP_CRS")
    assert found[942100] == {"REQUEST_COOKIES", "REQUEST_COOKIES_NAMES", "ARGS_NAMES", "ARGS", "XML"}
    assert found[920260] == {"REQUEST_URI", "REQUEST_BODY"}
    # counted (&ARGS) and excluded (!ARGS:foo) targets are not inspections of the values
    assert found[920380] == set()
    assert found[920999] == {"REQUEST_HEADERS"}
    # one element of a collection counts as the collection
    assert found[921999] == {"ARGS"}


def test_chained_rules_comments_and_other_tags_are_left_out() -> None:
    found = mod.rule_targets(RULES, "OWASP_CRS")
    assert set(found) == {942100, 920260, 920380, 920999, 921999}
    assert 1 not in found
    assert 10001 in mod.rule_targets(RULES, "")
