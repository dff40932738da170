#!/usr/bin/python
"""Find NVIDIA GPUs and NVSwitches from PCI (no driver needed), NVML where PCI is hidden."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_gpu_facts
short_description: NVIDIA GPUs and NVSwitches of a host, from PCI or NVML
description:
  - Reads the PCI devices under C(ROOT/sys/bus/pci/devices) and counts those of vendor
    0x10de that are display controllers (GPUs) or bridges (NVSwitches). No driver is needed.
  - Where PCI shows no NVIDIA GPU (no GPU, or a sandbox that hides PCI sysfs), asks NVML
    through nvidia-ml-py, if a driver and the binding are there.
  - Also reports the loaded driver's version (C(/sys/module/nvidia/version)) and whether
    UEFI Secure Boot is on.
  - Reads only; sets the fact C(nvidia_gpu).
options:
  root:
    description: Where the host's filesystem starts (tests point this at a fixture tree).
    type: path
    default: /
  nvml_fallback:
    description: Ask NVML when PCI shows no NVIDIA GPU.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
author: llm-cluster toolkit
"""

EXAMPLES = r"""
- name: Find the GPUs
  nvidia_gpu_facts:

- name: Show them
  ansible.builtin.debug:
    msg: "{{ ansible_facts.nvidia_gpu.count }} x {{ ansible_facts.nvidia_gpu.models | join(', ') }}"
"""

RETURN = r"""
ansible_facts:
  description: C(nvidia_gpu) with count, models, gpus (pci_address, device_id, model),
    nvswitch_count, nvswitch, source (pci, nvml or none), driver_loaded, secure_boot,
    pci_readable and nvml (what NVML said, where it was asked).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.nvidia_gpu import discover


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "nvml_fallback": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    facts = discover(module.params["root"], module.params["nvml_fallback"])
    module.exit_json(changed=False, ansible_facts={"nvidia_gpu": facts})


if __name__ == "__main__":
    main()
