"""The object_storage role's plugins: the topology rules (shared by the role and preflight),
the cephx key format, and what each module decides from the state it reads. The modules run
against a real cluster in tests/lab/test_70_object_storage.py; here, their decisions."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from conftest import load_plugin
from labkit import secrets as lab_secrets

filters = load_plugin("plugins/filter/object_storage.py")
cluster_state = load_plugin("plugins/modules/ceph_cluster_state.py")
rgw_user = load_plugin("plugins/modules/rgw_user.py")
rgw_bucket = load_plugin("plugins/modules/rgw_bucket.py")

FSID = "7d3c1f8e-2b6a-4c59-9e1d-5a0b8c4f2e61"
USERS = [{"uid": "backups"}, {"uid": "models"}]
BUCKETS = [
    {"name": "backups", "owner": "backups", "versioning": True, "object_lock": {"mode": "COMPLIANCE", "days": 14}},
    {"name": "models", "owner": "models", "read_access": ["backups"]},
]


def site(hosts: dict[str, dict], **settings):
    """(groups, hostvars, settings) of a storage group with these hosts' variables."""
    groups = {"all": list(hosts), "storage": list(hosts)}
    base = {
        "object_storage_fsid": FSID,
        "object_storage_public_network": "10.0.30.0/24",
        "object_storage_users": USERS,
        "object_storage_buckets": BUCKETS,
    }
    return groups, hosts, base | settings


def three_hosts(**extra) -> dict[str, dict]:
    return {
        f"stor{i}": {"ansible_host": f"10.0.30.{i}", "object_storage_osd_devices": ["/dev/nvme1n1"]} | extra
        for i in (1, 2, 3)
    }


def problems(hosts, **settings) -> list[str]:
    groups, hostvars, values = site(hosts, **settings)
    return filters.topology_problems("storage", groups, hostvars, values)


def test_three_hosts_with_one_device_each_are_a_valid_site():
    assert problems(three_hosts()) == []


def test_no_storage_group_means_nothing_to_check():
    assert filters.topology_problems("storage", {"all": ["a"]}, {"a": {}}, {}) == []


def test_fsid_and_network_are_required_and_checked():
    found = problems(three_hosts(), object_storage_fsid="REPLACE_ME", object_storage_public_network="")
    assert any("object_storage_fsid is 'REPLACE_ME'" in p and "uuidgen" in p for p in found)
    assert any("object_storage_public_network is ''" in p for p in found)


def test_a_host_outside_the_public_network_is_named():
    hosts = three_hosts()
    hosts["stor3"]["ansible_host"] = "10.9.9.9"
    assert problems(hosts) == [
        "host stor3: its address 10.9.9.9 is not in object_storage_public_network (10.0.30.0/24): set "
        "object_storage_address to its address on that network, or widen the network"
    ]


def test_fewer_osds_than_copies_is_refused():
    hosts = three_hosts()
    hosts["stor3"]["object_storage_osd_devices"] = []
    hosts["stor2"]["object_storage_osd_devices"] = []
    found = problems(hosts)
    assert any("has 1 OSD(s) for pools of object_storage_pool_size 3" in p for p in found), found


def test_failure_domain_host_needs_as_many_hosts_with_osds_as_copies():
    hosts = {"stor1": {"ansible_host": "10.0.30.1", "object_storage_osd_devices": ["/dev/sdb", "/dev/sdc", "/dev/sdd"]}}
    found = problems(hosts, object_storage_monitor_count=1)
    assert len(found) == 1 and "each of 3 copies needs its own host" in found[0], found
    assert problems(hosts, object_storage_monitor_count=1, object_storage_failure_domain="osd") == []


def test_a_device_listed_twice_is_refused():
    hosts = three_hosts()
    hosts["stor1"]["object_storage_osd_devices"] = ["/dev/nvme1n1", "/dev/nvme1n1"]
    assert problems(hosts) == ["host stor1: object_storage_osd_devices lists /dev/nvme1n1 twice: list each device once"]


def test_file_osds_need_the_lab_switch():
    hosts = {"lab": {"ansible_host": "10.0.30.9", "object_storage_file_osds": 3}}
    found = problems(hosts, object_storage_monitor_count=1, object_storage_failure_domain="osd")
    assert len(found) == 1 and "OSDs on files are for labs and tests only" in found[0]
    hosts["lab"]["object_storage_allow_file_osds"] = True
    assert problems(hosts, object_storage_monitor_count=1, object_storage_failure_domain="osd") == []


