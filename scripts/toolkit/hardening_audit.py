"""What the third-party auditors of issue 23 report, in numbers the tests assert.

Lynis (Debian package) and ssh-audit (PyPI, pinned in requirements.txt) are run by
the lab suite; these helpers read their reports.
"""

from __future__ import annotations

import re
from typing import Any

# Lynis tests a container cannot pass, whatever the role does, each with its reason. Lynis
# reads them from the machine's kernel or from what the container engine sets up; the VM
# (molecule/metal) and real hosts count them.
CONTAINER_UNREACHABLE: dict[str, str] = {
    "KRNL-6000": "live sysctl values are the machine's kernel's (the role's file is asserted instead)",
    "FILE-6310": "separate /home, /tmp, /var partitions: a container has one root file system",
    "FILE-6344": "/proc mount options (hidepid) are set by the container engine",
    "FILE-6374": "mount options of /tmp, /dev/shm, /var/tmp are set by the container engine",
    "ACCT-9622": "process accounting needs CAP_SYS_PACCT on the machine's kernel",
    "ACCT-9628": "auditd needs the kernel audit interface, which is not namespaced",
    "MACF-6290": "the container runs AppArmor-unconfined; real hosts have AppArmor enforcing",
}

_TEST = re.compile(r"Performing test ID (\S+)")
_PARTIAL = re.compile(r"partial number of hardening points \((\d+) of (\d+)\)")
_FULL = re.compile(r"maximum number of hardening points for this item \((\d+)\)")


def lynis_points(log: str) -> dict[str, tuple[int, int]]:
    """Test ID -> (points earned, points possible), from /var/log/lynis.log."""
    points: dict[str, tuple[int, int]] = {}
    test = "unknown"
    for line in log.splitlines():
        if m := _TEST.search(line):
            test = m.group(1)
        elif m := _PARTIAL.search(line):
            got, most = points.get(test, (0, 0))
            points[test] = (got + int(m.group(1)), most + int(m.group(2)))
        elif m := _FULL.search(line):
            got, most = points.get(test, (0, 0))
            points[test] = (got + int(m.group(1)), most + int(m.group(1)))
    return points


def lynis_index(log: str, leave_out: dict[str, str] | None = None) -> int:
    """The hardening index as Lynis computes it (earned * 100 // possible), without the tests
    in leave_out."""
    kept = [p for test, p in lynis_points(log).items() if test not in (leave_out or {})]
    possible = sum(most for _, most in kept)
    return sum(got for got, _ in kept) * 100 // possible if possible else 0


def lynis_lost(log: str) -> dict[str, int]:
    """Test ID -> points not earned, for the report of what is left and why."""
    return {test: most - got for test, (got, most) in lynis_points(log).items() if most > got}


def lynis_report(report: str) -> dict[str, Any]:
    """The hardening index and the IDs of the warnings and suggestions, from
    /var/log/lynis-report.dat (`key=value` lines; `warning[]=ID|text|...` repeats)."""
    lines = report.splitlines()
    index = next((int(line.split("=", 1)[1]) for line in lines if line.startswith("hardening_index=")), None)
    if index is None:
        raise ValueError("no hardening_index= line: Lynis did not finish its audit")

    def ids(key: str) -> list[str]:
        return sorted({line.split("=", 1)[1].split("|")[0] for line in lines if line.startswith(key)})

    return {"hardening_index": index, "warnings": ids("warning[]="), "suggestions": ids("suggestion[]=")}


def ssh_audit_problems(report: dict[str, Any]) -> list[str]:
    """Every failure and warning in an `ssh-audit -j` report (empty when there is none)."""
    problems = []
    for level in ("critical", "warning"):
        for action, kinds in (report.get("recommendations", {}).get(level) or {}).items():
            for kind, entries in kinds.items():
                problems += [f"{level}: {action} {kind} {e.get('name')}" for e in entries]
    problems += [f"cve: {c.get('name')}" for c in report.get("cves") or []]
    return problems
