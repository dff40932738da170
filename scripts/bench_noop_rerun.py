#!/usr/bin/env python3
"""Benchmark: how long a no-op re-run of the site takes on the lab, per task, per setting.

    scripts/bench_noop_rerun.py [--runs N] [--fresh] [--output docs/benchmarks/noop-rerun.md]

Converges the site once (on a fresh lab with --fresh, which also times the first
converge), then times N no-op re-runs for each connection setting, interleaved so that
machine noise hits every setting alike:

  defaults   Ansible's defaults: linear strategy, no pipelining, no SSH multiplexing, facts
             gathered each play
  linear     this repository's ansible.cfg (pipelining, ControlPersist, smart gathering with
             a fact cache) with Ansible's own linear strategy instead of Mitogen's
  project    this repository's ansible.cfg as it is: the above with Mitogen's strategy
             (mitogen_linear, plugins/strategy)

Per setting it reports the median wall time, the tasks one host runs (ok + changed, from
the run's own stats, the same for every setting), seconds per task, and the re-run as a
share of the first converge. Prints Markdown; --output also writes it to a file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from toolkit.ansible_run import ROOT, run_playbook

INVENTORY = ROOT / "inventories" / "lab"
VAULT = ROOT / ".lab" / "vault-pass"


def settings() -> dict[str, dict[str, str]]:
    return {
        "defaults": {
            "ANSIBLE_STRATEGY": "linear",
            "ANSIBLE_PIPELINING": "False",
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPersist=no",
            "ANSIBLE_GATHERING": "implicit",
            "ANSIBLE_CACHE_PLUGIN": "memory",
            "ANSIBLE_FORKS": "5",
        },
        "linear": {"ANSIBLE_STRATEGY": "linear"},
        "project": {},
    }


def timed_run(env: dict[str, str]) -> tuple[float, int, dict[str, list[str]]]:
    """Wall seconds, the most tasks one host ran, and the tasks that changed per host."""
    began = time.monotonic()
    run = run_playbook(ROOT / "playbooks" / "site.yml", INVENTORY, "--vault-password-file", str(VAULT), env=env)
    took = time.monotonic() - began
    if run.rc != 0:
        raise SystemExit(f"site run failed (rc={run.rc}): {run.failures() or run.stderr[-2000:]}")
    per_host = [s.get("ok", 0) + s.get("changed", 0) for s in run.stats.values()]
    return took, max(per_host), run.changed_tasks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="no-op re-runs per setting (default 3)")
    parser.add_argument("--fresh", action="store_true", help="recreate the lab and time the first converge")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    lab = [sys.executable, str(ROOT / "scripts" / "lab")]
    if args.fresh:
        subprocess.run([*lab, "down"], check=True)
    subprocess.run([*lab, "up"], check=True, stdout=subprocess.DEVNULL)
    print("converging the site once ...", flush=True)
    first, tasks, _ = timed_run({})
    print(f"  first converge {first:.1f} s, {tasks} tasks on the busiest host", flush=True)
    runs: dict[str, list[float]] = {name: [] for name in settings()}
    # A setting whose re-run changes something is not measuring a no-op: it is reported with
    # what it changed, and not run again.
    broken: dict[str, dict[str, list[str]]] = {}
    for i in range(args.runs):
        for name, env in settings().items():
            if name in broken:
                continue
            took, _, changed = timed_run(env)
            if changed:
                broken[name] = changed
                print(f"  round {i + 1}/{args.runs} {name:9} changed something: {changed}", flush=True)
                continue
            runs[name].append(took)
            print(f"  round {i + 1}/{args.runs} {name:9} {took:6.1f} s", flush=True)
    hosts = len(subprocess.run([sys.executable, str(ROOT / "scripts" / "lab"), "status"],
                               capture_output=True, text=True, check=True).stdout.splitlines())  # fmt: skip
    lines = [
        "# No-op re-run of the site on the lab",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `scripts/bench_noop_rerun.py --runs {args.runs}"
        f"{' --fresh' if args.fresh else ''}` on {os.cpu_count()} cores ({platform.machine()}), "
        f"{hosts} lab hosts over SSH, {tasks} tasks per host. Settings interleaved round by round; medians.",
        "",
        f"First converge{'' if args.fresh else ' (lab not fresh: an incremental converge)'}: {first:.1f} s.",
        "",
        "| setting | re-run (s) | s per task | re-run / first converge | all runs (s) |",
        "|---|---|---|---|---|",
    ]
    for name, times in runs.items():
        if not times:
            continue
        med = statistics.median(times)
        lines.append(
            f"| {name} | {med:.1f} | {med / tasks:.2f} | {med / first:.2f} | {', '.join(f'{t:.1f}' for t in times)} |"
        )
    for name, changed in broken.items():
        listed = "; ".join(f"{host}: {', '.join(names)}" for host, names in sorted(changed.items())).replace("|", "\\|")
        lines.append(f"| {name} | not a no-op | | | changed: {listed} |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
