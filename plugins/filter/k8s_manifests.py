"""Filters of the k8s role: the inventory's serving, firewall and backup settings as the
objects the manifest templates (templates/k8s/) render.

- `k8s_serving(plans, settings)`: the per-host serving plans (llm_serving's `plan` entry
  point, one per GPU node) merged into one workload per instance: replicas = the nodes that
  run it, GPUs per replica, CPU and memory, probes, update strategy, autoscaling bounds.
  An instance whose image, model, GPU count or options differ between nodes is refused:
  a Deployment's replicas are identical.
- `k8s_network_policies(allowed, flows, settings)`: the firewall policy's accepted flows to
  the serving service (firewall_policy's `allowed` for a serving node) as NetworkPolicy
  ingress rules; nothing else is allowed (a default-deny policy comes with them).
- `k8s_velero_location(services, groups, hostvars, settings)`: where Velero stores its
  backups: the k8s_velero_* settings, else the catalogue's S3 service; None when neither.
- `k8s_prometheus_rules(files)`: rule files (name -> text) as PrometheusRule specs.

Errors name the variable, what is wrong and the fix (AnsibleFilterError).
Tested by tests/unit/test_k8s_filter.py and, rendered, by tests/unit/test_k8s_manifests.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml
from ansible.errors import AnsibleFilterError

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
OVERRIDE_KEYS = {"replicas", "gpus", "cpu", "memory", "min_replicas", "max_replicas", "model_claim"}
# What must be the same on every node that runs an instance, and why it matters.
SAME_EVERYWHERE = {
    "image": "the image (llm_serving_image_digest / image_digest)",
    "model_dir": "model_dir",
    "model": "model",
    "llm_api_options": "llm_api_options",
    "args": "args",
    "env": "env",
}


def _quantity(value: Any, where: str) -> str:
    text = str(value)
    if not QUANTITY.match(text):
        raise AnsibleFilterError(f"{where} is {value!r}: use a Kubernetes quantity such as 8, 500m or 64Gi")
    return text


def _gib(value: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "k": 1e3 / 2**30, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    units["T"] = 1e12 / 2**30
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value) / 2**30


def _gpu_count(gpus: Any, where: str, override: Any) -> int:
    if override is not None:
        if not isinstance(override, int) or isinstance(override, bool) or override < 0:
            raise AnsibleFilterError(f"{where}.gpus is {override!r}: give the GPUs per replica as a whole number")
        return override
    if gpus == "all":
        raise AnsibleFilterError(
            f"{where}: the instance's gpus is 'all', which Kubernetes cannot request: set "
            "k8s_serving_overrides.<instance>.gpus to the GPUs each replica needs (e.g. 8)"
        )
    return len(gpus or [])


def k8s_serving(plans: Any, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One workload per instance, from every serving node's plan (sorted by instance name)."""
    if not isinstance(plans, list) or not all(isinstance(p, Mapping) for p in plans):
        raise AnsibleFilterError("k8s_serving needs the serving nodes' plans (llm_serving tasks_from: plan)")
    overrides = settings.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise AnsibleFilterError("k8s_serving_overrides must be a dict: instance name -> {replicas, gpus, cpu, ...}")
    by_name: dict[str, list[tuple[dict, dict]]] = {}
    for plan in sorted(plans, key=lambda p: str(p.get("host"))):
        for inst in plan.get("instances") or []:
            by_name.setdefault(inst["name"], []).append((plan, inst))
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise AnsibleFilterError(
            f"k8s_serving_overrides names {', '.join(unknown)}, which no serving node runs "
            f"(instances: {', '.join(sorted(by_name)) or 'none'}): fix the name or remove the entry"
        )
    out = []
    for name, runs in sorted(by_name.items()):
        where = f"serving instance {name}"
        if not DNS_LABEL.match(name):
            raise AnsibleFilterError(f"{where}: the name must be a DNS label (lower-case letters, digits, '-')")
        over = overrides.get(name) or {}
        bad = sorted(set(over) - OVERRIDE_KEYS)
        if bad:
            raise AnsibleFilterError(
                f"k8s_serving_overrides.{name}: unknown keys {', '.join(bad)} "
                f"(known: {', '.join(sorted(OVERRIDE_KEYS))})"
            )
        first_plan, first = runs[0]
        hosts = [p["host"] for p, _ in runs]
        for key, label in SAME_EVERYWHERE.items():
            for plan, inst in runs[1:]:
                if inst[key] != first[key]:
                    raise AnsibleFilterError(
                        f"{where}: {label} differs between {first_plan['host']} and {plan['host']}; the replicas of "
                        "a Deployment are identical, so give every node the same value (or another instance name)"
                    )
        for key in ("engine", "gpu_mode", "trtllm_backend"):
            if any(p[key] != first_plan[key] for p, _ in runs):
                raise AnsibleFilterError(f"{where}: llm_serving_{key} differs between the nodes {', '.join(hosts)}")
        counts = {len(i["colours"]["blue"]["gpus"]) if i["colours"]["blue"]["gpus"] != "all" else -1 for _, i in runs}
        if len(counts) > 1 and "gpus" not in over:
            raise AnsibleFilterError(
                f"{where}: the nodes {', '.join(hosts)} give it different numbers of GPUs; set "
                f"k8s_serving_overrides.{name}.gpus to the GPUs per replica"
            )
        gpus = _gpu_count(first["colours"]["blue"]["gpus"], f"k8s_serving_overrides.{name}", over.get("gpus"))
        if first_plan["gpu_mode"] == "none" and "gpus" not in over:
            gpus = 0
        over_where = f"k8s_serving_overrides.{name}"
        cpu = _quantity(over.get("cpu", max(gpus, 1) * int(settings["cpu_per_gpu"])), f"{over_where}.cpu")
        memory_gi = max(gpus * int(settings["memory_per_gpu_gi"]), int(settings["memory_min_gi"]))
        memory = over.get("memory", f"{memory_gi}Gi")
        memory = _quantity(memory, f"k8s_serving_overrides.{name}.memory")
        replicas = over.get("replicas", len(runs))
        min_replicas = over.get("min_replicas", replicas)
        max_replicas = over.get("max_replicas", max(replicas, min_replicas) * int(settings["max_replicas_factor"]))
        for key, value in (("replicas", replicas), ("min_replicas", min_replicas), ("max_replicas", max_replicas)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise AnsibleFilterError(f"k8s_serving_overrides.{name}.{key} is {value!r}: use a whole number >= 1")
        if not min_replicas <= max_replicas:
            raise AnsibleFilterError(
                f"k8s_serving_overrides.{name}: min_replicas {min_replicas} is above max_replicas {max_replicas}"
            )
        container = first_plan["container"]
        period = int(settings["probe_period_seconds"])
        options = first["llm_api_options"]
        options_text = json.dumps(options, indent=4, sort_keys=True) + "\n"
        out.append(
            {
                "name": name,
                "model": first["model"],
                "model_dir": first["model_dir"],
                "model_claim": over.get("model_claim", f"model-{name}"),
                "image": first["image"],
                "engine": first_plan["engine"],
                "trtllm_backend": first_plan["trtllm_backend"],
                "hosts": hosts,
                "replicas": replicas,
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "gpus": gpus,
                "cpu": cpu,
                "memory": memory,
                "shm": f"{max(1, math.ceil(_gib(memory) / 4))}Gi",
                # rolling: the same GPUs are reused, so a node never holds two replicas' worth;
                # blue_green: one more replica starts beside the old ones (spare GPUs).
                "max_surge": 1 if first["update_strategy"] == "blue_green" else 0,
                "max_unavailable": 0 if first["update_strategy"] == "blue_green" else 1,
                "update_strategy": first["update_strategy"],
                "http_port": int(container["http_port"]),
                "metrics_port": int(container["metrics_port"]),
                "health_path": container["health_path"],
                # Triton's readiness is /v2/health/ready (its generate needs a POST body).
                "ready_path": container["health_path" if first_plan["engine"] == "triton" else "generate_path"],
                "metrics_path": container["metrics_path"],
                "model_path": f"{container['model_root']}/{name}",
                "config_dir": container["config_dir"],
                "probe_period": period,
                "startup_failures": max(1, math.ceil(int(first_plan["ready_timeout"]) / period)),
                "stop_timeout": int(first_plan["stop_timeout"]),
                "llm_api_options": options,
                "options_text": options_text,
                "options_sha256": hashlib.sha256(options_text.encode()).hexdigest(),
                "args": list(first["args"]),
                "env": dict(sorted(first["env"].items())),
            }
        )
    return out


def k8s_network_policies(allowed: Any, flows: Any, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """NetworkPolicy ingress rules for the serving pods: one per firewall flow that reaches the
    serving service, from the same sources (CIDRs, plus in-cluster peers standing in for groups)."""
    service = settings["service"]
    peers = settings.get("group_peers") or {}
    if not isinstance(peers, Mapping):
        raise AnsibleFilterError("k8s_group_peers must be a dict: inventory group -> list of NetworkPolicy peers")
    by_flow = {f["name"]: f for f in flows or [] if isinstance(f, Mapping) and "name" in f}
    policies = []
    for entry in allowed or []:
        if entry["service"] != service:
            continue
        flow = by_flow.get(entry["flow"], {})
        sources = flow.get("from") or []
        sources = sources if isinstance(sources, list) else [sources]
        extra = []
        for group in sources:
            for peer in peers.get(str(group), []) or []:
                if not isinstance(peer, Mapping) or not set(peer) <= {"namespaceSelector", "podSelector"}:
                    raise AnsibleFilterError(
                        f"k8s_group_peers.{group}: each peer is a dict with namespaceSelector and/or podSelector"
                    )
                extra.append(dict(peer))
        name = "allow-" + re.sub(r"[^a-z0-9-]", "-", entry["flow"].lower()).strip("-")
        policies.append(
            {
                "name": name[:63].rstrip("-"),
                "flow": entry["flow"],
                "service": entry["service"],
                "protocol": entry["protocol"].upper(),
                "cidrs": list(entry["from"]),
                "peers": extra,
            }
        )
    return policies


def k8s_velero_location(
    services: Any, groups: Mapping[str, list[str]], hostvars: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Velero's S3 location: k8s_velero_s3_url when set, else the first host of the catalogue's
    S3 service (k8s_velero_s3_services, the first present); None when neither exists."""
    url = settings.get("s3_url") or ""
    source = "k8s_velero_s3_url"
    if not url:
        services = services if isinstance(services, Mapping) else {}
        for svc_name in settings.get("s3_services") or []:
            svc = services.get(svc_name)
            if not isinstance(svc, Mapping):
                continue
            members = list(groups.get(str(svc.get("group")), []))
            if not members:
                raise AnsibleFilterError(
                    f"cluster_services.{svc_name}: its group {svc.get('group')!r} has no host, so Velero has no S3 "
                    "endpoint: fix the group or set k8s_velero_s3_url"
                )
            address = hostvars[members[0]].get("ansible_host", members[0])
            url = f"{settings.get('s3_scheme', 'https')}://{address}:{svc['port']}"
            source = f"cluster_services.{svc_name}"
            break
    if not url:
        return None
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", str(url)):
        raise AnsibleFilterError(f"{source} gives Velero the S3 URL {url!r}: use http(s)://host:port")
    bucket = settings.get("bucket") or ""
    if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
        raise AnsibleFilterError(f"k8s_velero_bucket is {bucket!r}: use an S3 bucket name (3-63 lower-case characters)")
    return {"url": str(url), "source": source, "bucket": bucket}


def k8s_prometheus_rules(files: Any) -> list[dict[str, Any]]:
    """Rule files (name -> YAML text) as [{name, groups}], files without groups left out."""
    out = []
    for name, text in sorted((files or {}).items()):
        doc = yaml.safe_load(text) or {}
        groups = doc.get("groups") or []
        if groups:
            out.append({"name": re.sub(r"\.ya?ml$", "", name), "groups": groups})
    return out


def k8s_labels(value: Any) -> str:
    """A label value: at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(value))[:63]
    return text.strip("-_.")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "k8s_serving": k8s_serving,
            "k8s_network_policies": k8s_network_policies,
            "k8s_velero_location": k8s_velero_location,
            "k8s_prometheus_rules": k8s_prometheus_rules,
            "k8s_label": k8s_labels,
        }
