#!/usr/bin/env python3
"""Benchmark: how long a no-op re-run of the site takes on the lab, per task, per setting.

    scripts/bench_noop_rerun.py [--runs N] [--fresh] [--quick] [--output docs/benchmarks/noop-rerun.md]

Converges the site once (on a fresh lab with --fresh, which also times the first
converge), then times N no-op re-runs for each connection setting, interleaved so that
machine noise hits every setting alike:

  defaults   Ansible's defaults: an ansible.cfg with only this repository's paths, so
             linear strategy, 5 forks, no pipelining, Ansible's own SSH multiplexing,
             facts gathered each play and not cached
  project      this repository's ansible.cfg as it is, the default path: ansible-core's
               linear strategy with pipelining, ControlPersist, smart gathering with a fact
               cache
  accelerated  the above with the opt-in Mitogen strategy (ANSIBLE_STRATEGY=mitogen_linear,
               plugins/strategy)

Per setting it reports the median wall time, seconds per task and the re-run as a share of
the first converge (made with the project's settings, the default path). "Tasks" are the
tasks the busiest host runs in the no-op re-run: its `ok` count from the run's own stats
(Ansible counts a changed task in `ok` too); skipped tasks are reported beside it, as they
cost the building of their variables and the templating of their condition too.

For scale it also times the floor of each setting: a playbook of 40 `ansible.builtin.ping`
tasks on the same hosts (the shape of the issue's reference measurement).
Prints Markdown; --output also writes it to a file, with the raw figures (.json) and a chart
(.png) beside it. --quick: one re-run per setting.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from toolkit import charts
from toolkit.ansible_run import ROOT, SITE, run_lab

# Settings of ansible.cfg that only say where this repository's parts are: the `defaults`
# setting keeps them and leaves everything else at Ansible's own defaults.
PATH_KEYS = {
    "defaults": ("roles_path", "library", "module_utils", "action_plugins", "filter_plugins", "lookup_plugins"),
    "inventory": ("ignore_patterns", "enable_plugins"),
}


def defaults_config() -> Path:
    """An ansible.cfg with only this repository's paths (absolute), for the `defaults` setting."""
    ours = configparser.ConfigParser(interpolation=None)
    ours.read(ROOT / "ansible.cfg")
    cfg = configparser.ConfigParser(interpolation=None)
    for section, keys in PATH_KEYS.items():
        cfg[section] = {}
        for key in keys:
            value = ours.get(section, key)
            cfg[section][key] = str(ROOT / value) if section == "defaults" else value
    path = Path(tempfile.mkdtemp(prefix="bench-defaults-")) / "ansible.cfg"
    with path.open("w") as f:
        cfg.write(f)
    return path


def settings(defaults_cfg: Path) -> dict[str, dict[str, str]]:
    return {
        # Ansible as installed: linear strategy, 5 forks, no pipelining, its own SSH
        # multiplexing (ControlPersist=60s), facts gathered every play, no fact cache.
        "defaults": {"ANSIBLE_CONFIG": str(defaults_cfg)},
        "project": {},
        "accelerated": {"ANSIBLE_STRATEGY": "mitogen_linear"},
    }


FLOOR_TASKS = 40
FLOOR_PLAYBOOK = f"""- name: Floor, {FLOOR_TASKS} no-op tasks
  hosts: all
  gather_facts: false
  tasks:
""" + "".join(f"    - name: No-op {i}\n      ansible.builtin.ping:\n" for i in range(FLOOR_TASKS))


