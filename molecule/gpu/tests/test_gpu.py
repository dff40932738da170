"""Behaviour of the GPU layer on a converged GPU node (fixture GPUs, stand-in NVIDIA packages)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])))
from tests.helpers.ansible_run import run_playbook

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


def test_broken_daemon_json_is_refused_and_left_untouched(host):
    original = host.file("/etc/docker/daemon.json").content_string
    host.run_expect(
        [0], "cp /etc/docker/daemon.json /root/daemon.json.good && printf '{\"debug\": tru' > /etc/docker/daemon.json"
    )
    try:
        run = gpu_playbook("--tags", "container_runtime")
        assert run.rc != 0
        messages = " ".join(m for msgs in run.failures().values() for m in msgs)
        assert "/etc/docker/daemon.json is not valid JSON" in messages, run.stdout[-3000:]
        assert host.file("/etc/docker/daemon.json").content_string == '{"debug": tru'
    finally:
        host.run_expect([0], "cp /root/daemon.json.good /etc/docker/daemon.json")
    assert host.file("/etc/docker/daemon.json").content_string == original
