"""The NVML textfile collector (roles/nvml_collector/files) against a fake NVML."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from fake_nvml_metrics import FAIL, NOT_SUPPORTED, FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = ROOT / "roles" / "nvml_collector" / "files" / "nvml_textfile_collector.py"

spec = importlib.util.spec_from_file_location("nvml_textfile_collector", COLLECTOR)
collector = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = collector
spec.loader.exec_module(collector)

SAMPLE_RE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})? (-?[0-9.]+(?:e[-+]?[0-9]+)?)$")
XID_LOG = """\
[  12.345] NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.95.05
NVRM: Xid (PCI:0000:3b:00): 13, pid=4242, name=python3, Graphics Exception: ESR 0x1
NVRM: Xid (PCI:0000:3b:00): 48, pid='<unknown>', name=<unknown>, An uncorrectable double bit error
NVRM: Xid (0000:86:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.
NVRM: Xid (PCI:0000:3b:00): 13, pid=4243, name=python3, Graphics Exception: ESR 0x2
"""


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> name -> [(labels, value)]; fails on any malformed line."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"malformed line: {line!r}"
        assert m.group(1) in declared, f"{m.group(1)} has no TYPE line"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(4))))
    return out


def run(tmp_path: Path, nvml: FakeNvml, log: str | None = None) -> tuple[int, dict]:
    args = ["--output", str(tmp_path / "nvml.prom")]
    if log is None:
        args += ["--xid-source", "none"]
    else:
        (tmp_path / "kern.log").write_text(log)
        args += ["--xid-source", str(tmp_path / "kern.log")]
    rc = collector.main(args, nvml=nvml)
    return rc, parse((tmp_path / "nvml.prom").read_text())


def value(metrics: dict, name: str, **labels: str) -> float:
    found = [v for lab, v in metrics[name] if all(lab.get(k) == want for k, want in labels.items())]
    assert len(found) == 1, (name, labels, metrics.get(name))
    return found[0]


def test_healthy_gpu_uses_dcgm_exporter_names_units_and_labels(tmp_path):
    rc, m = run(tmp_path, FakeNvml([FakeGpu()]), log="")
    assert rc == 0
    labels = m["DCGM_FI_DEV_GPU_UTIL"][0][0]
    assert labels == {
        "gpu": "0",
        "UUID": "GPU-11111111-2222-3333-4444-555555555555",
        "device": "nvidia0",
        "modelName": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": "00000000:3B:00.0",
    }
    assert value(m, "DCGM_FI_DEV_GPU_UTIL") == 37
    assert value(m, "DCGM_FI_DEV_MEM_COPY_UTIL") == 12
    assert value(m, "DCGM_FI_DEV_GPU_TEMP") == 41
    assert value(m, "DCGM_FI_DEV_MEMORY_TEMP") == 38
    assert value(m, "DCGM_FI_DEV_POWER_USAGE") == pytest.approx(112.345)  # mW -> W
    assert value(m, "DCGM_FI_DEV_FB_USED") == 512  # bytes -> MiB
    assert value(m, "DCGM_FI_DEV_FB_RESERVED") == 600
    assert value(m, "DCGM_FI_DEV_FB_FREE") == 81559 - 512 - 600
    assert value(m, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL") == 3
    assert value(m, "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL") == 10
    assert value(m, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 0
    assert value(m, "DCGM_FI_DEV_ROW_REMAP_FAILURE") == 0
    assert value(m, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS") == 1
    assert value(m, "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL") == 0
    assert value(m, "DCGM_FI_DEV_XID_ERRORS") == 0
    assert "nvml_xid_errors_since_boot" not in m
    assert value(m, "nvml_gpu_info", driver_version="580.95.05") == 1
    assert value(m, "nvml_collector_up") == 1
    assert value(m, "nvml_collector_gpus") == 1
    assert value(m, "nvml_collector_read_errors") == 0
    assert value(m, "nvml_collector_xid_log_readable") == 1


def test_xid_errors_from_the_kernel_log_are_matched_to_their_gpu(tmp_path):
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-b", bus_id="00000000:86:00.0", minor=1), FakeGpu(uuid="GPU-c", minor=2,
            bus_id="00000000:AF:00.0")]  # fmt: skip
    rc, m = run(tmp_path, FakeNvml(gpus), log=XID_LOG)
    assert rc == 0
    assert value(m, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 13  # the last one
    assert value(m, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 79
    assert value(m, "DCGM_FI_DEV_XID_ERRORS", gpu="2") == 0
    assert value(m, "nvml_xid_errors_since_boot", gpu="0", xid="13") == 2
    assert value(m, "nvml_xid_errors_since_boot", gpu="0", xid="48") == 1
    assert value(m, "nvml_xid_errors_since_boot", gpu="1", xid="79") == 1
    assert not [lab for lab, _ in m["nvml_xid_errors_since_boot"] if lab["gpu"] == "2"]


def test_unreadable_kernel_log_omits_xid_instead_of_reporting_zero(tmp_path):
    rc, m = run(tmp_path, FakeNvml([FakeGpu()]), log=None)
    assert rc == 0
    assert "DCGM_FI_DEV_XID_ERRORS" not in m
    assert value(m, "nvml_collector_xid_log_readable") == 0


def test_faulty_gpu_readings(tmp_path):
    bad = FakeGpu(
        temp=91,
        mem_used=80000 * 1024 * 1024,
        mem_reserved=500 * 1024 * 1024,
        ecc={(0, 0): 120, (1, 0): 2, (0, 1): 500, (1, 1): 4},
        remapped=(3, 1, 1, 1),
        clocks_event_reasons=0x20 | 0x40,
        nvlink_errors={(0, 2): 5, (3, 2): 2, (1, 0): 7},
    )
    rc, m = run(tmp_path, FakeNvml([bad]), log="")
    assert rc == 0
    assert value(m, "DCGM_FI_DEV_GPU_TEMP") == 91
    assert value(m, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL") == 2
    assert value(m, "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL") == 4
    assert value(m, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS") == 3
    assert value(m, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS") == 1
    assert value(m, "DCGM_FI_DEV_ROW_REMAP_PENDING") == 1
    assert value(m, "DCGM_FI_DEV_ROW_REMAP_FAILURE") == 1
    assert value(m, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS") == 0x60
    assert value(m, "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL") == 7
    assert value(m, "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL") == 7


def test_unsupported_readings_are_left_out_and_failures_counted(tmp_path):
    gpu = FakeGpu(power_mw=NOT_SUPPORTED, remapped=NOT_SUPPORTED, nvlinks=0, temp=FAIL, mem_temp=NOT_SUPPORTED)
    rc, m = run(tmp_path, FakeNvml([gpu]), log="")
    assert rc == 0
    for absent in ("DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_DEV_GPU_TEMP",
                   "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_MEMORY_TEMP"):  # fmt: skip
        assert absent not in m, absent
    assert value(m, "nvml_collector_read_errors") == 1  # the temperature; not-supported ones are no error
    assert value(m, "DCGM_FI_DEV_GPU_UTIL") == 37


def test_nvml_not_loadable_writes_a_file_that_says_so(tmp_path):
    nvml = FakeNvml([FakeGpu()], init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)
    rc, m = run(tmp_path, nvml, log="")
    assert rc == 1
    assert value(m, "nvml_collector_up") == 0
    assert "DCGM_FI_DEV_GPU_UTIL" not in m


def test_nvml_is_shut_down_after_a_run(tmp_path):
    nvml = FakeNvml([FakeGpu()])
    run(tmp_path, nvml, log="")
    assert nvml.shutdowns == 1 and not nvml.initialised


def test_file_is_replaced_atomically_and_readable_by_node_exporter(tmp_path):
    target = tmp_path / "nvml.prom"
    target.write_text("old\n")
    before = target.stat().st_ino
    run(tmp_path, FakeNvml([FakeGpu()]), log="")
    assert target.stat().st_ino != before  # a new file renamed over, not rewritten in place
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "nvml.prom"
    target.write_text("old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(collector.os, "replace", broken_replace)
    with pytest.raises(OSError):
        collector.write_atomically(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["nvml.prom"]


def test_label_values_are_escaped(tmp_path):
    rc, m = run(tmp_path, FakeNvml([FakeGpu(name='Weird "GPU" \\ name')]), log="")
    assert rc == 0
    assert m["DCGM_FI_DEV_GPU_UTIL"][0][0]["modelName"] == 'Weird \\"GPU\\" \\\\ name'


def test_every_written_metric_is_declared(tmp_path):
    _, m = run(tmp_path, FakeNvml([FakeGpu(), FakeGpu(minor=1, bus_id="00000000:86:00.0")]), log=XID_LOG)
    assert set(m) <= set(collector.METRICS)
