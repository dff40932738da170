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
    assert report["gpus"][0]["values"]["nvlink"] == {
        "active": 18,
        "inactive": 0,
        "down": [],
        "errors": {"replay": 0, "recovery": 0, "crc_flit": 0, "crc_data": 0},
        "links_with_errors": {},
    }
    assert report["topology"] == {
        "nvswitch_count": None,
        "nvlink_required": True,
        "links_per_gpu_expected": None,
        "gpus_with_nvlink": 8,
        "links_up": 144,
        "links_down": 0,
    }
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
    assert ng.table(report).splitlines()[8].split() == ["7"] + ["-"] * 13 + ["MISSING"]


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
        ({"nvlinks": [1] * 16 + [0, 0]}, "2 of 18 NVLinks are down (links 16, 17)"),
        ({"nvlink_errors": {(4, 1): 1}}, "1 NVLink recovery error(s) on link(s) 4, 0 tolerated"),
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
    # Per GPU: 18 link states + the first absent one, 4 error counters of each link that is up,
    # and the other reads: bounded, whatever the binding's link maximum.
    assert nvml.calls <= 8 * (19 + 18 * 4 + 20)


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


# --- NVLink -------------------------------------------------------------------------


def test_nvlink_error_counters_over_their_thresholds_fail_naming_the_links():
    nvml = hgx(8)
    nvml.gpus[2].nvlink_errors = {(3, 0): 60, (7, 0): 41, (7, 2): 5, (11, 3): 2}  # replay, crc_flit, crc_data
    report = ng.validate(ng.Expectations(count=8, nvlink_required=True), nvml=nvml)
    assert report["problems"] == [
        "GPU 2: 101 NVLink replay error(s) on link(s) 3, 7, 100 tolerated",
        "GPU 2: 2 NVLink crc_data error(s) on link(s) 11, 0 tolerated",
    ]
    link = report["gpus"][2]["values"]["nvlink"]
    assert link["errors"] == {"replay": 101, "recovery": 0, "crc_flit": 5, "crc_data": 2}
    assert link["links_with_errors"] == {"3": {"replay": 60}, "7": {"replay": 41, "crc_flit": 5}, "11": {"crc_data": 2}}
    row = next(r for r in ng.table(report).splitlines() if r.startswith("2 "))
    assert "replay=101 crc_flit=5 crc_data=2" in row and row.endswith("FAIL")
    assert next(r for r in ng.table(report).splitlines() if r.startswith("1 ")).split()[-2:] == ["0", "OK"]


def test_nvlink_thresholds_are_settings_and_minus_one_skips():
    nvml = hgx(1)
    nvml.gpus[0].nvlink_errors = {(0, 1): 3, (1, 2): 500}
    lenient = ng.Expectations(nvlink_max_errors={"replay": 100, "recovery": -1, "crc_flit": 1000, "crc_data": 0})
    assert ng.validate(lenient, nvml=nvml)["ok"]
    report = ng.validate(ng.Expectations(), nvml=nvml)  # the defaults
    assert report["problems"] == [
        "GPU 0: 3 NVLink recovery error(s) on link(s) 0, 0 tolerated",
        "GPU 0: 500 NVLink crc_flit error(s) on link(s) 1, 100 tolerated",
    ]


def test_errors_of_down_links_are_not_read_and_unsupported_counters_are_not_zero():
    nvml = hgx(1)
    nvml.gpus[0].nvlinks = [1, 0, 1]
    nvml.gpus[0].nvlink_errors = {(1, 3): 9}  # a down link's counter is not read
    link = ng.validate(ng.Expectations(), nvml=nvml)["gpus"][0]["values"]["nvlink"]
    assert link["down"] == [1] and link["errors"]["crc_data"] == 0
    nvml.gpus[0].nvlink_counters = False
    report = ng.validate(ng.Expectations(), nvml=nvml)
    assert report["gpus"][0]["values"]["nvlink"]["errors"] == dict.fromkeys(ng.NVLINK_MAX_ERRORS)
    assert report["ok"], report["problems"]
    assert ng.nvlink_errors_cell(report["gpus"][0]["values"]["nvlink"]) == "-"


