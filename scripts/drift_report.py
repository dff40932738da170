#!/usr/bin/env python3
"""Show drift: what `site.yml` would change on each host, without changing anything.

    scripts/drift_report.py -i inventories/<site> [--limit HOSTS] [--tags ROLES] [--json FILE]
                            [-- extra ansible-playbook arguments, e.g. --vault-password-file F]

Runs the site (or --playbook) in check mode with diffs and prints, per host, every task that
would change, with the role it belongs to and its diff. The fix for a line is then
`ansible-playbook playbooks/site.yml -i <inventory> --tags <role> --limit <host>`.

Exit status: 0 no drift, 2 drift found, 1 the check itself failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit.ansible_run import ROOT, PlaybookRun, run_playbook


def drift(run: PlaybookRun) -> dict[str, list[dict]]:
    """host -> [{role, task, diff}] for every task that would change."""
    out: dict[str, list[dict]] = {}
    for play in run.data.get("plays", []):
        for task in play.get("tasks", []):
            name = task["task"]["name"]
            role, _, short = name.partition(" : ") if " : " in name else ("", "", name)
            for host, res in task.get("hosts", {}).items():
                if not res.get("changed"):
                    continue
                diffs = res.get("diff") or [r.get("diff") for r in res.get("results", []) if r.get("changed")]
                out.setdefault(host, []).append({"role": role, "task": short, "diff": _render_diffs(diffs)})
    return out


def _render_diffs(diffs: object) -> str:
    items = diffs if isinstance(diffs, list) else [diffs]
    lines: list[str] = []
    for d in items:
        if not isinstance(d, dict):
            continue
        if d.get("prepared"):
            lines.append(str(d["prepared"]).rstrip())
        elif "before" in d or "after" in d:
            before, after = str(d.get("before", "")), str(d.get("after", ""))
            old, new = set(before.splitlines()), set(after.splitlines())
            lines += [f"-{line}" for line in before.splitlines() if line not in new]
            lines += [f"+{line}" for line in after.splitlines() if line not in old]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--inventory", required=True, help="inventory directory or file")
    parser.add_argument("--playbook", default=str(ROOT / "playbooks" / "site.yml"))
    parser.add_argument("--limit", help="hosts or groups to check")
    parser.add_argument("--tags", help="roles to check (comma separated)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    parser.add_argument("extra", nargs="*", help="more ansible-playbook arguments (after --)")
    args = parser.parse_args()
    extra = ["--check", "--diff", *args.extra]
    if args.limit:
        extra += ["--limit", args.limit]
    if args.tags:
        extra += ["--tags", args.tags]
    print(f"checking {args.playbook} against {args.inventory} (check mode, nothing changes) ...", flush=True)
    run = run_playbook(args.playbook, args.inventory, *extra)
    if not run.data or run.rc not in (0, 2) or run.failures():
        print(f"the check failed (rc={run.rc}):", file=sys.stderr)
        for host, msgs in run.failures().items():
            for msg in msgs:
                print(f"  {host}: {msg}", file=sys.stderr)
        print(run.stderr[-3000:], file=sys.stderr)
        return 1
    found = drift(run)
    hosts = sorted(run.stats)
    if args.json:
        args.json.write_text(json.dumps({"hosts": hosts, "drift": found}, indent=2) + "\n")
    if not found:
        print(f"no drift on {len(hosts)} host(s): {', '.join(hosts)}")
        return 0
    for host in sorted(found):
        print(f"\n{host}: {len(found[host])} change(s)")
        for item in found[host]:
            print(f"  [{item['role'] or 'play'}] {item['task']}")
            for line in item["diff"].splitlines()[:40]:
                print(f"      {line}")
    roles = sorted({i["role"] for items in found.values() for i in items if i["role"]})
    print(f"\ndrift on {len(found)} of {len(hosts)} host(s). Repair with:")
    limit = ",".join(sorted(found))
    print(f"  ansible-playbook playbooks/site.yml -i {args.inventory} --tags {','.join(roles)} --limit {limit}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
