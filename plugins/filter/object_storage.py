"""Filters of the object_storage role: the storage topology's rules, checked by the role at its
start and by preflight on the whole inventory (one implementation for both), and the cephx
key format."""

from __future__ import annotations

import base64
import ipaddress
import re
import struct
import uuid
from collections.abc import Mapping
from typing import Any

# Cluster-wide settings the checks read, with the role's defaults (roles/object_storage).
SETTINGS = {
    "object_storage_fsid": "",
    "object_storage_public_network": "",
    "object_storage_monitor_count": 3,
    "object_storage_pool_size": 3,
    "object_storage_pool_min_size": 2,
    "object_storage_failure_domain": "host",
    "object_storage_users": [],
    "object_storage_buckets": [],
}
# Per-host settings (host_vars or group_vars), with the role's defaults.
HOST_SETTINGS = {
    "object_storage_osd_devices": [],
    "object_storage_file_osds": 0,
    "object_storage_allow_file_osds": False,
}
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")


def _host_value(hostvars_of: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> Any:
    return hostvars_of[name] if name in hostvars_of else defaults.get(name, HOST_SETTINGS[name])


def _address(hostvars_of: Mapping[str, Any], host: str) -> str:
    return str(hostvars_of.get("object_storage_address") or hostvars_of.get("ansible_host") or host)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def topology_problems(
    group: str,
    groups: Mapping[str, list[str]],
    hostvars: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Everything wrong with the storage cluster the inventory describes, as messages that say
    which setting, what is wrong and how to fix it. `settings`: the cluster-wide settings as
    the first storage host sees them; `defaults`: the role's defaults of per-host settings."""
    hosts = list(groups.get(group, []))
    if not hosts:
        return []
    defaults = defaults or {}
    get = lambda name: settings.get(name, SETTINGS[name])  # noqa: E731
    problems = []
    fsid = str(get("object_storage_fsid") or "")
    try:
        uuid.UUID(fsid)
    except ValueError:
        problems.append(
            f"object_storage_fsid is '{fsid}': set it to a UUID (uuidgen) once, before the first run, and never "
            "change it (it names the cluster; its daemons refuse another)"
        )
    network_text = str(get("object_storage_public_network") or "")
    try:
        network = ipaddress.ip_network(network_text, strict=False)
    except ValueError:
        network = None
        problems.append(
            f"object_storage_public_network is '{network_text}': set it to the CIDR of the storage hosts' network "
            "(e.g. 10.0.30.0/24)"
        )
    if network is not None:
        for host in hosts:
            address = _address(hostvars[host], host)
            try:
                inside = ipaddress.ip_address(address) in network
            except ValueError:
                continue  # a name: its address is known only on the host
            if not inside:
                problems.append(
                    f"host {host}: its address {address} is not in object_storage_public_network ({network_text}): "
                    "set object_storage_address to its address on that network, or widen the network"
                )
    count = _int(get("object_storage_monitor_count"), -1)
    if count < 1 or count % 2 == 0:
        problems.append(
            f"object_storage_monitor_count is {get('object_storage_monitor_count')}: monitors need an odd number "
            "(3 or 5; 1 for a lab) so that a majority survives a lost one"
        )
    elif count > len(hosts) and len(hosts) >= 3:
        problems.append(
            f"object_storage_monitor_count is {count} but group '{group}' has {len(hosts)} hosts: lower it or add hosts"
        )
    size, min_size = _int(get("object_storage_pool_size")), _int(get("object_storage_pool_min_size"))
    if not 1 <= min_size <= size:
        problems.append(
            f"object_storage_pool_min_size ({min_size}) must be between 1 and object_storage_pool_size ({size})"
        )
    osds_per_host: dict[str, int] = {}
    for host in hosts:
        devices = _host_value(hostvars[host], "object_storage_osd_devices", defaults) or []
        files = _int(_host_value(hostvars[host], "object_storage_file_osds", defaults))
        allowed = bool(_host_value(hostvars[host], "object_storage_allow_file_osds", defaults))
        if files and not allowed:
            problems.append(
                f"host {host}: object_storage_file_osds is {files}, but OSDs on files are for labs and tests only: "
                "list whole devices in object_storage_osd_devices, or set object_storage_allow_file_osds: true "
                "in a lab"
            )
        seen = set()
        for device in devices:
            if not str(device).startswith("/dev/"):
                problems.append(
                    f"host {host}: object_storage_osd_devices has '{device}': give a device path (/dev/...)"
                )
            if device in seen:
                problems.append(f"host {host}: object_storage_osd_devices lists {device} twice: list each device once")
            seen.add(device)
        osds_per_host[host] = len(seen) + files
    total = sum(osds_per_host.values())
    if total < size:
        problems.append(
            f"group '{group}' has {total} OSD(s) for pools of object_storage_pool_size {size}: list at least {size} "
            "devices in object_storage_osd_devices (per host)"
        )
    domain = get("object_storage_failure_domain")
    with_osds = [h for h, n in osds_per_host.items() if n]
    if domain == "host" and total >= size and len(with_osds) < size:
        problems.append(
            f"object_storage_failure_domain is host, so each of {size} copies needs its own host, but only "
            f"{len(with_osds)} host(s) of group '{group}' have OSDs ({', '.join(with_osds) or 'none'}): add OSDs on "
            "more hosts, or (a lab only) set object_storage_failure_domain: osd"
        )
    problems += _s3_problems(get("object_storage_users") or [], get("object_storage_buckets") or [])
    return problems


def _s3_problems(users: Any, buckets: Any) -> list[str]:
    problems = []
    uids = [u.get("uid") for u in users if isinstance(u, Mapping)]
    for uid in {u for u in uids if uids.count(u) > 1}:
        problems.append(f"object_storage_users has uid '{uid}' more than once: give each identity one entry")
    names = [b.get("name") for b in buckets if isinstance(b, Mapping)]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"object_storage_buckets has '{name}' more than once: declare each bucket once")
    for bucket in buckets:
        if not isinstance(bucket, Mapping):
            continue
        name = str(bucket.get("name", ""))
        where = f"object_storage_buckets[{name}]"
        if not BUCKET_NAME.match(name) or ".." in name:
            problems.append(f"{where}: '{name}' is not an S3 bucket name: 3-63 lowercase letters, digits, '-' and '.'")
        if bucket.get("owner") not in uids:
            problems.append(
                f"{where}.owner is '{bucket.get('owner')}': use a uid of object_storage_users "
                f"({', '.join(map(str, uids))})"
            )
        for key in ("read_access", "write_access"):
            for uid in bucket.get(key) or []:
                if uid not in uids:
                    problems.append(f"{where}.{key} names '{uid}', which is not a uid of object_storage_users")
        lock = bucket.get("object_lock") or {}
        if lock:
            if lock.get("mode") not in LOCK_MODES or _int(lock.get("days")) < 1:
                problems.append(
                    f"{where}.object_lock is {dict(lock)}: give mode COMPLIANCE or GOVERNANCE and days >= 1 "
                    "(or {} for none)"
                )
            if not bucket.get("versioning", True):
                problems.append(f"{where}: object lock needs versioning; set versioning: true")
    return problems


def object_storage_problems(
    group: str, groups: Mapping[str, list[str]], hostvars: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]
) -> list[str]:
    """Filter form of topology_problems for the role (per-host defaults are the role's)."""
    return topology_problems(group, groups, hostvars, settings)


