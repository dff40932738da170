"""Files of the observability roles that cannot run on our machines, checked as files:
dcgm-exporter (no GPU, no NGC image here) and Grafana (its repository is unreachable).
Templates are rendered by Ansible with the roles' own defaults (tests/promtool/render-templates.yml)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.promtool import promkit

ROOT = Path(__file__).resolve().parents[2]

DIGEST = "sha256:" + "ab" * 32
REGISTRY = "registry.example.internal:5000"
IMAGE = f"{REGISTRY}/nvidia/k8s/dcgm-exporter@{DIGEST}"


def render(tmp: Path, role: str, templates: list[str], extra: dict | None = None) -> Path:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CACHE_PLUGIN": "memory"}
    args = {"role": role, "out": str(tmp), "templates": templates, **(extra or {})}
    proc = subprocess.run(
        ["ansible-playbook", "-i", "tests/promtool/inventory.yml", "tests/promtool/render-templates.yml",
         "-e", json.dumps(args)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return tmp


@pytest.fixture(scope="module")
def dcgm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(
        tmp_path_factory.mktemp("dcgm"),
        "dcgm_exporter",
        [
            "etc/dcgm-exporter/counters.csv.j2",
            "etc/systemd/system/dcgm-exporter.service.j2",
            "etc/ansible/facts.d/dcgm_exporter.fact.j2",
        ],
        {"dcgm_exporter_image_registry": f"{REGISTRY}/", "dcgm_exporter_image_digest": DIGEST},
    )


def test_dcgm_counters_enable_every_gpu_field_the_rules_and_dashboards_read(dcgm: Path):
    fields = {}
    for line in (dcgm / "counters.csv").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, help_text = (part.strip() for part in line.split(",", 2))
            assert kind in ("gauge", "counter", "label"), line
            assert help_text, line
            fields[name] = kind
    gpu_only = yaml.safe_load((ROOT / "tests" / "promtool" / "gpu-only-metrics.yml").read_text())["metrics"]
    assert set(gpu_only) <= set(fields), set(gpu_only) - set(fields)
    # What dcgm-exporter ships commented out, and the research says alerts need.
    needed_by_alerts = [
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "DCGM_FI_DEV_RETIRED_DBE",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "DCGM_FI_DEV_THERMAL_VIOLATION",
        "DCGM_FI_DEV_XID_ERRORS",
    ]
    for name in needed_by_alerts:
        assert name in fields, name


def test_dcgm_unit_runs_the_pinned_image_and_never_pulls(dcgm: Path):
    unit = (dcgm / "dcgm-exporter.service").read_text()
    exec_start = unit.split("ExecStart=", 1)[1].split("\nExecStop")[0].replace("\\\n", " ")
    argv = exec_start.split()
    assert "--pull=never" in argv
    assert IMAGE in argv
    assert not any(":latest" in a for a in argv)
    assert "--collectors" in argv and "--publish" in argv and "9400:9400" in argv
    assert "Restart=on-failure" in unit and "Requires=docker.service" in unit
    assert "docker pull" not in unit


def test_dcgm_fact_tells_prometheus_where_to_scrape(dcgm: Path):
    fact = json.loads((dcgm / "dcgm_exporter.fact").read_text())
    assert fact == {"enabled": True, "port": 9400, "image": IMAGE}


def test_no_container_registry_is_named_in_the_roles():
    for role in ("dcgm_exporter", "nvml_collector", "prometheus", "grafana", "node_exporter"):
        for path in (ROOT / "roles" / role).rglob("*"):
            if path.is_file():
                text = path.read_text(errors="replace")
                for host in ("nvcr.io", "docker.io", "ghcr.io", "quay.io", "registry-1.docker"):
                    assert host not in text, f"{path} names {host}"


DASHBOARDS = sorted(promkit.DASHBOARDS.glob("*.json"))


@pytest.fixture(scope="module")
def grafana(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(
        tmp_path_factory.mktemp("grafana"),
        "grafana",
        [
            "etc/grafana/provisioning/datasources/prometheus.yaml.j2",
            "etc/grafana/provisioning/dashboards/llm-cluster.yaml.j2",
            "etc/apt/sources.list.d/grafana.list.j2",
        ],
    )


def test_the_role_ships_exactly_the_dashboards_in_the_repository():
    role_vars = yaml.safe_load((ROOT / "roles" / "grafana" / "vars" / "main.yml").read_text())
    assert sorted(role_vars["_grafana_dashboards"]) == sorted(p.name for p in DASHBOARDS)
    assert {p.stem for p in DASHBOARDS} == {"llm-cluster", "llm-gpus", "llm-serving"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_is_a_valid_provisionable_dashboard(path: Path, grafana: Path):
    doc = json.loads(path.read_text())
    assert doc["uid"] == path.stem and doc["title"] and doc["schemaVersion"] >= 36
    datasource = yaml.safe_load((grafana / "prometheus.yaml").read_text())["datasources"][0]
    ids, exprs = [], []
    for panel in doc["panels"]:
        ids.append(panel["id"])
        assert panel["title"] and panel["type"] in ("timeseries", "stat", "table", "gauge", "bargauge")
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            assert target["expr"].strip() and target["refId"]
            exprs.append(target["expr"])
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert exprs


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards(grafana: Path):
    ds = yaml.safe_load((grafana / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    source = ds["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:9090" and source["isDefault"]
    assert source["uid"] == "prometheus" and not source["editable"]
    providers = yaml.safe_load((grafana / "llm-cluster.yaml").read_text())["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/llm-cluster"
    assert providers[0]["allowUiUpdates"] is False


def test_grafana_repository_line_uses_the_mirror_variable_and_the_keyring(grafana: Path):
    line = [x for x in (grafana / "grafana.list").read_text().splitlines() if x.startswith("deb ")]
    assert line == ["deb [signed-by=/etc/apt/keyrings/grafana.asc] https://apt.grafana.com stable main"]
