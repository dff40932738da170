"""The prometheus role's alert and recording rules, rendered by the role on the controller
and checked with Debian's promtool (the version the role installs):

- every rule file passes `promtool check rules` (the role's own `validate:`);
- every tests/promtool/*.test.yml passes `promtool test rules`;
- every alert has a test where it fires, one where it does not fire yet, and one where it
  has resolved (the always-firing Watchdog only fires);
- every series a rule reads is either produced by another rule, or a metric some exporter
  of ours writes: GPU metrics are checked here against the NVML collector's output (fake
  NVML), the others against a real scrape of the lab (tests/lab/test_60_observability.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_nvml_metrics import FakeGpu, FakeNvml

from tests.promtool import promkit

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
ALWAYS_FIRING = {"Watchdog"}
TEST_FILES = sorted(PROMTOOL_TESTS.glob("*.test.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    return promkit.tool("promtool")


@pytest.fixture(scope="module")
def rendered(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The role's rule files, rendered by its `rules` tasks (each checked by promtool)."""
    out = tmp_path_factory.mktemp("rules")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CACHE_PLUGIN": "memory"}
    proc = subprocess.run(
        ["ansible-playbook", "-i", str(PROMTOOL_TESTS / "inventory.yml"), str(PROMTOOL_TESTS / "render-rules.yml"),
         "-e", f"_prometheus_rules_dir={out}", "-e", f"_prometheus_promtool={promtool}"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for test in TEST_FILES:
        shutil.copy(test, out / test.name)
    return out


def test_every_rule_file_was_rendered_and_checked(rendered: Path):
    role_vars = yaml.safe_load((ROOT / "roles" / "prometheus" / "vars" / "main.yml").read_text())
    assert sorted(p.name for p in rendered.glob("*.yml") if not p.name.endswith(".test.yml")) == sorted(
        role_vars["_prometheus_rule_files"]
    )


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(rendered: Path, promtool: str, test_file: Path):
    proc = subprocess.run(
        [promtool, "test", "rules", test_file.name], cwd=rendered, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _cases() -> dict[str, list[tuple[str, int, bool]]]:
    """alertname -> [(test group, eval time in seconds, fires)] over every test file."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    cases: dict[str, list[tuple[str, int, bool]]] = {}
    for path in TEST_FILES:
        for i, group in enumerate(yaml.safe_load(path.read_text())["tests"]):
            for case in group.get("alert_rule_test") or []:
                t = str(case["eval_time"])
                unit = next(u for u in ("ms", "s", "m", "h", "d") if t.endswith(u))
                seconds = float(t[: -len(unit)]) * units[unit]
                cases.setdefault(case["alertname"], []).append((f"{path.name}#{i}", seconds, bool(case["exp_alerts"])))
    return cases


def test_every_alert_fires_does_not_fire_and_resolves_in_a_test(rendered: Path):
    alerts = {r["alert"] for r in promkit.load_rules(rendered) if "alert" in r}
    cases = _cases()
    problems = []
    for alert in sorted(alerts):
        mine = cases.get(alert, [])
        if not any(fires for _, _, fires in mine):
            problems.append(f"{alert}: no test where it fires")
            continue
        if alert in ALWAYS_FIRING:
            continue
        before = after = False
        for group, t, fires in mine:
            if not fires:
                continue
            quiet = [tq for g, tq, f in mine if g == group and not f]
            before |= any(tq < t for tq in quiet)
            after |= any(tq > t for tq in quiet)
        if not before:
            problems.append(f"{alert}: no test where it does not fire yet (an empty exp_alerts before firing)")
        if not after:
            problems.append(f"{alert}: no test where it resolves (an empty exp_alerts after firing)")
    assert not problems, "\n".join(problems)
    assert not set(cases) - alerts, f"tests of alerts that no rule defines: {set(cases) - alerts}"


def rule_inputs(rules: list[dict]) -> set[str]:
    """Every series name the rules read that no rule records."""
    recorded = {r["record"] for r in rules if "record" in r}
    used = set().union(*(promkit.metric_names(r["expr"]) for r in rules))
    return used - recorded


def test_rules_read_only_recorded_series_or_known_sources(rendered: Path):
    rules = promkit.load_rules(rendered)
    recorded = {r["record"] for r in rules if "record" in r}
    used = set().union(*(promkit.metric_names(r["expr"]) for r in rules))
    # A recording-rule name (with a colon) must be recorded by some rule file.
    assert {n for n in used if ":" in n} <= recorded, {n for n in used if ":" in n} - recorded


def _nvml_output(tmp_path: Path) -> str:
    path = ROOT / "roles" / "nvml_collector" / "files" / "nvml_textfile_collector.py"
    spec = importlib.util.spec_from_file_location("nvml_collector_for_rules", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    gpus = [FakeGpu(), FakeGpu(minor=1, bus_id="00000000:86:00.0", uuid="GPU-b")]
    (tmp_path / "kern.log").write_text("NVRM: Xid (PCI:0000:86:00): 13, pid=1, name=python3, ...\n")
    argv = ["--output", str(tmp_path / "nvml.prom"), "--xid-source", str(tmp_path / "kern.log")]
    assert module.main(argv, nvml=FakeNvml(gpus)) == 0
    return (tmp_path / "nvml.prom").read_text()


def test_gpu_metrics_the_rules_and_dashboards_read_come_from_the_nvml_collector(rendered: Path, tmp_path: Path):
    """Every GPU-only metric (the lab cannot scrape them) is written by the NVML collector,
    under the same name as dcgm-exporter's, and listed in gpu-only-metrics.yml."""
    gpu_only = yaml.safe_load((PROMTOOL_TESTS / "gpu-only-metrics.yml").read_text())["metrics"]
    used = rule_inputs(promkit.load_rules(rendered)) | promkit.dashboard_metrics()
    gpu_used = {m for m in used if m.startswith("DCGM_")}
    assert gpu_used <= set(gpu_only), f"GPU metrics used but not listed: {gpu_used - set(gpu_only)}"
    written = {line.split("{")[0].split(" ")[0] for line in _nvml_output(tmp_path).splitlines() if line[:1] != "#"}
    missing = [m for m in gpu_only if m not in written]
    assert not missing, f"listed as GPU-only but the NVML collector does not write them: {missing}"
