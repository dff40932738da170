#!/usr/bin/python
"""Module: an S3 bucket of the RADOS gateway with its versioning, object lock, lifecycle, policy and quota."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rgw_bucket
short_description: Keep an S3 bucket of the RADOS gateway (Ceph RGW) as declared
description:
  - Talks S3 to the gateway with the bucket owner's key (boto3, certificate verified against
    O(ca_bundle)) and reads the quota with C(radosgw-admin) (the admin keyring of the host).
  - Creates the bucket (with object lock when O(object_lock) is set, which S3 allows only at
    creation), then makes versioning, the default retention, the lifecycle rule, the bucket
    policy and the quota what is declared. A suspended versioning, an edited policy or a
    removed lifecycle rule is reported by check mode (with a diff) and repaired by a run.
  - Object lock cannot be added to an existing bucket, nor removed from one; either is an
    error that says what to do.
requirements:
  - boto3 on the host (Debian's python3-boto3)
options:
  name:
    description: Bucket name.
    type: str
    required: true
  endpoint:
    description: The gateway's URL (https://address:port).
    type: str
    required: true
  ca_bundle:
    description: CA certificate the gateway's certificate is verified against.
    type: path
    required: true
  access_key:
    description: The owner's S3 access key id.
    type: str
    required: true
    no_log: true
  secret_key:
    description: The owner's S3 secret key.
    type: str
    required: true
    no_log: true
  versioning:
    description: Keep every version of every object.
    type: bool
    default: true
  object_lock:
    description: Default retention of new object versions (C(mode) COMPLIANCE or GOVERNANCE, C(days)); empty for none.
    type: dict
    default: {}
  lifecycle:
    description: >-
      C(expire_days) (current versions become noncurrent), C(noncurrent_expire_days)
      (noncurrent versions are deleted), C(abort_multipart_days) (unfinished uploads are
      dropped); 0 or absent leaves that action out. All absent: no lifecycle rule.
    type: dict
    default: {}
  policy:
    description: The bucket policy document; empty for none.
    type: dict
    default: {}
  quota_bytes:
    description: Most bytes the bucket may hold; 0 for no quota.
    type: int
    default: 0
  cluster:
    description: Cluster name (for radosgw-admin).
    type: str
    default: ceph
"""

RETURN = r"""
actions:
  description: The changes made (or that would be made).
  type: list
  returned: always
"""

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError
except ImportError:  # reported by main() with the package to install
    boto3 = None

RULE_ID = "llm-cluster"
LIFECYCLE_KEYS = ("expire_days", "noncurrent_expire_days", "abort_multipart_days")