def test_link_count_per_gpu_and_topology_from_gpu_facts():
    nvml = hgx(8)
    nvml.gpus[5].nvlinks = [1] * 12  # a GPU with fewer links than the board's others
    want = ng.Expectations(count=8, nvlink_required=True, nvlink_links_per_gpu=18, nvswitch_count=4)
    report = ng.validate(want, nvml=nvml)
    assert report["problems"] == ["GPU 5: 12 NVLinks up, 18 expected"]
    assert report["topology"] == {
        "nvswitch_count": 4,
        "nvlink_required": True,
        "links_per_gpu_expected": 18,
        "gpus_with_nvlink": 8,
        "links_up": 7 * 18 + 12,
        "links_down": 0,
    }


def test_a_gpu_without_nvlink_on_a_node_without_nvswitch_is_healthy():
    nvml = FakeNvml([FakeGpu(nvlinks=[])])  # one PCIe GPU, as on the device machine
    report = ng.validate(ng.Expectations(count=1, nvswitch_count=0), nvml=nvml)
    assert report["ok"], report["problems"]
    assert report["topology"]["gpus_with_nvlink"] == 0
    row = ng.table(report).splitlines()[1].split()
    assert row[-3:] == ["0/0", "-", "OK"]


def test_nvswitch_node_whose_gpus_show_no_link_fails():
    nvml = FakeNvml([FakeGpu(nvlinks=[])])
    report = ng.validate(ng.Expectations(nvlink_required=True, nvswitch_count=4), nvml=nvml)
    assert report["problems"] == ["GPU 0: no active NVLink, but the node has NVSwitches"]


def test_recorded_device_report_renders():
    """The report the single-GPU device run wrote (docs/gpu/), through today's table."""
    report = json.loads((ROOT / "docs" / "gpu" / "report-healthy.json").read_text())
    rows = ng.table(report).splitlines()
    assert rows[0].split()[-3:] == ["NVLINK", "NVLINK-ERR", "RESULT"]
    assert rows[1].split()[-3:] == ["0/0", "-", "OK"]


def test_module_and_cli_take_the_nvlink_settings(tmp_path, capsys, monkeypatch):
    nvml = hgx(2)
    nvml.gpus[1].nvlink_errors = {(0, 1): 2}
    args = {"nvlink_links_per_gpu": 18, "nvlink_max_errors": {"recovery": 5}, "nvswitch_count": 4}
    result = run_module(args, capsys, monkeypatch, nvml)
    assert not result.get("failed"), result["msg"]
    assert result["report"]["expected"]["nvlink_max_errors"] == {"replay": 100, "recovery": 5, "crc_flit": 100,
                                                                 "crc_data": 0}  # fmt: skip
    assert result["report"]["topology"]["nvswitch_count"] == 4
    assert cli.main(["--nvlink-max-errors", "recovery=1"], nvml=nvml) == 1
    assert "GPU 1: 2 NVLink recovery error(s) on link(s) 0, 1 tolerated" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--nvlink-max-errors", "bogus=1"], nvml=nvml)
    assert "expected COUNTER=N" in capsys.readouterr().err


def test_recorded_h200_report_has_the_nvlink_fields():
    """The single-H200 device run of the NVLink checks (docs/gpu/h200/): a VM exposes no link."""
    report = json.loads((ROOT / "docs" / "gpu" / "h200" / "report-healthy.json").read_text())
    assert report["ok"] and report["gpus"][0]["name"] == "NVIDIA H200"
    assert report["gpus"][0]["values"]["nvlink"]["active"] == 0
    assert report["topology"]["nvswitch_count"] == 0 and report["topology"]["gpus_with_nvlink"] == 0
    assert ng.table(report).splitlines()[1].split()[-3:] == ["0/0", "-", "OK"]
