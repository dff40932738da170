"""The backup role's filters and the backup program's pure parts."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_plugin

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
