"""The NCCL burn-in: all_reduce_perf's output (NVIDIA nccl-tests) read into data, judged against
a bus-bandwidth threshold, and written as Prometheus text for node_exporter's textfile
collector. Used by the `nvidia_nccl_burn_in` module.

Nothing here imports Ansible and nothing runs a program: `parse` takes the text the program
printed, so tests feed it recorded outputs (tests/fixtures/nccl-tests/).

all_reduce_perf prints, in nccl-tests 2.x (src/util.cu):

    # nccl-tests version 2.19.6 nccl-headers=22803 nccl-library=22803
    # nThread 1 nGpus 8 minBytes 268435456 maxBytes 4294967296 step: 2(factor) warmup iters: 5 ...
    #  Rank  0 Group  0 Pid  4242 on node1 device  0 [0000:18:00] NVIDIA H100 80GB HBM3
    #       size         count      type   redop    root     time   algbw   busbw  #wrong     time ...
       268435456      67108864     float     sum      -1   1402.1  191.45  335.04       0   1398.7 ...
    # Out of bounds values : 0 OK
    # Avg bus bandwidth    : 351.2
    # Collective test concluded: all_reduce_perf

Older releases print the same lines without the leading '#' and without the Group and root
columns; both read.
"""

from __future__ import annotations

import re
from typing import Any

# busbw = algbw * 2 (n - 1) / n for an all-reduce (nccl-tests doc/PERFORMANCE.md): on one GPU
# nothing crosses a link and the bus bandwidth is 0 by definition.
ONE_GPU_REASON = "one GPU: an all-reduce on one GPU moves no data between GPUs, so its bus bandwidth is 0 by definition"

_CONFIG = re.compile(r"nThread\s+(\d+)\s+nGpus\s+(\d+)\s+minBytes\s+(\d+)\s+maxBytes\s+(\d+)")
_VERSION = re.compile(r"nccl-tests version (\S+)(?: \([0-9a-f]+\))?\s+nccl-headers=(\d+)\s+nccl-library=(\d+)")
_DEVICE = re.compile(
    r"Rank\s+(\d+)\s+(?:Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device\s+(\d+)\s+\[([^\]]*)\]\s+(.+?)\s*$"
)
_NUMBER = r"[0-9.]+(?:e[+-]?\d+)?"
# #wrong is an integer (%6g of a count); older releases printed an error magnitude (0e+00).
_HALF = rf"({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER}|N/A)"
_ROW = re.compile(rf"^\s*(\d+)\s+(\d+)\s+(\w+)\s+(\w+)\s+(?:(-?\d+)\s+)?{_HALF}\s+{_HALF}(?:\s|$)")
_OUT_OF_BOUNDS = re.compile(r"Out of bounds values\s*:\s*(\d+)")
_AVG_BUSBW = re.compile(rf"Avg bus bandwidth\s*:\s*({_NUMBER}|nan|inf)", re.IGNORECASE)
# What the program prints when it stops on an error (NCCLCHECK/CUDACHECK/TESTCHECK in
# src/common.h, the GPU count check in src/util.cu) and NCCL's own warnings.
_ERROR = re.compile(r"failure|Invalid number of GPUs|NCCL WARN|out of memory|Test timeout", re.IGNORECASE)


def _half(groups: tuple[str, ...]) -> dict[str, Any]:
    time_us, algbw, busbw, wrong = groups
    return {
        "time_us": float(time_us),
        "algbw_gbps": float(algbw),
        "busbw_gbps": float(busbw),
        "wrong": None if wrong == "N/A" else int(float(wrong)),
    }


def parse(text: str) -> dict[str, Any]:
    """all_reduce_perf's output as data: configuration, devices, one row per size, the footer,
    and the lines that say why it stopped early (if it did)."""
    parsed: dict[str, Any] = {
        "nccl_tests_version": None,
        "nccl_version": None,
        "threads": None,
        "gpus_per_thread": None,
        "min_bytes": None,
        "max_bytes": None,
        "devices": [],
        "rows": [],
        "out_of_bounds": None,
        "avg_busbw_gbps": None,
        "concluded": False,
        "errors": [],
    }
    for line in text.splitlines():
        if match := _ROW.match(line):
            size, count, dtype, redop, root = match.groups()[:5]
            parsed["rows"].append(
                {
                    "size_bytes": int(size),
                    "count": int(count),
                    "type": dtype,
                    "redop": redop,
                    "root": None if root is None else int(root),
                    "out_of_place": _half(match.groups()[5:9]),
                    "in_place": _half(match.groups()[9:13]),
                }
            )
        elif match := _VERSION.search(line):
            parsed["nccl_tests_version"], parsed["nccl_version"] = match.group(1), int(match.group(3))
        elif match := _CONFIG.search(line):
            threads, gpus, low, high = map(int, match.groups())
            parsed.update(threads=threads, gpus_per_thread=gpus, min_bytes=low, max_bytes=high)
        elif match := _DEVICE.search(line):
            rank, host, device, bus, model = match.groups()
            parsed["devices"].append(
                {"rank": int(rank), "host": host, "device": int(device), "pci": bus, "model": model}
            )
        elif match := _OUT_OF_BOUNDS.search(line):
            parsed["out_of_bounds"] = int(match.group(1))
        elif match := _AVG_BUSBW.search(line):
            parsed["avg_busbw_gbps"] = float(match.group(1))
        elif "Collective test concluded" in line:
            parsed["concluded"] = True
        elif _ERROR.search(line):
            parsed["errors"].append(line.strip())
    return parsed


