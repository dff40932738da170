"""The backup role's filters and the backup program's pure parts."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import ROOT, load_plugin

filters = load_plugin("plugins/filter/backup.py")
KEY = "k" * 48


def test_each_host_gets_its_own_stable_password():
    a, b = filters.backup_repository_password(KEY, "gpu1"), filters.backup_repository_password(KEY, "gpu2")
    assert a != b and len(a) == 64
    assert a == filters.backup_repository_password(KEY, "gpu1")
    assert a != filters.backup_repository_password("x" * 48, "gpu1")


def test_a_short_site_key_is_refused_with_how_to_make_one():
    with pytest.raises(AnsibleFilterError, match="openssl rand -base64 48"):
        filters.backup_repository_password("short", "gpu1")


def test_set_file_and_copies():
    set_file = filters.backup_set_file({"name": "ca", "paths": ["/etc/cluster-pki"], "keep": {"daily": 30}})
    assert set_file == {
        "name": "sets/ca",
        "content": {
            "paths": ["/etc/cluster-pki"],
            "exclude": [],
            "before": "",
            "after": "",
            "after_restore": "",
            "keep": {"daily": 30},
        },
    }
    copies = filters.backup_copy_repositories([{"name": "offsite", "repository": "/mnt/r/{host}"}], "ops1")
    assert copies == [{"name": "offsite", "repository": "/mnt/r/ops1"}]


def _defaults(role: str) -> dict:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())


def test_the_luks_headers_set_backs_up_the_luks_roles_documented_directory():
    """The contract between the roles: the set names the luks role's luks_header_copy_dir."""
    (headers,) = [s for s in _defaults("backup")["backup_sets"] if s["name"] == "luks-headers"]
    directory = _defaults("luks")["luks_header_copy_dir"]
    assert headers["paths"] == [directory]
    # Every host: the luks play's group of LUKS hosts exists only in a run that ran that play.
    assert headers["groups"] == ["all"]
    assert headers["keep"] == {"daily": 30, "monthly": 24}


def test_the_luks_headers_set_makes_its_directory_where_the_luks_role_did_not(tmp_path):
    """Its `before`, run as the backup program runs it (/bin/sh -c), on a scratch path: a
    missing directory is made root-only, an existing one (the luks role's) is left as it is."""
    (headers,) = [s for s in _defaults("backup")["backup_sets"] if s["name"] == "luks-headers"]
    (directory,) = headers["paths"]
    scratch = tmp_path / "var" / "backups" / "luks-headers"
    before = headers["before"].replace(directory, str(scratch))
    assert before != headers["before"]  # the command names the set's path
    subprocess.run(["/bin/sh", "-c", before], check=True)
    assert scratch.is_dir() and scratch.stat().st_mode & 0o777 == 0o700
    (scratch / "models.header.gz").write_bytes(b"kept")
    scratch.chmod(0o750)
    subprocess.run(["/bin/sh", "-c", before], check=True)
    assert (scratch / "models.header.gz").read_bytes() == b"kept"
    assert scratch.stat().st_mode & 0o777 == 0o750
