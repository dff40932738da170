"""The GPU layer on the lab: Docker on every container host, and the GPU roles skipping the
GPU nodes, which have no NVIDIA device here."""

from __future__ import annotations

import json

import pytest
from conftest import Lab

pytestmark = pytest.mark.usefixtures("converged")

# A tiny image made from the host's own dash and libc: nothing can be pulled in the lab.
PROBE = (
    "docker image inspect local/gpu-probe:1 >/dev/null 2>&1 || "
    "tar -C / -ch bin/dash lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2 "
    "| docker import - local/gpu-probe:1 >/dev/null"
)
NO_GPU_TASK = "gpu_facts : GPU facts | No NVIDIA GPU found (the GPU roles skip this host)"


def test_docker_runs_containers_on_every_container_host(converged: Lab):
    hosts = converged.hosts("container_hosts")
    assert hosts, "the lab has no container_hosts"
    for host in hosts:
        # Docker's settings (live restore, log rotation, overlay2) are molecule/gpu's to assert.
        converged.exec(host, PROBE)
        out = converged.exec(host, "docker run --rm local/gpu-probe:1 /bin/dash -c 'echo ok'").stdout.strip()
        assert out == "ok", host


def test_no_docker_where_no_containers_run(converged: Lab):
    for host in set(converged.hosts()) - set(converged.hosts("container_hosts")):
        assert converged.exec(host, "command -v dockerd", check=False).returncode != 0, host


def test_gpu_roles_skip_gpu_nodes_without_gpu(converged: Lab):
    for host in converged.hosts("gpu_nodes"):
        fact = json.loads(converged.exec(host, "cat /etc/ansible/facts.d/nvidia_gpu.fact").stdout)
        assert fact["count"] == 0 and fact["source"] == "none", host
        driver = converged.exec(host, "dpkg-query -W 'nvidia-*' 'cuda-*' 2>/dev/null", check=False).stdout
        assert driver.strip() == "", f"{host}: {driver}"
        assert converged.exec(host, "test -e /etc/apt/sources.list.d/nvidia-cuda.list", check=False).returncode != 0
    run = converged.runs.get("converge")
    if run is None:
        pytest.skip("lab reused (LAB_REUSE=1): the converge's messages are not available")
    messages = {
        host: result.get("msg", "")
        for play in run.data.get("plays", [])
        for task in play.get("tasks", [])
        if task["task"]["name"] == NO_GPU_TASK
        for host, result in task["hosts"].items()
    }
    for host in converged.hosts("gpu_nodes"):
        assert "no NVIDIA GPU found" in messages.get(host, ""), messages
