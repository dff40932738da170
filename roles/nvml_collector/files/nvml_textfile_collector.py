#!/usr/bin/env python3
"""GPU metrics for node_exporter's textfile collector, read through NVML (nvidia-ml-py).

For hosts where NVIDIA's dcgm-exporter is not wanted: one run reads every GPU once and
writes a Prometheus text file that node_exporter serves. Metric names, units and the main
labels (`gpu`, `UUID`, `device`, `modelName`, `pci_bus_id`) are dcgm-exporter's, so the
alert rules and dashboards work with either source.

XID errors are NVML *events*, which a periodic snapshot cannot see; they are read from the
kernel log instead (`NVRM: Xid (PCI:0000:3b:00): 79, ...` lines of the current boot), and
reported as the last XID per GPU (DCGM_FI_DEV_XID_ERRORS, as dcgm-exporter does) and as a
count per GPU and XID since boot (nvml_xid_errors_since_boot).

The file is written to a temporary name in the same directory and renamed over the old
one, so node_exporter never reads half a file. Runs with Python 3.10+ and the standard
library; only `pynvml` (from the nvidia-ml-py package) is needed.

Usage: nvml_textfile_collector.py [--output FILE] [--xid-source auto|journal|dmesg|none|FILE]
Exit status: 0 when NVML answered (failed queries are counted in nvml_collector_read_errors),
1 when NVML could not be used (the file then says so: nvml_collector_up 0), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = "/var/lib/prometheus/node-exporter/nvml.prom"
MIB = 1024 * 1024

# (name, help, type) of every metric written. dcgm-exporter's names and units (MiB, W, mJ,
# MHz, degrees C, percent); nvml_* names are this collector's own.
METRICS: dict[str, tuple[str, str]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("GPU utilization (in %).", "gauge"),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("Memory utilization (in %).", "gauge"),
    "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", "gauge"),
    "DCGM_FI_DEV_MEMORY_TEMP": ("Memory temperature (in C).", "gauge"),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", "gauge"),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("Total energy consumption since boot (in mJ).", "counter"),
    "DCGM_FI_DEV_SM_CLOCK": ("SM clock frequency (in MHz).", "gauge"),
    "DCGM_FI_DEV_MEM_CLOCK": ("Memory clock frequency (in MHz).", "gauge"),
    "DCGM_FI_DEV_FB_FREE": ("Frame buffer memory free (in MiB).", "gauge"),
    "DCGM_FI_DEV_FB_USED": ("Frame buffer memory used (in MiB).", "gauge"),
    "DCGM_FI_DEV_FB_RESERVED": ("Frame buffer memory reserved (in MiB).", "gauge"),
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": ("Total number of PCIe retries.", "counter"),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("Total single-bit (correctable) ECC errors since driver load.", "counter"),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("Total double-bit (uncorrectable) ECC errors since driver load.", "counter"),
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": ("Total single-bit (correctable) ECC errors, lifetime.", "counter"),
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": ("Total double-bit (uncorrectable) ECC errors, lifetime.", "counter"),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("Number of remapped rows for correctable errors.", "counter"),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("Number of remapped rows for uncorrectable errors.", "counter"),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("Whether a row remapping is pending (a GPU reset applies it).", "gauge"),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("Whether remapping of rows has failed.", "gauge"),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("Current clock event (throttle) reasons, NVML bit mask.", "gauge"),
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL": ("NVLink flow-control CRC errors, all links.", "counter"),
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL": ("NVLink replay errors, all links.", "counter"),
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL": ("NVLink recovery errors, all links.", "counter"),
    "DCGM_FI_DEV_XID_ERRORS": ("Value of the last XID error encountered (0: none this boot).", "gauge"),
    "nvml_xid_errors_since_boot": ("XID errors in the kernel log of this boot, by GPU and XID.", "gauge"),
    "nvml_gpu_info": ("One per GPU: driver version and identity as labels.", "gauge"),
    "nvml_collector_up": ("1 when NVML was initialised and every GPU enumerated.", "gauge"),
    "nvml_collector_gpus": ("Number of GPUs NVML reports.", "gauge"),
    "nvml_collector_read_errors": ("NVML queries that failed with an error other than Not Supported.", "gauge"),
    "nvml_collector_xid_log_readable": ("1 when the kernel log could be read for XID errors.", "gauge"),
    "nvml_collector_duration_seconds": ("Time this run took.", "gauge"),
    "nvml_collector_last_run_timestamp_seconds": ("When this file was written (Unix time).", "gauge"),
}

# `NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.`
# (older drivers print `NVRM: Xid (0000:3b:00): 13, ...`).
XID_RE = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?\): (\d+)")


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Collection:
    samples: list[Sample] = field(default_factory=list)
    read_errors: int = 0
    up: bool = True

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        if name not in METRICS:
            raise KeyError(f"metric {name} is not declared in METRICS")
        self.samples.append(Sample(name, labels, float(value)))


def bus_key(domain: str, bus: str, device: str) -> tuple[int, int, int]:
    """A PCI address as numbers, so `00000000:3B:00.0` (NVML) equals `0000:3b:00` (kernel log)."""
    return int(domain, 16), int(bus, 16), int(device, 16)


def parse_xids(lines: Iterable[str]) -> dict[tuple[int, int, int], list[int]]:
    """XID numbers per PCI address, in log order."""
    found: dict[tuple[int, int, int], list[int]] = {}
    for line in lines:
        m = XID_RE.search(line)
        if m:
            found.setdefault(bus_key(m.group(1), m.group(2), m.group(3)), []).append(int(m.group(4)))
    return found


def read_kernel_log(source: str) -> list[str] | None:
    """The current boot's kernel messages that mention an XID; None when unreadable."""
    if source == "none":
        return None
    if source not in ("auto", "journal", "dmesg"):
        try:
            return Path(source).read_text(errors="replace").splitlines()
        except OSError:
            return None
    commands: list[list[str]] = []
    if source in ("auto", "journal") and shutil.which("journalctl"):
        commands.append(["journalctl", "-k", "-b", "0", "-o", "cat", "--no-pager", "--grep", "NVRM: Xid"])
    if source in ("auto", "dmesg") and shutil.which("dmesg"):
        commands.append(["dmesg", "--notime"])
    for argv in commands:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        # journalctl --grep exits 1 when nothing matched: that is a readable, empty log.
        if proc.returncode == 0 or (argv[0] == "journalctl" and proc.returncode == 1 and not proc.stderr.strip()):
            return [line for line in proc.stdout.splitlines() if "Xid" in line]
    return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuReader:
    """Reads one GPU through an NVML module (pynvml, or a fake with the same API in tests)."""

    def __init__(self, nvml: Any, out: Collection) -> None:
        self.nvml = nvml
        self.out = out

    def query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args); None when the GPU does not support it (or it failed: then counted)."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as err:
            n = self.nvml
            unsupported = (n.NVML_ERROR_NOT_SUPPORTED, getattr(n, "NVML_ERROR_FUNCTION_NOT_FOUND", 13))
            if getattr(err, "value", None) not in unsupported:
                self.out.read_errors += 1
            return None

    def read(self, index: int, driver: str) -> tuple[int, int, int] | None:
        n = self.nvml
        handle = self.query(n.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            self.out.up = False
            return None
        uuid = _text(self.query(n.nvmlDeviceGetUUID, handle) or "")
        model = _text(self.query(n.nvmlDeviceGetName, handle) or "")
        pci = self.query(n.nvmlDeviceGetPciInfo, handle)
        bus_id = _text(getattr(pci, "busId", "")) if pci is not None else ""
        minor = self.query(n.nvmlDeviceGetMinorNumber, handle)
        labels = {
            "gpu": str(index),
            "UUID": uuid,
            "device": f"nvidia{minor if minor is not None else index}",
            "modelName": model,
            "pci_bus_id": bus_id,
        }
        add = self.out.add
        add("nvml_gpu_info", {**labels, "driver_version": driver}, 1)

        util = self.query(n.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            add("DCGM_FI_DEV_GPU_UTIL", labels, util.gpu)
            add("DCGM_FI_DEV_MEM_COPY_UTIL", labels, util.memory)
        self._maybe("DCGM_FI_DEV_GPU_TEMP", labels, n.nvmlDeviceGetTemperature, handle, n.NVML_TEMPERATURE_GPU)
        mem_temp = self._field(handle, getattr(n, "NVML_FI_DEV_MEMORY_TEMP", None))
        if mem_temp is not None:
            add("DCGM_FI_DEV_MEMORY_TEMP", labels, mem_temp)
        power_mw = self.query(n.nvmlDeviceGetPowerUsage, handle)
        if power_mw is not None:
            add("DCGM_FI_DEV_POWER_USAGE", labels, power_mw / 1000)
        self._maybe("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", labels, n.nvmlDeviceGetTotalEnergyConsumption, handle)
        self._maybe("DCGM_FI_DEV_SM_CLOCK", labels, n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_SM)
        self._maybe("DCGM_FI_DEV_MEM_CLOCK", labels, n.nvmlDeviceGetClockInfo, handle, n.NVML_CLOCK_MEM)
        self._memory(handle, labels)
        self._maybe("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", labels, n.nvmlDeviceGetPcieReplayCounter, handle)
        for name, kind, counter in (
            ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC),
            ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC),
            ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC),
            ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC),
        ):
            self._maybe(name, labels, n.nvmlDeviceGetTotalEccErrors, handle, kind, counter)
        remap = self.query(n.nvmlDeviceGetRemappedRows, handle)
        if remap is not None:
            corr, unc, pending, failure = remap
            add("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", labels, corr)
            add("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", labels, unc)
            add("DCGM_FI_DEV_ROW_REMAP_PENDING", labels, 1 if pending else 0)
            add("DCGM_FI_DEV_ROW_REMAP_FAILURE", labels, 1 if failure else 0)
        # Older nvidia-ml-py calls them throttle reasons.
        reasons_fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if reasons_fn is None:
            reasons_fn = n.nvmlDeviceGetCurrentClocksThrottleReasons
        self._maybe("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", labels, reasons_fn, handle)
        self._nvlink(handle, labels)
        if not bus_id:
            return None
        parts = re.match(r"([0-9a-fA-F]+):([0-9a-fA-F]+):([0-9a-fA-F]+)", bus_id)
        return bus_key(*parts.groups()) if parts else None

    def _maybe(self, name: str, labels: dict[str, str], fn: Callable[..., Any], *args: Any) -> None:
        value = self.query(fn, *args)
        if value is not None:
            self.out.add(name, labels, value)

    def _memory(self, handle: Any, labels: dict[str, str]) -> None:
        n = self.nvml
        mem = None
        if hasattr(n, "nvmlMemory_v2"):
            mem = self.query(n.nvmlDeviceGetMemoryInfo, handle, n.nvmlMemory_v2)
        if mem is None:
            mem = self.query(n.nvmlDeviceGetMemoryInfo, handle)
        if mem is None:
            return
        self.out.add("DCGM_FI_DEV_FB_FREE", labels, mem.free // MIB)
        self.out.add("DCGM_FI_DEV_FB_USED", labels, mem.used // MIB)
        reserved = getattr(mem, "reserved", None)
        if reserved is not None:
            self.out.add("DCGM_FI_DEV_FB_RESERVED", labels, reserved // MIB)

    def _field(self, handle: Any, field_id: int | None) -> float | None:
        """One NVML field value (nvmlDeviceGetFieldValues), or None."""
        if field_id is None or not hasattr(self.nvml, "nvmlDeviceGetFieldValues"):
            return None
        values = self.query(self.nvml.nvmlDeviceGetFieldValues, handle, [field_id])
        if not values or values[0].nvmlReturn != 0:
            return None
        v = values[0]
        member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal"}.get(v.valueType, "uiVal")
        return float(getattr(v.value, member))

    def _nvlink(self, handle: Any, labels: dict[str, str]) -> None:
        n = self.nvml
        totals = {"crc": 0, "replay": 0, "recovery": 0}
        active = 0
        for link in range(getattr(n, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                state = n.nvmlDeviceGetNvLinkState(handle, link)
            except n.NVMLError:
                # Not supported, or past the last link: links are numbered from 0 without gaps.
                break
            if state != n.NVML_FEATURE_ENABLED:
                continue
            active += 1
            for key, counter in (
                ("crc", n.NVML_NVLINK_ERROR_DL_CRC_FLIT),
                ("replay", n.NVML_NVLINK_ERROR_DL_REPLAY),
                ("recovery", n.NVML_NVLINK_ERROR_DL_RECOVERY),
            ):
                value = self.query(n.nvmlDeviceGetNvLinkErrorCounter, handle, link, counter)
                totals[key] += value or 0
        if active:
            self.out.add("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", labels, totals["crc"])
            self.out.add("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", labels, totals["replay"])
            self.out.add("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", labels, totals["recovery"])


def collect(nvml: Any, kernel_log: list[str] | None) -> Collection:
    """Every GPU's metrics, plus the collector's own."""
    out = Collection()
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        out.up = False
        return out
    try:
        reader = GpuReader(nvml, out)
        driver = _text(reader.query(nvml.nvmlSystemGetDriverVersion) or "")
        count = reader.query(nvml.nvmlDeviceGetCount)
        if count is None:
            out.up = False
            return out
        out.add("nvml_collector_gpus", {}, count)
        buses: dict[tuple[int, int, int], dict[str, str]] = {}
        for index in range(count):
            before = len(out.samples)
            key = reader.read(index, driver)
            if key is not None and len(out.samples) > before:
                buses[key] = out.samples[before].labels
        if kernel_log is not None:
            xids = parse_xids(kernel_log)
            for key, gpu_labels in buses.items():
                labels = {k: v for k, v in gpu_labels.items() if k != "driver_version"}
                events = xids.get(key, [])
                out.add("DCGM_FI_DEV_XID_ERRORS", labels, events[-1] if events else 0)
                for xid in sorted(set(events)):
                    out.add("nvml_xid_errors_since_boot", {**labels, "xid": str(xid)}, events.count(xid))
    finally:
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) < 2**53 else repr(value)


def render(out: Collection, kernel_log_readable: bool, duration: float, now: float) -> str:
    out.add("nvml_collector_up", {}, 1 if out.up else 0)
    out.add("nvml_collector_read_errors", {}, out.read_errors)
    out.add("nvml_collector_xid_log_readable", {}, 1 if kernel_log_readable else 0)
    out.add("nvml_collector_duration_seconds", {}, round(duration, 6))
    out.add("nvml_collector_last_run_timestamp_seconds", {}, round(now, 3))
    lines: list[str] = []
    for name, (help_text, kind) in METRICS.items():
        samples = [s for s in out.samples if s.name == name]
        if not samples:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
            lines.append(f"{name}{{{labels}}} {_number(s.value)}" if labels else f"{name} {_number(s.value)}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None, nvml: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"text file to write (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--xid-source",
        default="auto",
        help="kernel log for XID errors: auto (journal, else dmesg), journal, dmesg, none, or a file",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    if nvml is None:
        try:
            import pynvml as nvml  # noqa: PLC0415 - only needed at run time, tests pass a fake
        except ImportError:
            print("nvml-collector: the pynvml module (nvidia-ml-py) is not installed", file=sys.stderr)
            nvml = None
    kernel_log = read_kernel_log(args.xid_source)
    out = collect(nvml, kernel_log) if nvml is not None else Collection(up=False)
    text = render(out, kernel_log is not None, time.monotonic() - began, time.time())
    write_atomically(Path(args.output), text)
    return 0 if out.up else 1


if __name__ == "__main__":
    sys.exit(main())
