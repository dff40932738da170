#!/usr/bin/python
"""Module: look at every declared LUKS data volume (read-only) and say what the role may do."""

from __future__ import annotations

DOCUMENTATION = r"""
module: luks_plan
short_description: Probe declared LUKS data volumes and plan, without changing anything
description:
  - For every volume, finds out what the device holds (C(wipefs --no-act), partitions,
    holders), whether it is LUKS, which of the volume's keys opens it
    (C(cryptsetup open --test-passphrase)), whether its mapping is open, and decides one
    action - V(format) (a device holding nothing at all, or one with O(volumes[].force_format)),
    V(use), V(rotate) (only the previous key opens; add the current key, remove the previous),
    V(drop_previous) (both keys open; remove the previous one), or V(refuse) with the reason.
  - A device that holds a filesystem, a partition table (even an empty GPT), any other
    signature, partitions, a holder (RAID, LVM, device-mapper), or a LUKS header that none of
    its keys opens is never planned for formatting unless O(volumes[].force_format) is set.
  - Keeps the key dates (when each volume's key was set) in O(state_file), a local fact file,
    and reports every volume whose key is older than O(max_age_days); with O(age_action=warn)
    it also emits an Ansible warning.
  - Never writes anything; runs the same in check mode.
options:
  volumes:
    description: The volumes, each with C(name), C(device) and optional C(force_format).
    type: list
    elements: dict
    required: true
  keys:
    description: Volume name -> C(current) key and optional C(previous) key.
    type: dict
    required: true
    no_log: true
  state_file:
    description: JSON file holding each volume's key date (a local fact, /etc/ansible/facts.d/luks.fact).
    type: path
    required: true
  max_age_days:
    description: Keys older than this many days are reported (0 disables the check).
    type: int
    default: 90
  age_action:
    description: V(warn) emits a warning for old keys; V(fail) only reports them (the role fails).
    type: str
    choices: [warn, fail]
    default: warn
  commands:
    description: Package name -> a command it provides; packages whose command is missing are
      returned in RV(missing_packages), so the role calls apt only when something is missing.
    type: dict
    default: {}
  dropin_dir:
    description: Where the role's systemd drop-ins (C(*/60-luks-*.conf)) are looked for.
    type: path
    default: /etc/systemd/system
  keyfile_dir:
    description: Directory of the key files (C(<name>.key), root only) of C(unlock=keyfile) volumes.
    type: path
    default: /etc/cryptsetup-keys.d
  dropins:
    description: The drop-ins the role wants, each C(path) and C(content) (root, 0644).
    type: list
    elements: dict
    default: []
  crypttab_marker:
    description: The marker line of the role's block in /etc/crypttab, with C({mark}) for BEGIN or END.
    type: str
    default: "# {mark} ANSIBLE MANAGED BLOCK"
  units:
    description: Units that must be enabled and active.
    type: list
    elements: str
    default: []
  header_copy_dir:
    description: Directory (root, 0700) of the host's copies of the header backups,
      C(<name>.header.gz) (root, 0400); empty skips these checks.
    type: path
    default: ""
"""