def threshold_for(models: list[str], thresholds: dict[str, float]) -> tuple[str, float] | None:
    """The bus-bandwidth threshold for these GPU models: a key equal to a model name, else the
    longest key found in one (case-insensitive: 'H100' fits 'NVIDIA H100 80GB HBM3'); with
    several models on one node, the lowest of their thresholds. None where no key fits."""
    found: list[tuple[str, float]] = []
    for model in models:
        fitting = [key for key in thresholds if key.lower() == model.lower()] or sorted(
            (key for key in thresholds if key.lower() in model.lower()), key=len, reverse=True
        )
        if fitting:
            found.append((fitting[0], float(thresholds[fitting[0]])))
    return min(found, key=lambda item: item[1]) if found else None


def judge(
    parsed: dict[str, Any],
    gpus: int,
    thresholds: dict[str, float],
    models: list[str] | None = None,
    returncode: int = 0,
) -> dict[str, Any]:
    """The burn-in's result: passed or failed, the problems, and the bandwidth figures. The
    figure compared with the threshold is the bus bandwidth at the largest size, where the
    fabric is saturated (smaller sizes measure latency), the lower of out-of-place and
    in-place: both must reach it. (On one GPU NCCL skips an in-place all-reduce, and its
    algorithm bandwidth reads as absurdly high: the out-of-place one is reported there.)"""
    problems: list[str] = []
    rows = parsed["rows"]
    ranks = len(parsed["devices"]) or (parsed["threads"] or 0) * (parsed["gpus_per_thread"] or 0)
    names = sorted({d["model"] for d in parsed["devices"]}) or list(models or [])
    # Older releases print no "concluded" line; their footer ends a finished run too.
    finished = parsed["concluded"] or parsed["avg_busbw_gbps"] is not None
    if returncode or not finished or not rows:
        why = "; ".join(parsed["errors"][-3:]) or "no error line printed"
        measured = f"exit status {returncode}, {len(rows)} size(s) measured"
        problems.append(f"all_reduce_perf did not finish ({measured}): {why}")
    if ranks and ranks != gpus:
        problems.append(f"all_reduce_perf ran on {ranks} GPU(s), the node has {gpus}")
    for row in rows:
        wrong = sum(half["wrong"] or 0 for half in (row["out_of_place"], row["in_place"]))
        if wrong:
            problems.append(f"{wrong} wrong value(s) at {human_bytes(row['size_bytes'])} (data corrupted on the way)")
    if parsed["out_of_bounds"]:
        problems.append(f"{parsed['out_of_bounds']} out-of-bounds value(s) (data corrupted on the way)")

    bandwidth: dict[str, Any] = {
        "busbw_gbps": None,
        "algbw_gbps": None,
        "size_bytes": None,
        "avg_busbw_gbps": parsed["avg_busbw_gbps"],
        "threshold_gbps": None,
        "threshold_key": None,
        "checked": False,
        "reason": "",
    }
    if rows:
        largest = max(rows, key=lambda row: row["size_bytes"])
        # min() keeps the first of equals: out-of-place where both are 0 (one GPU).
        worst = min((largest["out_of_place"], largest["in_place"]), key=lambda half: half["busbw_gbps"])
        bandwidth.update(busbw_gbps=worst["busbw_gbps"], algbw_gbps=worst["algbw_gbps"])
        bandwidth["size_bytes"] = largest["size_bytes"]
    threshold = threshold_for(names, thresholds)
    if threshold:
        bandwidth["threshold_key"], bandwidth["threshold_gbps"] = threshold
    if gpus < 2:
        bandwidth["reason"] = ONE_GPU_REASON
    elif threshold is None:
        known = ", ".join(sorted(thresholds)) or "none"
        model = ", ".join(names) or "this GPU model"
        bandwidth["reason"] = f"no bus-bandwidth threshold for {model} (thresholds: {known})"
    elif bandwidth["busbw_gbps"] is None:
        bandwidth["reason"] = "nothing was measured"
    else:
        bandwidth["checked"] = True
        if bandwidth["busbw_gbps"] < threshold[1]:
            problems.append(
                f"bus bandwidth {bandwidth['busbw_gbps']:g} GB/s at {human_bytes(bandwidth['size_bytes'])} is below "
                f"the {threshold[1]:g} GB/s expected of {threshold[0]} over {gpus} GPUs"
            )
    return {
        "status": "failed" if problems else "passed",
        "problems": problems,
        "gpus": gpus,
        "ranks": ranks,
        "models": names,
        "bandwidth": bandwidth,
        "sizes": [
            {
                "size_bytes": row["size_bytes"],
                "busbw_gbps": row["out_of_place"]["busbw_gbps"],
                "algbw_gbps": row["out_of_place"]["algbw_gbps"],
                "time_us": row["out_of_place"]["time_us"],
                "in_place_busbw_gbps": row["in_place"]["busbw_gbps"],
                "wrong": sum(half["wrong"] or 0 for half in (row["out_of_place"], row["in_place"])),
            }
            for row in rows
        ],
        "nccl_tests_version": parsed["nccl_tests_version"],
        "nccl_version": parsed["nccl_version"],
    }


