"""NVIDIA GPU discovery (PCI, NVML fallback) and health checks (NVML), shared by the
`nvidia_gpu_facts` and `nvidia_gpu_validate` modules and the `scripts/gpu-validate` CLI.

Nothing here imports Ansible, so the CLI runs without it. NVML is reached only through
nvidia-ml-py (`pynvml`), never by parsing nvidia-smi text; every function takes the NVML
binding as an argument, so tests pass a fake one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

NVIDIA_VENDOR = 0x10DE
# PCI class codes (the upper 16 bits of the 24-bit class): display controllers are GPUs
# (0x0300 VGA on workstation cards, 0x0302 3D controller on data-centre cards); NVSwitches
# show as bridges (0x0680).
GPU_CLASSES = (0x0300, 0x0302)
NVSWITCH_CLASS = 0x0680
PCI_IDS_PATHS = ("usr/share/misc/pci.ids", "usr/share/hwdata/pci.ids")
SECURE_BOOT_VAR = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


# NVML's NVLink error counters (nvmlDeviceGetNvLinkErrorCounter): report name, pynvml
# constant, its value where the binding lacks it (nvml.h, nvmlNvLinkErrorCounter_t).
NVLINK_COUNTERS = (
    ("replay", "NVML_NVLINK_ERROR_DL_REPLAY", 0),
    ("recovery", "NVML_NVLINK_ERROR_DL_RECOVERY", 1),
    ("crc_flit", "NVML_NVLINK_ERROR_DL_CRC_FLIT", 2),
    ("crc_data", "NVML_NVLINK_ERROR_DL_CRC_DATA", 3),
)
NVLINK_MAX_ERRORS = {"replay": 100, "recovery": 0, "crc_flit": 100, "crc_data": 0}


class NvmlUnavailable(Exception):
    """NVML (the driver's management library) or its Python binding cannot be used."""


# --- discovery from PCI (no driver needed) ------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def pci_names(root: str, device_ids: set[int]) -> dict[int, str]:
    """Names of NVIDIA device IDs from the pci.ids database, where the host has one."""
    names: dict[int, str] = {}
    for rel in PCI_IDS_PATHS:
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            continue
        in_nvidia = False
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip() or line.startswith("#"):
                    continue
                if not line[0].isspace():
                    if in_nvidia:
                        break  # past NVIDIA's block
                    in_nvidia = line.lower().startswith("10de ")
                elif in_nvidia and line.startswith("\t") and not line.startswith("\t\t"):
                    dev, _, name = line.strip().partition(" ")
                    if _hex(dev) in device_ids:
                        names[int(dev, 16)] = name.strip()
        break
    return names


def scan_pci(root: str = "/") -> dict[str, Any]:
    """NVIDIA GPUs and NVSwitches under ROOT/sys/bus/pci/devices."""
    base = os.path.join(root, "sys/bus/pci/devices")
    gpus: list[dict[str, Any]] = []
    switches: list[dict[str, Any]] = []
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return {"readable": False, "gpus": gpus, "nvswitches": switches}
    for address in entries:
        dev = os.path.join(base, address)
        if _hex(_read(os.path.join(dev, "vendor"))) != NVIDIA_VENDOR:
            continue
        pci_class = _hex(_read(os.path.join(dev, "class")))
        device_id = _hex(_read(os.path.join(dev, "device")))
        if pci_class is None or device_id is None:
            continue
        record = {"pci_address": address.lower(), "device_id": f"0x{device_id:04x}"}
        if pci_class >> 8 in GPU_CLASSES:
            gpus.append(record)
        elif pci_class >> 8 == NVSWITCH_CLASS:
            switches.append(record)
    names = pci_names(root, {int(r["device_id"], 16) for r in gpus + switches})
    for record in gpus + switches:
        record["model"] = names.get(int(record["device_id"], 16), f"NVIDIA device 10de:{record['device_id'][2:]}")
    return {"readable": bool(entries), "gpus": gpus, "nvswitches": switches}


def loaded_driver_version(root: str = "/") -> str | None:
    """Version of the loaded nvidia kernel module, or None when none is loaded."""
    version = _read(os.path.join(root, "sys/module/nvidia/version"))
    if version:
        return version
    text = _read(os.path.join(root, "proc/driver/nvidia/version")) or ""
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def nvswitch_proc_count(root: str = "/") -> int:
    """NVSwitches the loaded driver knows (a second source where PCI is hidden)."""
    try:
        return len(os.listdir(os.path.join(root, "proc/driver/nvidia-nvswitch/devices")))
    except OSError:
        return 0


def secure_boot_state(root: str = "/") -> bool | None:
    """True/False from the UEFI SecureBoot variable; False on BIOS boot; None if unreadable."""
    if not os.path.isdir(os.path.join(root, "sys/firmware/efi")):
        return False
    try:
        with open(os.path.join(root, SECURE_BOOT_VAR), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    # 4 bytes of attributes, then the value.
    return bool(data[4]) if len(data) >= 5 else None


# --- NVML ---------------------------------------------------------------------------


def load_nvml(nvml: Any = None) -> Any:
    """The pynvml module (nvidia-ml-py), or the binding given (tests pass a fake)."""
    if nvml is not None:
        return nvml
    try:
        import pynvml  # noqa: PLC0415 - optional: absent where there is no GPU
    except ImportError as exc:
        raise NvmlUnavailable(f"the Python package nvidia-ml-py is not installed for {sys.executable} ({exc})") from exc
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bus_id(value: Any) -> str:
    """NVML's 8-digit PCI domain (00000000:18:00.0) in sysfs form (0000:18:00.0)."""
    text = _text(value).lower()
    domain, _, rest = text.partition(":")
    return f"{domain[-4:]}:{rest}" if rest else text


class NvmlSession:
    """nvmlInit/nvmlShutdown around a block; a failed init raises NvmlUnavailable."""

    def __init__(self, nvml: Any = None):
        self.nvml = load_nvml(nvml)
        self.init_s = 0.0

    def __enter__(self) -> Any:
        began = time.perf_counter()
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML could not be loaded: {exc}") from exc
        except OSError as exc:  # a broken libnvidia-ml.so
            raise NvmlUnavailable(f"NVML could not be loaded: {exc}") from exc
        self.init_s = time.perf_counter() - began
        return self.nvml

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()


def nvml_inventory(nvml: Any = None) -> dict[str, Any]:
    """GPUs as NVML sees them (the fallback where PCI sysfs is hidden)."""
    with NvmlSession(nvml) as lib:
        gpus = []
        for index in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            pci = lib.nvmlDeviceGetPciInfo(handle)
            gpus.append(
                {
                    "pci_address": _bus_id(pci.busId),
                    # pciDeviceId holds the device ID in its upper 16 bits, the vendor below.
                    "device_id": f"0x{(pci.pciDeviceId >> 16) & 0xFFFF:04x}",
                    "model": _text(lib.nvmlDeviceGetName(handle)),
                }
            )
        return {"gpus": gpus, "driver_version": _text(lib.nvmlSystemGetDriverVersion())}


def discover(root: str = "/", nvml_fallback: bool = True, nvml: Any = None) -> dict[str, Any]:
    """The host's NVIDIA GPUs and NVSwitches: PCI first, NVML where PCI shows none."""
    pci = scan_pci(root)
    facts: dict[str, Any] = {
        "source": "pci",
        "gpus": pci["gpus"],
        "nvswitch_count": max(len(pci["nvswitches"]), nvswitch_proc_count(root)),
        "driver_loaded": loaded_driver_version(root),
        "secure_boot": secure_boot_state(root),
        "pci_readable": pci["readable"],
        "nvml": "not needed",
    }
    if not pci["gpus"]:
        facts["source"] = "none"
        if nvml_fallback:
            try:
                found = nvml_inventory(nvml)
            except NvmlUnavailable as exc:
                facts["nvml"] = str(exc)
            else:
                facts["nvml"] = "ok"
                if found["gpus"]:
                    facts.update(source="nvml", gpus=found["gpus"])
                    facts["driver_loaded"] = facts["driver_loaded"] or found["driver_version"]
        else:
            facts["nvml"] = "not tried (nvml_fallback is off)"
    facts["count"] = len(facts["gpus"])
    facts["models"] = sorted({g["model"] for g in facts["gpus"]})
    facts["nvswitch"] = facts["nvswitch_count"] > 0
    return facts


# --- health checks ------------------------------------------------------------------


@dataclass
class Expectations:
    """What a healthy node looks like; None/empty disables a check."""

    count: int | None = None
    driver_version: str = ""  # exact (580.95.05) or a branch prefix (580)
    persistence_mode: bool = True
    ecc: bool = True
    max_temperature_c: int = 85
    max_power_fraction: float = 0.95
    mig_mode: str = "disabled"  # disabled | enabled | any
    pcie_width: bool = True
    nvlink_required: bool = False
    # Links each GPU must have up (18 on an HGX H100/H200 board); 0: not counted.
    nvlink_links_per_gpu: int = 0
    # NVLink error counts (all of a GPU's links, since the driver loaded) tolerated per
    # counter; -1 skips that counter. Recovery (a link retrained) and data CRC errors mean a
    # bad link; flit CRC errors and replays are retried by the link layer, so a few pass.
    nvlink_max_errors: dict[str, int] = field(default_factory=lambda: dict(NVLINK_MAX_ERRORS))
    # NVSwitches gpu_facts found (None: not known); the report's topology.
    nvswitch_count: int | None = None


@dataclass
class GpuResult:
    index: int
    name: str = "-"
    pci_address: str = "-"
    uuid: str = "-"
    present: bool = True
    values: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def driver_matches(actual: str, wanted: str) -> bool:
    return not wanted or actual == wanted or actual.startswith(wanted.rstrip(".") + ".")


class _Probe:
    """Calls NVML. 'Not supported' (or absent on this GPU, or in this binding) reads as
    None; any other error also reads as None and is kept, to be reported as a failure."""

    def __init__(self, nvml: Any):
        self.nvml = nvml
        self.absent = {
            getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3),
            getattr(nvml, "NVML_ERROR_INVALID_ARGUMENT", 2),
            getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", 13),
        }
        self.errors: list[str] = []

    def __call__(self, name: str, *args: Any) -> Any:
        function = getattr(self.nvml, name, None)
        if function is None:
            return None
        try:
            return function(*args)
        except self.nvml.NVMLError as exc:
            if getattr(exc, "value", None) not in self.absent:
                self.errors.append(f"{name}: {exc}")
            return None


def check_gpu(nvml: Any, index: int, want: Expectations, driver_version: str) -> GpuResult:
    probe = _Probe(nvml)
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    res = GpuResult(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        pci_address=_bus_id(nvml.nvmlDeviceGetPciInfo(handle).busId),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
    )
    v = res.values
    v["driver_version"] = driver_version
    if not driver_matches(driver_version, want.driver_version):
        res.failures.append(f"driver {driver_version} is not the pinned {want.driver_version}")

    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    persistence = probe("nvmlDeviceGetPersistenceMode", handle)
    v["persistence_mode"] = None if persistence is None else persistence == enabled
    if want.persistence_mode and v["persistence_mode"] is False:
        res.failures.append("persistence mode is off (nvidia-persistenced not running)")

    ecc = probe("nvmlDeviceGetEccMode", handle)
    v["ecc_current"], v["ecc_pending"] = (None, None) if ecc is None else (ecc[0] == enabled, ecc[1] == enabled)
    if want.ecc:
        if v["ecc_current"] is None:
            res.failures.append("ECC is not supported")
        elif not v["ecc_current"]:
            res.failures.append("ECC is off" + (" (on after the next reset)" if v["ecc_pending"] else ""))
    if v["ecc_current"]:
        unc = nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        v["ecc_uncorrected_volatile"] = probe("nvmlDeviceGetTotalEccErrors", handle, unc, nvml.NVML_VOLATILE_ECC)
        v["ecc_uncorrected_aggregate"] = probe("nvmlDeviceGetTotalEccErrors", handle, unc, nvml.NVML_AGGREGATE_ECC)
        if v["ecc_uncorrected_volatile"]:
            res.failures.append(f"{v['ecc_uncorrected_volatile']} uncorrectable ECC error(s) since the last reset")
        elif v["ecc_uncorrected_aggregate"]:
            res.info.append(f"{v['ecc_uncorrected_aggregate']} uncorrectable ECC error(s) over the GPU's life")

    rows = probe("nvmlDeviceGetRemappedRows", handle)
    if rows is not None:
        corr, unc_rows, pending, failure = rows
        v["remapped_rows"] = {"correctable": corr, "uncorrectable": unc_rows, "pending": bool(pending),
                              "failure": bool(failure)}  # fmt: skip
        if failure:
            res.failures.append("row remapping failed (the GPU needs service)")
        if pending:
            res.failures.append("a row remap is pending (reset the GPU)")

    width, max_width = probe("nvmlDeviceGetCurrPcieLinkWidth", handle), probe("nvmlDeviceGetMaxPcieLinkWidth", handle)
    gen, max_gen = (
        probe("nvmlDeviceGetCurrPcieLinkGeneration", handle),
        probe("nvmlDeviceGetMaxPcieLinkGeneration", handle),
    )
    v["pcie"] = {"width": width, "max_width": max_width, "generation": gen, "max_generation": max_gen}
    if want.pcie_width and width is not None and max_width and width < max_width:
        res.failures.append(f"PCIe link x{width}, the GPU supports x{max_width}")
    if gen is not None and max_gen and gen < max_gen:
        res.info.append(f"PCIe gen {gen} of {max_gen} (GPUs lower the link speed when idle)")

    temp = probe("nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
    v["temperature_c"] = temp
    if temp is not None and want.max_temperature_c and temp >= want.max_temperature_c:
        res.failures.append(f"temperature {temp} C, the limit is below {want.max_temperature_c} C")

    power, limit = probe("nvmlDeviceGetPowerUsage", handle), probe("nvmlDeviceGetEnforcedPowerLimit", handle)
    v["power_w"] = None if power is None else round(power / 1000, 1)
    v["power_limit_w"] = None if limit is None else round(limit / 1000, 1)
    if power is not None and limit and want.max_power_fraction and power > limit * want.max_power_fraction:
        res.failures.append(
            f"power {v['power_w']} W is above {want.max_power_fraction:.0%} of the {v['power_limit_w']} W limit"
        )

    mig = probe("nvmlDeviceGetMigMode", handle)
    mig_on = getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
    v["mig_current"], v["mig_pending"] = (None, None) if mig is None else (mig[0] == mig_on, mig[1] == mig_on)
    if want.mig_mode != "any" and v["mig_current"] is not None:
        wanted_on = want.mig_mode == "enabled"
        if v["mig_current"] != wanted_on:
            res.failures.append(f"MIG is {'on' if v['mig_current'] else 'off'}, expected {want.mig_mode}")
        elif v["mig_pending"] != v["mig_current"]:
            res.failures.append("a MIG mode change is pending (reset the GPU)")

    v["nvlink"] = nvlink = read_nvlinks(nvml, probe, handle)
    check_nvlinks(nvlink, want, res)
    res.failures += [f"NVML could not read {e}" for e in probe.errors]
    return res


def read_nvlinks(nvml: Any, probe: _Probe, handle: Any) -> dict[str, Any]:
    """State of every NVLink of a GPU, and the error counters of the links that are up."""
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    down: list[int] = []
    active = 0
    totals: dict[str, int | None] = {name: None for name, _, _ in NVLINK_COUNTERS}
    per_link: dict[str, dict[str, int]] = {}
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        state = probe("nvmlDeviceGetNvLinkState", handle, link)
        if state is None:
            break  # links are numbered from 0: the first missing one ends the list
        if state != enabled:
            down.append(link)
            continue  # a link that is down counts nothing
        active += 1
        for name, constant, fallback in NVLINK_COUNTERS:
            count = probe("nvmlDeviceGetNvLinkErrorCounter", handle, link, getattr(nvml, constant, fallback))
            if count is None:
                continue  # not supported (e.g. read through field values on newer GPUs)
            totals[name] = (totals[name] or 0) + count
            if count:
                per_link.setdefault(str(link), {})[name] = count
    return {"active": active, "inactive": len(down), "down": down, "errors": totals, "links_with_errors": per_link}


def check_nvlinks(nvlink: dict[str, Any], want: Expectations, res: GpuResult) -> None:
    """Down links (failures where NVSwitches need every link), the link count, error counters."""
    active, inactive = nvlink["active"], nvlink["inactive"]
    if inactive:
        message = f"{inactive} of {active + inactive} NVLinks are down"
        if active:  # which ones, where some are up
            message += f" (links {', '.join(map(str, nvlink['down']))})"
        (res.failures if want.nvlink_required else res.info).append(message)
    elif want.nvlink_required and not active:
        res.failures.append("no active NVLink, but the node has NVSwitches")
    if want.nvlink_links_per_gpu and active != want.nvlink_links_per_gpu:
        res.failures.append(f"{active} NVLinks up, {want.nvlink_links_per_gpu} expected")
    for name, total in nvlink["errors"].items():
        tolerated = want.nvlink_max_errors.get(name, -1)
        if total is None or tolerated < 0 or total <= tolerated:
            continue
        links = sorted((link for link, counts in nvlink["links_with_errors"].items() if name in counts), key=int)
        res.failures.append(f"{total} NVLink {name} error(s) on link(s) {', '.join(links)}, {tolerated} tolerated")


def topology(want: Expectations, results: list[GpuResult]) -> dict[str, Any]:
    """What the node's NVLink fabric should be (gpu_facts' NVSwitches) and what NVML saw."""
    links = [r.values["nvlink"] for r in results if r.present and "nvlink" in r.values]
    return {
        "nvswitch_count": want.nvswitch_count,
        "nvlink_required": want.nvlink_required,
        "links_per_gpu_expected": want.nvlink_links_per_gpu or None,
        "gpus_with_nvlink": sum(1 for link in links if link["active"] + link["inactive"]),
        "links_up": sum(link["active"] for link in links),
        "links_down": sum(link["inactive"] for link in links),
    }


def nvlink_errors_cell(link: dict[str, Any]) -> str:
    """The table's NVLink error cell: '-' without links or counters, '0', or the non-zero counters."""
    counted = {name: n for name, n in link.get("errors", {}).items() if n is not None}
    if not link.get("active") or not counted:
        return "-"
    nonzero = [f"{name}={n}" for name, n in counted.items() if n]
    return " ".join(nonzero) or "0"


def validate(want: Expectations, nvml: Any = None) -> dict[str, Any]:
    """Run every check on every GPU; the report (a dict) says what failed and why."""
    began = time.perf_counter()
    session = NvmlSession(nvml)
    with session as lib:
        checks_began = time.perf_counter()
        driver_version = _text(lib.nvmlSystemGetDriverVersion())
        count = lib.nvmlDeviceGetCount()
        results = [check_gpu(lib, i, want, driver_version) for i in range(count)]
        checks_s = time.perf_counter() - checks_began
    if want.count is not None and count < want.count:
        for index in range(count, want.count):
            results.append(
                GpuResult(index=index, present=False, failures=[f"missing: {want.count} expected, NVML sees {count}"])
            )
    problems = []
    if want.count is not None and count != want.count:
        problems.append(f"{count} GPU(s) found, {want.count} expected")
    problems += [f"GPU {r.index}: {f}" for r in results for f in r.failures]
    return {
        "ok": not problems,
        "driver_version": driver_version,
        "gpu_count": count,
        "expected": asdict(want),
        "problems": problems,
        "gpus": [asdict(r) | {"ok": r.ok} for r in results],
        "topology": topology(want, results),
        "timing_s": {
            "nvml_init": round(session.init_s, 4),
            "checks": round(checks_s, 4),
            "total": round(time.perf_counter() - began, 4),
        },
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(report: dict[str, Any]) -> str:
    """The per-GPU table: one row a GPU (missing ones included), then each problem."""
    head = ["GPU", "PCI", "MODEL", "DRIVER", "TEMP", "POWER", "PERSIST", "ECC", "UNCORR", "REMAP", "PCIE", "MIG",
            "NVLINK", "NVLINK-ERR", "RESULT"]  # fmt: skip
    rows = [head]
    for gpu in report["gpus"]:
        v = gpu["values"]
        if not gpu["present"]:
            rows.append([str(gpu["index"])] + ["-"] * (len(head) - 2) + ["MISSING"])
            continue
        remap = v.get("remapped_rows")
        pcie = v.get("pcie", {})
        link = v.get("nvlink", {})
        rows.append(
            [
                str(gpu["index"]),
                gpu["pci_address"],
                gpu["name"],
                v.get("driver_version", "-"),
                _cell(v.get("temperature_c"), "{}C"),
                "-" if v.get("power_w") is None else f"{v['power_w']:.0f}/{_cell(v.get('power_limit_w'), '{:.0f}')}W",
                {True: "on", False: "off"}.get(v.get("persistence_mode"), "-"),
                {True: "on", False: "off"}.get(v.get("ecc_current"), "-"),
                _cell(v.get("ecc_uncorrected_volatile")),
                "-" if remap is None else ("FAILED" if remap["failure"] else "pending" if remap["pending"] else "ok"),
                "-"
                if pcie.get("width") is None
                else f"x{pcie['width']}/x{pcie.get('max_width')} g{pcie.get('generation')}",
                {True: "on", False: "off"}.get(v.get("mig_current"), "-"),
                f"{link.get('active', 0)}/{link.get('active', 0) + link.get('inactive', 0)}",
                nvlink_errors_cell(link),
                "OK" if gpu["ok"] else "FAIL",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if report["problems"]:
        lines += ["", "Problems:"] + [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)


def write_atomic(path: str, text: str) -> None:
    """Write a file whole or not at all (a temporary name, then a rename): readers such as
    node_exporter's textfile collector never see half of it."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], path: str) -> None:
    write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
