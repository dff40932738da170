"""`scripts/lab summary`: what `make lab` built and how to use it, checked, not assumed.

It calls the endpoint through the edge with a lab API key (and says what answered), prints
the same request as `curl` lines (plain and streamed), lists each console with its URL,
and says what the lab does not install and why.
"""

from __future__ import annotations

import json
import shlex
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import layout, pki, s3, secrets, topology, vault
from .shell import LabError

# Lab consoles worth a URL, by service catalogue name.
CONSOLES = {
    "prometheus": "Prometheus (targets, alerts, queries)",
    "alertmanager": "Alertmanager (alert groups, silences)",
    "grafana": "Grafana (dashboards)",
}

# What the lab's containers cannot have, and so does not install (docs/testing.md).
NOT_IN_THE_LAB = [
    ("NVIDIA driver, CUDA/NCCL, container toolkit, GPU validation",
     "no NVIDIA device in a container: the GPU roles find none and skip (docs/gpu/ has real-GPU runs)"),
    ("TensorRT-LLM", "NGC images cannot be pulled here: serving runs the trtllm-serve TEST DOUBLE "
     "(tests/doubles/trtllm-standin) through the same role"),
    ("dcgm-exporter", "an NGC image; the nvml_collector role covers GPU metrics on real hosts"),
    ("LUKS volumes", "no device-mapper in a container: exercised in the QEMU VM (molecule/metal, docs/metal.md)"),
]  # fmt: skip


def _group_vars(inventory: Path, name: str) -> dict[str, Any]:
    return yaml.safe_load((inventory / "group_vars" / "all" / name).read_text()) or {}


def _ca(topo: topology.Topology, host: str) -> Path | None:
    """The cluster CA copied from `host` to .lab/ca.crt, or None before a converge put it there."""
    try:
        return pki.fetch_ca(topo, host, layout.CA_COPY)
    except LabError:
        return None


