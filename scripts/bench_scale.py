#!/usr/bin/env python3
"""Benchmark: how a site run grows with the number of GPU nodes.

    scripts/bench_scale.py [--nodes 1,2,4,8,16] [--rounds 2] [--no-accelerated] [--quick]
                           [--kinds noop,check] [--append] [--instance 1]
                           [--output docs/benchmarks/scale.md]
    scripts/bench_scale.py --report-only [--findings FILE] [--output ...]
                           (the report again from the JSON, with a reader's findings in Markdown)

For each size N it builds a lab of its own from nothing: the lab's hosts that are not GPU
nodes (topology.yml: edge1, ops1) plus N GPU nodes gpu1..gpuN made like the lab's, on lab
instance 1 (its own network and container names, so the lab of `make lab` keeps running),
with an inventory of its own (inventories/bench-scale, the lab's group_vars) and a fact
cache of its own. On it, it times:

  first converge  playbooks/site.yml on the fresh hosts (the project's settings)
  no-op re-run    the same again, with nothing left to change
  check           --check --diff, with nothing left to change

the last two for --rounds rounds, the settings interleaved within each round: the
project's default path and the opt-in accelerated path (Mitogen, ANSIBLE_STRATEGY=
mitogen_linear, docs/development.md). Then it removes that lab and builds the next size.

Per run it keeps the wall time, the host-tasks run (the sum over hosts of Ansible's `ok`,
which counts changed tasks too; skipped ones beside it) and every task's and play's
duration from the `json` callback, so the report can say which plays and tasks grow
faster than the number of hosts (serial plays, run_once work, delegated loops).

Writes the raw figures as JSON after each size (so an interrupted run keeps what it
measured), then the Markdown report and a PNG chart (matplotlib, from requirements-bench.txt;
without it the chart is skipped with a note) beside the --output file. --quick: sizes
1, 2, 4, one round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from labkit import cli, engine, images, layout, topology, vault
from toolkit import charts
from toolkit.ansible_run import ROOT, SITE, playbook_command, run_command

INVENTORY = ROOT / "inventories" / "bench-scale"  # gitignored: written per size
FACTS = layout.CACHE / "bench-scale" / "facts"
GPU_GROUP = "gpu_nodes"
# GPU nodes get host numbers from here (the lab's own hosts sit below 100).
GPU_NUMBER_BASE = 100
SETTINGS = {
    "default": {},
    "accelerated": {"ANSIBLE_STRATEGY": "mitogen_linear"},
}


def sized_topology(nodes: int, instance: int) -> topology.Topology:
    """The lab's topology with its GPU nodes replaced by `nodes` fresh ones shaped like the first."""
    lab = topology.load(cli.TOPOLOGY, instance)
    gpus = [h for h in lab.hosts if GPU_GROUP in h.groups]
    if not gpus:
        raise SystemExit(f"{cli.TOPOLOGY}: no host in group {GPU_GROUP} to copy")
    base = lab.network.subnet.rsplit(".", 1)[0]
    others = tuple(h for h in lab.hosts if GPU_GROUP not in h.groups)
    made = tuple(
        dataclasses.replace(gpus[0], name=f"gpu{i}", address=f"{base}.{GPU_NUMBER_BASE + i}")
        for i in range(1, nodes + 1)
    )
    return dataclasses.replace(lab, hosts=others + made)


# systemd in each host container holds several inotify instances, and all of Docker's
# containers share the kernel's per-user limit (default 128): at 16 GPU nodes a host's systemd
# fails to start without a word. Measured: about 7 per lab host.
INOTIFY_PER_HOST = 8
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def check_inotify(hosts: int) -> None:
    """Refuse, saying how to fix it, when the kernel's inotify limit cannot hold `hosts` more hosts."""
    if not INOTIFY_LIMIT.exists():
        return
    limit = int(INOTIFY_LIMIT.read_text())
    running = len(subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True, check=False).stdout.split())
    needed = INOTIFY_PER_HOST * (hosts + running)
    if limit < needed:
        raise SystemExit(
            f"fs.inotify.max_user_instances is {limit}; {hosts} lab hosts beside {running} running containers "
            f"need about {needed} (systemd in each holds several). Raise it: "
            "sudo sysctl -w fs.inotify.max_user_instances=1024"
        )


def write_inventory(topo: topology.Topology) -> None:
    INVENTORY.mkdir(parents=True, exist_ok=True)
    group_vars = INVENTORY / "group_vars"
    if not group_vars.is_symlink():
        group_vars.symlink_to(Path("..") / "lab" / "group_vars")
    topology.write_inventory(topo, INVENTORY / "hosts.yml")


