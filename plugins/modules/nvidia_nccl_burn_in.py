#!/usr/bin/python
"""Run NCCL's all-reduce test over every GPU of a node and judge it (the gpu_validate burn-in)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_nccl_burn_in
short_description: All-reduce burn-in over every GPU of a node with nccl-tests' all_reduce_perf
description:
  - Runs C(all_reduce_perf) (NVIDIA nccl-tests) once over O(gpus) GPUs of the node, reads its
    output, and fails when it did not finish, ran on another number of GPUs, produced wrong
    values, or when the bus bandwidth at the largest size is below the threshold for the
    GPU model (O(min_busbw_gbps)).
  - On one GPU nothing crosses a link (bus bandwidth 0 by definition), so the bandwidth is
    not checked and the result says so; correctness still is.
  - Where nccl-tests could not be had, O(skip_reason) records why instead of running, and the
    result is C(skipped) with that reason, never C(passed). Whether a skip fails the run is the
    caller's decision (gpu_validate fails unless gpu_validate_burn_in_allow_skip).
  - The result goes under C(burn_in) into the JSON report at O(report_path) (gpu_validate's),
    as Prometheus metrics into O(textfile_path), and the program's output into O(log_path).
  - C(changed) is always false (the run measures; the files it writes are its output). In check
    mode nothing runs and nothing is written.
requirements:
  - all_reduce_perf built against the node's CUDA and NCCL, and the NVIDIA driver loaded.
options:
  binary:
    description: Path of all_reduce_perf; required unless O(skip_reason) is set.
    type: path
  skip_reason:
    description: Why the burn-in cannot run on this node; non-empty records a skip instead of a run.
    type: str
    default: ""
  gpus:
    description: GPUs of the node; the all-reduce runs over all of them (C(-g)).
    type: int
    required: true
  min_bytes:
    description: Smallest message size (C(-b), nccl-tests' notation, e.g. 256M).
    type: str
    default: 256M
  max_bytes:
    description: Largest message size (C(-e)); its bus bandwidth is the one compared.
    type: str
    default: 4G
  step_factor:
    description: Size multiplier between measurements (C(-f)).
    type: int
    default: 2
  iters:
    description: Timed iterations per size (C(-n)).
    type: int
    default: 20
  warmup_iters:
    description: Untimed iterations per size first (C(-w)).
    type: int
    default: 5
  timeout_s:
    description: all_reduce_perf stops a test that runs longer (C(-T), seconds).
    type: int
    default: 600
  min_busbw_gbps:
    description:
      - Bus bandwidth (GB/s) the node must reach, by GPU model. A key equal to the model name
        (as CUDA names it, e.g. C(NVIDIA H100 80GB HBM3)) wins, else the longest key found in
        it (C(H100)). No fitting key, and the bandwidth is reported, not checked.
    type: dict
    default: {}
  models:
    description: GPU model names to look the threshold up by where all_reduce_perf printed none.
    type: list
    elements: str
    default: []
  report_path:
    description: JSON report to add the result to (key C(burn_in)); empty for none.
    type: path
  textfile_path:
    description: Prometheus text file for node_exporter's textfile collector; empty for none.
    type: path
  log_path:
    description: Where all_reduce_perf's output is kept; empty for nowhere.
    type: path
attributes:
  check_mode:
    support: full
author: llm-cluster toolkit
"""

EXAMPLES = r"""
- name: All-reduce over the node's 8 GPUs
  nvidia_nccl_burn_in:
    binary: /opt/llm-cluster/nccl-tests-2.19.6/build/all_reduce_perf
    gpus: 8
    min_busbw_gbps: {H100: 350}
    report_path: /var/lib/gpu-validate/report.json
    textfile_path: /var/lib/prometheus/node-exporter/gpu_validate_burn_in.prom
"""

RETURN = r"""
burn_in:
  description: The result (status passed, failed or skipped; problems; bandwidth; sizes).
  returned: always, except in check mode
  type: dict
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.nccl_tests import judge, parse, prometheus, skipped, summary
from ansible.module_utils.nvidia_gpu import write_atomic, write_report


def add_to_report(path: str, result: dict) -> None:
    """gpu_validate's report (written just before) with the burn-in under `burn_in`."""
    report: dict = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                report = json.load(handle)
        except ValueError:
            report = {"previous_report": "unreadable, replaced"}
    report["burn_in"] = result
    write_report(report, path)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "binary": {"type": "path"},
            "skip_reason": {"type": "str", "default": ""},
            "gpus": {"type": "int", "required": True},
            "min_bytes": {"type": "str", "default": "256M"},
            "max_bytes": {"type": "str", "default": "4G"},
            "step_factor": {"type": "int", "default": 2},
            "iters": {"type": "int", "default": 20},
            "warmup_iters": {"type": "int", "default": 5},
            "timeout_s": {"type": "int", "default": 600},
            "min_busbw_gbps": {"type": "dict", "default": {}},
            "models": {"type": "list", "elements": "str", "default": []},
            "report_path": {"type": "path"},
            "textfile_path": {"type": "path"},
            "log_path": {"type": "path"},
        },
        required_if=[("skip_reason", "", ["binary"])],
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, msg="check mode: the NCCL burn-in does not run")
    thresholds = {}
    for model, value in p["min_busbw_gbps"].items():
        try:
            thresholds[str(model)] = float(value)
        except (TypeError, ValueError):
            module.fail_json(msg=f"min_busbw_gbps[{model!r}] is {value!r}, not a number of GB/s")

    output = ""
    if p["skip_reason"]:
        result = skipped(p["skip_reason"], p["gpus"])
    else:
        argv = [p["binary"], "-b", p["min_bytes"], "-e", p["max_bytes"], "-f", str(p["step_factor"]),
                "-g", str(p["gpus"]), "-n", str(p["iters"]), "-w", str(p["warmup_iters"]), "-c", "1",
                "-T", str(p["timeout_s"])]  # fmt: skip
        began = time.monotonic()
        rc, out, err = module.run_command(argv)
        output = out + (f"\n--- stderr\n{err}" if err else "")
        result = judge(parse(out + "\n" + err), p["gpus"], thresholds, p["models"], rc)
        result |= {"command": " ".join(argv), "exit_status": rc, "duration_s": round(time.monotonic() - began, 1)}
    result["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    if p["log_path"] and output:
        write_atomic(p["log_path"], output)
    if p["report_path"]:
        add_to_report(p["report_path"], result)
    if p["textfile_path"]:
        write_atomic(p["textfile_path"], prometheus(result, time.time()))

    text = summary(result)
    if result["status"] == "failed":
        module.fail_json(msg=text, changed=False, burn_in=result)
    module.exit_json(msg=text, changed=False, burn_in=result)


if __name__ == "__main__":
    main()
