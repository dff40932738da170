#!/usr/bin/python
"""Module: a compact, restorable LUKS2 header backup (for escrow on the controller, and a copy on the host)."""

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
  - O(copy) gets the same bytes, owned by root with mode 0400, in a directory created root
    only (0700) when missing. It is the host's own copy, which the backup role's C(luks-headers) set
    keeps in restic.
  - Always reports changed (it writes what it was given); the role runs it only when the
    header changed or the host's copy is missing or out of date.
options:
  device:
    description: The LUKS2 device.
    type: path
    required: true
  dest:
    description: Where the gzip'd backup goes for the controller to fetch. At least one of
      O(dest) and O(copy) is needed.
    type: path
  copy:
    description: Where the host keeps its own copy (root, 0400).
    type: path
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
  description: Size of the gzip'd backup in bytes.
  type: int
  returned: success
written:
  description: The paths written (O(dest) and O(copy), those given).
  type: list
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


def write_private(path: str, data: bytes, uid: int | None = None, gid: int | None = None) -> None:
    """Write data to path, mode 0400 (its directory made 0700 when missing), replaced atomically."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path + ".part", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as out:
        # A .part left by an interrupted run keeps its old mode through O_CREAT: set it here.
        os.fchmod(out.fileno(), 0o400)
        if uid is not None:
            os.fchown(out.fileno(), uid, gid)
        out.write(data)
    os.replace(path + ".part", path)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "device": {"type": "path", "required": True},
            "dest": {"type": "path"},
            "copy": {"type": "path"},
            "owner": {"type": "str", "default": ""},
        },
        supports_check_mode=False,
    )
    dest, copy = module.params["dest"], module.params["copy"]
    if not dest and not copy:
        module.fail_json(msg="luks_header_backup: give dest, copy or both (where the backup goes)")
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
        # One compression for both paths: the host's copy is byte for byte what the controller escrows.
        data = gzip.compress(bytes(image), mtime=0)
        written = []
        if dest:
            owner = module.params["owner"] or os.environ.get("SUDO_USER", "")
            user = pwd.getpwnam(owner) if owner else None
            write_private(dest, data, *((user.pw_uid, user.pw_gid) if user else ()))
            if user:
                os.chown(os.path.dirname(dest), user.pw_uid, user.pw_gid)
            written.append(dest)
        if copy:
            write_private(copy, data, 0, 0)
            written.append(copy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    module.exit_json(
        changed=True,
        header_sha256=hashlib.sha256(bytes(image[:BINARY_HEADER])).hexdigest(),
        keyslots=kept,
        size=len(data),
        written=written,
    )


if __name__ == "__main__":
    main()