def fresh_lab(topo: topology.Topology, tag: str) -> None:
    """Remove the instance's hosts, forget their host keys and facts, start them again empty."""
    cli.remove_hosts(topo)
    for host in topo.hosts:
        subprocess.run(["ssh-keygen", "-R", host.address, "-f", str(cli.KNOWN_HOSTS)], capture_output=True, check=False)
    for cached in FACTS.glob("*"):
        cached.unlink()
    vault.prepare(topo, cli.start_hosts(topo, tag), vault.State(INVENTORY))


@dataclasses.dataclass
class Timed:
    kind: str  # first, noop, check
    setting: str
    seconds: float
    host_tasks: int
    skipped: int
    changed: dict[str, list[str]]
    tasks: dict[str, float]  # "play / task" -> seconds (summed over repeats)
    plays: dict[str, float]


def _seconds(duration: dict) -> float:
    if not duration.get("end"):
        return 0.0
    start = datetime.fromisoformat(duration["start"].replace("Z", "+00:00"))
    return (datetime.fromisoformat(duration["end"].replace("Z", "+00:00")) - start).total_seconds()


def durations(data: dict) -> tuple[dict[str, float], dict[str, float]]:
    """Per task ("play / task") and per play wall seconds from the json callback's document."""
    tasks: dict[str, float] = {}
    plays: dict[str, float] = {}
    for play in data.get("plays", []):
        pname = play["play"]["name"]
        plays[pname] = plays.get(pname, 0.0) + _seconds(play["play"].get("duration", {}))
        for task in play.get("tasks", []):
            key = f"{pname} / {task['task']['name']}"
            tasks[key] = tasks.get(key, 0.0) + _seconds(task["task"].get("duration", {}))
    return tasks, plays


def timed(kind: str, setting: str, *args: str) -> Timed:
    env = {
        **SETTINGS[setting],
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(FACTS),
        # Control sockets of their own: the previous size's hosts had these addresses too.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(Path.home() / ".ansible" / "cp-bench-scale"),
    }
    argv = playbook_command(SITE, INVENTORY, "--vault-password-file", str(layout.VAULT_PASS), *args)
    began = time.monotonic()
    run = run_command(argv, env=env, timeout=5400)
    took = time.monotonic() - began
    if run.rc != 0:
        raise SystemExit(f"{kind} ({setting}) failed, rc={run.rc}: {run.failures() or run.stderr[-3000:]}")
    tasks, plays = durations(run.data)
    return Timed(
        kind=kind,
        setting=setting,
        seconds=round(took, 1),
        host_tasks=sum(s.get("ok", 0) for s in run.stats.values()),
        skipped=sum(s.get("skipped", 0) for s in run.stats.values()),
        changed=run.changed_tasks() if kind != "first" else {},
        tasks={k: round(v, 2) for k, v in tasks.items()},
        plays={k: round(v, 2) for k, v in plays.items()},
    )


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


def measure(nodes: int, instance: int, tag: str, rounds: int, settings: list[str], kinds: list[str]) -> dict:
    topo = sized_topology(nodes, instance)
    write_inventory(topo)
    check_inotify(len(topo.hosts))
    fresh_lab(topo, tag)
    print(f"[{nodes:2} GPU nodes] {len(topo.hosts)} fresh hosts; first converge ...", flush=True)
    runs = [timed("first", "default")]
    print(f"[{nodes:2} GPU nodes] first converge {runs[0].seconds} s, {runs[0].host_tasks} host-tasks", flush=True)
    for i in range(rounds):
        for kind, args in (("noop", ()), ("check", ("--check", "--diff"))):
            if kind not in kinds:
                continue
            for setting in settings:
                run = timed(kind, setting, *args)
                runs.append(run)
                note = f", CHANGED {run.changed}" if run.changed else ""
                print(f"[{nodes:2} GPU nodes] round {i + 1} {kind:5} {setting:11} {run.seconds} s{note}", flush=True)
    return {
        "gpu_nodes": nodes,
        "hosts": len(topo.hosts),
        "load_average": load_average(),
        "runs": [dataclasses.asdict(r) for r in runs],
    }


# ---- the report: pure functions of the JSON document (tests/unit/test_bench_scale.py) ----


def medians(size: dict) -> dict[tuple[str, str], dict[str, float]]:
    """(kind, setting) -> median seconds, host-tasks, seconds per host-task, and every run's seconds."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in size["runs"]:
        groups.setdefault((run["kind"], run["setting"]), []).append(run)
    for key, runs in groups.items():
        secs = statistics.median(r["seconds"] for r in runs)
        tasks = statistics.median(r["host_tasks"] for r in runs)
        out[key] = {
            "seconds": secs,
            "host_tasks": tasks,
            "per_host_task": secs / tasks if tasks else 0.0,
            "all": [r["seconds"] for r in runs],
        }
    return out


def median_breakdown(size: dict, kind: str, what: str) -> dict[str, float]:
    """Per task or play ("tasks"/"plays") seconds of the default setting's `kind` runs, median over rounds."""
    runs = [r[what] for r in size["runs"] if r["kind"] == kind and r["setting"] == "default"]
    keys = {k for r in runs for k in r}
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