def skipped(reason: str, gpus: int) -> dict[str, Any]:
    """The result of a burn-in that could not run: it says why, and is never a pass."""
    return {"status": "skipped", "reason": reason, "problems": [], "gpus": gpus}


def human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def summary(result: dict[str, Any]) -> str:
    """One paragraph for the operator: the verdict, the figures, what was not checked."""
    if result["status"] == "skipped":
        return f"NCCL burn-in skipped: {result['reason']}"
    bw = result["bandwidth"]
    lines = [
        f"NCCL burn-in {result['status']}: all-reduce over {result['ranks']} GPU(s) "
        f"({', '.join(result['models']) or 'model unknown'}), nccl-tests {result['nccl_tests_version']}, "
        f"NCCL {result['nccl_version']}"
    ]
    if bw["busbw_gbps"] is not None:
        lines.append(
            f"bus bandwidth {bw['busbw_gbps']:g} GB/s, algorithm bandwidth {bw['algbw_gbps']:g} GB/s "
            f"at {human_bytes(bw['size_bytes'])}"
        )
    if bw["checked"]:
        lines.append(f"threshold {bw['threshold_gbps']:g} GB/s ({bw['threshold_key']})")
    else:
        lines.append(f"bandwidth not checked: {bw['reason']}")
    lines += [f"problem: {p}" for p in result["problems"]]
    return "\n".join(lines)


def _labels(labels: dict[str, Any]) -> str:
    def escape(value: Any) -> str:
        return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items())) + "}" if labels else ""


def prometheus(result: dict[str, Any], timestamp: float) -> str:
    """The result as node_exporter textfile metrics (gpu_validate_burn_in_*)."""
    metrics: list[tuple[str, str, dict[str, Any], float]] = []

    def add(name: str, help_text: str, value: float, **labels: Any) -> None:
        metrics.append((f"gpu_validate_burn_in_{name}", help_text, labels, value))

    for status in ("passed", "failed", "skipped"):
        add("status", "Result of the last NCCL all-reduce burn-in (1 for the state it is in).",
            int(result["status"] == status), status=status)  # fmt: skip
    add("last_run_timestamp_seconds", "When the last NCCL burn-in ended or was skipped.", timestamp)
    add("gpus", "GPUs of the node the burn-in ran over.", result["gpus"])
    bw = result.get("bandwidth")
    if bw and bw["busbw_gbps"] is not None:
        model = ", ".join(result["models"])
        add("bus_bandwidth_gbps", "All-reduce bus bandwidth at the largest size (GB/s).", bw["busbw_gbps"],
            model=model, size_bytes=bw["size_bytes"])  # fmt: skip
        add("algorithm_bandwidth_gbps", "All-reduce algorithm bandwidth at the largest size (GB/s).",
            bw["algbw_gbps"], model=model, size_bytes=bw["size_bytes"])  # fmt: skip
        add("bus_bandwidth_checked", "1 if the bus bandwidth was compared with a threshold.", int(bw["checked"]))
        if bw["threshold_gbps"] is not None:
            add("bus_bandwidth_threshold_gbps", "Bus bandwidth the burn-in requires (GB/s).", bw["threshold_gbps"],
                model=model)  # fmt: skip
        add("wrong_values", "Wrong values the all-reduce produced, all sizes.",
            sum(size["wrong"] for size in result["sizes"]))  # fmt: skip
    lines: list[str] = []
    described: set[str] = set()
    for name, help_text, labels, value in metrics:
        if name not in described:
            described.add(name)
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines.append(f"{name}{_labels(labels)} {value}")  # str(): a float's shortest exact form
    return "\n".join(lines) + "\n"