def try_request(url: str, key: str, body: dict[str, Any], cafile: Path) -> str:
    """Send one chat request; say what answered (status, time, the model's words)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cafile=str(cafile))
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            answer = json.load(response)
            took = time.monotonic() - began
        words = answer["choices"][0]["message"]["content"]
        return f"answered {response.status} in {took:.2f} s: {words[:70]!r}"
    except urllib.error.HTTPError as exc:
        return f"FAILED: HTTP {exc.code} {exc.read()[:200]!r}"
    except (OSError, KeyError, ValueError) as exc:
        return f"FAILED: {exc}"


def show_object_storage(
    topo: topology.Topology, catalogue: dict[str, Any], vault_pass: Path, secrets_file: Path
) -> None:
    """The S3 endpoint (roles/object_storage), tried with the `models` identity, and a curl line."""
    hosts = [h for h in topo.hosts if catalogue.get("object_storage", {}).get("group") in h.groups]
    if not hosts:
        return
    url = f"https://{hosts[0].address}:{catalogue['object_storage']['port']}"
    print(f"\nObject storage (S3, Ceph RADOS gateway): {url} ({hosts[0].name}; buckets backups, models, k8s-backups)")
    ca = _ca(topo, hosts[0].name)
    keys = secrets.read_secrets(vault_pass, secrets_file).get("object_storage_s3_keys", {})
    if ca is None or "models" not in keys:
        print("  not converged yet: run `make lab-converge` first")
        return
    try:
        listed = s3.client(topo, "models", ca).list_objects_v2(Bucket="models", MaxKeys=1000)
        print(f"  tried it just now as `models`: bucket models holds {listed.get('KeyCount', 0)} object(s)")
    except Exception as exc:  # the summary reports what failed, it does not stop
        print(f"  tried it just now: FAILED: {exc}")
    key = keys["models"]
    user = shlex.quote(f"{key['access_key']}:{key['secret_key']}")
    print("  list the models bucket with curl (SigV4):")
    print(f"    curl --cacert {shlex.quote(str(ca))} --aws-sigv4 aws:amz:default:s3 --user {user} {url}/models/")
    print("  cluster state: `scripts/lab ssh ops1`, then `sudo ceph -s`; the other identities' keys are in")
    print(f"  object_storage_s3_keys (ansible-vault view --vault-password-file {vault_pass} {secrets_file})")


def show_vault(topo: topology.Topology, catalogue: dict[str, Any]) -> None:
    """The secrets store (roles/vault): its health asked just now, and where the lab keeps its parts."""
    hosts = [h for h in topo.hosts if catalogue.get("vault", {}).get("group") in h.groups]
    if not hosts:
        return
    url = f"https://{hosts[0].address}:{catalogue['vault']['port']}"
    print(f"\nSecrets store (OpenBao, one node: molecule/vault tests the three-node cluster): {url} ({hosts[0].name})")
    health = "not converged yet: run `make lab-converge`, then `make lab-vault`"
    if vault.LAB.ca_copy.exists():
        try:
            context = ssl.create_default_context(cafile=str(vault.LAB.ca_copy))
            with urllib.request.urlopen(f"{url}/v1/sys/health", timeout=10, context=context) as response:
                state = json.load(response)
            health = "active, unsealed" if not state["sealed"] and not state["standby"] else str(state)
        except urllib.error.HTTPError as exc:  # 503 sealed, 501 not initialised, 429 standby
            health = {503: "SEALED: run `make lab-vault` (it unseals)", 501: "not initialised"}.get(exc.code, str(exc))
        except OSError as exc:
            health = f"FAILED: {exc}"
    print(f"  asked just now: {health}")
    backend = "hashi_vault (from this Vault)" if vault.LAB.imported.exists() else "ansible_vault (not moved yet)"
    print(f"  the site reads its secrets through cluster_secrets_backend {backend}")
    print(f"  escrow (the PGP-encrypted share and root token, the encrypted controller AppRole): {vault.LAB.escrow}")
    print("  after a restart the node is sealed: `make lab-vault` unseals it with the TEST keyholder's key; a")
    print("  real site's keyholders run playbooks/vault-unseal.yml and type their shares")
    print(f"  on {hosts[0].name}: `bao status -address={url} -ca-cert=/etc/ssl/cluster/ca.crt`")


def show(topo: topology.Topology, inventory: Path, vault_pass: Path, secrets_file: Path) -> None:
    catalogue = _group_vars(inventory, "services.yml")["cluster_services"]

    def hosts_of(service: str) -> list[topology.LabHost]:
        group = catalogue[service]["group"]
        return [h for h in topo.hosts if group == "all" or group in h.groups]

    print("\nServices on the lab (from the service catalogue):")
    for name, svc in catalogue.items():
        ports = f"{svc['port']}-{svc['port_end']}" if "port_end" in svc else str(svc["port"])
        where = ", ".join(f"{h.name} {h.address}" for h in hosts_of(name)) or "no host"
        print(f"  {name:15} {svc.get('protocol', 'tcp')}/{ports:11} {where}")

    edge = hosts_of("https")[0]
    url = f"https://{edge.address}/v1/chat/completions"
    instances = _group_vars(inventory, "serving.yml").get("llm_serving_instances", [])
    model = instances[0]["model"] if instances else "MODEL"
    api_keys = secrets.read_secrets(vault_pass, secrets_file).get("edge_api_keys", {})
    client, key = next(iter(sorted(api_keys.items())), ("", ""))
    key = key[-1] if isinstance(key, list) else key
    ca = _ca(topo, edge.name)
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 32}
    print(f"\nThe endpoint: {url} (edge1, TLS 1.3 from the internal CA, API key of client {client!r})")
    if ca is None:
        print("  not converged yet (no CA certificate on the edge): run `make lab-converge` first")
    else:
        print(f"  tried it just now: {try_request(url, str(key), body, ca)}")
        common = f"curl --cacert {shlex.quote(str(ca))} {url} -H {shlex.quote(f'Authorization: Bearer {key}')}"
        print("  the same request:")
        json_type = "-H 'Content-Type: application/json'"
        print(f"    {common} {json_type} -d {shlex.quote(json.dumps(body))}")
        print("  streamed (server-sent events, token by token):")
        print(f"    {common} -N {json_type} -d {shlex.quote(json.dumps(body | {'stream': True}))}")
        print(f"  other lab keys: ansible-vault view --vault-password-file {vault_pass} {secrets_file}")

    show_object_storage(topo, catalogue, vault_pass, secrets_file)
    show_vault(topo, catalogue)

    observability = _group_vars(inventory, "observability.yml")
    print("\nConsoles (reachable from this machine: the lab's admin network is its gateway):")
    for name, what in CONSOLES.items():
        if name == "grafana" and not observability.get("grafana_enabled", True):
            print(f"  {what}: not installed in the lab (Grafana's apt repository cannot be reached from")
            print("    here); its dashboards and provisioning are checked by tests/unit")
            continue
        for h in hosts_of(name)[:1]:
            print(f"  {what}: http://{h.address}:{catalogue[name]['port']}/")
    print("  Alert notifications: journalctl -u alert-log-receiver on the ops host (`scripts/lab ssh ops1`)")

    print("\nBackups (restic, one repository per host in the lab's S3, a second copy on each host):")
    print("  every set on a timer (`systemctl list-timers 'cluster-backup@*'` on a host); run one now:")
    print("    scripts/lab ssh ops1, then `sudo systemctl start cluster-backup@config`")
    print("    (what it holds: `sudo cluster-backup --ls config latest /etc`)")
    print("  the restore drill (restores and verifies every set of every host, reports recovery times):")
    drill = "ansible-playbook playbooks/restore-drill.yml -i inventories/lab"
    print(f"    ANSIBLE_VAULT_PASSWORD_FILE={vault_pass} {drill}")
    print("  with Vault's snapshot started in a throwaway node too (the lab keyholder gives the unseal shares):")
    print("    scripts/lab drill")

    print("\nNot installed in the lab, and why:")
    for what, why in NOT_IN_THE_LAB:
        print(f"  {what}: {why}")

    print("\nDrift report (check mode, changes nothing):")
    print(f"  scripts/drift_report.py -i inventories/lab -- --vault-password-file {vault_pass}")
    print("Remove the lab: make lab-down")
