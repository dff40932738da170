"""Facts are read under ansible_facts: ansible.cfg sets `inject_facts_as_vars = false`.

With injection off a top-level fact variable (`ansible_distribution`, `ansible_local`, ...)
is undefined, and a `default()` after it would hide that: the role would quietly take the
wrong branch. This test finds such names where roles, playbooks and scenarios read them.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEARCHED = ("roles", "playbooks", "molecule", "inventories/example", "templates", "tests/promtool")
SUFFIXES = {".yml", ".yaml", ".j2"}

# Names setup returns (the common ones), as top-level variables. `filter: ansible_local`
# (setup's argument) and `ansible_facts.ansible_local` (where setup keeps local facts) are
# fine; so are connection and magic variables, which are not facts.
FACT = re.compile(
    r"(?<!ansible_facts\.)(?<!ansible_facts\[')(?<![\w])ansible_(?:local|distribution\w*|os_family|hostname|fqdn|nodename|domain|"
    r"default_ipv[46]|all_ipv[46]_addresses|interfaces|architecture|machine|kernel\w*|system\w*|"
    r"virtualization_\w+|lsb|pkg_mgr|service_mgr|processor\w*|memtotal_mb|memfree_mb|mounts|devices|"
    r"env|date_time|selinux|apparmor|cmdline|proc_cmdline|dns|is_chroot|user_id|python)\b"
)
ALLOWED_LINE = re.compile(r"\bfilter[:=]\s*['\"]?ansible_local\b")


def _files() -> list[Path]:
    out = []
    for top in SEARCHED:
        out += [p for p in sorted((ROOT / top).rglob("*")) if p.suffix in SUFFIXES and p.is_file()]
    return out


def test_ansible_cfg_keeps_facts_out_of_top_level_variables():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "ansible.cfg")
    assert cfg.getboolean("defaults", "inject_facts_as_vars") is False


def _findings(path: Path, text: str) -> list[str]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if ALLOWED_LINE.search(line):
            continue
        for m in FACT.finditer(line):
            name = m.group(0)
            fix = "ansible_facts." + (name if name == "ansible_local" else name.removeprefix("ansible_"))
            out.append(f"{path}:{n}: {name} -> {fix}")
    return out


def test_the_check_finds_top_level_facts():
    sample = (
        "a: '{{ ansible_distribution }}'\n"
        'b: "{{ hostvars[h].ansible_local.x }}"\n'
        "c: \"{{ hosts | map(attribute='ansible_local') }}\"\n"
        "d: \"{{ ansible_facts.ansible_local.x }} {{ ansible_facts['ansible_local'] }}\"\n"
        "d2: '{{ ansible_facts.distribution }}'\n"
        "    filter: ansible_local\n"
        "e: '{{ ansible_host }} {{ ansible_check_mode }}'\n"
    )
    assert [f.split(": ", 1)[1] for f in _findings(Path("x"), sample)] == [
        "ansible_distribution -> ansible_facts.distribution",
        "ansible_local -> ansible_facts.ansible_local",
        "ansible_local -> ansible_facts.ansible_local",
    ]


def test_no_top_level_fact_variables():
    found = [f for p in _files() for f in _findings(p.relative_to(ROOT), p.read_text(errors="replace"))]
    assert not found, "top-level fact variables are undefined here (inject_facts_as_vars = false):\n" + "\n".join(found)