@pytest.mark.parametrize("count", [0, 2, 4])
def test_monitors_need_an_odd_number(count):
    found = problems(three_hosts(), object_storage_monitor_count=count)
    assert any("monitors need an odd number" in p for p in found)


def test_min_size_above_size_is_refused():
    found = problems(three_hosts(), object_storage_pool_min_size=4)
    assert any(
        "object_storage_pool_min_size (4) must be between 1 and object_storage_pool_size (3)" in p for p in found
    )


def test_buckets_need_known_owners_and_readers_and_locks_need_versioning():
    buckets = [
        {"name": "Bad_Name", "owner": "nobody", "read_access": ["ghost"]},
        {"name": "locked", "owner": "backups", "versioning": False, "object_lock": {"mode": "FOREVER", "days": 0}},
    ]
    found = problems(three_hosts(), object_storage_buckets=buckets)
    assert any("'Bad_Name' is not an S3 bucket name" in p for p in found)
    assert any("object_storage_buckets[Bad_Name].owner is 'nobody'" in p for p in found)
    assert any("read_access names 'ghost'" in p for p in found)
    assert any("object_storage_buckets[locked].object_lock" in p and "COMPLIANCE or GOVERNANCE" in p for p in found)
    assert any("object lock needs versioning" in p for p in found)


def test_bucket_policy_grants_readers_read_and_writers_both():
    policy = filters.bucket_policy({"name": "models", "read_access": ["backups"], "write_access": ["ci"]})
    read, write = policy["Statement"]
    assert read["Principal"]["AWS"] == ["arn:aws:iam:::user/backups", "arn:aws:iam:::user/ci"]
    assert "s3:GetObject" in read["Action"] and "s3:PutObject" not in read["Action"]
    assert write["Principal"]["AWS"] == ["arn:aws:iam:::user/ci"] and "s3:PutObject" in write["Action"]
    assert read["Resource"] == ["arn:aws:s3:::models", "arn:aws:s3:::models/*"]
    assert filters.bucket_policy({"name": "private"}) == {}


def test_cephx_keys_the_lab_makes_have_the_format_ceph_reads():
    key = lab_secrets.SECRET_SPECS["object_storage_cephx_keys"]()["mon"]
    assert key.startswith("AQ") and len(key) == 40
    assert filters.cephx_key_problem(key) == ""
    assert filters.cephx_key_problem("REPLACE_ME") != ""
    assert "not an AES" in filters.cephx_key_problem(base64.b64encode(b"\x02" + b"\0" * 27).decode())