def growth(small: dict, large: dict, kind: str, what: str, top: int = 10) -> list[tuple[str, float, float, float]]:
    """The `top` tasks or plays that add the most seconds from the small size to the large one:
    (name, seconds small, seconds large, ratio)."""
    a, b = median_breakdown(small, kind, what), median_breakdown(large, kind, what)
    rows = [(k, a.get(k, 0.0), v, v / a[k] if a.get(k) else float("inf")) for k, v in b.items()]
    rows.sort(key=lambda r: r[2] - r[1], reverse=True)
    return rows[:top]


def report(doc: dict) -> str:
    sizes = sorted(doc["sizes"], key=lambda s: s["gpu_nodes"])
    lines = [
        "# How a site run grows with the number of GPU nodes",
        "",
        f"Measured {doc['measured']} by `{doc['command']}` on {doc['cores']} cores ({doc['machine']}); "
        f"each size a fresh lab of its own: the lab's edge and ops hosts plus N GPU nodes, all systemd "
        f"containers on this machine, reached over SSH. No-op re-runs and checks: {doc['rounds']} round(s), "
        f"settings interleaved; medians. `default` is the project's ansible.cfg (ansible-core's linear "
        f"strategy, pipelining, ControlPersist, fact cache); `accelerated` adds the opt-in Mitogen strategy.",
        "",
        "| GPU nodes | hosts | run | setting | seconds | host-tasks | s per host-task | all runs (s) | load avg |",
        "|---:|---:|---|---|---:|---:|---:|---|---:|",
    ]
    for size in sizes:
        for (kind, setting), m in sorted(medians(size).items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1])):
            lines.append(
                f"| {size['gpu_nodes']} | {size['hosts']} | {KIND_NAMES[kind]} | {setting} | {m['seconds']:.1f} "
                f"| {m['host_tasks']:.0f} | {m['per_host_task']:.3f} | {', '.join(f'{s:.1f}' for s in m['all'])} "
                f"| {size['load_average']} |"
            )
    changed = [
        (size["gpu_nodes"], r["kind"], r["setting"], r["changed"])
        for size in sizes
        for r in size["runs"]
        if r["changed"]
    ]
    if changed:
        lines += ["", "Runs that changed something (not a clean no-op or check):"]
        lines += [f"- {n} GPU nodes, {KIND_NAMES[k]} ({s}): {c}" for n, k, s, c in changed]
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        lines += ["", f"## Growth from {small['gpu_nodes']} to {large['gpu_nodes']} GPU nodes", ""]
        lines.append(
            f"Hosts {small['hosts']} -> {large['hosts']} (x{large['hosts'] / small['hosts']:.1f}); "
            f"GPU nodes x{large['gpu_nodes'] / small['gpu_nodes']:.0f}."
        )
        lines += [
            "",
            "| run | setting | seconds | growth | s per host-task | growth |",
            "|---|---|---:|---:|---:|---:|",
        ]
        ms, ml = medians(small), medians(large)
        for key in sorted(ml, key=lambda k: (KINDS.index(k[0]), k[1])):
            if key not in ms:
                continue
            a, b = ms[key], ml[key]
            lines.append(
                f"| {KIND_NAMES[key[0]]} | {key[1]} | {a['seconds']:.1f} -> {b['seconds']:.1f} "
                f"| x{b['seconds'] / a['seconds']:.2f} | {a['per_host_task']:.3f} -> {b['per_host_task']:.3f} "
                f"| x{b['per_host_task'] / a['per_host_task']:.2f} |"
            )
        for kind in KINDS:
            if not any(r["kind"] == kind for r in large["runs"]):
                continue
            lines += [
                "",
                f"Plays that add the most time to the {KIND_NAMES[kind]} (default setting):",
                "",
                f"| play | {small['gpu_nodes']} nodes (s) | {large['gpu_nodes']} nodes (s) | growth |",
                "|---|---:|---:|---:|",
            ]
            for name, a, b, ratio in growth(small, large, kind, "plays", top=6):
                lines.append(f"| {name.replace('|', '/')} | {a:.1f} | {b:.1f} | x{ratio:.1f} |")
    if doc.get("findings"):
        lines += ["", "## Findings", "", doc["findings"].strip()]
    if doc.get("chart"):
        lines += ["", f"![seconds per run against GPU nodes]({doc['chart']})"]
    lines += ["", "## Environment", "", f"```\n{doc['environment']}\n```", ""]
    return "\n".join(lines)