def timed_run(env: dict[str, str], playbook: Path = SITE):
    """Wall seconds, (ok, skipped) of the host that ran the most tasks, the tasks that changed."""
    began = time.monotonic()
    run = run_lab(playbook=playbook, env=env)
    took = time.monotonic() - began
    if run.rc != 0:
        raise SystemExit(f"run of {playbook.name} failed (rc={run.rc}): {run.failures() or run.stderr[-2000:]}")
    busiest = max(run.stats.values(), key=lambda s: s.get("ok", 0))
    return took, (busiest.get("ok", 0), busiest.get("skipped", 0)), run.changed_tasks()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="no-op re-runs per setting (default 3)")
    parser.add_argument("--fresh", action="store_true", help="recreate the lab and time the first converge")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--quick", action="store_true", help="one re-run per setting")
    args = parser.parse_args()
    if args.quick:
        args.runs = 1
    lab = [sys.executable, str(ROOT / "scripts" / "lab")]
    if args.fresh:
        subprocess.run([*lab, "down"], check=True)
    subprocess.run([*lab, "up"], check=True, stdout=subprocess.DEVNULL)
    print("converging the site once ...", flush=True)
    first, (first_tasks, _), _ = timed_run({})
    print(f"  first converge {first:.1f} s, {first_tasks} tasks on the busiest host", flush=True)
    floor_book = Path(tempfile.mkdtemp(prefix="bench-floor-")) / "floor.yml"
    floor_book.write_text(FLOOR_PLAYBOOK)
    setting_envs = settings(defaults_config())
    runs: dict[str, list[float]] = {name: [] for name in setting_envs}
    floors: dict[str, list[float]] = {name: [] for name in setting_envs}
    tasks, skipped = 0, 0
    # A setting whose re-run changes something is not measuring a no-op: it is reported with
    # what it changed, and not run again.
    broken: dict[str, dict[str, list[str]]] = {}
    for i in range(args.runs):
        for name, env in setting_envs.items():
            if name in broken:
                continue
            took, (tasks, skipped), changed = timed_run(env)
            if changed:
                broken[name] = changed
                print(f"  round {i + 1}/{args.runs} {name:11} changed something: {changed}", flush=True)
                continue
            runs[name].append(took)
            floor, _, _ = timed_run(env, floor_book)
            floors[name].append(floor)
            print(f"  round {i + 1}/{args.runs} {name:11} {took:6.1f} s  (floor {floor:5.1f} s)", flush=True)
    hosts = len(subprocess.run([sys.executable, str(ROOT / "scripts" / "lab"), "status"],
                               capture_output=True, text=True, check=True).stdout.splitlines())  # fmt: skip
    lines = [
        "# No-op re-run of the site on the lab",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `scripts/bench_noop_rerun.py --runs {args.runs}"
        f"{' --fresh' if args.fresh else ''}` on {os.cpu_count()} cores ({platform.machine()}), "
        f"{hosts} lab hosts over SSH. Settings interleaved round by round; medians.",
        "",
        f"First converge{'' if args.fresh else ' (lab not fresh: an incremental converge)'}: {first:.1f} s, "
        f"{first_tasks} tasks on the busiest host.",
        f"No-op re-run: {tasks} tasks on the busiest host (its `ok` count), and {skipped} skipped.",
        f"Floor: {FLOOR_TASKS} `ansible.builtin.ping` tasks on the same hosts.",
        "",
        "| setting | re-run (s) | s per task | s per task, skipped counted | re-run / first converge "
        "| floor s per task | all runs (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, times in runs.items():
        if not times:
            continue
        med = statistics.median(times)
        floor = statistics.median(floors[name]) / FLOOR_TASKS
        lines.append(
            f"| {name} | {med:.1f} | {med / tasks:.2f} | {med / (tasks + skipped):.2f} | {med / first:.2f} "
            f"| {floor:.2f} | {', '.join(f'{t:.1f}' for t in times)} |"
        )
    for name, changed in broken.items():
        listed = "; ".join(f"{host}: {', '.join(names)}" for host, names in sorted(changed.items())).replace("|", "\\|")
        lines.append(f"| {name} | not a no-op | | | changed: {listed} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        raw = {"first_converge_s": first, "first_tasks": first_tasks, "tasks": tasks, "skipped": skipped,
               "floor_tasks": FLOOR_TASKS, "reruns_s": runs, "floors_s": floors, "not_noop": broken}  # fmt: skip
        args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
        if chart(runs, first, args.output.with_suffix(".png")):
            lines += ["", f"![no-op re-run per setting]({args.output.with_suffix('.png').name})"]
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.output:
        args.output.write_text(report)
    return 0


def chart(runs: dict[str, list[float]], first: float, path: Path) -> bool:
    """Median re-run seconds per setting against the first converge and issue 18's 0.3 of it."""
    plt = charts.pyplot()
    if plt is None:
        return False
    names = [name for name, times in runs.items() if times]
    fig, ax = plt.subplots(figsize=(6, 4))
    charts.bars(ax, names, {"no-op re-run (median)": [statistics.median(runs[n]) for n in names]}, "seconds")
    ax.axhline(0.3 * first, color="tab:red", linestyle="--", label=f"0.3 of the first converge ({first:.0f} s)")
    ax.set_title("No-op re-run of the site on the lab", fontsize=10)
    ax.legend(fontsize=8)
    charts.save(fig, path)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