RETURN = r"""
volumes:
  description: Per volume name - device, path, found (signatures), partitions, holders, luks
    (uuid, version, keyslots, cipher, key_bits, pbkdf, tokens, header_sha256 of the primary
    binary header, which changes with every keyslot or token change), opens (current, previous),
    mapper (active, backing, filesystem), action, reason, key_date, key_age_days.
  type: dict
  returned: always
refusals:
  description: One message per refused volume, naming the device and what it holds.
  type: list
  returned: always
too_old:
  description: One message per volume whose key is older than max_age_days.
  type: list
  returned: always
state:
  description: The key dates after this run's planned actions (what the role records).
  type: dict
  returned: always
today:
  description: The host's date (YYYY-MM-DD) the ages are counted to.
  type: str
  returned: always
state_changed:
  description: Whether RV(state) differs from what O(state_file) holds.
  type: bool
  returned: always
state_file_exists:
  description: Whether O(state_file) exists.
  type: bool
  returned: always
missing_packages:
  description: Packages of O(commands) whose command is not installed.
  type: list
  returned: always
dropins:
  description: Paths of the role's drop-ins found under O(dropin_dir).
  type: list
  returned: always
stale:
  description: What differs from the desired state, so the role runs only those tasks -
    keydir (bool), keyfiles and stray_keyfiles (volume names), dropin_dirs and dropins
    (paths), mount_roots (volumes not mounted from their mapping or with another owner,
    group or mode), units (not enabled and active), header_copy_dir (bool), header_copies
    (volumes whose host copy of the header backup is missing, not root 0400, or not of the
    device's current header), stray_header_copies (copies of volumes no longer listed); and
    what is there now -
    crypttab_block (the lines of the managed block, or null), fstab (mount point -> its
    six fields) and mounted (mount point -> mounted source, or null).
  type: dict
  returned: always
"""

import datetime
import glob
import grp
import gzip
import hashlib
import json
import os
import pwd
import stat
import subprocess
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

BINARY_HEADER = 4096  # LUKS2's primary binary header: the part whose checksum the role compares
SIGNATURE_NAMES = {
    "PMBR": "a protective MBR (PMBR)",
    "gpt": "a GPT partition table (gpt)",
    "dos": "an MBR partition table (dos)",
}


def describe(found: list[str], partitions: list[str], holders: list[str]) -> str:
    """Human words for what a device holds, naming every signature wipefs found."""
    parts = [SIGNATURE_NAMES.get(sig, f"a '{sig}' signature (filesystem or other data)") for sig in found]
    if partitions:
        parts.append(f"partitions ({', '.join(partitions)})")
    if holders:
        parts.append(f"holders ({', '.join(holders)}: RAID, LVM or device-mapper use it)")
    return ", ".join(parts)


def decide(vol: dict[str, Any], probe: dict[str, Any], keys: dict[str, Any]) -> tuple[str, str]:
    """(action, reason) for one volume from what the probe found. Pure: unit tested."""
    device = vol["device"]
    name = vol["name"]
    force = bool(vol.get("force_format"))
    secret = vol.get("key_secret", f"the key of volume {name}")
    override = f"set force_format: true on volume '{name}' in luks_volumes (DESTRUCTIVE: erases the device)"
    if not probe["exists"]:
        return "refuse", f"volume '{name}': device {device} does not exist (check luks_volumes[].device)"
    mapper = probe["mapper"]
    if mapper["active"] and mapper["backing"] and mapper["backing"] != probe["path"]:
        return "refuse", (
            f"volume '{name}': /dev/mapper/{name} is already open on {mapper['backing']}, not on {device} "
            f"({probe['path']}); choose another name or close that mapping"
        )
    luks = probe["luks"]
    if luks is None:
        what = describe(probe["found"], probe["partitions"], probe["holders"])
        if not what:
            return "format", f"{device} holds nothing (no signature, partition or holder)"
        if force:
            return "format", f"force_format: {device} held {what}; erased on request"
        return (
            "refuse",
            f"volume '{name}': {device} ({probe['path']}) holds {what}; not formatted. To erase it: {override}",
        )
    opens = probe["opens"]
    previous = keys.get("previous")
    if opens["current"] is None:
        return "unknown", "cryptsetup is not installed yet (check mode on a fresh host)"
    if opens["current"]:
        if previous and previous == keys.get("current"):
            return "refuse", (
                f"volume '{name}': the previous key ({secret}_previous) is the same as the current key "
                f"({secret}); removing it would remove the volume's last key. Remove {secret}_previous from "
                f"the secrets, or put a new key in {secret} to rotate"
            )
        if previous and opens["previous"]:
            return "drop_previous", "both keys open the volume: the previous key is removed"
        return "use", "the current key opens the volume"
    if previous and opens["previous"]:
        return "rotate", "only the previous key opens the volume: the current key is added, then the previous removed"
    if force:
        return "format", f"force_format: {device} held a LUKS header no key of the volume opens; erased on request"
    return "refuse", (
        f"volume '{name}': {device} ({probe['path']}) holds a LUKS header (UUID {luks.get('uuid')}) that "
        f"neither {secret} nor {secret}_previous opens; not formatted. Put the volume's key in the secrets, "
        f"or to erase it: {override}"
    )


