#!/usr/bin/env python3
"""Measure the lab's object storage: S3 PUT and GET throughput of 1 MiB objects through the
RADOS gateway (TLS), one client thread and several, interleaved round by round, and the
memory the Ceph daemons hold on the storage host.

    scripts/bench_s3.py [--objects 64] [--threads 1,4] [--rounds 3] [--quick]
                        [--output docs/benchmarks/object-storage.md]

With --output it also writes the raw figures (.json) and a chart (.png) beside the report.

Needs a converged lab (`make lab`). Objects go to a scratch prefix of the `models` bucket as
the `models` identity (from the lab's secrets) and are deleted afterwards (the bucket is
versioned: its lifecycle rule removes the noncurrent versions). The client runs on this
machine: the figures include TLS and the lab network, and share the 2 cores with the
cluster (3 OSDs on one container's files): they compare settings and runs on the same
machine, not with a real site's NVMe OSDs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from labkit import pki, s3, topology
from labkit.layout import INVENTORY
from toolkit import charts

MIB = 1024 * 1024
DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd", "radosgw")


def timed(threads: int, work: list, call) -> float:
    """Seconds for `call(item)` over every item of `work` on `threads` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(call, work))
    return time.perf_counter() - start


def memory(topo: topology.Topology) -> dict[str, int]:
    """Resident memory (KiB) of the Ceph daemons on the storage host, by program."""
    container = topo.container(s3.storage_host(topo))
    out = subprocess.run(
        ["docker", "exec", container, "ps", "-C", ",".join(DAEMONS), "-o", "comm=,rss="],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    totals: dict[str, int] = {}
    for line in out.splitlines():
        name, rss = line.split()
        totals[name] = totals.get(name, 0) + int(rss)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=64, help="objects per measurement (1 MiB each)")
    parser.add_argument("--threads", default="1,4", help="client threads to compare (comma-separated)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--quick", action="store_true", help="16 objects, one round")
    args = parser.parse_args()
    if args.quick:
        args.objects, args.rounds = 16, 1
    threads = [int(t) for t in args.threads.split(",")]

    topo = topology.load(INVENTORY / "topology.yml")
    with tempfile.TemporaryDirectory() as tmp:
        ca = pki.fetch_ca(topo, s3.storage_host(topo), Path(tmp) / "ca.crt")
        client = s3.client(topo, "models", ca, max_pool_connections=max(threads) * 2)
        idle = memory(topo)
        body = os.urandom(MIB)
        prefix = f"bench-{uuid.uuid4()}/"
        results: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for n in threads:
                keys = [f"{prefix}{round_}-{n}-{i}" for i in range(args.objects)]
                put = timed(n, keys, lambda k: client.put_object(Bucket="models", Key=k, Body=body))
                get = timed(n, keys, lambda k: client.get_object(Bucket="models", Key=k)["Body"].read())
                results.setdefault(("PUT", n), []).append(args.objects / put)
                results.setdefault(("GET", n), []).append(args.objects / get)
                print(f"round {round_ + 1}/{args.rounds}, {n} thread(s): PUT {args.objects / put:6.1f} MiB/s, "
                      f"GET {args.objects / get:6.1f} MiB/s", flush=True)  # fmt: skip
        loaded = memory(topo)
        for page in client.get_paginator("list_object_versions").paginate(Bucket="models", Prefix=prefix):
            for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
                client.delete_object(Bucket="models", Key=version["Key"], VersionId=version["VersionId"])

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Object storage on the lab: S3 throughput and memory",
        "",
        f"Measured {now} by `scripts/bench_s3.py --objects {args.objects} --threads {args.threads} "
        f"--rounds {args.rounds}` on {os.cpu_count()} cores ({platform.machine()}): the lab's Ceph (Debian 16.2, "
        "one monitor, one manager, 3 BlueStore OSDs on sparse files in one container, size 3 / min_size 2 over OSDs), "
        "the RADOS gateway over TLS, boto3 on the same machine. 1 MiB objects; medians of the rounds "
        "(interleaved: every setting in every round).",
        "",
        "| operation | client threads | MiB/s (= objects/s), median | all rounds |",
        "|---|---|---|---|",
    ]
    for (op, n), rates in sorted(results.items()):
        lines.append(f"| {op} | {n} | {statistics.median(rates):.1f} | {', '.join(f'{r:.1f}' for r in rates)} |")
    lines += [
        "",
        "Resident memory of the Ceph daemons on the storage host (KiB; `ps -o rss`), idle before the run and after it:",
        "",
        "| daemon | idle | after the run |",
        "|---|---|---|",
    ]
    for name in sorted(set(idle) | set(loaded)):
        lines.append(f"| {name} | {idle.get(name, 0)} | {loaded.get(name, 0)} |")
    lines.append(f"| all | {sum(idle.values())} | {sum(loaded.values())} |")
    if args.output:
        raw = {
            "measured": now,
            "objects": args.objects,
            "rounds": args.rounds,
            "mib_per_s": [
                {"operation": op, "threads": n, "rounds": rates} for (op, n), rates in sorted(results.items())
            ],
            "memory_kib": {"idle": idle, "after": loaded},
        }
        args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
        if chart(results, args.output.with_suffix(".png")):
            lines += ["", f"![S3 MiB/s by operation and client threads]({args.output.with_suffix('.png').name})"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


def chart(results: dict[tuple[str, int], list[float]], path: Path) -> bool:
    """MiB/s of PUT and GET by client threads (medians); False without matplotlib."""
    plt = charts.pyplot()
    if plt is None:
        return False
    threads = sorted({n for _, n in results})
    ops = sorted({op for op, _ in results}, reverse=True)  # PUT, GET
    fig, ax = plt.subplots(figsize=(6, 4))
    series = {f"{n} thread(s)": [statistics.median(results[(op, n)]) for op in ops] for n in threads}
    charts.bars(ax, ops, series, "MiB/s (1 MiB objects)")
    ax.set_title("Lab object storage through the RADOS gateway (TLS)", fontsize=10)
    ax.legend(fontsize=8)
    charts.save(fig, path)
    plt.close(fig)
    return True


if __name__ == "__main__":
    main()
