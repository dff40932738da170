"""The k8s role's filters (plugins/filter/k8s_manifests.py): merging the nodes' serving plans,
refusals that name the setting and the fix, Velero's S3 location from the catalogue."""

from __future__ import annotations

import copy

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_plugin

k8s = load_plugin("plugins/filter/k8s_manifests.py")

SETTINGS = {
    "overrides": {},
    "cpu_per_gpu": 8,
    "memory_per_gpu_gi": 64,
    "memory_min_gi": 8,
    "max_replicas_factor": 2,
    "probe_period_seconds": 10,
}
CONTAINER = {
    "http_port": 8000,
    "metrics_port": 8000,
    "health_path": "/health",
    "generate_path": "/health_generate",
    "metrics_path": "/prometheus/metrics",
    "model_root": "/models",
    "config_dir": "/etc/llm-serving",
}
IMAGE = "registry:5000/nvidia/tensorrt-llm/release@sha256:" + "a" * 64


def instance(name="chat", gpus=(0, 1), strategy="rolling", **kw):
    inst = {
        "name": name,
        "model": "m",
        "model_dir": "/srv/models/m",
        "image": IMAGE,
        "update_strategy": strategy,
        "colours": {"blue": {"gpus": list(gpus) if gpus != "all" else "all"}, "green": {"gpus": []}},
        "llm_api_options": {"return_perf_metrics": True},
        "args": [],
        "env": {},
    }
    inst.update(kw)
    return inst


def plan(host, *instances, gpu_mode="gpus"):
    return {
        "host": host,
        "engine": "trtllm",
        "gpu_mode": gpu_mode,
        "trtllm_backend": "pytorch",
        "stop_timeout": 300,
        "ready_timeout": 1800,
        "container": CONTAINER,
        "instances": list(instances),
    }


def test_one_deployment_per_instance_with_a_replica_per_node():
    out = k8s.k8s_serving([plan("gpu2", instance()), plan("gpu1", instance(), instance("code", gpus=[2]))], SETTINGS)
    chat, code = out
    assert (chat["name"], chat["replicas"], chat["hosts"], chat["gpus"]) == ("chat", 2, ["gpu1", "gpu2"], 2)
    assert (chat["cpu"], chat["memory"], chat["max_replicas"]) == ("16", "128Gi", 4)
    assert chat["startup_failures"] == 180 and chat["ready_path"] == "/health_generate"
    assert (code["replicas"], code["gpus"], code["cpu"], code["memory"]) == (1, 1, "8", "64Gi")
    assert (chat["max_surge"], chat["max_unavailable"]) == (0, 1)


def test_blue_green_surges_one_replica():
    (w,) = k8s.k8s_serving([plan("gpu1", instance(strategy="blue_green"))], SETTINGS)
    assert (w["max_surge"], w["max_unavailable"]) == (1, 0)


def test_without_gpus_no_gpu_is_requested():
    (w,) = k8s.k8s_serving([plan("gpu1", instance(gpus=[]), gpu_mode="none")], SETTINGS)
    assert (w["gpus"], w["cpu"], w["memory"]) == (0, "8", "8Gi")


def test_overrides_set_replicas_and_resources():
    settings = {**SETTINGS, "overrides": {"chat": {"replicas": 3, "gpus": 8, "cpu": "32", "memory": "512Gi"}}}
    (w,) = k8s.k8s_serving([plan("gpu1", instance(gpus="all"))], settings)
    assert (w["replicas"], w["gpus"], w["cpu"], w["memory"], w["min_replicas"]) == (3, 8, "32", "512Gi", 3)


