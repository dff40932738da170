"""Helpers for the alert-rule and dashboard tests: find promtool/amtool, read rule files,
and list the metric names a PromQL expression reads.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages
(the versions the role installs on the ops host). When they are not on PATH, they are
unpacked from those packages into .cache/prometheus-tools (`apt-get download` + `dpkg-deb
-x`: no root, nothing installed system-wide).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from labkit.layout import PROMETHEUS_TOOLS

ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROMETHEUS_TOOLS
PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "inf", "nan", "atan2"}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_DURATION = re.compile(r"\b\d+(?:ms|s|m|h|d|w|y)\b")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", re.IGNORECASE)
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


class ToolMissing(RuntimeError):
    pass


def tool(name: str) -> str:
    """Path of promtool or amtool: on PATH, or unpacked from the distribution's package."""
    found = shutil.which(name)
    if found:
        return found
    unpacked = TOOLS / "usr" / "bin" / name
    if unpacked.is_file():
        return str(unpacked)
    debs = TOOLS / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise ToolMissing(f"{name} is not installed and this is no Debian/Ubuntu controller: install {PACKAGES[name]}")
    proc = subprocess.run(
        ["apt-get", "download", PACKAGES[name]], cwd=debs, capture_output=True, text=True, check=False
    )
    for deb in sorted(debs.glob(f"{PACKAGES[name]}_*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(TOOLS)], check=True)
    if not unpacked.is_file():
        raise ToolMissing(
            f"{name}: `apt-get download {PACKAGES[name]}` failed ({proc.stderr.strip()[-300:]}); "
            f"run `apt-get update`, or install {PACKAGES[name]}"
        )
    return str(unpacked)


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression selects (metrics and recording rules)."""
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _DURATION.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def load_rules(directory: Path) -> list[dict]:
    """Every rule of every *.yml rule file in a directory, with its file and group."""
    rules = []
    for path in sorted(directory.glob("*.yml")):
        if path.name.endswith(".test.yml"):
            continue
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                rules.append({**rule, "file": path.name, "group": group["name"]})
    return rules


DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"


def dashboard_exprs(path: Path) -> list[str]:
    """The PromQL of every panel target of a Grafana dashboard (rows' panels included)."""
    exprs: list[str] = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text()).get("panels", []))
    return exprs


def dashboard_metrics() -> set[str]:
    """Series names the repository's dashboards query."""
    names: set[str] = set()
    for path in sorted(DASHBOARDS.glob("*.json")):
        for expr in dashboard_exprs(path):
            names |= metric_names(expr)
    return names
