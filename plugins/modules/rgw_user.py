#!/usr/bin/python
"""Module: an S3 identity of the RADOS gateway, with exactly the declared key."""

from __future__ import annotations

DOCUMENTATION = r"""
module: rgw_user
short_description: Keep a RADOS gateway (Ceph RGW) user and its S3 key as declared
description:
  - Reads the user with C(radosgw-admin user info) (the admin keyring of the host) and
    creates it, corrects its display name and bucket limit, and makes its S3 keys exactly
    the one given (a key added by hand is removed, a changed secret replaced), so the
    secrets layer stays the only source of the key.
  - Supports check mode; the diff shows the display name, limit and access key ids, never
    a secret.
options:
  uid:
    description: User id (the identity's name, e.g. C(backups)).
    type: str
    required: true
  display_name:
    description: Display name.
    type: str
    required: true
  access_key:
    description: The S3 access key id.
    type: str
    required: true
    no_log: true
  secret_key:
    description: The S3 secret key.
    type: str
    required: true
    no_log: true
  max_buckets:
    description: Most buckets the user may create (RGW's own limit; the toolkit's declared buckets count too).
    type: int
    default: 10
  cluster:
    description: Cluster name.
    type: str
    default: ceph
"""

RETURN = r"""
actions:
  description: The changes made (or that would be made), without secrets.
  type: list
  returned: always
"""

import json
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# radosgw-admin's exit status for "no such user" (ENOENT as seen by the CLI).
NO_SUCH_USER = 22


def plan(current: dict[str, Any] | None, want: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(description without secrets, radosgw-admin arguments) for each change. Pure: unit tested."""
    uid = want["uid"]
    if current is None:
        return [
            (
                f"create user {uid} with access key {want['access_key']}",
                [
                    "user", "create", "--uid", uid, "--display-name", want["display_name"],
                    "--access-key", want["access_key"], "--secret-key", want["secret_key"],
                    "--max-buckets", str(want["max_buckets"]),
                ],
            )
        ]  # fmt: skip
    steps: list[tuple[str, list[str]]] = []
    if current.get("display_name") != want["display_name"] or current.get("max_buckets") != want["max_buckets"]:
        steps.append(
            (
                f"user {uid}: display name {current.get('display_name')!r} -> {want['display_name']!r}, "
                f"max buckets {current.get('max_buckets')} -> {want['max_buckets']}",
                [
                    "user", "modify", "--uid", uid, "--display-name", want["display_name"],
                    "--max-buckets", str(want["max_buckets"]),
                ],
            )
        )  # fmt: skip
    keys = [k for k in current.get("keys", []) if k.get("user") == uid or ":" not in k.get("user", "")]
    for key in keys:
        if key["access_key"] != want["access_key"]:
            steps.append(
                (
                    f"user {uid}: remove undeclared access key {key['access_key']}",
                    ["key", "rm", "--uid", uid, "--key-type", "s3", "--access-key", key["access_key"]],
                )
            )
    same = [k for k in keys if k["access_key"] == want["access_key"]]
    if not same or same[0].get("secret_key") != want["secret_key"]:
        what = "set the secret of" if same else "add"
        steps.append(
            (
                f"user {uid}: {what} access key {want['access_key']}",
                [
                    "key", "create", "--uid", uid, "--key-type", "s3",
                    "--access-key", want["access_key"], "--secret-key", want["secret_key"],
                ],
            )
        )  # fmt: skip
    return steps


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "uid": {"type": "str", "required": True},
            "display_name": {"type": "str", "required": True},
            "access_key": {"type": "str", "required": True, "no_log": True},
            "secret_key": {"type": "str", "required": True, "no_log": True},
            "max_buckets": {"type": "int", "default": 10},
            "cluster": {"type": "str", "default": "ceph"},
        },
        supports_check_mode=True,
    )
    want = module.params
    base = [module.get_bin_path("radosgw-admin", required=True), "--cluster", want["cluster"]]
    rc, out, err = module.run_command([*base, "user", "info", "--uid", want["uid"]])
    if rc == 0:
        current = json.loads(out)
    elif rc == NO_SUCH_USER or "no user info saved" in err:
        current = None
    else:
        module.fail_json(msg=f"`radosgw-admin user info --uid {want['uid']}` failed (rc {rc}): {err.strip()}")
    steps = plan(current, want)
    if not module.check_mode:
        for text, args in steps:
            rc, out, err = module.run_command([*base, *args])
            if rc != 0:
                # The arguments hold the secret: name the step only.
                module.fail_json(msg=f"{text}: radosgw-admin failed (rc {rc}): {err.strip()}")
    actions = [text for text, _ in steps]
    module.exit_json(
        changed=bool(steps),
        actions=actions,
        diff={"before": "", "after": "".join(f"{a}\n" for a in actions)} if steps else {},
    )


if __name__ == "__main__":
    main()
