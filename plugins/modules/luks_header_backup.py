#!/usr/bin/python
"""Module: a compact, restorable LUKS2 header backup (for escrow on the controller)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: luks_header_backup
short_description: Write a compact, restorable backup of a LUKS2 header
description:
  - Runs C(cryptsetup luksHeaderBackup), then zeroes the parts of the keyslots area that no
    keyslot uses (cryptsetup fills them with random bytes, which would make every backup
    16 MiB of noise), and writes the result gzip-compressed to O(dest). A backup of a
    volume with two keyslots is about 500 KiB instead of 16 MiB; it restores the same way
    (C(gunzip), then C(cryptsetup luksHeaderRestore)), because unused keyslot areas hold no
    information.
  - O(dest) is written with mode 0400, owned by O(owner) when given (so the login user can
    fetch it without a base64 module reply).
  - Always reports changed (it writes O(dest)); the role runs it only when the header changed.
options:
  device:
    description: The LUKS2 device.
    type: path
    required: true
  dest:
    description: Where the gzip'd backup goes.
    type: path
    required: true
  owner:
    description: Owner of O(dest) and its directory; empty means the user sudo ran the
      module for (C(SUDO_USER)), or root without sudo.
    type: str
    default: ""
"""

RETURN = r"""
header_sha256:
  description: SHA-256 of the primary binary header (it changes with every keyslot or token change).
  type: str
  returned: success
keyslots:
  description: The keyslots kept in the backup.
  type: list
  returned: success
size:
  description: Size of O(dest) in bytes.
  type: int
  returned: success
"""

import gzip
import hashlib
import json
import os
import pwd
import shutil
import struct
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

MAGIC = b"LUKS\xba\xbe"
BINARY_HEADER = 4096


def parse_header(image: bytes) -> tuple[int, dict[str, Any]]:
    """(header size, JSON metadata) of a LUKS2 header image. Pure: unit tested."""
    if image[:6] != MAGIC:
        raise ValueError("not a LUKS header (bad magic)")
    version, hdr_size = struct.unpack(">HQ", image[6:16])
    if version != 2:
        raise ValueError(f"LUKS version {version}: only LUKS2 headers are compacted")
    raw = image[BINARY_HEADER:hdr_size].split(b"\0", 1)[0]
    return hdr_size, json.loads(raw)


def unused_keyslot_ranges(hdr_size: int, meta: dict[str, Any]) -> list[tuple[int, int]]:
    """(offset, length) ranges of the keyslots area that no keyslot uses. Pure: unit tested."""
    start = 2 * hdr_size
    end = start + int(meta["config"]["keyslots_size"])
    used = sorted(
        (int(slot["area"]["offset"]), int(slot["area"]["offset"]) + int(slot["area"]["size"]))
        for slot in meta.get("keyslots", {}).values()
    )
    ranges, cursor = [], start
    for lo, hi in used:
        if lo > cursor:
            ranges.append((cursor, lo - cursor))
        cursor = max(cursor, hi)
    if cursor < end:
        ranges.append((cursor, end - cursor))
    return ranges


def compact(image: bytearray) -> list[str]:
    """Zero the unused keyslot areas in place; return the keyslot ids kept."""
    hdr_size, meta = parse_header(bytes(image[: 2 * BINARY_HEADER + 4 * 1024 * 1024]))
    for offset, length in unused_keyslot_ranges(hdr_size, meta):
        image[offset : offset + length] = bytes(length)
    return sorted(meta.get("keyslots", {}))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "owner": {"type": "str", "default": ""},
        },
        supports_check_mode=False,
    )
    cryptsetup = module.get_bin_path("cryptsetup", required=True)
    tmp = tempfile.mkdtemp(prefix="luks-header-", dir="/run" if os.path.isdir("/run") else None)
    try:
        raw = os.path.join(tmp, "header.img")
        argv = [cryptsetup, "luksHeaderBackup", module.params["device"], "--header-backup-file", raw]
        rc, _, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(msg=f"luksHeaderBackup of {module.params['device']} failed: {err.strip()}")
        with open(raw, "rb") as handle:
            image = bytearray(handle.read())
        try:
            kept = compact(image)
        except (ValueError, KeyError) as exc:
            module.fail_json(msg=f"{module.params['device']}: cannot read the LUKS2 header backup: {exc}")
        dest = module.params["dest"]
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        fd = os.open(dest + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        with os.fdopen(fd, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
            gz.write(image)
        os.replace(dest + ".part", dest)
        owner = module.params["owner"] or os.environ.get("SUDO_USER", "")
        if owner:
            user = pwd.getpwnam(owner)
            os.chown(os.path.dirname(dest), user.pw_uid, user.pw_gid)
            os.chown(dest, user.pw_uid, user.pw_gid)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    module.exit_json(
        changed=True,
        header_sha256=hashlib.sha256(bytes(image[:BINARY_HEADER])).hexdigest(),
        keyslots=kept,
        size=os.path.getsize(dest),
    )


if __name__ == "__main__":
    main()
