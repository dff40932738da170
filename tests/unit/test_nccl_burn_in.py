"""The NCCL burn-in: all_reduce_perf outputs (tests/fixtures/nccl-tests/: one recorded on the
single-H200 device machine, the multi-GPU ones written in nccl-tests 2.19.6's format) through
the parser, the judgement, the metrics, and the nvidia_nccl_burn_in module."""

from __future__ import annotations

import json
from pathlib import Path

import ansible.module_utils.nccl_tests as nt
import pytest
from ansible.module_utils.testing import patch_module_args
from conftest import load_plugin

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "nccl-tests"
module = load_plugin("plugins/modules/nvidia_nccl_burn_in.py")


def output(name: str) -> str:
    return (FIXTURES / f"all_reduce_perf-{name}.txt").read_text()


def test_recorded_single_h200_run_parses():
    parsed = nt.parse(output("1xH200-device"))
    assert parsed["nccl_tests_version"] == "2.19.6" and parsed["nccl_version"] == 22809
    assert (parsed["threads"], parsed["gpus_per_thread"]) == (1, 1)
    assert parsed["devices"] == [{"rank": 0, "host": "vm", "device": 0, "pci": "0000:00:06", "model": "NVIDIA H200"}]
    assert [r["size_bytes"] for r in parsed["rows"]] == [256 << 20, 512 << 20, 1 << 30, 2 << 30, 4 << 30]
    assert parsed["rows"][1]["in_place"]["algbw_gbps"] == 2e06  # "2e+06": NCCL skips a 1-rank in-place all-reduce
    assert parsed["out_of_bounds"] == 0 and parsed["avg_busbw_gbps"] == 0 and parsed["concluded"]
    assert parsed["errors"] == []


def test_one_gpu_passes_on_correctness_and_says_why_the_bandwidth_is_not_checked():
    result = nt.judge(nt.parse(output("1xH200-device")), gpus=1, thresholds={"H200": 300})
    assert result["status"] == "passed" and result["problems"] == []
    bw = result["bandwidth"]
    assert bw["checked"] is False and bw["reason"] == nt.ONE_GPU_REASON
    assert (bw["busbw_gbps"], bw["size_bytes"]) == (0.0, 4 << 30)
    assert bw["algbw_gbps"] < 3000  # out-of-place, not the in-place artefact
    assert (bw["threshold_key"], bw["threshold_gbps"]) == ("H200", 300.0)
    assert "bandwidth not checked: one GPU" in nt.summary(result)


def test_eight_gpus_above_the_threshold_pass():
    result = nt.judge(nt.parse(output("8xH100-healthy")), gpus=8, thresholds={"H100": 340, "H100 80GB HBM3": 345})
    assert result["status"] == "passed", result["problems"]
    bw = result["bandwidth"]
    assert bw["checked"] and bw["threshold_key"] == "H100 80GB HBM3"  # the longest fitting key
    assert (bw["busbw_gbps"], bw["algbw_gbps"]) == (350.03, 200.02)  # the lower of in-place and out-of-place at 4 GiB
    assert result["ranks"] == 8 and len(result["sizes"]) == 5
    assert result["sizes"][-1] == {"size_bytes": 4 << 30, "busbw_gbps": 354.53, "algbw_gbps": 202.59,
                                   "time_us": 21200.6, "in_place_busbw_gbps": 350.03, "wrong": 0}  # fmt: skip


def test_slow_fabric_fails_with_the_figures():
    result = nt.judge(nt.parse(output("8xH100-slow")), gpus=8, thresholds={"H100": 340})
    assert result["status"] == "failed"
    assert result["problems"] == [
        "bus bandwidth 119.66 GB/s at 4 GiB is below the 340 GB/s expected of H100 over 8 GPUs"
    ]


def test_wrong_values_and_out_of_bounds_fail_whatever_the_bandwidth():
    result = nt.judge(nt.parse(output("8xH100-wrong")), gpus=8, thresholds={})
    assert result["problems"] == [
        "3 wrong value(s) at 1 GiB (data corrupted on the way)",
        "1 out-of-bounds value(s) (data corrupted on the way)",
    ]
    assert result["bandwidth"]["reason"] == "no bus-bandwidth threshold for NVIDIA H100 80GB HBM3 (thresholds: none)"


def test_a_run_that_stops_on_an_nccl_error_fails_with_its_message():
    parsed = nt.parse(output("8xH100-nccl-error"))
    assert parsed["rows"] == [] and len(parsed["devices"]) == 8
    result = nt.judge(parsed, gpus=8, thresholds={"H100": 340}, returncode=2)
    assert result["status"] == "failed"
    assert result["problems"][0].startswith("all_reduce_perf did not finish (exit status 2, 0 size(s) measured): ")
    assert "Test NCCL failure common.cu:1287 'unhandled cuda error" in result["problems"][0]


def test_wrong_gpu_count_and_empty_output():
    result = nt.judge(nt.parse(output("8xH100-healthy")), gpus=4, thresholds={})
    assert "all_reduce_perf ran on 8 GPU(s), the node has 4" in result["problems"]
    empty = nt.judge(nt.parse(""), gpus=2, thresholds={}, returncode=127)
    assert empty["problems"] == [
        "all_reduce_perf did not finish (exit status 127, 0 size(s) measured): no error line printed"
    ]


def test_older_output_format_reads():
    parsed = nt.parse(output("2xA100-old-format"))
    assert parsed["gpus_per_thread"] == 2 and [d["model"] for d in parsed["devices"]] == ["NVIDIA A100-SXM4-40GB"] * 2
    assert parsed["rows"][0]["root"] is None and parsed["rows"][0]["out_of_place"]["wrong"] == 0
    result = nt.judge(parsed, gpus=2, thresholds={"A100": 150})
    assert result["status"] == "passed" and result["bandwidth"]["busbw_gbps"] == 162.41


