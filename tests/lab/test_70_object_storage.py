"""Object storage (roles/object_storage) on the lab: a real Ceph cluster (Debian's 16.2
packages) on the storage host, three OSDs on files, S3 through the RADOS gateway over TLS.

S3 traffic goes from the controller (an administrator's network) to the gateway with boto3,
as each identity; cluster state is read on the host with the `ceph` CLI. The drift test
changes the cluster by hand and repairs it with the role (it leaves the cluster as declared).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from conftest import Lab, _summary, wait_for
from labkit import pki, s3

MIB = 1024 * 1024
BUCKET_TASK = "object_storage : Object storage | Buckets with versioning, object lock, lifecycle, policy and quota"
CLUSTER_TASK = (
    "object_storage : Object storage | Replication, CRUSH rule, OSDs marked in, the manager's Prometheus module"
)


@pytest.fixture(scope="module")
def storage(converged: Lab) -> str:
    return converged.hosts("storage")[0]


@pytest.fixture(scope="module")
def ca(converged: Lab, storage: str, tmp_path_factory) -> object:
    return pki.fetch_ca(converged.topo, storage, tmp_path_factory.mktemp("s3") / "ca.crt")


@pytest.fixture(scope="module")
def client(converged: Lab, ca):
    return lambda uid: s3.client(converged.topo, uid, ca)


def ceph(lab: Lab, host: str, *args: str) -> dict:
    return json.loads(lab.exec(host, "ceph --connect-timeout 20 " + " ".join(args) + " --format json").stdout)


def healthy(lab: Lab, host: str) -> bool:
    return ceph(lab, host, "health")["status"] == "HEALTH_OK"


def error_code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def test_cluster_is_healthy_with_every_pool_at_three_copies(converged: Lab, storage):
    wait_for("HEALTH_OK", lambda: healthy(converged, storage), timeout=180)
    osds = ceph(converged, storage, "osd", "dump")
    assert [(o["up"], o["in"]) for o in osds["osds"]] == [(1, 1)] * 3
    rules = {r["rule_id"]: r["rule_name"] for r in ceph(converged, storage, "osd", "crush", "rule", "dump")}
    pools = {p["pool_name"]: (p["size"], p["min_size"], rules[p["crush_rule"]]) for p in osds["pools"]}
    assert "default.rgw.buckets.index" in pools, pools
    # The lab's failure domain is `osd` (one host); a real site's is `host`.
    assert set(pools.values()) == {(3, 2, "replicated_osd")}, pools


def test_put_get_multipart_and_an_overwritten_version_stays_readable(client):
    models = client("models")
    key = f"weights/{uuid.uuid4()}.bin"
    first = os.urandom(MIB)
    models.put_object(Bucket="models", Key=key, Body=first)
    assert models.get_object(Bucket="models", Key=key)["Body"].read() == first

    # Multipart: 20 MiB in 8 MiB parts.
    big = os.urandom(20 * MIB)
    path = f"/tmp/{uuid.uuid4()}"
    with open(path, "wb") as f:
        f.write(big)
    try:
        transfer = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB)
        models.upload_file(path, "models", key + ".multipart", Config=transfer)
    finally:
        os.unlink(path)
    head = models.head_object(Bucket="models", Key=key + ".multipart")
    assert head["ContentLength"] == len(big) and head["ETag"].strip('"').endswith("-3"), head["ETag"]
    got = models.get_object(Bucket="models", Key=key + ".multipart")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()

    second = os.urandom(MIB)
    models.put_object(Bucket="models", Key=key, Body=second)
    versions = models.list_object_versions(Bucket="models", Prefix=key)["Versions"]
    versions = [v for v in versions if v["Key"] == key]
    assert len(versions) == 2
    old = next(v for v in versions if not v["IsLatest"])
    assert models.get_object(Bucket="models", Key=key, VersionId=old["VersionId"])["Body"].read() == first
    assert models.get_object(Bucket="models", Key=key)["Body"].read() == second


def test_object_lock_refuses_to_delete_a_backup(client):
    backups = client("backups")
    key = f"locked/{uuid.uuid4()}"
    put = backups.put_object(Bucket="backups", Key=key, Body=b"restic pack")
    retention = backups.get_object_retention(Bucket="backups", Key=key, VersionId=put["VersionId"])["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        backups.delete_object(Bucket="backups", Key=key, VersionId=put["VersionId"])
    assert error_code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as shortened:
        backups.put_object_retention(
            Bucket="backups", Key=key, VersionId=put["VersionId"],
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": retention["RetainUntilDate"]},
        )  # fmt: skip
    assert error_code(shortened) == "AccessDenied"
    assert backups.get_object(Bucket="backups", Key=key, VersionId=put["VersionId"])["Body"].read() == b"restic pack"


def test_another_identity_gets_access_denied(client):
    models, backups = client("models"), client("backups")
    backups.put_object(Bucket="backups", Key="private", Body=b"x")
    for call in (
        lambda: models.get_object(Bucket="backups", Key="private"),
        lambda: models.put_object(Bucket="backups", Key="intruder", Body=b"x"),
        lambda: models.list_objects_v2(Bucket="backups"),
    ):
        with pytest.raises(ClientError) as denied:
            call()
        assert error_code(denied) == "AccessDenied"
    # The models bucket's policy lets backups read it, not write it.
    models.put_object(Bucket="models", Key="manifest.json", Body=b"{}")
    assert backups.get_object(Bucket="models", Key="manifest.json")["Body"].read() == b"{}"
    with pytest.raises(ClientError) as read_only:
        backups.put_object(Bucket="models", Key="manifest.json", Body=b"tampered")
    assert error_code(read_only) == "AccessDenied"


def test_one_osd_down_reads_and_writes_continue_and_health_returns(converged: Lab, storage, client):
    models = client("models")
    written = {}
    for i in range(8):
        body = os.urandom(256 * 1024)
        models.put_object(Bucket="models", Key=f"degraded/before-{i}", Body=body)
        written[f"degraded/before-{i}"] = hashlib.sha256(body).hexdigest()
    osd = ceph(converged, storage, "osd", "dump")["osds"][1]["osd"]
    converged.exec(storage, f"systemctl stop ceph-osd@{osd}")
    try:
        wait_for(f"osd.{osd} down", lambda: not ceph(converged, storage, "osd", "dump")["osds"][1]["up"], timeout=60)
        for i in range(8):
            body = os.urandom(256 * 1024)
            models.put_object(Bucket="models", Key=f"degraded/during-{i}", Body=body)
            written[f"degraded/during-{i}"] = hashlib.sha256(body).hexdigest()
        for key, digest in written.items():
            assert hashlib.sha256(models.get_object(Bucket="models", Key=key)["Body"].read()).hexdigest() == digest
        assert ceph(converged, storage, "health")["status"] == "HEALTH_WARN"
    finally:
        converged.exec(storage, f"systemctl start ceph-osd@{osd}")
    wait_for("HEALTH_OK after the OSD is back", lambda: healthy(converged, storage), timeout=300, interval=5)
    for key, digest in written.items():
        assert hashlib.sha256(models.get_object(Bucket="models", Key=key)["Body"].read()).hexdigest() == digest


def test_drift_is_reported_by_check_diff_and_repaired_by_the_role(converged: Lab, storage, client):
    models = client("models")
    models.put_bucket_versioning(Bucket="models", VersioningConfiguration={"Status": "Suspended"})
    models.delete_bucket_policy(Bucket="models")
    osd = ceph(converged, storage, "osd", "dump")["osds"][2]["osd"]
    converged.exec(storage, f"ceph osd out {osd}")

    check = converged.playbook("--check", "--diff", "--tags", "object_storage")
    assert check.rc == 0, _summary(check)
    assert set(check.changed_tasks().get(storage, [])) == {BUCKET_TASK, CLUSTER_TASK}, check.changed_tasks()
    assert models.get_bucket_versioning(Bucket="models")["Status"] == "Suspended"
    assert not ceph(converged, storage, "osd", "dump")["osds"][2]["in"]

    fix = converged.playbook("--tags", "object_storage")
    assert fix.rc == 0, _summary(fix)
    assert models.get_bucket_versioning(Bucket="models")["Status"] == "Enabled"
    policy = json.loads(models.get_bucket_policy(Bucket="models")["Policy"])
    assert policy["Statement"][0]["Principal"]["AWS"] == ["arn:aws:iam:::user/backups"]
    assert ceph(converged, storage, "osd", "dump")["osds"][2]["in"] == 1
    wait_for("HEALTH_OK after the repair", lambda: healthy(converged, storage), timeout=300, interval=5)

    after = converged.playbook("--check", "--tags", "object_storage")
    assert after.rc == 0 and after.changed_tasks() == {}, after.changed_tasks()