def key_dates(
    vol: dict[str, Any], action: str, recorded: dict[str, Any], today: datetime.date
) -> tuple[dict[str, Any], int | None]:
    """The volume's recorded key date after this run, and the key's age in days."""
    entry = dict(recorded.get(vol["name"]) or {})
    if action in ("format", "rotate", "drop_previous"):
        entry = {"key_date": today.isoformat(), "key_date_source": "format" if action == "format" else "rotation"}
    elif action == "use" and "key_date" not in entry:
        entry = {"key_date": today.isoformat(), "key_date_source": "first seen"}
    if "key_date" not in entry:
        return entry, None
    try:
        age = (today - datetime.date.fromisoformat(str(entry["key_date"]))).days
    except ValueError:
        return entry, None
    return entry, age


class Prober:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.cryptsetup = module.get_bin_path("cryptsetup")
        self.wipefs = module.get_bin_path("wipefs", required=True)

    def run(self, argv: list[str], data: bytes | None = None) -> tuple[int, str, str]:
        return self.module.run_command(argv, data=data, binary_data=True, check_rc=False)

    def probe(self, vol: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
        device = vol["device"]
        result: dict[str, Any] = {
            "device": device,
            "exists": os.path.exists(device),
            "path": os.path.realpath(device),
            "found": [],
            "partitions": [],
            "holders": [],
            "luks": None,
            "opens": {"current": None, "previous": None},
            "mapper": self.mapper(vol["name"]),
        }
        if not result["exists"]:
            return result
        kname = os.path.basename(result["path"])
        sysdir = f"/sys/class/block/{kname}"
        if os.path.isdir(sysdir):
            result["partitions"] = sorted(
                e for e in os.listdir(sysdir) if os.path.exists(os.path.join(sysdir, e, "partition"))
            )
            holders = os.path.join(sysdir, "holders")
            result["holders"] = sorted(os.listdir(holders)) if os.path.isdir(holders) else []
        rc, out, err = self.run([self.wipefs, "--no-act", "--json", device])
        if rc != 0:
            self.module.fail_json(msg=f"wipefs --no-act {device} failed: {err.strip()}")
        sigs = json.loads(out or "{}").get("signatures", [])
        result["found"] = list(dict.fromkeys(s.get("type", "?") for s in sigs))
        if "crypto_LUKS" in result["found"]:
            result["luks"] = self.luks_info(device)
            # A LUKS device's own mapping is its holder, not a foreign user.
            if result["mapper"]["active"] and result["mapper"]["backing"] == result["path"]:
                mapped = os.path.basename(os.path.realpath(f"/dev/mapper/{vol['name']}"))
                result["holders"] = [h for h in result["holders"] if h != mapped]
            if self.cryptsetup:
                result["opens"]["current"] = self.opens(device, keys.get("current"))
                previous = keys.get("previous")
                if previous and previous != keys.get("current"):
                    result["opens"]["previous"] = self.opens(device, previous)
                else:
                    result["opens"]["previous"] = bool(previous) and result["opens"]["current"]
        return result

    def luks_info(self, device: str) -> dict[str, Any]:
        info: dict[str, Any] = {"uuid": None, "version": None, "keyslots": None, "tokens": []}
        if not self.cryptsetup:
            return info
        rc, out, _ = self.run([self.cryptsetup, "luksUUID", device])
        info["uuid"] = out.strip() if rc == 0 else None
        rc, out, _ = self.run([self.cryptsetup, "luksDump", "--dump-json-metadata", device])
        if rc != 0:  # LUKS1 has no JSON metadata
            info["version"] = 1
            return info
        meta = json.loads(out)
        info["version"] = 2
        slots = meta.get("keyslots", {})
        info["keyslots"] = len(slots)
        info["tokens"] = sorted({t.get("type", "?") for t in meta.get("tokens", {}).values()})
        segment = next(iter(meta.get("segments", {}).values()), {})
        info["cipher"] = segment.get("encryption")
        info["key_bits"] = sorted({s.get("key_size", 0) * 8 for s in slots.values()})
        info["pbkdf"] = sorted({s.get("kdf", {}).get("type", "?") for s in slots.values()})
        # The primary binary header holds the metadata's sequence number and checksum, so it
        # changes with every keyslot or token change.
        with open(device, "rb") as handle:
            info["header_sha256"] = hashlib.sha256(handle.read(BINARY_HEADER)).hexdigest()
        return info

    def opens(self, device: str, key: str | None) -> bool:
        """True or False only when cryptsetup says so (exit 0, or 2: no key with this passphrase).

        Any other failure (out of memory, device busy) is retried, then fails the run: an
        error must never read as "this key does not open the volume".
        """
        if not key:
            return False
        argv = [self.cryptsetup, "open", "--test-passphrase", "--key-file=-", device]
        rc, err = 0, ""
        for attempt in range(3):
            rc, _, err = self.run(argv, data=key.encode())
            if rc in (0, 2):
                return rc == 0
            time.sleep(2 * (attempt + 1))
        self.module.fail_json(
            msg=f"cryptsetup could not test a key on {device} (exit {rc}): {err.strip()}. Nothing was changed."
        )
        return False

    def mapper(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"active": False, "backing": None, "filesystem": None}
        path = f"/dev/mapper/{name}"
        if not os.path.exists(path):
            return out
        out["active"] = True
        dm = os.path.basename(os.path.realpath(path))
        slaves = f"/sys/class/block/{dm}/slaves"
        if os.path.isdir(slaves) and os.listdir(slaves):
            out["backing"] = "/dev/" + sorted(os.listdir(slaves))[0]
        rc, stdout, _ = self.run([self.wipefs, "--no-act", "--json", path])
        if rc == 0:
            sigs = json.loads(stdout or "{}").get("signatures", [])
            out["filesystem"] = sigs[0].get("type") if sigs else None
        return out


def file_state(path: str) -> dict[str, Any] | None:
    """Owner, group, mode and type of a path, or None when it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {"owner": owner, "group": group, "mode": stat.S_IMODE(st.st_mode), "dir": stat.S_ISDIR(st.st_mode)}


def matches(path: str, *, owner: str, group: str, mode: str, directory: bool, content: bytes | None = None) -> bool:
    """Does the path exist with this owner, group, mode, type (and content)?"""
    current = file_state(path)
    if current is None or current["dir"] != directory:
        return False
    if (current["owner"], current["group"], current["mode"]) != (owner, group, int(mode, 8)):
        return False
    if content is None:
        return True
    with open(path, "rb") as handle:
        return handle.read() == content


def managed_block(text: str, marker: str) -> list[str] | None:
    """Lines between the BEGIN and END markers of a blockinfile block, or None. Pure: unit tested."""
    lines = text.splitlines()
    begin, end = marker.replace("{mark}", "BEGIN"), marker.replace("{mark}", "END")
    if begin not in lines or end not in lines:
        return None
    start = lines.index(begin)
    stop = lines.index(end, start)
    return lines[start + 1 : stop]


def stale_state(module: AnsibleModule, volumes: list[dict[str, Any]], keys: dict[str, Any]) -> dict[str, Any]:
    """What differs from the desired files, crypttab block, mounts and units (read-only).

    The role runs a task only for what is listed here, so a run that changes nothing costs
    one round trip instead of one per file; every listed item is still written by the
    usual module, with its diff and check mode.
    """
    p = module.params
    keydir = p["keyfile_dir"]
    out: dict[str, Any] = {"keydir": False, "keyfiles": [], "stray_keyfiles": [], "dropin_dirs": [], "dropins": []}
    keyfile_volumes = [v for v in volumes if v.get("unlock", "keyfile") == "keyfile"]
    if keyfile_volumes and not matches(keydir, owner="root", group="root", mode="0700", directory=True):
        out["keydir"] = True
    for vol in volumes:
        path = os.path.join(keydir, f"{vol['name']}.key")
        if vol.get("unlock", "keyfile") == "keyfile":
            key = ((keys.get(vol["name"]) or {}).get("current") or "").encode()
            if not matches(path, owner="root", group="root", mode="0400", directory=False, content=key):
                out["keyfiles"].append(vol["name"])
        elif os.path.lexists(path):
            out["stray_keyfiles"].append(vol["name"])
    for dropin in p["dropins"]:
        folder = os.path.dirname(dropin["path"])
        if not matches(folder, owner="root", group="root", mode="0755", directory=True):
            out["dropin_dirs"].append(folder)
        content = dropin["content"].encode()
        if not matches(dropin["path"], owner="root", group="root", mode="0644", directory=False, content=content):
            out["dropins"].append(dropin["path"])
    out["dropin_dirs"] = sorted(set(out["dropin_dirs"]))
    mounts = {}
    with open("/proc/self/mounts") as handle:
        for line in handle:
            fields = line.split()
            mounts[fields[1].replace("\\040", " ")] = fields[0]
    out["mount_roots"] = [
        v["name"]
        for v in volumes
        if v.get("mount")
        and not (
            mounts.get(v["mount"]) == f"/dev/mapper/{v['name']}"
            and matches(
                v["mount"],
                owner=v.get("owner", "root"),
                group=v.get("group", "root"),
                mode=v.get("mode", "0755"),
                directory=True,
            )
        )
    ]
    out["crypttab_block"] = None
    if os.path.exists("/etc/crypttab"):
        with open("/etc/crypttab") as handle:
            out["crypttab_block"] = managed_block(handle.read(), p["crypttab_marker"])
    out["fstab"] = {}
    wanted = {v["mount"] for v in volumes if v.get("mount")}
    if os.path.exists("/etc/fstab"):
        with open("/etc/fstab") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 4 and not fields[0].startswith("#") and fields[1] in wanted:
                    out["fstab"][fields[1]] = [*fields, "0", "0"][:6]
    out["mounted"] = {m: mounts.get(m) for m in sorted(wanted)}
    out["units"] = []
    for unit in p["units"]:
        enabled = subprocess.run(["systemctl", "is-enabled", "--quiet", unit], check=False).returncode == 0
        active = subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0
        if not (enabled and active):
            out["units"].append(unit)
    return out


def copy_header_sha256(path: str) -> str | None:
    """SHA-256 of the primary binary header inside a gzip'd header backup, or None if unreadable.

    Only the first 4 KiB are decompressed: a no-op run stays cheap.
    """
    try:
        with gzip.open(path, "rb") as handle:
            first = handle.read(BINARY_HEADER)
    except (OSError, EOFError):
        return None
    return hashlib.sha256(first).hexdigest() if len(first) == BINARY_HEADER else None


def header_copy_state(
    directory: str, volumes: list[dict[str, Any]], probes: dict[str, Any], owner: str = "root", group: str = "root"
) -> dict[str, Any]:
    """Which host copies of the header backups the role must write or remove (read-only).

    A copy is due when it is missing, has another owner or mode, or holds another header than
    the device's (its binary header, with the metadata's sequence number, differs).
    """
    out: dict[str, Any] = {"header_copy_dir": False, "header_copies": [], "stray_header_copies": []}
    if not directory:
        return out
    out["header_copy_dir"] = not matches(directory, owner=owner, group=group, mode="0700", directory=True)
    wanted = set()
    for vol in volumes:
        path = os.path.join(directory, f"{vol['name']}.header.gz")
        wanted.add(path)
        device_sha = ((probes.get(vol["name"]) or {}).get("luks") or {}).get("header_sha256")
        current = matches(path, owner=owner, group=group, mode="0400", directory=False)
        if not (current and device_sha and copy_header_sha256(path) == device_sha):
            out["header_copies"].append(vol["name"])
    out["stray_header_copies"] = sorted(p for p in glob.glob(os.path.join(directory, "*.header.gz")) if p not in wanted)
    return out


def installed(module: AnsibleModule, command: str) -> bool:
    if command.startswith("/"):
        return os.access(command, os.X_OK)
    return module.get_bin_path(command) is not None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "volumes": {"type": "list", "elements": "dict", "required": True},
            "keys": {"type": "dict", "required": True, "no_log": True},
            "state_file": {"type": "path", "required": True},
            "max_age_days": {"type": "int", "default": 90},
            "age_action": {"type": "str", "choices": ["warn", "fail"], "default": "warn"},
            "commands": {"type": "dict", "default": {}},
            "dropin_dir": {"type": "path", "default": "/etc/systemd/system"},
            "keyfile_dir": {"type": "path", "default": "/etc/cryptsetup-keys.d"},
            "dropins": {"type": "list", "elements": "dict", "default": []},
            "crypttab_marker": {"type": "str", "default": "# {mark} ANSIBLE MANAGED BLOCK"},
            "units": {"type": "list", "elements": "str", "default": []},
            "header_copy_dir": {"type": "path", "default": ""},
        },
        supports_check_mode=True,
    )
    prober = Prober(module)
    recorded: dict[str, Any] = {}
    state_file_exists = os.path.exists(module.params["state_file"])
    if state_file_exists:
        with open(module.params["state_file"]) as handle:
            recorded = (json.load(handle) or {}).get("volumes", {})
    today = datetime.date.today()
    volumes: dict[str, Any] = {}
    refusals: list[str] = []
    too_old: list[str] = []
    state: dict[str, Any] = {}
    max_age = module.params["max_age_days"]
    for vol in module.params["volumes"]:
        keys = module.params["keys"].get(vol["name"]) or {}
        probe = prober.probe(vol, keys)
        action, reason = decide(vol, probe, keys)
        entry, age = key_dates(vol, action, recorded, today)
        probe.update(action=action, reason=reason, key_date=entry.get("key_date"), key_age_days=age)
        volumes[vol["name"]] = probe
        if entry:
            state[vol["name"]] = entry
        if action == "refuse":
            refusals.append(reason)
        elif max_age and age is not None and age > max_age:
            msg = (
                f"volume '{vol['name']}' ({vol['device']}): its key is {age} days old (set {entry['key_date']}), "
                f"more than luks_key_max_age_days={max_age}. Rotate it: put a new key in the volume's secret "
                f"and the current one in <secret>_previous, then run the luks role"
            )
            too_old.append(msg)
            if module.params["age_action"] == "warn":
                module.warn(msg)
    missing = sorted(pkg for pkg, cmd in module.params["commands"].items() if not installed(module, cmd))
    dropins = sorted(glob.glob(os.path.join(module.params["dropin_dir"], "*.d", "60-luks-*.conf")))
    module.exit_json(
        changed=False,
        volumes=volumes,
        refusals=refusals,
        too_old=too_old,
        state=state,
        state_changed=state != recorded,
        state_file_exists=state_file_exists,
        today=today.isoformat(),
        missing_packages=missing,
        dropins=dropins,
        stale=stale_state(module, module.params["volumes"], module.params["keys"])
        | header_copy_state(module.params["header_copy_dir"], module.params["volumes"], volumes),
    )


if __name__ == "__main__":
    main()
