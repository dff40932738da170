"""The luks role's modules: what luks_plan decides for each device, and compact header backups."""

from __future__ import annotations

import datetime
import grp
import gzip
import hashlib
import importlib.util
import json
import os
import pwd
import struct
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "plugins" / "modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


plan = _load("luks_plan")
backup = _load("luks_header_backup")

VOL = {"name": "models", "device": "/dev/disk/by-id/virtio-data", "key_secret": "luks_h_models"}


def probe(**kw):
    base = {
        "exists": True,
        "path": "/dev/vdb",
        "found": [],
        "partitions": [],
        "holders": [],
        "luks": None,
        "opens": {"current": None, "previous": None},
        "mapper": {"active": False, "backing": None, "filesystem": None},
    }
    base.update(kw)
    return base


def luks(current, previous=None):
    return {"luks": {"uuid": "u-1"}, "opens": {"current": current, "previous": previous}}


@pytest.mark.parametrize(
    ("found", "words"),
    [
        (["ext4"], "a 'ext4' signature"),
        (["PMBR", "gpt"], "a GPT partition table (gpt)"),
        (["dos"], "an MBR partition table"),
        (["LVM2_member"], "'LVM2_member' signature"),
    ],
)
def test_occupied_devices_are_refused_naming_the_device_and_what_it_holds(found, words):
    action, reason = plan.decide(VOL, probe(found=found), {"current": "k"})
    assert action == "refuse"
    assert VOL["device"] in reason and "/dev/vdb" in reason
    assert words in reason
    assert "force_format" in reason


def test_partitions_or_holders_alone_are_refused():
    assert plan.decide(VOL, probe(partitions=["vdb1"]), {"current": "k"})[0] == "refuse"
    assert plan.decide(VOL, probe(holders=["md0"]), {"current": "k"})[0] == "refuse"


def test_an_empty_device_is_formatted():
    assert plan.decide(VOL, probe(), {"current": "k"})[0] == "format"


def test_force_format_is_the_only_way_over_data():
    vol = dict(VOL, force_format=True)
    assert plan.decide(vol, probe(found=["ext4"]), {"current": "k"})[0] == "format"
    assert plan.decide(vol, probe(**luks(False)), {"current": "k"})[0] == "format"


def test_force_format_never_erases_a_volume_the_key_opens():
    vol = dict(VOL, force_format=True)
    assert plan.decide(vol, probe(**luks(True)), {"current": "k"})[0] == "use"


def test_missing_device_is_refused():
    action, reason = plan.decide(VOL, probe(exists=False), {"current": "k"})
    assert action == "refuse" and "does not exist" in reason


def test_a_foreign_luks_header_is_refused():
    action, reason = plan.decide(VOL, probe(**luks(False, False)), {"current": "k", "previous": "old"})
    assert action == "refuse"
    assert "LUKS header" in reason and "luks_h_models_previous" in reason


@pytest.mark.parametrize(
    ("current", "previous", "keys", "expected"),
    [
        (True, None, {"current": "new"}, "use"),
        (True, False, {"current": "new", "previous": "old"}, "use"),
        (False, True, {"current": "new", "previous": "old"}, "rotate"),
        (True, True, {"current": "new", "previous": "old"}, "drop_previous"),
    ],
)
def test_rotation_states(current, previous, keys, expected):
    assert plan.decide(VOL, probe(**luks(current, previous)), keys)[0] == expected


def test_previous_equal_to_current_is_refused_as_removing_the_last_key():
    action, reason = plan.decide(VOL, probe(**luks(True, True)), {"current": "same", "previous": "same"})
    assert action == "refuse"
    assert "last key" in reason


def test_mapper_name_taken_by_another_device_is_refused():
    p = probe(**luks(True), mapper={"active": True, "backing": "/dev/vdc", "filesystem": "ext4"})
    assert plan.decide(VOL, p, {"current": "k"})[0] == "refuse"


def test_without_cryptsetup_the_plan_is_unknown():
    assert plan.decide(VOL, probe(**luks(None)), {"current": "k"})[0] == "unknown"


def test_key_dates():
    today = datetime.date(2025, 6, 1)
    old = {"models": {"key_date": "2025-01-01", "key_date_source": "format"}}
    assert plan.key_dates(VOL, "use", old, today) == (old["models"], 151)
    entry, age = plan.key_dates(VOL, "rotate", old, today)
    assert entry == {"key_date": "2025-06-01", "key_date_source": "rotation"} and age == 0
    entry, age = plan.key_dates(VOL, "use", {}, today)
    assert entry["key_date_source"] == "first seen" and age == 0
    assert plan.key_dates(VOL, "refuse", {}, today) == ({}, None)


def _header(keyslots: dict, hdr_size: int = 16384, keyslots_size: int = 1 << 20) -> bytearray:
    meta = {"keyslots": keyslots, "config": {"json_size": str(hdr_size - 4096), "keyslots_size": str(keyslots_size)}}
    image = bytearray(b"\xff" * (2 * hdr_size + keyslots_size))
    image[:16] = b"LUKS\xba\xbe" + struct.pack(">HQ", 2, hdr_size)
    raw = json.dumps(meta).encode()
    image[4096:hdr_size] = raw + bytes(hdr_size - 4096 - len(raw))
    return image


