"""Backups (roles/backup) on the lab: restic repositories in the lab's Ceph (ops1), a second
copy on each host, restores and the drill.

The series the backup alerts read that only a run writes (a backup, a copy, a drill, a full
read) are asserted here, after the drill; the observability tests (test_60) leave them to
this file. The corruption test damages a pack through S3 and repairs it (the good version,
which object lock kept, is copied over the damaged one), so the lab ends with good backups.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import ROOT, Lab, _summary, quote, wait_for
from labkit import pki, s3, vault

from tests.promtool import promkit

PLAYBOOKS = ROOT / "playbooks"


def backup(lab: Lab, host: str, name: str) -> dict:
    """Run the set's unit now, as its timer would, and return the program's last line."""
    lab.exec(host, f"systemctl start cluster-backup@{name}.service")
    log = lab.exec(host, f"journalctl -u cluster-backup@{name}.service -o cat --no-pager").stdout
    return json.loads([line for line in log.splitlines() if line.startswith('{"set"')][-1])


def firing(lab: Lab, alert: str) -> list[dict]:
    """The alert's firing instances in the lab's Prometheus (asked on the ops host)."""
    alerts = lab.monitoring_api("/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def sets_of(lab: Lab, host: str) -> list[str]:
    return [n.removesuffix(".json") for n in lab.exec(host, "ls /etc/cluster-backup/sets").stdout.split()]


@pytest.fixture(scope="module")
def bucket(converged: Lab, tmp_path_factory):
    """The backups bucket, as the backups identity."""
    topo = converged.topo
    ca = pki.fetch_ca(topo, s3.storage_host(topo), tmp_path_factory.mktemp("s3") / "ca.crt")
    return s3.client(topo, "backups", ca)


def metric(lab: Lab, host: str, name: str, labels: str) -> float | None:
    text = lab.exec(host, "cat /var/lib/prometheus/node-exporter/cluster_backup_*.prom", check=False).stdout
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


@pytest.fixture(scope="module")
def backed_up(converged: Lab) -> Lab:
    """Every host's sets backed up once, as their timers would, and the ops host's
    configuration a second time (an incremental run); the timings are printed. Before them,
    each Vault node's snapshot service runs once, as its hourly timer would (the lab's Vault
    is minutes old): the vault-snapshots set then has a raft snapshot to back up."""
    for host in converged.hosts("vault"):
        converged.exec(host, "systemctl start openbao-snapshot.service")
        assert converged.exec(host, "ls /var/backups/openbao/raft-*.snap", check=False).returncode == 0, host
    runs = [(host, name) for host in converged.hosts() for name in sets_of(converged, host)]
    runs.append((converged.hosts("ops")[0], "config"))
    for host, name in runs:
        result = backup(converged, host, name)
        assert result["ok"], f"{host} {name}"
        print(f"backup {host} {name}: {result['seconds']} s")
    return converged


def test_every_host_backs_up_its_sets_on_timers(converged: Lab):
    for host in converged.hosts():
        timers = converged.exec(host, "systemctl list-timers 'cluster-backup@*' --all --no-legend").stdout
        assert "cluster-backup@config.timer" in timers, (host, timers)
        # On every host, LUKS volumes or not (the lab has none): the luks role's header copies.
        assert "cluster-backup@luks-headers.timer" in timers, (host, timers)
        # Before any backup, the set's freshness counts from its configuration (BackupTooOld).
        assert metric(converged, host, "cluster_backup_configured_timestamp_seconds", 'set="config"') > 0, host
    assert "cluster-backup@ca.timer" in converged.exec(converged.hosts("ops")[0], "systemctl list-timers --all").stdout


def test_a_backup_writes_a_snapshot_to_s3_and_its_local_copy(backed_up: Lab, bucket):
    ops = backed_up.hosts("ops")[0]
    snapshot = json.loads(backed_up.exec(ops, "cluster-backup --ls config latest /etc/hostname").stdout.splitlines()[0])
    assert snapshot["hostname"] == ops and snapshot["tags"] == ["config"]
    assert metric(backed_up, ops, "cluster_backup_last_run_success", 'set="config"') == 1
    assert metric(backed_up, ops, "cluster_backup_configured_timestamp_seconds", 'set="config"') > 0  # kept
    assert metric(backed_up, ops, "cluster_backup_copy_last_success_timestamp_seconds", 'set="config",copy="local"')
    # One repository per host in the lab's Ceph, and its copy on the host itself.
    for host in backed_up.hosts():
        assert bucket.list_objects_v2(Bucket="backups", Prefix=f"{host}/snapshots/")["KeyCount"] >= 1
    assert "snapshots" in backed_up.exec(ops, f"ls /var/backups/restic-copy/{ops}").stdout.split()


def test_restore_brings_back_a_deleted_managed_file(backed_up: Lab):
    host = backed_up.hosts("gpu_nodes")[0]
    path = "/etc/sysctl.d/60-cluster-tuning.conf"
    original = backed_up.exec(host, f"sha256sum {path}").stdout.split()[0]
    backed_up.exec(host, f"rm {path}")
    extra = ["-e", f"restore_host={host}", "-e", "restore_set=config", "-e", json.dumps({"restore_paths": [path]})]
    check = backed_up.playbook("--check", *extra, playbook=PLAYBOOKS / "restore.yml")
    assert check.rc == 0 and backed_up.exec(host, f"test -e {path}", check=False).returncode != 0, _summary(check)
    run = backed_up.playbook(*extra, playbook=PLAYBOOKS / "restore.yml")
    assert run.rc == 0, _summary(run)
    assert backed_up.exec(host, f"sha256sum {path}").stdout.split()[0] == original


def task_messages(run, name: str) -> dict[str, str]:
    """Each host's message of the task `name` in a playbook run."""
    return {
        host: result.get("msg", "")
        for play in run.data["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == name
        for host, result in task["hosts"].items()
    }


def test_the_drill_restores_every_set_and_brings_vault_back_from_its_snapshot(backed_up: Lab):
    # With the keyholder's shares, as `scripts/lab drill` gives them.
    with vault.keyholder_vars() as shares:
        run = backed_up.playbook("-e", f"@{shares}", playbook=PLAYBOOKS / "restore-drill.yml")
    assert run.rc == 0, _summary(run)
    # The vault-snapshots backup's newest raft snapshot, restored into a throwaway node that
    # the original shares unsealed, gave back the live cluster's canary.
    reports = task_messages(run, "Restore drill | Vault | Recovery time")
    node = backed_up.hosts("vault")[0]
    brought_back = r"raft-\S+\.snap brought a Vault back in [\d.]+ s \(canary version 1 matches"
    assert re.search(brought_back, reports[node]), reports
    # Its scratch copy is gone (ansible's tempfile puts it under /tmp or a per-user /tmp/user/0).
    assert backed_up.exec(node, "find /tmp -maxdepth 3 -name 'drill-vault-*'").stdout == ""
    ops = backed_up.hosts("ops")[0]
    for name in ("config", "ca"):
        assert metric(backed_up, ops, "cluster_backup_drill_success", f'set="{name}"') == 1
        assert metric(backed_up, ops, "cluster_backup_drill_duration_seconds", f'set="{name}"') > 0
    assert metric(backed_up, ops, "cluster_backup_check_success", 'repository="local"') == 1
    report = task_messages(run, "Restore drill | Recovery time per set")[ops]
    # Held to what each snapshot lists (restic ls): the CA set has its files, counted.
    assert re.search(r"\bca: restored and verified [1-9]\d* files in [\d.]+ s", report), report
    # A host without LUKS volumes backs up the header directory empty (its `before` made it),
    # and the drill accepts that honestly empty snapshot.
    assert re.search(r"\bluks-headers: restored and verified 0 files in [\d.]+ s", report), report
    # Every series the backup alerts read now exists and reaches Prometheus.
    rules = yaml.safe_load(backed_up.exec(ops, "cat /etc/prometheus/rules.d/backup.yml").stdout)
    used = set().union(*(promkit.metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
    assert "cluster_backup_drill_success" in used

    def missing() -> set[str]:
        return used - set(backed_up.monitoring_api("/api/v1/label/__name__/values")["data"])

    try:
        wait_for("the backup alerts' series in Prometheus", lambda: not missing(), timeout=90)
    except AssertionError:
        raise AssertionError(f"series the backup alerts read, not in Prometheus: {sorted(missing())}") from None


def test_a_damaged_pack_fails_the_drill_loudly_and_alerts(backed_up: Lab, bucket):
    host = backed_up.hosts("edge")[0]
    packs = bucket.list_objects_v2(Bucket="backups", Prefix=f"{host}/data/")["Contents"]
    pack = max(packs, key=lambda o: o["Size"])["Key"]
    good = bucket.head_object(Bucket="backups", Key=pack)["VersionId"]
    # A new version of the pack with other bytes: the locked good version stays beneath it.
    bucket.put_object(Bucket="backups", Key=pack, Body=b"\0" * 4096)
    try:
        run = backed_up.playbook("--limit", host, playbook=PLAYBOOKS / "restore-drill.yml")
        assert run.rc != 0 and run.failures().get(host), _summary(run)
        assert metric(backed_up, host, "cluster_backup_check_success", 'repository="primary"') == 0
        wait_for("BackupRestoreDrillFailed firing", lambda: firing(backed_up, "BackupRestoreDrillFailed"), timeout=120)
    finally:
        # Object lock keeps the damaged version too: the good one is copied over it.
        source = {"Bucket": "backups", "Key": pack, "VersionId": good}
        bucket.copy_object(Bucket="backups", Key=pack, CopySource=source)
    again = backed_up.playbook("--limit", host, playbook=PLAYBOOKS / "restore-drill.yml")
    assert again.rc == 0, _summary(again)
    assert metric(backed_up, host, "cluster_backup_check_success", 'repository="primary"') == 1


def prometheus_query(lab: Lab, query: str, at: float) -> list[dict]:
    """An instant query of the lab's Prometheus (asked on the ops host)."""
    return lab.monitoring_api("/api/v1/query", query=query, time=f"{at:.0f}")["data"]["result"]


def prometheus_restarted(lab: Lab, host: str, command: str) -> None:
    lab.exec(host, command)
    ready = "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:9090/-/ready\", timeout=5)'"
    wait_for("Prometheus ready", lambda: lab.exec(host, ready, check=False).returncode == 0, timeout=120)


def blocks_holding(lab: Lab, host: str, tsdb: str, at: float) -> list[str]:
    """The TSDB's blocks whose time range holds `at` (Prometheus may have compacted the
    backfilled block into another by now)."""
    code = (
        "import glob,json,os,sys; t=int(sys.argv[2])*1000; print(' '.join(sorted("
        "os.path.basename(os.path.dirname(m)) for m in glob.glob(sys.argv[1]+'/*/meta.json')"
        " if json.load(open(m))['minTime'] <= t < json.load(open(m))['maxTime'])))"
    )
    return lab.exec(host, f"python3 -c {quote(code)} {tsdb} {at:.0f}").stdout.split()


def test_prometheus_history_lost_with_its_block_comes_back_with_restore(backed_up: Lab):
    ops = backed_up.hosts("ops")[0]
    tsdb = "/var/lib/prometheus/metrics2"
    # A fresh lab's TSDB has no complete block yet (the head is written out after 2-3 h):
    # one hour of a probe series, five hours old, backfilled as a block with promtool.
    now = int(backed_up.exec(ops, "date +%s").stdout)
    start = now - 5 * 3600
    series = "".join(f'cluster_restore_probe{{source="lab"}} 42 {t}\n' for t in range(start, start + 3600, 60))
    backed_up.exec(ops, f"printf %s {quote(series + '# EOF' + chr(10))} > /root/probe.om")
    backed_up.exec(
        ops,
        "rm -rf /root/probe-blocks && promtool tsdb create-blocks-from openmetrics /root/probe.om /root/probe-blocks",
    )
    assert backed_up.exec(ops, "ls /root/probe-blocks").stdout.split(), "promtool wrote no block"
    prometheus_restarted(
        backed_up,
        ops,
        f"systemctl stop prometheus && mv /root/probe-blocks/* {tsdb}/ && chown -R prometheus:prometheus {tsdb}"
        " && systemctl start prometheus",
    )
    query, at = 'cluster_restore_probe{source="lab"}', start + 1800
    assert [r["value"][1] for r in prometheus_query(backed_up, query, at)] == ["42"]
    blocks = blocks_holding(backed_up, ops, tsdb, at)

    result = backup(backed_up, ops, "prometheus")
    assert result["ok"], result
    # The snapshot's hard links are gone after the backup; the TSDB keeps its blocks.
    assert backed_up.exec(ops, "test -e /var/lib/prometheus/snapshot", check=False).returncode != 0
    listed = backed_up.exec(ops, "cluster-backup --ls prometheus latest /var/lib/prometheus/snapshot").stdout
    assert all(block in listed for block in blocks), listed

    held = " ".join(f"{tsdb}/{b}" for b in blocks_holding(backed_up, ops, tsdb, at))
    prometheus_restarted(backed_up, ops, f"systemctl stop prometheus && rm -r {held} && systemctl start prometheus")
    assert prometheus_query(backed_up, query, at) == []

    extra = [
        "-e",
        f"restore_host={ops}",
        "-e",
        "restore_set=prometheus",
        "-e",
        json.dumps({"restore_paths": ["/var/lib/prometheus/snapshot"]}),
    ]
    run = backed_up.playbook(*extra, playbook=PLAYBOOKS / "restore.yml")
    assert run.rc == 0, _summary(run)
    wait_for(
        "the restored history answers",
        lambda: [r["value"][1] for r in prometheus_query(backed_up, query, at)] == ["42"],
        timeout=120,
    )
    assert backed_up.exec(ops, "test -e /var/lib/prometheus/snapshot", check=False).returncode != 0


def test_a_set_no_longer_listed_loses_its_timer_files_and_metrics(backed_up: Lab):
    """Left behind, a removed set's metrics would raise BackupTooOld a day later."""
    host = backed_up.hosts("edge")[0]
    assert "edge-logs" in sets_of(backed_up, host)
    defaults = yaml.safe_load((ROOT / "roles" / "backup" / "defaults" / "main.yml").read_text())
    without = [s for s in defaults["backup_sets"] if s["name"] != "edge-logs"]
    files = ("/etc/cluster-backup/sets/edge-logs.json", "/etc/systemd/system/cluster-backup@edge-logs.timer.d",
             "/var/lib/prometheus/node-exporter/cluster_backup_edge-logs.prom")  # fmt: skip
    assert backed_up.exec(host, " && ".join(f"test -e {f}" for f in files), check=False).returncode == 0

    run = backed_up.playbook("--tags", "backup", "--limit", host, "-e", json.dumps({"backup_sets": without}))
    assert run.rc == 0, _summary(run)
    assert "edge-logs" not in sets_of(backed_up, host)
    assert backed_up.exec(host, " || ".join(f"test -e {f}" for f in files), check=False).returncode != 0  # none left
    for state in ("is-active", "is-enabled"):
        assert backed_up.exec(host, f"systemctl {state} --quiet cluster-backup@edge-logs.timer", check=False).returncode

    # The inventory's sets again: the set comes back, its freshness counting from now.
    again = backed_up.playbook("--tags", "backup", "--limit", host)
    assert again.rc == 0, _summary(again)
    assert "edge-logs" in sets_of(backed_up, host)
    assert metric(backed_up, host, "cluster_backup_configured_timestamp_seconds", 'set="edge-logs"') > 0