KINDS = ["first", "noop", "check"]
KIND_NAMES = {"first": "first converge", "noop": "no-op re-run", "check": "check --diff"}


def chart(doc: dict, path: Path) -> bool:
    """Seconds per run and seconds per host-task against GPU nodes; False without matplotlib."""
    plt = charts.pyplot()
    if plt is None:
        return False
    sizes = sorted(doc["sizes"], key=lambda s: s["gpu_nodes"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in KINDS:
        for setting in doc["settings"]:
            points = [(s["gpu_nodes"], medians(s).get((kind, setting))) for s in sizes]
            points = [(n, m) for n, m in points if m]
            if not points:
                continue
            style = "-o" if setting == "default" else "--s"
            label = f"{KIND_NAMES[kind]} ({setting})"
            left.plot([n for n, _ in points], [m["seconds"] for _, m in points], style, label=label)
            right.plot([n for n, _ in points], [m["per_host_task"] for _, m in points], style, label=label)
    for ax, title in ((left, "wall seconds per run"), (right, "seconds per host-task")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([s["gpu_nodes"] for s in sizes], [str(s["gpu_nodes"]) for s in sizes])
        ax.set_xlabel("GPU nodes (plus the edge and ops hosts)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"Site run against cluster size ({doc['cores']} cores, all hosts on one machine)", fontsize=10)
    charts.save(fig, path)
    plt.close(fig)
    return True


def environment() -> str:
    ansible = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=False
    )
    wanted = ("ansible-core==", "ansible==", "mitogen==")
    pkgs = [line for line in ansible.stdout.splitlines() if line.startswith(wanted)]
    mem = Path("/proc/meminfo").read_text().splitlines()[0] if Path("/proc/meminfo").exists() else ""
    return "\n".join([f"python {platform.python_version()}", *pkgs, mem.replace("  ", " ")])


def write(doc: dict, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    png = output.with_suffix(".png")
    doc["chart"] = png.name if chart(doc, png) else ""
    output.write_text(report(doc))
    output.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,4,8,16", help="GPU node counts (default 1,2,4,8,16)")
    parser.add_argument("--rounds", type=int, default=2, help="no-op and check rounds per size (default 2)")
    parser.add_argument("--no-accelerated", action="store_true", help="measure the default path only")
    parser.add_argument("--quick", action="store_true", help="sizes 1, 2, 4 and one round")
    parser.add_argument("--instance", type=int, default=1, help="lab instance for the measured labs (default 1)")
    parser.add_argument("--kinds", default="noop,check", help="re-runs to time after the first converge (default both)")
    parser.add_argument("--append", action="store_true", help="add these sizes to the JSON beside --output")
    parser.add_argument("--keep", action="store_true", help="leave the last size's lab running")
    parser.add_argument("--report-only", action="store_true", help="write the report again from the JSON")
    parser.add_argument("--findings", type=Path, help="with --report-only: Markdown to keep in the report as findings")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "scale.md")
    args = parser.parse_args()
    if args.report_only:
        doc = json.loads(args.output.with_suffix(".json").read_text())
        if args.findings:
            doc["findings"] = args.findings.read_text()
        write(doc, args.output)
        print(args.output.read_text())
        return 0
    if args.instance == topology.instance_number():
        raise SystemExit(f"--instance {args.instance} is the lab of `make lab` here; choose another")
    nodes = [1, 2, 4] if args.quick else [int(n) for n in args.nodes.split(",")]
    rounds = 1 if args.quick else args.rounds
    settings = ["default"] if args.no_accelerated else list(SETTINGS)
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - {"noop", "check"}:
        raise SystemExit(f"--kinds {args.kinds}: use noop and/or check")
    doc = {
        "measured": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "command": "scripts/bench_scale.py " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "rounds": rounds,
        "settings": settings,
        "environment": environment(),
        "sizes": [],
    }
    if args.append:  # an earlier run's sizes stay; the new ones are added (same machine, said in the report)
        earlier = json.loads(args.output.with_suffix(".json").read_text())
        doc["sizes"] = [s for s in earlier["sizes"] if s["gpu_nodes"] not in nodes]
        doc["measured"] = f"{earlier['measured']}, then {doc['measured']}"
        doc["command"] = f"{earlier['command']}; then {doc['command']}"
    engine.ensure_engine(layout.STATE)
    tag = images.ensure_image(cli.BASE_RECIPE)
    cli.build_test_double_images()
    FACTS.mkdir(parents=True, exist_ok=True)
    try:
        for n in nodes:
            doc["sizes"].append(measure(n, args.instance, tag, rounds, settings, kinds))
            write(doc, args.output)
    finally:
        if not args.keep:
            cli.remove_hosts(sized_topology(max(nodes), args.instance))
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
