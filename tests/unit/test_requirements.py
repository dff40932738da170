"""The pinned Python toolchain and the Galaxy requirements describe the same collections."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_python_requirement_is_pinned_with_hashes():
    text = (ROOT / "requirements.txt").read_text()
    requirements = re.findall(r"^([A-Za-z0-9_.\-\[\]]+)(==)?", text, flags=re.M)
    assert requirements
    assert all(op == "==" for _, op in requirements), [n for n, op in requirements if op != "=="]
    assert text.count("--hash=sha256:") >= len(requirements)


def test_galaxy_requirements_match_the_installed_collections():
    wanted = {c["name"]: c["version"] for c in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-galaxy"), "collection", "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = {}
    for collections in json.loads(proc.stdout).values():
        for name, info in collections.items():
            installed.setdefault(name, info["version"])
    for name, version in wanted.items():
        assert installed.get(name) == version, (
            f"{name}: requirements.yml says {version}, installed {installed.get(name)}"
        )
