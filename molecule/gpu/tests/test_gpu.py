"""Behaviour of the GPU layer on a converged GPU node (fixture GPUs, stand-in NVIDIA packages).

Read only. What needs a tampered node (a broken daemon.json, a reboot without a loadable
driver, a manual driver upgrade, a PCIe board) is in side_effect.yml, which leaves the node
converged; the check-mode run below proves it did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from toolkit.ansible_run import run_playbook

ROOT = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
GPU_PLAYBOOK = ROOT / "playbooks" / "gpu.yml"
# A tiny image made from the node's own dash and libc: nothing can be pulled here.
PROBE_IMAGE = "local/gpu-probe:1"


def gpu_playbook(*args: str):
    return run_playbook(
        GPU_PLAYBOOK, os.environ["MOLECULE_INVENTORY_FILE"], *args, env={"ANSIBLE_CACHE_PLUGIN": "memory"}
    )


@pytest.fixture(scope="module")
def probe_image(host):
    host.run_expect(
        [0],
        f"docker image inspect {PROBE_IMAGE} >/dev/null 2>&1 || "
        "tar -C / -ch bin/dash lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2 "
        f"| docker import -c 'CMD [\"/bin/dash\"]' - {PROBE_IMAGE}",
    )
    return PROBE_IMAGE


def daemon_json(host) -> dict:
    return json.loads(host.file("/etc/docker/daemon.json").content_string)


# --- container_runtime --------------------------------------------------------------


def test_daemon_json_merged_keeping_the_operators_keys(host):
    config = daemon_json(host)
    assert config["default-shm-size"] == "1G"  # the operator's top-level key
    assert config["log-opts"]["labels"] == "com.example.team"  # the operator's nested key
    assert config["log-opts"]["max-size"] == "50m"
    assert config["log-opts"]["max-file"] == "5"
    assert config["live-restore"] is True


def test_docker_runs_with_live_restore_and_rotation(host):
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LiveRestoreEnabled"] is True
    assert info["LoggingDriver"] == "json-file"
    assert info["Driver"] == "overlay2"
    assert host.service("docker").is_enabled


def test_a_container_runs_and_its_log_rotates(host, probe_image):
    out = host.check_output(f"docker run --name gpu-probe-log {probe_image} /bin/dash -c 'echo hello'")
    try:
        assert out == "hello"
        log_config = json.loads(
            host.check_output("docker inspect --format '{{json .HostConfig.LogConfig}}' gpu-probe-log")
        )
        assert log_config["Type"] == "json-file"
        assert log_config["Config"] == {"labels": "com.example.team", "max-file": "5", "max-size": "50m"}
    finally:
        host.run("docker rm -f gpu-probe-log")


# --- gpu_facts ----------------------------------------------------------------------


def test_gpus_and_nvswitches_recorded_as_local_fact(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/nvidia_gpu.fact").content_string)
    assert fact["source"] == "pci"
    assert fact["count"] == 8
    assert fact["models"] == ["GH100 [H100 SXM5 80GB]"]
    assert fact["nvswitch_count"] == 4


# --- nvidia_driver ------------------------------------------------------------------

DRIVER = "580.95.05-1"
DRIVER_HELD = ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced", "nvidia-fabricmanager",
               "libnvidia-nscq"]  # fmt: skip


def installed(host, pattern: str = "") -> dict[str, str]:
    out = host.check_output("dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n'")
    return {f[1]: f[2] for f in (line.split() for line in out.splitlines()) if f[0][1] == "i" and pattern in f[1]}


def driver_packages(host) -> dict[str, str]:
    return {
        name: version
        for name, version in installed(host).items()
        if name.startswith(("nvidia-", "libnvidia-", "libcuda")) and "container" not in name
    }


def test_driver_upgraded_in_place_from_the_held_570_branch(host):
    packages = driver_packages(host)
    assert set(packages.values()) == {DRIVER}, packages  # dependencies included: nothing of 570 is left
    assert "nvidia-kernel-support" in packages and "libcuda1" in packages


def test_driver_pinned_and_held_although_a_newer_release_exists(host):
    assert set(host.check_output("apt-mark showhold").split()) >= set(DRIVER_HELD)
    policy = host.check_output("apt-cache policy nvidia-driver-cuda")
    assert "580.126.09-1" in policy  # the newer release is there ...
    assert f"Candidate: {DRIVER}" in policy  # ... but the pin wins
    upgrade = host.check_output("apt-get -s -o Debug::NoLocking=1 dist-upgrade")
    assert "nvidia" not in upgrade and "libcuda" not in upgrade, upgrade


def test_kernel_headers_and_dkms_for_the_running_kernel(host):
    kernel = host.check_output("uname -r")
    assert f"linux-headers-{kernel}" in installed(host)
    assert "dkms" in installed(host)


def test_fabric_manager_with_nvswitches_locked_to_the_driver(host):
    assert installed(host)["nvidia-fabricmanager"] == DRIVER
    assert host.service("nvidia-fabricmanager").is_enabled


def test_persistenced_enabled_in_persistence_mode(host):
    assert host.service("nvidia-persistenced").is_enabled
    unit = host.check_output("systemctl cat nvidia-persistenced")
    assert "--persistence-mode" in unit.split("ExecStart=\n")[-1]


def test_reboot_recorded_not_done_in_a_container(host):
    assert "580.95.05" in host.file("/run/nvidia-driver.reboot-required").content_string
    assert host.file("/run/reboot-required").exists


# --- cuda_toolkit -------------------------------------------------------------------


def test_cuda_nccl_cudnn_pinned_and_matching(host):
    packages = installed(host)
    assert packages["cuda-toolkit-13-0"] == "13.0.2-1"  # 13.0.3-1 exists
    assert packages["libnccl2"] == packages["libnccl-dev"] == "2.28.3-1+cuda13.0"  # built for CUDA 13.0
    assert packages["libcudnn9-cuda-13"] == packages["libcudnn9-dev-cuda-13"] == "9.13.0.50-1"
    held = host.check_output("apt-mark showhold").split()
    assert {"cuda-toolkit-13-0", "libnccl2", "libcudnn9-cuda-13"} <= set(held)


def test_cuda_on_the_path_of_login_shells(host):
    assert host.check_output("bash -lc 'command -v nvcc'") == "/usr/local/cuda-13.0/bin/nvcc"
    assert host.check_output("bash -lc 'echo $CUDA_HOME'") == "/usr/local/cuda-13.0"


# --- nvidia_container_toolkit -------------------------------------------------------


def test_toolkit_pinned_and_docker_20_gets_the_runtime_hook_mode(host):
    assert installed(host)["nvidia-container-toolkit"] == "1.18.0-1"  # 1.18.1-1 exists
    fact = json.loads(host.file("/etc/ansible/facts.d/nvidia_container_toolkit.fact").content_string)
    assert fact["docker_version"].startswith("20.10")
    assert fact["mode"] == "legacy"  # Docker 20.10 has no CDI
    assert fact["docker_gpu_args"] == ["--gpus", "all"]


def test_runtime_merged_into_daemon_json_next_to_the_other_keys(host):
    config = daemon_json(host)
    assert config["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert config["default-shm-size"] == "1G" and config["live-restore"] is True
    assert "nvidia" in json.loads(host.check_output("docker info --format '{{json .Runtimes}}'"))


def test_gpu_containers_start_through_the_runtime_and_the_hook(host, probe_image):
    # The stand-in runtime passes to runc and the stand-in hook lets the container start:
    # what is real here is Docker's configuration and its --gpus path.
    assert host.check_output(f"docker run --rm --runtime=nvidia {probe_image} /bin/dash -c 'echo runtime'") == "runtime"
    assert host.check_output(f"docker run --rm --gpus all {probe_image} /bin/dash -c 'echo gpus'") == "gpus"


def test_cdi_spec_names_the_installed_driver(host):
    spec = host.file("/etc/cdi/nvidia.yaml").content_string
    assert "kind: nvidia.com/gpu" in spec
    assert "libcuda.so.580.95.05" in spec


# --- nvml_collector (observability layer; dcgm-exporter is off on this node) ---------

NVML_VENV = "/opt/nvml-collector/venv"
NVML_TEXTFILE = "/var/lib/prometheus/node-exporter/nvml.prom"


def test_nvml_collector_has_the_pinned_binding_in_its_own_venv(host):
    version = host.check_output(
        f"{NVML_VENV}/bin/python -c 'import importlib.metadata as m, pynvml; print(m.version(\"nvidia-ml-py\"))'"
    )
    assert version == "13.615.71"


def test_nvml_collector_runs_on_its_timer(host):
    timer = host.service("nvml-collector.timer")
    assert timer.is_enabled and timer.is_running
    assert host.run("systemd-analyze verify --man=no /etc/systemd/system/nvml-collector.service").rc == 0


def test_nvml_collector_tells_prometheus_when_nvml_cannot_load(host):
    """The stand-in driver's libnvidia-ml.so is empty: the run fails, and its text file says why."""
    host.run_expect([0], f"rm -f {NVML_TEXTFILE}")
    run = host.run("systemctl start nvml-collector.service")
    assert run.rc != 0, "a failed collection is a failed unit (systemctl --failed lists it)"
    metrics = host.file(NVML_TEXTFILE)
    assert metrics.mode == 0o644
    assert "# TYPE nvml_collector_up gauge\nnvml_collector_up 0\n" in metrics.content_string
    assert "DCGM_FI_DEV_GPU_TEMP" not in metrics.content_string  # no readings made up


# --- the layer as a whole ----------------------------------------------------------


def test_check_mode_on_the_converged_node_reports_nothing_and_validation_waits(host):
    run = gpu_playbook("--check")
    assert run.rc == 0, run.failures()
    assert run.changed_tasks() == {}, run.changed_tasks()
    # The driver installed by the converge is not loaded (no reboot in a container).
    assert "the GPUs run the new driver only after a reboot" in run.stdout
