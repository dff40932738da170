"""The auditors' report readers (scripts/toolkit/hardening_audit.py) on excerpts of real
Lynis 3.0.8 output (the VM's audit of 2026-12-05; log lines without their date)."""

from __future__ import annotations

import pytest
from toolkit.hardening_audit import lynis_index, lynis_lost, lynis_report

REPORT = """\
report_version_major=1
hardening_index=86
warning[]=PKGS-7392|Found one or more vulnerable packages.|-|-|
suggestion[]=DEB-0810|Install apt-listbugs to display a list of critical bugs prior to each APT installation.|-|-|
suggestion[]=BOOT-5122|Set a password on GRUB boot loader to prevent altering boot configuration|-|-|
suggestion[]=DEB-0810|Install apt-listbugs (repeated by a second check of the same test)|-|-|
"""

LOG = """\
06:31:09 Performing test ID DEB-0280 (Checking if libpam-tmpdir is installed and enabled.)
06:31:10 Hardening: assigned maximum number of hardening points for this item (1). Currently having 1 points (out of 1)
06:31:10 Hardening: assigned maximum number of hardening points for this item (1). Currently having 2 points (out of 2)
06:31:12 Performing test ID DEB-0810 (Checking for apt-listbugs)
06:31:12 Hardening: assigned partial number of hardening points (0 of 2). Currently having 2 points (out of 4)
06:31:12 Performing test ID FILE-6310 (Checking /tmp, /home and /var directory)
06:31:13 Hardening: assigned partial number of hardening points (1 of 4). Currently having 3 points (out of 8)
"""


def test_the_report_gives_the_index_and_each_warning_and_suggestion_once():
    assert lynis_report(REPORT) == {
        "hardening_index": 86,
        "warnings": ["PKGS-7392"],
        "suggestions": ["BOOT-5122", "DEB-0810"],
    }


def test_a_report_without_an_index_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="hardening_index"):
        lynis_report("report_version_major=1\n")


def test_the_index_is_recomputed_from_the_log_and_tests_can_be_left_out():
    assert lynis_index(LOG) == 3 * 100 // 8
    assert lynis_index(LOG, leave_out={"FILE-6310": "a container has one root file system"}) == 2 * 100 // 4
    assert lynis_lost(LOG) == {"DEB-0810": 2, "FILE-6310": 3}
