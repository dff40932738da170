"""The lab's secrets store: OpenBao on ops1, handed the lab's secrets by `scripts/lab vault`
after the first converge (the `converged` fixture runs it, as `make lab` does), and read by
the second converge through the cluster_secret lookup's `hashi_vault` backend.

What the three-node cluster does (failover, unseal after a restart, snapshots, the audit
device's rename) is molecule/vault's; here the whole site runs on it.
"""

from __future__ import annotations

import json
import secrets

from conftest import INVENTORY, ROOT, VAULT_PASS, Lab, _summary, quote
from labkit.secrets import read_secrets

AUDIT_LOG = "/var/log/openbao/audit.log"
KV_PREFIX = "secret/data/llm-cluster/"
IMPORT = ROOT / "playbooks" / "vault-import-secrets.yml"
SECRET_READS = ROOT / "tests" / "lab" / "vault_secret_reads.yml"


def vault_host(lab: Lab) -> str:
    return lab.hosts("vault")[0]


def audit_entries(lab: Lab) -> list[dict]:
    text = lab.exec(vault_host(lab), f"cat {AUDIT_LOG}").stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_lab_vault_is_initialised_unsealed_and_active(converged: Lab):
    host = vault_host(converged)
    code = (
        "import ssl,urllib.request,sys; ctx=ssl.create_default_context(cafile='/etc/ssl/cluster/ca.crt'); "
        f"sys.stdout.write(urllib.request.urlopen('https://{converged.address(host)}:8200/v1/sys/health', "
        "context=ctx, timeout=10).read().decode())"
    )
    health = json.loads(converged.exec(host, f"python3 -c {quote(code)}").stdout)
    assert (health["initialized"], health["sealed"], health["standby"]) == (True, False, False), health


def test_the_second_converge_read_the_site_secrets_from_vault(converged: Lab, api_keys):
    """The second run (changed=0, test_00) read the secrets the roles use from KV v2, as the
    controller's AppRole, and the audit log holds the values HMAC'd, never in clear."""
    entries = audit_entries(converged)
    read = {
        e["request"]["path"].removeprefix(KV_PREFIX)
        for e in entries
        if e.get("type") == "request"
        and e["request"].get("operation") == "read"
        and e["request"].get("path", "").startswith(KV_PREFIX)
        and "controller" in e.get("auth", {}).get("policies", [])
    }
    assert {"edge_api_keys", "backup_repository_key"} <= read, sorted(read)
    raw = converged.exec(vault_host(converged), f"cat {AUDIT_LOG}").stdout
    assert api_keys["lab-client"] not in raw
    answered = [  # reads that found the secret (the import's first look found none)
        e["response"]["data"]["data"]["value"]
        for e in entries
        if e.get("type") == "response"
        and e["request"].get("path") == KV_PREFIX + "edge_api_keys"
        and e["request"].get("operation") == "read"
        and "data" in e.get("response", {})
    ]
    assert answered and all(str(v).startswith("hmac-sha256:") for value in answered for v in value.values())


def test_a_run_logs_in_once_whatever_its_tasks_and_hosts(converged: Lab):
    """Each task's lookups run in a worker of their own; the run still logs in to Vault once
    (the token is kept in the run's temporary directory), not once per task and host: a
    login is a raft write and a token that lives for the AppRole's TTL."""

    def logins() -> int:
        return sum(
            1
            for e in audit_entries(converged)
            if e.get("type") == "request" and e["request"].get("path") == "auth/approle/login"
        )

    before = logins()
    run = converged.playbook(playbook=SECRET_READS)
    assert run.rc == 0, _summary(run)
    assert sum(s["ok"] for s in run.stats.values()) == 3 * len(run.stats)
    assert logins() - before == 1


def test_the_secrets_import_never_overwrites_a_secret_vault_holds(converged: Lab):
    """playbooks/vault-import-secrets.yml, run again with one value changed in the file's
    mapping: it stops, names the secret and shows no value; Vault keeps its own (a plain
    re-run then finds every value equal: changed=0)."""
    held = read_secrets(VAULT_PASS, INVENTORY / "group_vars" / "all" / "secrets.vault.yml")
    other = "not-the-lab-canary-" + secrets.token_hex(8)
    conflict = converged.playbook("-e", json.dumps({"cluster_secrets": {**held, "lab_canary": other}}), playbook=IMPORT)
    assert conflict.rc != 0
    assert "Vault already holds secret 'lab_canary'" in conflict.stdout  # the item's message
    assert other not in conflict.stdout + conflict.stderr
    again = converged.playbook(playbook=IMPORT)
    assert again.rc == 0 and again.changed_tasks() == {}, _summary(again)