def bucket_policy(bucket: Mapping[str, Any]) -> dict[str, Any]:
    """The bucket policy granting `read_access` and `write_access` identities (the owner
    needs none); {} when no one else is named."""
    principals = lambda uids: {"AWS": [f"arn:aws:iam:::user/{uid}" for uid in sorted(uids)]}  # noqa: E731
    name = bucket["name"]
    resources = [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]
    statements = []
    readers = set(bucket.get("read_access") or []) | set(bucket.get("write_access") or [])
    if readers:
        statements.append(
            {
                "Sid": "read",
                "Effect": "Allow",
                "Principal": principals(readers),
                "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:ListBucketVersions"],
                "Resource": resources,
            }
        )
    if bucket.get("write_access"):
        statements.append(
            {
                "Sid": "write",
                "Effect": "Allow",
                "Principal": principals(bucket["write_access"]),
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                "Resource": resources,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements} if statements else {}


def cephx_key_problem(key: Any) -> str:
    """'' when `key` is a cephx secret as `ceph-authtool --gen-print-key` prints it, else why not."""
    try:
        raw = base64.b64decode(str(key), validate=True)
    except (ValueError, TypeError):
        return "is not base64"
    if len(raw) != 28:
        return f"decodes to {len(raw)} bytes, not the 28 of a cephx key"
    kind, _, _, length = struct.unpack("<HIIH", raw[:12])
    if kind != 1 or length != 16:
        return "is not an AES cephx key"
    return ""


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "object_storage_problems": object_storage_problems,
            "object_storage_bucket_policy": bucket_policy,
            "cephx_key_problem": cephx_key_problem,
        }