def test_header_backup_keeps_used_keyslot_areas_and_zeroes_the_rest():
    slot = {"area": {"offset": str(32768 + 4096), "size": "8192"}}
    image = _header({"0": slot})
    assert backup.compact(image) == ["0"]
    start, used_lo, used_hi = 32768, 32768 + 4096, 32768 + 4096 + 8192
    assert image[start:used_lo] == bytes(used_lo - start)
    assert image[used_lo:used_hi] == b"\xff" * 8192
    assert image[used_hi:] == bytes(len(image) - used_hi)
    assert image[:16].startswith(b"LUKS\xba\xbe")


def test_unused_ranges_cover_gaps_between_slots():
    meta = {
        "config": {"keyslots_size": "1000"},
        "keyslots": {"1": {"area": {"offset": "600", "size": "100"}}, "0": {"area": {"offset": "300", "size": "100"}}},
    }
    assert backup.unused_keyslot_ranges(100, meta) == [(200, 100), (400, 200), (700, 500)]


def test_header_backup_refuses_non_luks2():
    with pytest.raises(ValueError):
        backup.parse_header(b"\0" * 8192)
    with pytest.raises(ValueError):
        backup.parse_header(b"LUKS\xba\xbe" + struct.pack(">HQ", 1, 4096) + bytes(8192))


def test_managed_block_between_markers():
    text = "# other\nold x y\n# BEGIN luks\nmodels UUID=1 none luks\n# END luks\ntail\n"
    assert plan.managed_block(text, "# {mark} luks") == ["models UUID=1 none luks"]
    assert plan.managed_block("nothing\n", "# {mark} luks") is None


# --- The host's copies of the header backups (luks_header_copy_dir) ---------------------------


def _me() -> dict:
    return {"owner": pwd.getpwuid(os.getuid()).pw_name, "group": grp.getgrgid(os.getgid()).gr_name}


def _copy(directory: Path, name: str, image: bytes, mode: int = 0o400) -> Path:
    path = directory / f"{name}.header.gz"
    backup.write_private(str(path), gzip.compress(image, mtime=0))
    path.chmod(mode)
    return path


def _probes(**sha: str | None) -> dict:
    return {name: {"luks": {"header_sha256": value} if value else None} for name, value in sha.items()}


def test_host_copies_that_match_the_device_need_nothing(tmp_path):
    copies = tmp_path / "luks-headers"
    image = bytes(_header({}))
    _copy(copies, "models", image)
    copies.chmod(0o700)
    vols = [{"name": "models"}]
    sha = hashlib.sha256(image[:4096]).hexdigest()
    state = plan.header_copy_state(str(copies), vols, _probes(models=sha), **_me())
    assert state == {"header_copy_dir": False, "header_copies": [], "stray_header_copies": []}
    assert plan.copy_header_sha256(str(copies / "models.header.gz")) == sha


def test_host_copies_missing_stale_unreadable_or_open_to_others_are_rewritten(tmp_path):
    copies = tmp_path / "luks-headers"
    image = bytes(_header({}))
    sha = hashlib.sha256(image[:4096]).hexdigest()
    _copy(copies, "models", image, mode=0o444)  # readable by all
    other = bytearray(image)
    other[64:72] = struct.pack(">Q", 7)  # another sequence number: the header before a rotation
    _copy(copies, "cache", bytes(other))
    (copies / "scratch.header.gz").write_bytes(b"not gzip")
    (copies / "scratch.header.gz").chmod(0o400)
    copies.chmod(0o755)
    vols = [{"name": n} for n in ("models", "cache", "scratch", "fresh")]
    state = plan.header_copy_state(str(copies), vols, _probes(models=sha, cache=sha, scratch=sha, fresh=None), **_me())
    assert state["header_copies"] == ["models", "cache", "scratch", "fresh"]
    assert state["header_copy_dir"]  # 0755, not 0700
    assert plan.copy_header_sha256(str(copies / "scratch.header.gz")) is None


def test_copies_of_volumes_no_longer_listed_are_stray(tmp_path):
    copies = tmp_path / "luks-headers"
    _copy(copies, "models", b"x" * 4096)
    _copy(copies, "gone", b"x" * 4096)
    (copies / "notes.txt").write_text("not ours")
    state = plan.header_copy_state(str(copies), [{"name": "models"}], {}, **_me())
    assert state["stray_header_copies"] == [str(copies / "gone.header.gz")]
    assert plan.header_copy_state("", [{"name": "models"}], {}) == {
        "header_copy_dir": False,
        "header_copies": [],
        "stray_header_copies": [],
    }


def test_private_write_replaces_a_file_and_leaves_it_0400(tmp_path):
    path = tmp_path / "new" / "models.header.gz"
    (tmp_path / "new").mkdir(mode=0o755)
    (tmp_path / "new" / "models.header.gz.part").write_bytes(b"left by a crash")
    (tmp_path / "new" / "models.header.gz.part").chmod(0o644)
    backup.write_private(str(path), b"first")
    backup.write_private(str(path), b"second")  # over a 0400 file
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o400
    assert not (tmp_path / "new" / "models.header.gz.part").exists()
    made = tmp_path / "made" / "cache.header.gz"
    backup.write_private(str(made), b"x")
    assert made.parent.stat().st_mode & 0o777 == 0o700