def test_cephx_key_matches_ceph_authtool_when_installed():
    try:
        made = subprocess.run(["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        pytest.skip("ceph-authtool is not installed on this machine (the lab test uses keys made here)")
    assert filters.cephx_key_problem(made.stdout.strip()) == ""


STATE = {
    "rules": {"replicated_rule": 0},
    "default_rule": -1,
    "pools": [
        {"pool_name": ".rgw.root", "size": 3, "min_size": 2, "crush_rule": 0},
        {"pool_name": "default.rgw.log", "size": 2, "min_size": 1, "crush_rule": 0},
    ],
    "osds": [{"osd": 0, "up": 1, "in": 1}, {"osd": 1, "up": 1, "in": 0}, {"osd": 2, "up": 0, "in": 0}],
    "mgr_modules": ["iostat"],
}
WANT = {"failure_domain": "host", "size": 3, "min_size": 2, "mgr_modules": ["prometheus", "iostat"]}


def test_cluster_plan_creates_the_rule_moves_pools_fixes_sizes_and_marks_in_only_up_osds():
    steps = cluster_state.plan(STATE, WANT)
    args = [a for _, a in steps]
    assert args[0] == ["osd", "crush", "rule", "create-replicated", "replicated_host", "default", "host"]
    assert ["osd", "pool", "set", ".rgw.root", "crush_rule", "replicated_host"] in args
    assert ["config", "set", "global", "osd_pool_default_crush_rule", "?"] in args
    log = [a for a in args if "default.rgw.log" in a]
    assert log[1:] == [
        ["osd", "pool", "set", "default.rgw.log", "size", "3"],
        ["osd", "pool", "set", "default.rgw.log", "min_size", "2"],
    ]
    assert ["osd", "in", "1"] in args and ["osd", "in", "2"] not in args
    assert ["mgr", "module", "enable", "prometheus"] in args and ["mgr", "module", "enable", "iostat"] not in args


def test_cluster_plan_is_empty_when_everything_is_as_declared():
    state = {
        "rules": {"replicated_rule": 0, "replicated_host": 1},
        "default_rule": 1,
        "pools": [{"pool_name": "p", "size": 3, "min_size": 2, "crush_rule": 1}],
        "osds": [{"osd": 0, "up": 1, "in": 1}, {"osd": 1, "up": 0, "in": 1}],
        "mgr_modules": ["prometheus"],
    }
    assert cluster_state.plan(state, WANT | {"mgr_modules": ["prometheus"]}) == []


USER = {"uid": "backups", "display_name": "restic", "access_key": "AK1", "secret_key": "SK1", "max_buckets": 10}


def test_rgw_user_created_with_its_key_and_no_secret_in_the_description():
    ((text, args),) = rgw_user.plan(None, USER)
    assert "SK1" not in text and args[:2] == ["user", "create"] and "SK1" in args


def test_rgw_user_extra_key_removed_and_changed_secret_replaced():
    current = {
        "display_name": "restic",
        "max_buckets": 10,
        "keys": [
            {"user": "backups", "access_key": "AK1", "secret_key": "OLD"},
            {"user": "backups", "access_key": "HANDMADE", "secret_key": "X"},
        ],
    }
    steps = rgw_user.plan(current, USER)
    assert [a[:2] for _, a in steps] == [["key", "rm"], ["key", "create"]]
    assert "HANDMADE" in steps[0][1] and all("SK1" not in t and "OLD" not in t for t, _ in steps)
    current["keys"] = [{"user": "backups", "access_key": "AK1", "secret_key": "SK1"}]
    assert rgw_user.plan(current, USER) == []


PARAMS = {
    "versioning": True,
    "object_lock": {"mode": "COMPLIANCE", "days": 14},
    "lifecycle": {"noncurrent_expire_days": 30, "abort_multipart_days": 7, "expire_days": 0},
    "policy": filters.bucket_policy({"name": "backups", "read_access": ["models"]}),
    "quota_bytes": 0,
}


def test_bucket_lifecycle_rule_round_trips_and_empty_means_none():
    rules = rgw_bucket.lifecycle_rules(PARAMS["lifecycle"])
    assert rules == [
        {
            "ID": "llm-cluster",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 30},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        }
    ]
    assert rgw_bucket.lifecycle_summary(rules) == rgw_bucket.wanted(PARAMS)["lifecycle"]
    assert rgw_bucket.lifecycle_rules({}) == []
    assert rgw_bucket.lifecycle_summary([{"ID": "someone-else", "Status": "Enabled"}]) == {"foreign_rules": 1}


def test_bucket_differences_name_each_drifted_aspect():
    want = rgw_bucket.wanted(PARAMS)
    same = dict(want)
    assert rgw_bucket.differences(same, want) == []
    drifted = same | {"versioning": "Suspended", "policy": {}}
    assert rgw_bucket.differences(drifted, want) == ["versioning", "policy"]
    assert rgw_bucket.differences(None, want)[:2] == ["create", "versioning"]


def test_policy_compares_equal_whatever_the_order_of_its_lists():
    a = {"Statement": [{"Action": ["s3:GetObject", "s3:ListBucket"], "Principal": {"AWS": ["u1", "u2"]}}]}
    b = json.loads(
        json.dumps({"Statement": [{"Principal": {"AWS": ["u2", "u1"]}, "Action": ["s3:ListBucket", "s3:GetObject"]}]})
    )
    assert rgw_bucket.canonical(a) == rgw_bucket.canonical(b)


def test_never_versioned_bucket_without_versioning_wanted_is_no_change():
    want = rgw_bucket.wanted(PARAMS | {"versioning": False, "object_lock": {}})
    current = want | {"versioning": "never enabled"}
    assert rgw_bucket.differences(current, want) == []
