"""The vault scenario's behaviour, read after converge, idempotence and the drills (side_effect).

Read-only: every test reads state (health, metrics, files, a secret through the lookup) and
changes nothing. The drills' own bounds (failover within 5 s) are asserted in side_effect.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

NODES = {"vault1": "172.30.20.11", "vault2": "172.30.20.12", "vault3": "172.30.20.13"}
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
DRILLS = EPHEMERAL / "drills"
CA = str(DRILLS / "ca.crt")
ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
ESCROW = EPHEMERAL / "vault-escrow"
APP_TOKEN_V1 = "v1-app-token-not-in-the-audit-log"


def api(address: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"X-Vault-Token": token} if token else {}
    return requests.get(f"https://{address}:8200/v1/{path}", headers=headers, verify=CA, timeout=5, **kwargs)


def docker(node: str, *argv: str) -> str:
    return subprocess.run(["docker", "exec", node, *argv], check=True, capture_output=True, text=True).stdout


def lookup(*names: str, default: str | None = None) -> subprocess.CompletedProcess:
    """cluster_secret over AppRole and TLS, configured as an operator would (README)."""
    opts = (", default='none'" if default is not None else "") + (", wantlist=True" if len(names) > 1 else "")
    terms = ", ".join(repr(n) for n in names)
    extra = {
        "cluster_secrets_backend": "hashi_vault",
        "cluster_secrets": {"vault_escrow": "molecule-vault-test-escrow-passphrase"},
        "escrow": str(ESCROW / "controller-approle.json"),
        "approle": "{{ (lookup('file', escrow) | from_json).ciphertext"
        " | unvault(cluster_secrets.vault_escrow) | from_json }}",
        "cluster_secrets_hashi_vault_options": {
            "url": f"https://{NODES['vault2']}:8200",
            "ca_cert": CA,
            "auth_method": "approle",
            "role_id": "{{ approle.role_id }}",
            "secret_id": "{{ approle.secret_id }}",
        },
    }
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_STRATEGY": "linear",
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}  # fmt: skip
    return subprocess.run(
        ["ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
         "-a", f"msg={{{{ lookup('cluster_secret', {terms}{opts}) }}}}", "-e", json.dumps(extra)],
        capture_output=True, text=True, env=env, cwd=ROOT, check=False,
    )  # fmt: skip


def _msg(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The JSON result, between the lines other callbacks (timers) print around it.
    result, _ = json.JSONDecoder().raw_decode(proc.stdout[proc.stdout.index("{") :])
    return result["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]


def test_every_node_unsealed_one_active_two_standby():
    codes = sorted(api(a, "sys/health").status_code for a in NODES.values())
    assert codes == [200, 429, 429]  # 200 active, 429 unsealed standby


def test_the_raft_cluster_has_three_healthy_voters():
    # Autopilot publishes its verdict every few seconds, on the active node only.
    metrics = ""
    for _ in range(30):
        active = next((a for a in NODES.values() if api(a, "sys/health").status_code == 200), None)
        metrics = api(active, "sys/metrics", params={"format": "prometheus"}).text if active else ""
        if "vault_autopilot_healthy 1" in metrics:
            break
        time.sleep(1)
    assert "vault_raft_peers 3" in metrics
    assert "vault_autopilot_healthy 1" in metrics
    assert all(f'vault_autopilot_node_healthy{{node_id="{n}"}} 1' in metrics for n in NODES)


def test_the_cluster_was_initialised_once_with_pgp_encrypted_shares():
    escrow = json.loads((ESCROW / "init.json").read_text())
    assert escrow["threshold"] == 2 and len(escrow["unseal_keys_pgp_b64"]) == 3
    assert escrow["keyholders"] == ["test-keyholder-1", "test-keyholder-2", "test-keyholder-3"]
    # Encrypted: each is an OpenPGP message, not a plain 32-byte share.
    assert all(len(k) > 200 for k in escrow["unseal_keys_pgp_b64"])
    approle = json.loads((ESCROW / "controller-approle.json").read_text())
    assert approle["ciphertext"].startswith("$ANSIBLE_VAULT;1.2;AES256;vault_escrow")


@pytest.mark.parametrize("address", NODES.values())
def test_api_speaks_tls13_only(address: str):
    old = ssl.create_default_context(cafile=CA)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection((address, 8200), timeout=5) as sock:
        old.wrap_socket(sock, server_hostname=address)
    new = ssl.create_default_context(cafile=CA)
    with (
        socket.create_connection((address, 8200), timeout=5) as sock,
        new.wrap_socket(sock, server_hostname=address) as tls,
    ):
        assert tls.version() == "TLSv1.3"


@pytest.mark.parametrize("node", NODES)
def test_the_unit_is_hardened_and_runs_as_its_user(node: str):
    props = dict(
        line.split("=", 1)
        for line in docker(node, "systemctl", "show", "openbao", "-p", "ActiveState,User,NoNewPrivileges,"
                           "ProtectSystem,CapabilityBoundingSet,PrivateDevices,ProtectHome").splitlines()
    )  # fmt: skip
    assert props == {"ActiveState": "active", "User": "openbao", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                     "CapabilityBoundingSet": "", "PrivateDevices": "yes", "ProtectHome": "yes"}  # fmt: skip


def test_lookup_over_approle_and_tls_reads_the_value_the_snapshot_restored():
    # The drills wrote v1, took a snapshot, wrote v2 and restored the snapshot.
    assert _msg(lookup("app_token")) == APP_TOKEN_V1


def test_lookup_returns_the_default_for_a_missing_secret():
    assert _msg(lookup("app_token", "no_such_secret", default="none")) == [APP_TOKEN_V1, "none"]


def test_lookup_without_default_names_the_missing_secret():
    proc = lookup("no_such_secret")
    assert proc.returncode != 0 and "secret 'no_such_secret'" in proc.stdout + proc.stderr


def test_the_edge_identity_is_denied_the_luks_keys():
    creds = json.loads((DRILLS / "edge-approle.json").read_text())
    address = NODES["vault3"]
    reply = requests.post(f"https://{address}:8200/v1/auth/approle/login", json=creds, verify=CA, timeout=5)
    token = reply.json()["auth"]["client_token"]
    assert api(address, "secret/data/llm-cluster/edge/api_keys", token).status_code == 200
    assert api(address, "secret/data/llm-cluster/luks/vault1-data", token).status_code == 403


def test_the_audit_log_records_reads_with_the_secret_hmaced():
    logs = "".join(docker(n, "sh", "-c", "cat /var/log/openbao/audit.log 2>/dev/null || true") for n in NODES)
    reads = [
        e for e in map(json.loads, logs.splitlines())
        if e.get("type") == "response" and e["request"].get("path") == "secret/data/llm-cluster/app_token"
        and e["request"].get("operation") == "read" and e.get("response", {}).get("data")
    ]  # fmt: skip
    assert reads, "no audited read of secret/data/llm-cluster/app_token"
    assert all(r["response"]["data"]["data"]["value"].startswith("hmac-sha256:") for r in reads)
    assert APP_TOKEN_V1 not in logs


@pytest.mark.parametrize("node", NODES)
def test_the_renamed_audit_device_is_the_only_one_on_every_node(node: str):
    config = docker(node, "cat", "/etc/openbao/openbao.hcl")
    assert 'audit "file" "file-v2"' in config and "file-v1" not in config


def test_a_new_leader_took_over_with_the_renamed_audit_device():
    failover = json.loads((DRILLS / "failover-audit-renamed.json").read_text())
    assert failover["write_ok_after_s"] <= failover["bound_s"]
    assert json.loads((DRILLS / "restart-audit-renamed.json").read_text())["node"] == failover["stopped"]


def test_snapshots_are_kept_on_the_node_for_the_backup_layer():
    listing = "stat -c '%U %a %s %n' /var/backups/openbao/raft-*.snap 2>/dev/null || true"
    files = [line for n in NODES for line in docker(n, "sh", "-c", listing).splitlines()]
    assert files and all(f.startswith("openbao 600 ") for f in files)
    for n in NODES:
        assert docker(n, "systemctl", "is-enabled", "openbao-snapshot.timer").strip() == "enabled"


# --- vault4: a single-node cluster with the static seal (auto-unseal) ---------------------

AUTO = "172.30.20.14"


def test_the_snapshot_drill_brought_a_vault_back_with_the_live_canary():
    # side_effect: the snapshot_drill entry point on the node whose timer saved the snapshot.
    result = json.loads((DRILLS / "snapshot-drill.json").read_text())
    assert result["skipped"] is False
    assert result["snapshot"].startswith("/var/backups/openbao/raft-")
    assert result["canary_matched"] is True
    # Written once by the bootstrap (check-and-set 0), never overwritten since.
    assert result["canary_version"] == result["live_canary_version"] == 1
    assert len(result["canary_sha256"]) == 64
    assert result["seconds"] > 0


def test_the_snapshot_drill_refused_shares_that_are_not_the_clusters_and_the_live_node_served_on():
    record = json.loads((DRILLS / "snapshot-drill-wrong-shares.json").read_text())
    assert "failed at step 'unseal with the original cluster's shares'" in record["msg"], record
    assert record["live_health_status"] in (200, 429), record


def test_the_snapshot_drill_is_skipped_under_the_static_seal_and_says_why():
    result = json.loads((DRILLS / "snapshot-drill-static.json").read_text())
    assert result["skipped"] is True
    assert "static" in result["reason"]


@pytest.mark.parametrize("node", NODES)
def test_the_snapshot_drill_left_no_scratch_directory_and_no_server(node: str):
    assert docker(node, "find", "/var/tmp", "-maxdepth", "1", "-name", "openbao-snapshot-drill-*") == ""
    # The unit's server only (pgrep -x matches the process name, not the arguments).
    assert docker(node, "pgrep", "-c", "-x", "bao").strip() == "1"


def test_the_static_seal_node_was_initialised_with_encrypted_recovery_shares_only():
    status = api(AUTO, "sys/seal-status").json()
    assert status["type"] == "static" and status["recovery_seal"] and status["initialized"]
    escrow = json.loads((EPHEMERAL / "vault-escrow-auto" / "init.json").read_text())
    assert escrow["seal"] == "static" and "unseal_keys_pgp_b64" not in escrow
    assert len(escrow["recovery_keys_pgp_b64"]) == 3 and all(len(k) > 200 for k in escrow["recovery_keys_pgp_b64"])
    key = docker("vault4", "stat", "-c", "%a %U %G %s", "/srv/secrets/openbao/seal.key").split()
    assert key == ["640", "root", "openbao", "64"]


def test_the_static_seal_node_came_back_unsealed_by_itself_after_a_crash():
    result = json.loads((DRILLS / "autounseal.json").read_text())
    assert result["crashed"] and result["serving_unsealed_after_s"] < 60
    assert api(AUTO, "sys/health").status_code == 200  # active and unsealed, no keyholder involved


def test_a_run_that_would_change_the_seal_is_refused_before_the_configuration_changes():
    refused = json.loads((DRILLS / "seal-change-refused.json").read_text())
    assert "Never change the seal" in refused["task"], refused
    assert "was initialised with the static seal" in refused["msg"] and "seal migration" in refused["msg"]
    assert 'seal "static"' in docker("vault4", "cat", "/etc/openbao/openbao.hcl")