@pytest.mark.parametrize(
    ("models", "found"),
    [
        (["NVIDIA H100 80GB HBM3"], ("h100", 300.0)),  # case-insensitive
        (["GH100 [H100 SXM5 80GB]"], ("h100", 300.0)),  # a pci.ids name, from gpu_facts
        (["NVIDIA H200"], None),
        (["NVIDIA H100 80GB HBM3", "NVIDIA L40S"], ("L40S", 20.0)),  # mixed: the lowest
    ],
)
def test_threshold_lookup(models, found):
    assert nt.threshold_for(models, {"h100": 300, "L40S": 20}) == found


def test_metrics_say_what_happened():
    result = nt.judge(nt.parse(output("8xH100-healthy")), gpus=8, thresholds={"H100": 340})
    text = nt.prometheus(result, 1796335707.5)
    assert 'gpu_validate_burn_in_status{status="passed"} 1' in text
    assert (
        'gpu_validate_burn_in_bus_bandwidth_gbps{model="NVIDIA H100 80GB HBM3",size_bytes="4294967296"} 350.03' in text
    )
    assert 'gpu_validate_burn_in_bus_bandwidth_threshold_gbps{model="NVIDIA H100 80GB HBM3"} 340.0' in text
    assert "gpu_validate_burn_in_last_run_timestamp_seconds 1796335707.5" in text
    assert text.count("# TYPE gpu_validate_burn_in_status gauge") == 1
    skipped = nt.prometheus(nt.skipped("no nvcc", 8), 1.0)
    assert 'gpu_validate_burn_in_status{status="skipped"} 1' in skipped and "bandwidth" not in skipped


# --- the module ---------------------------------------------------------------------


def run_module(args: dict, capsys) -> dict:
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def fake_binary(tmp_path: Path, fixture: str, rc: int = 0) -> str:
    script = tmp_path / "all_reduce_perf"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat {FIXTURES}/all_reduce_perf-{fixture}.txt\nexit {rc}\n'
    )
    script.chmod(0o755)
    return str(script)


def test_module_runs_judges_and_writes_report_metrics_and_log(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"ok": True, "gpu_count": 8}))  # what gpu_validate wrote before
    args = {"binary": fake_binary(tmp_path, "8xH100-healthy"), "gpus": 8, "min_busbw_gbps": {"H100": "340"},
            "report_path": str(report), "textfile_path": str(tmp_path / "m" / "burn.prom"),
            "log_path": str(tmp_path / "all_reduce_perf.log")}  # fmt: skip
    result = run_module(args, capsys)
    assert not result.get("failed") and result["changed"] is False
    assert result["burn_in"]["status"] == "passed" and result["burn_in"]["exit_status"] == 0
    assert (tmp_path / "argv").read_text().split() == ["-b", "256M", "-e", "4G", "-f", "2", "-g", "8", "-n", "20",
                                                       "-w", "5", "-c", "1", "-T", "600"]  # fmt: skip
    written = json.loads(report.read_text())
    assert written["gpu_count"] == 8 and written["burn_in"]["bandwidth"]["busbw_gbps"] == 350.03
    assert 'status="passed"} 1' in (tmp_path / "m" / "burn.prom").read_text()
    assert "Collective test concluded" in (tmp_path / "all_reduce_perf.log").read_text()


def test_module_fails_on_a_slow_fabric(tmp_path, capsys):
    args = {"binary": fake_binary(tmp_path, "8xH100-slow"), "gpus": 8, "min_busbw_gbps": {"H100": 340}}
    result = run_module(args, capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("NCCL burn-in failed: all-reduce over 8 GPU(s) (NVIDIA H100 80GB HBM3)")
    assert "problem: bus bandwidth 119.66 GB/s at 4 GiB is below the 340 GB/s" in result["msg"]


def test_module_records_a_skip_and_never_calls_it_a_pass(tmp_path, capsys):
    prom = tmp_path / "burn.prom"
    args = {"skip_reason": "no CUDA compiler: /usr/local/cuda/bin/nvcc is missing", "gpus": 8,
            "report_path": str(tmp_path / "r.json"), "textfile_path": str(prom)}  # fmt: skip
    result = run_module(args, capsys)
    assert not result.get("failed")
    assert result["msg"] == "NCCL burn-in skipped: no CUDA compiler: /usr/local/cuda/bin/nvcc is missing"
    assert json.loads((tmp_path / "r.json").read_text())["burn_in"]["status"] == "skipped"
    assert 'status="passed"} 0' in prom.read_text() and 'status="skipped"} 1' in prom.read_text()


def test_module_check_mode_runs_and_writes_nothing(tmp_path, capsys):
    args = {"binary": fake_binary(tmp_path, "8xH100-healthy"), "gpus": 8, "report_path": str(tmp_path / "r.json"),
            "_ansible_check_mode": True}  # fmt: skip
    result = run_module(args, capsys)
    assert result["changed"] is False and "check mode" in result["msg"]
    assert not (tmp_path / "argv").exists() and not (tmp_path / "r.json").exists()


def test_module_refuses_a_threshold_that_is_no_number(tmp_path, capsys):
    result = run_module({"binary": fake_binary(tmp_path, "8xH100-healthy"), "gpus": 8,
                         "min_busbw_gbps": {"H100": "fast"}}, capsys)  # fmt: skip
    assert result["failed"] and result["msg"] == "min_busbw_gbps['H100'] is 'fast', not a number of GB/s"