def lifecycle_rules(want: dict[str, Any]) -> list[dict[str, Any]]:
    """The S3 lifecycle rules for the declared `lifecycle` (one rule, or none). Pure: unit tested."""
    rule: dict[str, Any] = {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""}}
    if want.get("expire_days"):
        rule["Expiration"] = {"Days": int(want["expire_days"])}
    if want.get("noncurrent_expire_days"):
        rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": int(want["noncurrent_expire_days"])}
    if want.get("abort_multipart_days"):
        rule["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(want["abort_multipart_days"])}
    return [rule] if len(rule) > 3 else []


def lifecycle_summary(rules: list[dict[str, Any]]) -> dict[str, int]:
    """The declared form of rules read back from the gateway; {} when they are not ours alone."""
    if len(rules) != 1 or rules[0].get("ID") != RULE_ID or rules[0].get("Status") != "Enabled":
        return {"foreign_rules": len(rules)} if rules else {}
    rule = rules[0]
    prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
    summary = {
        "expire_days": rule.get("Expiration", {}).get("Days", 0),
        "noncurrent_expire_days": rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays", 0),
        "abort_multipart_days": rule.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation", 0),
    }
    if prefix:
        summary["prefix"] = prefix
    return {k: v for k, v in summary.items() if v}


def canonical(doc: Any) -> Any:
    """A policy document in a form that compares equal however its lists are ordered."""
    if isinstance(doc, dict):
        return {k: canonical(v) for k, v in sorted(doc.items())}
    if isinstance(doc, list):
        items = [canonical(v) for v in doc]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return doc


def wanted(params: dict[str, Any]) -> dict[str, Any]:
    """The comparable declared state of the bucket. Pure: unit tested."""
    lock = params["object_lock"] or {}
    lifecycle = {k: int(v) for k, v in (params["lifecycle"] or {}).items() if k in LIFECYCLE_KEYS and v}
    return {
        "versioning": "Enabled" if params["versioning"] or lock else "Suspended",
        "object_lock": {"mode": lock["mode"], "days": int(lock["days"])} if lock else {},
        "lifecycle": lifecycle,
        "policy": canonical(params["policy"]) if params["policy"] else {},
        "quota_bytes": int(params["quota_bytes"]),
    }


def differences(current: dict[str, Any] | None, want: dict[str, Any]) -> list[str]:
    """The aspects of the bucket that differ (all of them for a missing bucket). Pure: unit tested."""
    if current is None:
        return ["create", *[k for k in ("versioning", "object_lock", "lifecycle", "policy", "quota_bytes") if want[k]]]
    changed = []
    for key in ("versioning", "object_lock", "lifecycle", "policy", "quota_bytes"):
        have = current[key]
        if key == "versioning" and have != "Enabled" and want[key] == "Suspended":
            continue  # never enabled and not wanted: the same as suspended
        if have != want[key]:
            changed.append(key)
    return changed


class Bucket:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        params = module.params
        self.name = params["name"]
        self.s3 = boto3.client(
            "s3",
            endpoint_url=params["endpoint"],
            aws_access_key_id=params["access_key"],
            aws_secret_access_key=params["secret_key"],
            verify=params["ca_bundle"],
            region_name="default",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
        )
        self.admin = [module.get_bin_path("radosgw-admin", required=True), "--cluster", params["cluster"]]

    def _read(self, call: str, missing: tuple[str, ...], **kwargs: Any) -> Any:
        try:
            return getattr(self.s3, call)(Bucket=self.name, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in missing:
                return None
            self.module.fail_json(msg=f"bucket {self.name}: {call} failed: {exc}")

    def current(self) -> dict[str, Any] | None:
        try:
            self.s3.head_bucket(Bucket=self.name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchBucket"):
                return None
            if code in ("403", "AccessDenied"):
                self.module.fail_json(
                    msg=f"bucket {self.name} exists but its owner's key is refused (403): another identity owns it; "
                    "rename the bucket in object_storage_buckets or give it the right owner"
                )
            self.module.fail_json(msg=f"bucket {self.name}: head_bucket failed: {exc}")
        versioning = self._read("get_bucket_versioning", ()) or {}
        lock = self._read("get_object_lock_configuration", ("ObjectLockConfigurationNotFoundError", "NoSuchBucket"))
        lock_conf = (lock or {}).get("ObjectLockConfiguration", {})
        retention = lock_conf.get("Rule", {}).get("DefaultRetention", {})
        lifecycle = self._read("get_bucket_lifecycle_configuration", ("NoSuchLifecycleConfiguration",))
        policy = self._read("get_bucket_policy", ("NoSuchBucketPolicy",))
        return {
            "versioning": versioning.get("Status", "never enabled"),
            "lock_enabled": lock_conf.get("ObjectLockEnabled") == "Enabled",
            "object_lock": {"mode": retention["Mode"], "days": int(retention.get("Days", 0))} if retention else {},
            "lifecycle": lifecycle_summary((lifecycle or {}).get("Rules", [])),
            "policy": canonical(json.loads(policy["Policy"])) if policy else {},
            "quota_bytes": self.quota(),
        }

    def quota(self) -> int:
        rc, out, err = self.module.run_command([*self.admin, "bucket", "stats", "--bucket", self.name])
        if rc != 0:
            self.module.fail_json(msg=f"bucket {self.name}: radosgw-admin bucket stats failed (rc {rc}): {err.strip()}")
        quota = json.loads(out).get("bucket_quota", {})
        return int(quota["max_size"]) if quota.get("enabled") and int(quota.get("max_size", -1)) > 0 else 0

    def apply(self, want: dict[str, Any], changes: list[str], params: dict[str, Any]) -> None:
        if "create" in changes:
            extra = {"ObjectLockEnabledForBucket": True} if want["object_lock"] else {}
            self.s3.create_bucket(Bucket=self.name, **extra)
        if "versioning" in changes:
            self.s3.put_bucket_versioning(Bucket=self.name, VersioningConfiguration={"Status": want["versioning"]})
        if "object_lock" in changes:
            lock = want["object_lock"]
            self.s3.put_object_lock_configuration(
                Bucket=self.name,
                ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": lock["mode"], "Days": lock["days"]}},
                },
            )
        if "lifecycle" in changes:
            rules = lifecycle_rules(params["lifecycle"] or {})
            if rules:
                self.s3.put_bucket_lifecycle_configuration(Bucket=self.name, LifecycleConfiguration={"Rules": rules})
            else:
                self.s3.delete_bucket_lifecycle(Bucket=self.name)
        if "policy" in changes:
            if params["policy"]:
                self.s3.put_bucket_policy(Bucket=self.name, Policy=json.dumps(params["policy"]))
            else:
                self.s3.delete_bucket_policy(Bucket=self.name)
        if "quota_bytes" in changes:
            scope = ["--quota-scope", "bucket", "--bucket", self.name]
            if want["quota_bytes"]:
                self._admin(["quota", "set", *scope, "--max-size", str(want["quota_bytes"])])
                self._admin(["quota", "enable", *scope])
            else:
                self._admin(["quota", "disable", *scope])

    def _admin(self, args: list[str]) -> None:
        rc, _, err = self.module.run_command([*self.admin, *args])
        if rc != 0:
            self.module.fail_json(msg=f"bucket {self.name}: `radosgw-admin {' '.join(args)}` failed: {err.strip()}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "endpoint": {"type": "str", "required": True},
            "ca_bundle": {"type": "path", "required": True},
            "access_key": {"type": "str", "required": True, "no_log": True},
            "secret_key": {"type": "str", "required": True, "no_log": True},
            "versioning": {"type": "bool", "default": True},
            "object_lock": {"type": "dict", "default": {}},
            "lifecycle": {"type": "dict", "default": {}},
            "policy": {"type": "dict", "default": {}},
            "quota_bytes": {"type": "int", "default": 0},
            "cluster": {"type": "str", "default": "ceph"},
        },
        supports_check_mode=True,
    )
    if boto3 is None:
        module.fail_json(msg=missing_required_lib("boto3 (Debian: python3-boto3)"))
    params = module.params
    lock = params["object_lock"] or {}
    if lock and (lock.get("mode") not in ("COMPLIANCE", "GOVERNANCE") or int(lock.get("days", 0)) < 1):
        module.fail_json(msg=f"bucket {params['name']}: object_lock needs mode COMPLIANCE or GOVERNANCE and days >= 1")
    bucket = Bucket(module)
    want = wanted(params)
    current = bucket.current()
    if current is not None and want["object_lock"] and not current["lock_enabled"]:
        module.fail_json(
            msg=f"bucket {params['name']} exists without object lock, which S3 enables only when a bucket is "
            "created: declare a new bucket with object_lock and copy the objects over, or drop object_lock"
        )
    if current is not None and current["lock_enabled"] and not want["object_lock"]:
        module.fail_json(
            msg=f"bucket {params['name']} has object lock, which cannot be turned off: declare its object_lock "
            "(mode and days) again"
        )
    changes = differences(current, want)
    before = {k: v for k, v in (current or {}).items() if k != "lock_enabled"}
    after = {k: want[k] for k in before} if current else {k: want[k] for k in want}
    if changes and not module.check_mode:
        try:
            bucket.apply(want, changes, params)
        except ClientError as exc:
            module.fail_json(msg=f"bucket {params['name']}: {exc}", actions=changes)
    module.exit_json(
        changed=bool(changes),
        actions=changes,
        diff={
            "before": json.dumps(before, indent=2, sort_keys=True) + "\n" if current else "",
            "after": json.dumps(after, indent=2, sort_keys=True) + "\n",
            "before_header": f"bucket {params['name']}",
            "after_header": f"bucket {params['name']}",
        }
        if changes
        else {},
    )


if __name__ == "__main__":
    main()
