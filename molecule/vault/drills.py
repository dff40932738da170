"""Drills of the vault scenario's side_effect step, against the real OpenBao cluster.

Run by side_effect.yml on the controller (it reaches the nodes at their addresses on the
scenario network, TLS verified against the cluster CA). Each step prints one JSON line and
writes what verify needs under the ephemeral directory; a drill that misses its bound exits
non-zero, which fails the step.

  drills.py secrets     write the test secrets as the controller, issue the edge's AppRole
  drills.py failover    crash the active node; time until reads, a new leader, writes
  drills.py failover L  the same, its result named L (a second failover, after a change)
  drills.py joined      time until the node restarted at MARK is unsealed and a healthy voter
  drills.py restore     snapshot (the timer's service), change a value, restore with a root
                        token generated from the TEST keyholders' shares (generate-root)
  drills.py autounseal  crash the static-seal node (AUTO_NODE); time until it serves again,
                        unsealed by itself, with no keyholder
  drills.py snapshot-for-drill
                        a snapshot by the timer's service on the active node, named for the
                        snapshot_drill entry point (snapshot-drill-input.json: node, file)

Environment: VAULT_NODES (name=address,...), AUTO_NODE (name=address), VAULT_CA, DRILLS_DIR (where results go, and
credentials.json: the controller's AppRole and the TEST shares), GNUPGHOME (the TEST keyring).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

UNIT = "openbao"
FAILOVER_BOUND_S = 5.0
SECRET = "secret/data/llm-cluster"


def nodes() -> dict[str, str]:
    return dict(item.split("=", 1) for item in os.environ["VAULT_NODES"].split(","))


def auto_node() -> tuple[str, str]:
    name, address = os.environ["AUTO_NODE"].split("=", 1)
    return name, address


def url(node: str) -> str:
    return f"https://{dict([auto_node()]).get(node) or nodes()[node]}:8200"


def api(node: str, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = {"X-Vault-Token": token} if token else {}
    return requests.request(
        method, f"{url(node)}/v1/{path}", headers=headers, verify=os.environ["VAULT_CA"], timeout=3, **kwargs
    )


def login(node: str, role_id: str, secret_id: str) -> str:
    reply = api(node, "POST", "auth/approle/login", json={"role_id": role_id, "secret_id": secret_id})
    if not reply.ok:
        raise requests.HTTPError(f"{node}: {reply.status_code} {reply.text.strip()}", response=reply)
    return reply.json()["auth"]["client_token"]


def credentials() -> dict:
    return json.loads(Path(os.environ["DRILLS_DIR"], "credentials.json").read_text())


def controller_token(node: str) -> str:
    return login(node, credentials()["role_id"], credentials()["secret_id"])


def active() -> str:
    for node in nodes():
        try:
            if api(node, "GET", "sys/health").status_code == 200:
                return node
        except requests.RequestException:
            continue
    raise SystemExit("no active node")


def docker(node: str, *argv: str) -> None:
    subprocess.run(["docker", "exec", node, *argv], check=True)


def out(name: str, result: dict) -> None:
    Path(os.environ["DRILLS_DIR"], f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({name: result}))


def secrets() -> None:
    node = active()
    token = controller_token(node)
    for path, value in {
        "app_token": "v1-app-token-not-in-the-audit-log",
        "luks/vault1-data": "luks-key-of-vault1-data",
        "edge/api_keys": "edge-api-keys",
    }.items():
        api(node, "POST", f"{SECRET}/{path}", token, json={"data": {"value": value}}).raise_for_status()
    role_id = api(node, "GET", "auth/approle/role/edge/role-id", token).json()["data"]["role_id"]
    secret_id = api(node, "POST", "auth/approle/role/edge/secret-id", token).json()["data"]["secret_id"]
    Path(os.environ["DRILLS_DIR"], "edge-approle.json").write_text(
        json.dumps({"role_id": role_id, "secret_id": secret_id})
    )
    out("secrets", {"written_through": node, "edge_approle": "issued by the controller"})


def failover(label: str = "failover") -> None:
    leader = active()
    others = [n for n in nodes() if n != leader]
    token = controller_token(others[0])
    # A crash, not a clean stop (which hands leadership over at once): the others must notice
    # the silence and elect a leader. The unit is then stopped so that systemd does not
    # restart it while the others are timed.
    docker(leader, "systemctl", "kill", "--signal=SIGKILL", UNIT)
    start = time.monotonic()
    docker(leader, "systemctl", "stop", UNIT)
    attempts, seconds, elected, written = 0, None, None, None
    while seconds is None or elected is None or written is None:
        attempts += 1
        node = others[attempts % len(others)]
        try:
            if seconds is None and api(node, "GET", f"{SECRET}/app_token", token).status_code == 200:
                seconds = round(time.monotonic() - start, 2)
            if elected is None and any(api(n, "GET", "sys/health").status_code == 200 for n in others):
                elected = round(time.monotonic() - start, 2)
            body = {"data": {"value": "written during the failover"}}
            if written is None and api(node, "POST", f"{SECRET}/failover_probe", token, json=body).status_code == 200:
                written = round(time.monotonic() - start, 2)
        except requests.RequestException:
            pass
        if time.monotonic() - start > 30:
            raise SystemExit(f"{others} not serving within 30 s of stopping {leader}: read {seconds}, leader {elected}")
        time.sleep(0.1)
    docker(leader, "systemctl", "start", UNIT)
    restarted = time.time()
    out(
        label,
        {
            "stopped": leader,
            "read_ok_after_s": seconds,
            "new_leader_after_s": elected,
            "write_ok_after_s": written,
            "bound_s": FAILOVER_BOUND_S,
            "attempts": attempts,
        },
    )
    Path(os.environ["DRILLS_DIR"], "restart-mark.json").write_text(json.dumps({"node": leader, "at": restarted}))
    sealed = api(leader, "GET", "sys/seal-status").json()["sealed"] if _answers(leader) else True
    if not sealed:
        raise SystemExit(f"{leader} came back unsealed: a Shamir-sealed node must come back sealed")
    if max(seconds, written) > FAILOVER_BOUND_S:
        raise SystemExit(
            f"reads resumed {seconds} s, writes {written} s after the leader crashed (bound {FAILOVER_BOUND_S} s)"
        )


def _answers(node: str) -> bool:
    for _ in range(50):
        try:
            api(node, "GET", "sys/seal-status")
            return True
        except requests.RequestException:
            time.sleep(0.2)
    return False


def joined(label: str = "restart") -> None:
    mark = json.loads(Path(os.environ["DRILLS_DIR"], "restart-mark.json").read_text())
    node = mark["node"]
    while True:
        if api(node, "GET", "sys/health").status_code in (200, 429) and _healthy_cluster():
            break
        if time.time() - mark["at"] > 120:
            raise SystemExit(f"{node} not back as a healthy voter 120 s after its restart")
        time.sleep(0.2)
    out(
        label,
        {"node": node, "sealed_at_start": True, "back_in_cluster_after_s": round(time.time() - mark["at"], 2)},
    )


def generate_root(node: str) -> str:
    """A root token from the TEST keyholders' shares, encrypted to keyholder 1's key."""
    keyring = Path(os.environ["GNUPGHOME"])
    pgp = base64.b64encode(subprocess.run(
        ["gpg", "--batch", "--export", "test-keyholder-1@vault.test.invalid"], check=True, capture_output=True
    ).stdout).decode()  # fmt: skip
    assert keyring.is_dir()
    api(node, "DELETE", "sys/generate-root/attempt")
    nonce = api(node, "PUT", "sys/generate-root/attempt", json={"pgp_key": pgp}).json()["nonce"]
    reply = {}
    for share in credentials()["shares"]:
        reply = api(node, "PUT", "sys/generate-root/update", json={"key": share, "nonce": nonce}).json()
    encrypted = base64.b64decode(reply["encoded_token"])
    return (
        subprocess.run(["gpg", "--batch", "--quiet", "--decrypt"], input=encrypted, check=True, capture_output=True)
        .stdout.decode()
        .strip()
    )


def timer_snapshot(node: str) -> str:
    """The timer's service saves a snapshot on the active node: its file."""
    subprocess.run(["docker", "exec", node, "systemctl", "start", f"{UNIT}-snapshot.service"], check=True)
    return subprocess.run(
        ["docker", "exec", node, "sh", "-c", f"ls -1t /var/backups/{UNIT}/raft-*.snap | head -1"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def snapshot_for_drill() -> None:
    node = active()
    Path(os.environ["DRILLS_DIR"], "snapshot-drill-input.json").write_text(
        json.dumps({"node": node, "file": timer_snapshot(node)})
    )


def restore() -> None:
    node = active()
    listing = timer_snapshot(node)
    snapshot = subprocess.run(["docker", "exec", node, "cat", listing], check=True, capture_output=True).stdout
    token = controller_token(node)
    api(
        node, "POST", f"{SECRET}/app_token", token, json={"data": {"value": "v2-changed-after-the-snapshot"}}
    ).raise_for_status()
    root = generate_root(node)
    reply = api(node, "POST", "sys/storage/raft/snapshot-force", root, data=snapshot)
    if reply.status_code not in (200, 204):
        raise SystemExit(f"restore refused: {reply.status_code} {reply.text}")
    # The generated root token was made after the snapshot: the restore dropped it. The
    # cluster serves again once a node is active and autopilot counts every voter healthy.
    restored = time.monotonic()
    while not _healthy_cluster():
        if time.monotonic() - restored > 60:
            raise SystemExit("the cluster is not healthy 60 s after the snapshot restore")
        time.sleep(0.5)
    out(
        "snapshot",
        {
            "saved_by_timer_service_on": node,
            "file": listing,
            "bytes": len(snapshot),
            "restored": True,
            "healthy_again_after_s": round(time.monotonic() - restored, 2),
        },
    )


def autounseal() -> None:
    node, _ = auto_node()
    if api(node, "GET", "sys/seal-status").json()["type"] != "static":
        raise SystemExit(f"{node} does not run the static seal")
    docker(node, "systemctl", "kill", "--signal=SIGKILL", UNIT)
    start = time.monotonic()
    # systemd restarts it (Restart=on-failure, RestartSec=5): no keyholder, no playbook.
    while True:
        try:
            if api(node, "GET", "sys/health").status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() - start > 60:
            raise SystemExit(f"{node} not active and unsealed 60 s after a crash")
        time.sleep(0.2)
    out("autounseal", {"node": node, "crashed": True, "serving_unsealed_after_s": round(time.monotonic() - start, 2)})


def _healthy_cluster() -> bool:
    try:
        leader = active()
        metrics = api(leader, "GET", "sys/metrics", params={"format": "prometheus"}).text
    except (requests.RequestException, SystemExit):
        return False
    return "vault_autopilot_healthy 1" in metrics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "drill", choices=["secrets", "failover", "joined", "restore", "autounseal", "snapshot-for-drill"]
    )
    parser.add_argument("label", nargs="?", help="failover, joined: the name of the result (a drill run twice)")
    args = parser.parse_args()
    drills = {
        "secrets": secrets,
        "failover": failover,
        "joined": joined,
        "restore": restore,
        "autounseal": autounseal,
        "snapshot-for-drill": snapshot_for_drill,
    }
    drill = drills[args.drill]
    drill(args.label) if args.label else drill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
