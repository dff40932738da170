"""The serving unit as the role renders it, for both engines (no host needed).

Renders roles/llm_serving's unit template on the controller with the role's own defaults
and internal variables, for trtllm-serve and for Triton, and checks the docker run line a
GPU node would get: image by digest, no pull, GPUs, ports, limits, the server command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "llm_serving"
DIGEST = "sha256:" + "b" * 64

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - ansible.builtin.set_fact:
        __llm_serving_i: "{{{{ llm_serving_instances | llm_serving_plan(settings) | first }}}}"
      vars:
        settings:
          engine: "{{{{ llm_serving_engine }}}}"
          engines: "{{{{ _llm_serving_engines }}}}"
          registry: mirror.example:5000
          repository: "{{{{ llm_serving_image_repository }}}}"
          digest: "{DIGEST}"
          gpu_mode: "{{{{ llm_serving_gpu_mode }}}}"
          port_first: 8000
          port_last: 8015
          strategy: blue_green
          llm_api_options: "{{{{ llm_serving_llm_api_options }}}}"
    - ansible.builtin.copy:
        content: "{{{{ lookup('ansible.builtin.template', template) }}}}"
        dest: "{{{{ out }}}}"
        mode: "0644"
      vars:
        template: "{role}/templates/etc/systemd/system/llm-serving-instance.service.j2"
        __llm_serving_c: green
        __llm_serving_manifest_sha256: "0123"
"""


def render(tmp_path: Path, **extra: object) -> str:
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, DIGEST=DIGEST))
    out = tmp_path / "unit.service"
    env = dict(
        os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FILTER_PLUGINS=str(ROOT / "plugins" / "filter")
    )
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-i", "localhost,",
         "-e", json.dumps({"out": str(out), "ansible_python_interpreter": sys.executable, **extra})],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out.read_text()


INSTANCE = {"name": "chat", "model_dir": "/srv/models/llama", "port": 8000, "gpus": [0, 1], "gpus_green": [2, 3]}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("units")


def test_trtllm_unit_runs_the_pinned_image_with_its_gpus_and_limits(tmp):
    unit = render(tmp, llm_serving_instances=[INSTANCE | {"args": ["--tp_size", "2"]}])
    run = " ".join(unit.split("\\\n"))
    assert "docker run --rm --pull never --name llm-serving-chat-green" in run
    assert f"mirror.example:5000/nvidia/tensorrt-llm/release@{DIGEST}" in run
    assert "--gpus '\"device=2,3\"'" in run  # green colour: gpus_green
    assert "--ipc host" in run and "--ulimit memlock=-1" in run and "--ulimit stack=67108864" in run
    assert "--publish 0.0.0.0:8001:8000" in run
    assert "--volume /srv/models/llama:/models/chat:ro" in run
    assert "trtllm-serve /models/chat --host 0.0.0.0 --port 8000 --backend pytorch" in run
    assert "--extra_llm_api_options /etc/llm-serving/extra-llm-api-options.yaml --tp_size 2" in run
    assert "Restart=always" in unit and "ExecStop=/usr/bin/docker stop --time 300 llm-serving-chat-green" in unit


def test_triton_unit_publishes_http_and_metrics_and_runs_tritonserver(tmp):
    unit = render(tmp, llm_serving_engine="triton", llm_serving_gpu_mode="cdi", llm_serving_instances=[INSTANCE])
    run = " ".join(unit.split("\\\n"))
    assert f"mirror.example:5000/nvidia/tritonserver@{DIGEST}" in run
    assert "--device nvidia.com/gpu=2" in run and "--device nvidia.com/gpu=3" in run
    # two host ports per colour: green is 8002 (HTTP) and 8003 (metrics)
    assert "--publish 0.0.0.0:8002:8000" in run and "--publish 0.0.0.0:8003:8002" in run
    assert "tritonserver --model-repository=/models/chat --http-port=8000 --grpc-port=8001" in run
    assert "--metrics-port=8002" in run
    assert "extra-llm-api-options" not in run


def test_role_vars_file_is_plain_yaml():
    # vars_files above load it directly: keep it free of role-only constructs.
    assert isinstance(yaml.safe_load((ROLE / "vars" / "main.yml").read_text()), dict)
