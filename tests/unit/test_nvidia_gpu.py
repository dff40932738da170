"""GPU discovery (fixture sysfs trees) and the NVML checks (fake NVML), through the shared
module_utils, the two Ansible modules and the scripts/gpu-validate CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ansible.module_utils.nvidia_gpu as ng
import pytest
from ansible.module_utils.testing import patch_module_args
from conftest import load_plugin
from fake_nvml import NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, FakeNvml, hgx

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sysfs"


facts_module = load_plugin("plugins/modules/nvidia_gpu_facts.py")
validate_module = load_plugin("plugins/modules/nvidia_gpu_validate.py")
cli = load_plugin("scripts/gpu-validate", "gpu_validate_cli")


def no_nvml(*_):
    raise ng.NvmlUnavailable("the Python package nvidia-ml-py is not installed for python3 (No module named 'pynvml')")


# --- discovery ----------------------------------------------------------------------


def test_hgx_fixture_has_8_gpus_and_4_nvswitches():
    facts = ng.discover(str(FIXTURES / "hgx-h100-8gpu"), nvml_fallback=False)
    assert facts["source"] == "pci"
    assert facts["count"] == 8
    assert facts["models"] == ["GH100 [H100 SXM5 80GB]"]
    assert facts["gpus"][0] == {"pci_address": "0000:18:00.0", "device_id": "0x2330", "model": "GH100 [H100 SXM5 80GB]"}
    assert facts["nvswitch_count"] == 4 and facts["nvswitch"] is True
    assert facts["secure_boot"] is False
    assert facts["driver_loaded"] is None


def test_pcie_fixture_counts_vga_and_3d_controllers_not_audio():
    facts = ng.discover(str(FIXTURES / "pcie-l40s-4gpu"), nvml_fallback=False)
    assert facts["count"] == 4  # the HDMI audio function (class 0x0403) is not a GPU
    assert facts["models"] == ["AD102GL [L40S]"]
    assert facts["nvswitch"] is False
    assert facts["secure_boot"] is True


def test_no_gpu_and_nvml_unavailable(monkeypatch):
    monkeypatch.setattr(ng, "load_nvml", no_nvml)
    facts = ng.discover(str(FIXTURES / "no-gpu"))
    assert facts["count"] == 0 and facts["source"] == "none"
    assert "nvidia-ml-py is not installed" in facts["nvml"]
    assert facts["secure_boot"] is False  # legacy BIOS boot


def test_hidden_pci_falls_back_to_nvml(tmp_path):
    facts = ng.discover(str(tmp_path), nvml=hgx(2))  # an empty root: no PCI sysfs at all
    assert facts["pci_readable"] is False
    assert facts["source"] == "nvml"
    assert facts["count"] == 2
    assert facts["gpus"][1]["pci_address"] == "0000:2a:00.0"
    assert facts["gpus"][0]["device_id"] == "0x2330"
    assert facts["models"] == ["NVIDIA H100 80GB HBM3"]
    assert facts["driver_loaded"] == "580.95.05"


def test_loaded_driver_from_sysfs_and_proc(tmp_path):
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  (dvs-builder@U16)\n"
    )
    assert ng.loaded_driver_version(str(tmp_path)) == "580.95.05"
    (tmp_path / "sys/module/nvidia").mkdir(parents=True)
    (tmp_path / "sys/module/nvidia/version").write_text("580.126.09\n")
    assert ng.loaded_driver_version(str(tmp_path)) == "580.126.09"


def test_names_without_pci_ids(tmp_path):
    shutil.copytree(FIXTURES / "hgx-h100-8gpu" / "sys", tmp_path / "sys")
    facts = ng.discover(str(tmp_path), nvml_fallback=False)
    assert facts["models"] == ["NVIDIA device 10de:2330"]


def test_facts_module_reads_only(capsys):
    args = {"root": str(FIXTURES / "hgx-h100-8gpu"), "_ansible_check_mode": True}
    with patch_module_args(args), pytest.raises(SystemExit):
        facts_module.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False
    assert result["ansible_facts"]["nvidia_gpu"]["count"] == 8


# --- checks -------------------------------------------------------------------------


def test_healthy_node_passes_and_reads_every_gpu():
    nvml = hgx(8)
    report = ng.validate(ng.Expectations(count=8, driver_version="580.95.05", nvlink_required=True), nvml=nvml)
    assert report["ok"], report["problems"]
    assert report["gpu_count"] == 8
    assert [g["pci_address"] for g in report["gpus"]][:2] == ["0000:18:00.0", "0000:2a:00.0"]
    assert report["gpus"][0]["values"]["nvlink"] == {"active": 18, "inactive": 0}
    assert report["gpus"][0]["values"]["power_w"] == 71.0
    assert not nvml.initialised  # NVML shut down again


def test_branch_pin_matches_a_full_version():
    assert ng.driver_matches("580.95.05", "580")
    assert ng.driver_matches("580.95.05", "580.95.05")
    assert not ng.driver_matches("580.95.05", "58")
    assert not ng.driver_matches("580.95.05", "570")


def test_ecc_errors_and_pending_remap_fail_that_gpu_only():
    nvml = hgx(8)
    nvml.gpus[3].ecc_volatile_uncorrected = 2
    nvml.gpus[3].remapped_rows = (0, 1, 1, 0)
    report = ng.validate(ng.Expectations(count=8), nvml=nvml)
    assert not report["ok"]
    assert report["problems"] == [
        "GPU 3: 2 uncorrectable ECC error(s) since the last reset",
        "GPU 3: a row remap is pending (reset the GPU)",
    ]
    assert [g["ok"] for g in report["gpus"]] == [True, True, True, False, True, True, True, True]
    rows = ng.table(report).splitlines()
    assert rows[0].split()[:4] == ["GPU", "PCI", "MODEL", "DRIVER"]
    gpu3 = next(r for r in rows if r.startswith("3 "))
    assert "pending" in gpu3 and gpu3.endswith("FAIL")


def test_missing_gpu_gets_a_row():
    report = ng.validate(ng.Expectations(count=8), nvml=hgx(7))
    assert report["problems"][0] == "7 GPU(s) found, 8 expected"
    assert report["gpus"][7]["present"] is False
    assert ng.table(report).splitlines()[8].split() == ["7"] + ["-"] * 12 + ["MISSING"]


def test_driver_mismatch_fails_every_gpu():
    report = ng.validate(ng.Expectations(driver_version="570"), nvml=hgx(2))
    assert report["problems"] == [
        "GPU 0: driver 580.95.05 is not the pinned 570",
        "GPU 1: driver 580.95.05 is not the pinned 570",
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"persistence": 0}, "persistence mode is off"),
        ({"ecc": (0, 1)}, "ECC is off (on after the next reset)"),
        ({"pcie": (8, 16, 5, 5)}, "PCIe link x8, the GPU supports x16"),
        ({"temperature": 91}, "temperature 91 C"),
        ({"power_mw": 690_000}, "power 690.0 W is above 95% of the 700.0 W limit"),
        ({"mig": (1, 1)}, "MIG is on, expected disabled"),
        ({"nvlinks": [1] * 16 + [0, 0]}, "2 of 18 NVLinks are down"),
        ({"remapped_rows": (0, 0, 0, 1)}, "row remapping failed"),
    ],
)
def test_each_check_names_its_problem(change, problem):
    nvml = hgx(1)
    for key, value in change.items():
        setattr(nvml.gpus[0], key, value)
    report = ng.validate(ng.Expectations(nvlink_required=True), nvml=nvml)
    assert any(problem in p for p in report["problems"]), report["problems"]


def test_idle_pcie_generation_and_nvlink_without_nvswitch_are_information():
    nvml = hgx(1)
    nvml.gpus[0].pcie = (16, 16, 1, 5)
    nvml.gpus[0].nvlinks = [0] * 18
    report = ng.validate(ng.Expectations(), nvml=nvml)
    assert report["ok"]
    assert report["gpus"][0]["info"] == [
        "PCIe gen 1 of 5 (GPUs lower the link speed when idle)",
        "18 of 18 NVLinks are down",
    ]


def test_unsupported_features_are_not_failures_except_ecc():
    gpu = FakeGpu(remapped_rows=None, pcie=None, mig=None, nvlinks=[], ecc=None)
    report = ng.validate(ng.Expectations(), nvml=FakeNvml([gpu]))
    assert report["problems"] == ["GPU 0: ECC is not supported"]
    assert ng.validate(ng.Expectations(ecc=False), nvml=FakeNvml([gpu]))["ok"]


@pytest.mark.parametrize("code", [NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED])
def test_nvml_not_loadable(code):
    with pytest.raises(ng.NvmlUnavailable, match="NVML could not be loaded"):
        ng.validate(ng.Expectations(), nvml=FakeNvml([], init_error=code))


def test_eight_gpus_take_few_nvml_calls():
    nvml = hgx(8)
    ng.validate(ng.Expectations(count=8), nvml=nvml)
    # 18 links + the first absent one, plus the per-GPU reads: bounded, whatever the binding's link maximum.
    assert nvml.calls <= 8 * 40


# --- the module ---------------------------------------------------------------------


def run_module(args: dict, capsys, monkeypatch, nvml) -> dict:
    monkeypatch.setattr(ng, "load_nvml", (lambda _=None: nvml) if nvml else no_nvml)
    with patch_module_args(args), pytest.raises(SystemExit):
        validate_module.main()
    return json.loads(capsys.readouterr().out)


def test_module_healthy_is_unchanged_and_writes_the_report(tmp_path, capsys, monkeypatch):
    report = tmp_path / "r" / "report.json"
    result = run_module({"expected_count": 8, "report_path": str(report)}, capsys, monkeypatch, hgx(8))
    assert result["changed"] is False and not result.get("failed")
    assert json.loads(report.read_text())["gpu_count"] == 8


def test_module_check_mode_writes_nothing(tmp_path, capsys, monkeypatch):
    report = tmp_path / "report.json"
    args = {"report_path": str(report), "_ansible_check_mode": True}
    result = run_module(args, capsys, monkeypatch, hgx(1))
    assert result["changed"] is False and not report.exists()


def test_module_fails_with_the_table(tmp_path, capsys, monkeypatch):
    report = tmp_path / "report.json"
    result = run_module({"expected_count": 2, "report_path": str(report)}, capsys, monkeypatch, hgx(1))
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith("GPU validation failed: 2 problem(s) on 1 GPU(s)\nGPU  PCI")
    assert "MISSING" in result["msg"] and result["problems"][0] == "1 GPU(s) found, 2 expected"
    assert json.loads(report.read_text())["ok"] is False  # the report of a failed run is kept too


def test_module_without_nvml(capsys, monkeypatch):
    result = run_module({}, capsys, monkeypatch, None)
    assert result["failed"] is True
    assert "GPU validation could not run: the Python package nvidia-ml-py is not installed" in result["msg"]


# --- the CLI ------------------------------------------------------------------------


def test_cli_healthy(capsys, tmp_path):
    assert cli.main(["--expected-count", "8", "--report", str(tmp_path / "r.json")], nvml=hgx(8)) == 0
    out = capsys.readouterr().out
    assert "8 GPU(s), driver 580.95.05: healthy" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True


def test_cli_failure_exit_1_with_the_table(capsys):
    assert cli.main(["--driver-version", "570"], nvml=hgx(2)) == 1
    out = capsys.readouterr().out
    assert "GPU 1: driver 580.95.05 is not the pinned 570" in out and "FAILED" in out


def test_cli_nvml_not_loadable_exit_2(capsys):
    assert cli.main([], nvml=FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)) == 2
    assert "NVML could not be loaded: NVML Shared Library Not Found" in capsys.readouterr().err


def test_cli_json_and_discover(capsys):
    assert cli.main(["--json"], nvml=hgx(1)) == 0
    assert json.loads(capsys.readouterr().out)["gpu_count"] == 1
    assert cli.main(["--discover", "--root", str(FIXTURES / "hgx-h100-8gpu")]) == 0
    assert json.loads(capsys.readouterr().out)["nvswitch_count"] == 4


def test_an_unexpected_nvml_error_is_a_failure_not_a_crash():
    nvml = hgx(2)

    def lost(handle):
        if handle == 1:
            raise nvml.NVMLError(15)  # NVML_ERROR_GPU_IS_LOST
        return 1

    nvml.nvmlDeviceGetPersistenceMode = lost
    report = ng.validate(ng.Expectations(), nvml=nvml)
    assert report["problems"] == ["GPU 1: NVML could not read nvmlDeviceGetPersistenceMode: NVML Error with code 15"]
