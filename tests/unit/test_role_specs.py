"""Every role documents every variable once: argument spec and defaults agree, README current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").iterdir() if p.is_dir())


def _spec(role: Path) -> dict:
    return yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_role_has_spec_readme_and_meta(role: Path):
    for rel in ("meta/argument_specs.yml", "meta/main.yml", "README.md"):
        assert (role / rel).is_file(), f"{role.name} has no {rel}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_spec_agree(role: Path):
    """Same names, same default values: the spec cannot document a value the role does not use."""
    defaults_file = role / "defaults" / "main.yml"
    defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
    options = _spec(role)["main"].get("options") or {}
    assert sorted(defaults or {}) == sorted(k for k in options if "default" in options[k] or k in (defaults or {}))
    for name, value in (defaults or {}).items():
        assert options[name].get("default") == value, f"{role.name}: {name} default differs between spec and defaults"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_variables_carry_the_role_prefix(role: Path):
    for entry in _spec(role).values():
        for name in entry.get("options") or {}:
            assert name.startswith(role.name + "_"), f"{role.name}: option {name} lacks the role prefix"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_option_has_a_type_and_description(role: Path):
    for entry in _spec(role).values():
        for name, opt in (entry.get("options") or {}).items():
            assert "type" in opt and opt.get("description"), f"{role.name}: {name} needs a type and a description"


def test_role_readmes_are_generated_from_the_specs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "role-docs"), "--check"], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
