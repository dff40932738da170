#!/usr/bin/python
"""Check every NVIDIA GPU of a host through NVML; fail with a per-GPU table."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_gpu_validate
short_description: Health of a host's NVIDIA GPUs, read through NVML (nvidia-ml-py)
description:
  - In one NVML session, checks the driver version against the pin, the GPU count,
    persistence mode, ECC (on, no uncorrectable errors since the last reset), row remapping
    (no pending remap, no failure), the PCIe link width (at its maximum; the generation is
    reported only, since GPUs lower it when idle), temperature and power below their
    limits, MIG mode, and NVLink where the GPU has links (each link's state, the number of
    links up, and the replay, recovery and CRC (flit, data) error counters of the links
    that are up, against the node's topology, NVSwitches or not).
  - Fails with a table of every GPU (missing ones included) and the list of problems.
  - Reads only; C(changed) is always false. The JSON report, when O(report_path) is set,
    is written outside check mode as the check's output.
  - The same checks run outside Ansible with C(scripts/gpu-validate).
requirements:
  - nvidia-ml-py on the Python that runs the module, and the NVIDIA driver loaded.
options:
  expected_count:
    description: GPUs the host must have; V(0) skips this check.
    type: int
    default: 0
  driver_version:
    description: Driver version the host must run, exact (580.95.05) or a branch (580); empty skips.
    type: str
    default: ""
  persistence_mode:
    description: Persistence mode must be on.
    type: bool
    default: true
  ecc:
    description: ECC must be on, with no uncorrectable error since the last reset.
    type: bool
    default: true
  max_temperature_c:
    description: GPU temperature must be below this (Celsius); V(0) skips.
    type: int
    default: 85
  max_power_fraction:
    description: Power draw must be at most this fraction of the enforced power limit; V(0) skips.
    type: float
    default: 0.95
  mig_mode:
    description: MIG mode the GPUs must be in (where they support MIG).
    type: str
    choices: [disabled, enabled, any]
    default: disabled
  pcie_width:
    description: The PCIe link must run at its full width.
    type: bool
    default: true
  nvlink_required:
    description: Every NVLink must be up (hosts with NVSwitches); otherwise down links are reported only.
    type: bool
    default: false
  nvlink_links_per_gpu:
    description: NVLinks each GPU must have up (18 on an HGX H100/H200 board); V(0) does not count them.
    type: int
    default: 0
  nvlink_max_errors:
    description:
      - NVLink errors tolerated per GPU (all its links, since the driver loaded), per counter; V(-1) skips a counter.
    type: dict
    suboptions:
      replay:
        description: Replays (the link layer retransmitted).
        type: int
        default: 100
      recovery:
        description: Recoveries (the link was retrained).
        type: int
        default: 0
      crc_flit:
        description: Flow-control unit CRC errors.
        type: int
        default: 100
      crc_data:
        description: Data CRC errors.
        type: int
        default: 0
  nvswitch_count:
    description: NVSwitches the node has (gpu_facts), recorded in the report's topology.
    type: int
  report_path:
    description: Where to write the JSON report on the host; empty for none.
    type: path
attributes:
  check_mode:
    support: full
author: llm-cluster toolkit
"""

EXAMPLES = r"""
- name: Validate the GPUs
  nvidia_gpu_validate:
    expected_count: 8
    driver_version: "580.95.05"
    nvlink_required: true
    nvlink_links_per_gpu: 18
    nvswitch_count: 4
    report_path: /var/lib/gpu-validate/report.json
"""

RETURN = r"""
report:
  description: Every GPU's values, failures and information, the problems, and timings.
  returned: when NVML could be used
  type: dict
table:
  description: The per-GPU table as text.
  returned: when NVML could be used
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.nvidia_gpu import (
    NVLINK_MAX_ERRORS,
    Expectations,
    NvmlUnavailable,
    table,
    validate,
    write_report,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "expected_count": {"type": "int", "default": 0},
            "driver_version": {"type": "str", "default": ""},
            "persistence_mode": {"type": "bool", "default": True},
            "ecc": {"type": "bool", "default": True},
            "max_temperature_c": {"type": "int", "default": 85},
            "max_power_fraction": {"type": "float", "default": 0.95},
            "mig_mode": {"type": "str", "default": "disabled", "choices": ["disabled", "enabled", "any"]},
            "pcie_width": {"type": "bool", "default": True},
            "nvlink_required": {"type": "bool", "default": False},
            "nvlink_links_per_gpu": {"type": "int", "default": 0},
            "nvlink_max_errors": {
                "type": "dict",
                "options": {name: {"type": "int", "default": limit} for name, limit in NVLINK_MAX_ERRORS.items()},
            },
            "nvswitch_count": {"type": "int"},
            "report_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    want = Expectations(
        count=p["expected_count"] or None,
        driver_version=p["driver_version"],
        persistence_mode=p["persistence_mode"],
        ecc=p["ecc"],
        max_temperature_c=p["max_temperature_c"],
        max_power_fraction=p["max_power_fraction"],
        mig_mode=p["mig_mode"],
        pcie_width=p["pcie_width"],
        nvlink_required=p["nvlink_required"],
        nvlink_links_per_gpu=p["nvlink_links_per_gpu"],
        nvlink_max_errors=p["nvlink_max_errors"] or dict(NVLINK_MAX_ERRORS),
        nvswitch_count=p["nvswitch_count"],
    )
    try:
        report = validate(want)
    except NvmlUnavailable as exc:
        module.fail_json(changed=False, msg=f"GPU validation could not run: {exc}. Is the NVIDIA driver loaded?")
    text = table(report)
    if p["report_path"] and not module.check_mode:
        write_report(report, p["report_path"])
    result = {"changed": False, "report": report, "table": text, "report_path": p["report_path"]}
    if not report["ok"]:
        # The whole report is in the file; the failure shows the table and the problems.
        module.fail_json(
            msg=f"GPU validation failed: {len(report['problems'])} problem(s) on {report['gpu_count']} GPU(s)\n{text}",
            changed=False,
            problems=report["problems"],
            report_path=p["report_path"],
        )
    module.exit_json(msg=f"{report['gpu_count']} GPU(s) healthy\n{text}", **result)


if __name__ == "__main__":
    main()
