"""Kubernetes mode: playbooks/kubernetes.yml renders the lab and example inventories on the
controller, and the objects are checked offline:

- core kinds with `kubernetes-validate --strict` for every supported Kubernetes minor
  (its bundled schemas; no cluster), CRD kinds (PrometheusRule, Velero) against the minimal
  schemas in k8s_schemas/ and, for the rules, promtool;
- semantics: GPU limits as the host mode gives GPUs, disruption budgets below the replicas,
  autoscalers aimed at existing Deployments, probes on declared container ports, images
  pinned by the host mode's digest, NetworkPolicies only for flows the firewall policy has.

Applying to a real cluster (and what it needs there) is not tested here: docs/kubernetes.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from conftest import load_plugin
from labkit import topology

from tests.promtool import promkit

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEMAS = Path(__file__).parent / "k8s_schemas"
# Kubernetes minors this mode supports (docs/kubernetes.md); kubernetes-validate 1.37.0 bundles 1.25-1.37.
K8S_VERSIONS = ["1.33", "1.34", "1.35", "1.36", "1.37"]
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com_v1.json",
    ("velero.io/v1", "BackupStorageLocation"): "backupstoragelocation.velero.io_v1.json",
    ("velero.io/v1", "Schedule"): "schedule.velero.io_v1.json",
}
# The lab's stand-in digests are made when the lab builds its images; rendering pins this one.
LAB_DIGEST = "sha256:" + "ab" * 32
INVENTORIES = ["lab", "example"]
fw = load_plugin("plugins/filter/firewall_policy.py")


def _lab_inventory(tmp: Path) -> Path:
    """The lab inventory as `scripts/lab up` writes it (hosts.yml from topology.yml), beside
    the committed group_vars: not the encrypted secrets a running lab has (no password here)."""
    inv = tmp / "lab"
    committed = ROOT / "inventories" / "lab" / "group_vars"
    for path in committed.rglob("*.yml"):
        if not path.name.endswith(".vault.yml"):
            link = inv / "group_vars" / path.relative_to(committed)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    topo = topology.load(ROOT / "inventories" / "lab" / "topology.yml", instance=0)
    topology.write_inventory(topo, inv / "hosts.yml")
    return inv


def _run(inventory: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_CACHE_PLUGIN": "memory"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "playbooks/kubernetes.yml",
         "-e", f"k8s_output_dir={out}", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip


class Rendered:
    def __init__(self, name: str, inventory: Path, out: Path, proc: subprocess.CompletedProcess):
        self.name, self.inventory, self.out, self.proc = name, inventory, out, proc
        self.files = sorted(out.glob("*.yaml"))
        self.objects = [yaml.safe_load(f.read_text()) for f in self.files]
        self.vars = _group_vars(inventory)

    def kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        return next(o for o in self.kind(kind) if o["metadata"]["name"] == name)


def _group_vars(inventory: Path) -> dict[str, dict]:
    """group -> the variables of its group_vars files (untemplated)."""
    out: dict[str, dict] = {}
    for path in sorted((inventory / "group_vars").rglob("*.yml")):
        group = path.parent.name if path.parent.name != "group_vars" else path.stem
        out.setdefault(group, {}).update(yaml.safe_load(path.read_text()) or {})
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    tmp = tmp_path_factory.mktemp("k8s")
    result = {}
    for name in INVENTORIES:
        if name == "lab":
            inv = _lab_inventory(tmp)
            extra = ["-e", json.dumps({"lab_standin_images": {"repository": "test-doubles/trtllm-standin",
                                                             "digests": {"v1": LAB_DIGEST}}})]  # fmt: skip
        else:
            inv, extra = ROOT / "inventories" / name, []
        out = tmp / f"out-{name}"
        proc = _run(inv, out, *extra)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        result[name] = Rendered(name, inv, out, proc)
    return result


@pytest.mark.parametrize("name", INVENTORIES)
def test_renders_every_kind_per_instance(rendered, name):
    r = rendered[name]
    kinds = Counter(o["kind"] for o in r.objects)
    instances = r.vars.get("gpu_nodes", r.vars["all"])["llm_serving_instances"]
    n = len(instances)
    assert kinds["Namespace"] == 1
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"):
        assert kinds[kind] == n, (kind, kinds)
    assert {o["metadata"]["name"] for o in r.kind("Deployment")} == {f"llm-{i['name']}" for i in instances}
    # One per rule file the prometheus role rendered that has rules (site.yml has none without
    # QPS targets or serving facts).
    rules_dir = r.out / ".inputs" / "rules"
    files = json.loads((rules_dir / "files.json").read_text())
    assert (
        kinds["PrometheusRule"] == sum(bool(yaml.safe_load((rules_dir / f).read_text())["groups"]) for f in files) >= 4
    )
    print(f"{name}: {dict(sorted(kinds.items()))}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", INVENTORIES)
def test_core_objects_validate_strictly_offline(rendered, name, version):
    """kubernetes-validate --strict, in process (its bundled schemas; one start instead of one per
    version). A kind without a schema fails here, where the command line only warns."""
    problems = []
    for path, obj in zip(rendered[name].files, rendered[name].objects, strict=True):
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, f"{version}.0", strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            problems.append(f"{path.name}: {e}")
    assert not problems, "\n".join(problems)


def test_strict_validation_refuses_an_unknown_field(rendered):
    dep = json.loads(json.dumps(rendered["example"].kind("Deployment")[0]))
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, f"{K8S_VERSIONS[0]}.0", strict=True)


@pytest.mark.parametrize("name", INVENTORIES)
def test_crd_objects_match_their_schemas(rendered, name):
    schemas = {f: json.loads((SCHEMAS / f).read_text()) for f in CRD_SCHEMAS.values()}
    registry = referencing.Registry().with_resources(
        (f, referencing.Resource.from_contents(s, default_specification=referencing.jsonschema.DRAFT202012))
        for f, s in schemas.items()
    )
    checked = 0
    for obj in rendered[name].objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            jsonschema.Draft202012Validator(schemas[CRD_SCHEMAS[key]], registry=registry).validate(obj)
            checked += 1
    assert checked >= 4


def test_crd_schemas_refuse_what_they_should(rendered):
    obj = rendered["example"].one("BackupStorageLocation", "default")
    bad = json.loads(json.dumps(obj))
    bad["spec"]["objectStorage"]["bukket"] = "x"
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[("velero.io/v1", "BackupStorageLocation")]).read_text())
    registry = referencing.Registry().with_resource(
        CRD_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")],
        referencing.Resource.from_contents(
            json.loads((SCHEMAS / "prometheusrule.monitoring.coreos.com_v1.json").read_text()),
            default_specification=referencing.jsonschema.DRAFT202012,
        ),
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema, registry=registry).validate(bad)


@pytest.mark.parametrize("name", INVENTORIES)
def test_prometheus_rules_pass_promtool(rendered, name, tmp_path):
    promtool = promkit.tool("promtool")
    for rule in rendered[name].kind("PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_seed_alerts_are_prometheus_rules(rendered):
    alerts = {
        r["alert"]
        for o in rendered["example"].kind("PrometheusRule")
        for g in o["spec"]["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    # The seeds' thresholds: GPU > 90 % for 5 min, P99 > 500 ms, 5xx > 1 %, GPU > 85 degrees, memory > 85 %.
    for alert in ("GpuUtilizationHigh", "ServingLatencyP99High", "ServingHttp5xxRatioHigh", "GpuTemperatureHigh"):
        assert alert in alerts


def _container(dep: dict) -> dict:
    return dep["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("name", INVENTORIES)
def test_gpu_cpu_memory_requests_and_limits(rendered, name):
    r = rendered[name]
    instances = {i["name"]: i for i in r.vars.get("gpu_nodes", r.vars["all"])["llm_serving_instances"]}
    gpu_mode = r.vars["all"].get("llm_serving_gpu_mode", "gpus")
    for dep in r.kind("Deployment"):
        res = _container(dep)["resources"]
        inst = instances[dep["metadata"]["name"].removeprefix("llm-")]
        for key in ("cpu", "memory"):
            assert res["requests"][key] == res["limits"][key]
        if gpu_mode == "none":
            assert "nvidia.com/gpu" not in res["limits"], "the host mode gives this instance no GPU"
        else:
            assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == str(len(inst["gpus"]))


@pytest.mark.parametrize("name", INVENTORIES)
def test_disruption_budgets_never_block_a_drain(rendered, name):
    r = rendered[name]
    for pdb in r.kind("PodDisruptionBudget"):
        hpa = r.one("HorizontalPodAutoscaler", pdb["metadata"]["name"])
        dep = r.one("Deployment", pdb["metadata"]["name"])
        replicas = dep["spec"].get("replicas", hpa["spec"]["minReplicas"])
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            assert int(spec["maxUnavailable"]) >= 1
        else:
            assert int(spec["minAvailable"]) < replicas
        assert spec["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", INVENTORIES)
def test_autoscalers_target_existing_deployments(rendered, name):
    r = rendered[name]
    for hpa in r.kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
        dep = r.one("Deployment", ref["name"])
        assert dep["metadata"]["namespace"] == hpa["metadata"]["namespace"]
        assert "replicas" not in dep["spec"], "an autoscaled Deployment leaves replicas to the autoscaler"
        types = [m["type"] for m in hpa["spec"]["metrics"]]
        assert types == ["Pods", "Resource"] and hpa["spec"]["metrics"][1]["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", INVENTORIES)
def test_probes_and_services_use_declared_container_ports(rendered, name):
    r = rendered[name]
    for dep in r.kind("Deployment"):
        c = _container(dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = c[probe]["httpGet"]["port"]
            assert port in ports or port in ports.values(), (dep["metadata"]["name"], probe, port)
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"
        assert c["readinessProbe"]["httpGet"]["path"] == "/health_generate"
        assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 60
        spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert spread[0]["topologyKey"] == "kubernetes.io/hostname"
        svc = r.one("Service", dep["metadata"]["name"])
        assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports


@pytest.mark.parametrize("name", INVENTORIES)
def test_images_pinned_by_the_host_modes_digest(rendered, name):
    r = rendered[name]
    registry_port = r.vars["all"]["cluster_services"]["image_registry"]["port"]
    for dep in r.kind("Deployment"):
        image = _container(dep)["image"]
        assert re.fullmatch(r"[^@\s]+/[^@\s]+@sha256:[0-9a-f]{64}", image), image
        assert f":{registry_port}/" in image, "from the site's registry"
        digest = LAB_DIGEST if name == "lab" else r.vars["all"]["llm_serving_image_digest"]
        assert image.endswith("@" + digest)


def _policy_for(r: Rendered) -> dict:
    """The firewall policy of the first serving node, compiled independently from the inventory."""
    inv = yaml.safe_load((r.inventory / "hosts.yml").read_text())["all"]
    hostvars, groups = {}, {"all": []}
    for group, body in inv["children"].items():
        groups.setdefault(group, [])  # a declared, empty group (the example's `storage`) exists
        for host, hv in ((body or {}).get("hosts") or {}).items():
            groups.setdefault(group, []).append(host)
            if hv:
                hostvars[host] = hv
    for parent, body in inv["children"].items():
        for child in body.get("children") or {}:
            groups.setdefault(parent, []).extend(groups[child])
    groups["all"] = sorted(hostvars)
    lab_network = inv.get("vars", {}).get("lab_network")
    admin = [f"{lab_network['gateway']}/32"] if lab_network else r.vars["all"]["cluster_admin_networks"]
    services = r.vars["all"]["cluster_services"]
    flows = []
    for flow in r.vars["all"]["firewall_flows"]:
        src = flow["from"]
        if isinstance(src, str):
            src = admin
        svcs = flow["services"]
        if isinstance(svcs, str):
            svcs = [s for s in ("image_registry", "vault") if s in services]  # app-to-data in firewall.yml
        flows.append({**flow, "from": src, "services": svcs})
    host = groups["gpu_nodes"][0]
    return fw.compile_policy(
        flows, host=host, groups=groups, hostvars=hostvars, services=services, admin_networks=admin
    )


@pytest.mark.parametrize("name", INVENTORIES)
def test_network_policies_are_flows_of_the_firewall_policy(rendered, name):
    r = rendered[name]
    policy = _policy_for(r)
    assert policy["problems"] == []
    serving = {a["flow"]: a for a in policy["allowed"] if a["service"] == "llm_serving"}
    deny = r.one("NetworkPolicy", "default-deny")
    assert deny["spec"]["podSelector"] == {} and sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    allows = [p for p in r.kind("NetworkPolicy") if p["metadata"]["name"] != "default-deny"]
    assert {p["metadata"]["annotations"]["llm-cluster/firewall-flow"] for p in allows} == set(serving)
    peers = r.vars["all"].get("k8s_group_peers", {})
    for p in allows:
        flow = serving[p["metadata"]["annotations"]["llm-cluster/firewall-flow"]]
        sources = p["spec"]["ingress"][0]["from"]
        assert sorted(s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s) == sorted(flow["from"])
        extra = [s for s in sources if "ipBlock" not in s]
        flow_groups = next(f["from"] for f in r.vars["all"]["firewall_flows"] if f["name"] == flow["flow"])
        assert extra == [peer for g in flow_groups for peer in peers.get(g, [])]
        for port in p["spec"]["ingress"][0]["ports"]:
            assert port["port"] in {"http", "metrics"}


def test_velero_location_and_schedule(rendered):
    ex = rendered["example"]
    bsl = ex.one("BackupStorageLocation", "default")
    assert bsl["spec"]["config"]["s3Url"] == ex.vars["all"]["k8s_velero_s3_url"]
    assert bsl["spec"]["objectStorage"]["bucket"] == ex.vars["all"]["k8s_velero_bucket"]
    schedule = ex.kind("Schedule")[0]
    assert schedule["spec"]["template"]["storageLocation"] == "default"
    assert schedule["spec"]["template"]["includedNamespaces"] == [ex.kind("Namespace")[0]["metadata"]["name"]]
    # The lab's catalogue has the object storage layer's gateway: Velero stores into its
    # bucket for Kubernetes backups (roles/object_storage declares k8s-backups).
    lab = rendered["lab"]
    gateway = lab.vars["all"]["cluster_services"]["object_storage"]
    lab_bsl = lab.one("BackupStorageLocation", "default")
    assert lab_bsl["spec"]["config"]["s3Url"].endswith(f":{gateway['port']}")
    assert lab_bsl["spec"]["objectStorage"]["bucket"] == "k8s-backups"


def test_a_second_render_changes_nothing(rendered):
    r = rendered["example"]
    proc = _run(r.inventory, r.out)
    assert proc.returncode == 0, proc.stdout[-4000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", proc.stdout, flags=re.M)
    assert len(recap) == 4 and all(changed == "0" for _, changed in recap), proc.stdout[-3000:]


def test_check_mode_on_a_fresh_controller_writes_no_manifest(rendered, tmp_path):
    r = rendered["example"]
    proc = _run(r.inventory, tmp_path / "fresh", "--check")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert not list((tmp_path / "fresh").glob("*.yaml"))