@pytest.mark.parametrize(
    ("plans", "overrides", "message"),
    [
        ([plan("gpu1", instance()), plan("gpu2", instance(image=IMAGE[:-1] + "b"))], {}, "image"),
        ([plan("gpu1", instance()), plan("gpu2", instance(model_dir="/srv/other"))], {}, "model_dir differs"),
        ([plan("gpu1", instance()), plan("gpu2", instance(gpus=[0]))], {}, "different numbers of GPUs"),
        ([plan("gpu1", instance(gpus="all"))], {}, "k8s_serving_overrides.<instance>.gpus"),
        ([plan("gpu1", instance())], {"chta": {"replicas": 2}}, "no serving node runs"),
        ([plan("gpu1", instance())], {"chat": {"replica": 2}}, "unknown keys replica"),
        ([plan("gpu1", instance())], {"chat": {"memory": "lots"}}, "Kubernetes quantity"),
        ([plan("gpu1", instance())], {"chat": {"min_replicas": 3, "max_replicas": 2}}, "above max_replicas"),
    ],
)
def test_refusals_name_the_setting_and_the_fix(plans, overrides, message):
    with pytest.raises(AnsibleFilterError, match=message.replace(".", r"\.").replace("<", ".").replace(">", ".")):
        k8s.k8s_serving(plans, {**SETTINGS, "overrides": overrides})


ALLOWED = [
    {"flow": "admin-ssh", "service": "ssh", "protocol": "tcp", "from": ["192.0.2.0/28"]},
    {"flow": "edge-to-serving", "service": "llm_serving", "protocol": "tcp", "from": ["198.51.100.10/32"]},
    {"flow": "monitoring", "service": "node_exporter", "protocol": "tcp", "from": ["203.0.113.31/32"]},
    {"flow": "monitoring", "service": "llm_serving", "protocol": "tcp", "from": ["203.0.113.31/32"]},
]
FLOWS = [{"name": "edge-to-serving", "from": ["edge"]}, {"name": "monitoring", "from": ["ops"]}]


def test_network_policies_only_for_flows_to_the_serving_service():
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    out = k8s.k8s_network_policies(ALLOWED, FLOWS, {"service": "llm_serving", "group_peers": {"ops": [peer]}})
    assert [(p["name"], p["cidrs"], p["peers"]) for p in out] == [
        ("allow-edge-to-serving", ["198.51.100.10/32"], []),
        ("allow-monitoring", ["203.0.113.31/32"], [peer]),
    ]


def test_a_peer_must_be_a_selector():
    with pytest.raises(AnsibleFilterError, match=r"k8s_group_peers\.ops"):
        k8s.k8s_network_policies(ALLOWED, FLOWS, {"service": "llm_serving", "group_peers": {"ops": [{"ipBlock": {}}]}})


GROUPS = {"data": ["ops1"], "ops": ["ops1"]}
HOSTVARS = {"ops1": {"ansible_host": "172.31.240.31"}}
VELERO = {"s3_url": "", "s3_services": ["s3", "object_storage"], "s3_scheme": "https", "bucket": "velero"}


def test_velero_location_comes_from_the_catalogue_s3_service():
    services = {"object_storage": {"port": 7480, "group": "data"}}
    loc = k8s.k8s_velero_location(services, GROUPS, HOSTVARS, VELERO)
    assert loc == {"url": "https://172.31.240.31:7480", "source": "cluster_services.object_storage", "bucket": "velero"}
    services["s3"] = {"port": 9000, "group": "ops"}
    assert k8s.k8s_velero_location(services, GROUPS, HOSTVARS, VELERO)["url"] == "https://172.31.240.31:9000"


def test_velero_location_setting_wins_and_none_without_s3():
    assert k8s.k8s_velero_location({}, GROUPS, HOSTVARS, VELERO) is None
    loc = k8s.k8s_velero_location({}, GROUPS, HOSTVARS, {**VELERO, "s3_url": "https://s3.example:443"})
    assert loc["source"] == "k8s_velero_s3_url"
    with pytest.raises(AnsibleFilterError, match="k8s_velero_bucket"):
        k8s.k8s_velero_location({}, GROUPS, HOSTVARS, {**VELERO, "s3_url": "https://s3.example", "bucket": "B"})
    with pytest.raises(AnsibleFilterError, match="has no host"):
        k8s.k8s_velero_location({"s3": {"port": 1, "group": "nowhere"}}, GROUPS, HOSTVARS, VELERO)


def test_rule_files_become_prometheus_rule_specs():
    files = {"site.yml": "# nothing\ngroups: []\n", "gpu.yml": "groups:\n  - name: gpu\n    rules: []\n"}
    assert k8s.k8s_prometheus_rules(copy.deepcopy(files)) == [{"name": "gpu", "groups": [{"name": "gpu", "rules": []}]}]
