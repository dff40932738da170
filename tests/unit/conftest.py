"""Shared helpers of the unit tests: loading plugins that live outside a Python package (Ansible
loads them by path), and the trtllm-serve test double on a loopback port."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from unittest import mock

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Modules import `ansible.module_utils.<name>`; Ansible finds those in plugins/module_utils
# (ansible.cfg), the tests through the package path.
if str(ROOT / "plugins" / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "plugins" / "module_utils"))


def load_plugin(relative: str | Path, name: str | None = None) -> ModuleType:
    """Load a Python file by path (relative to the repository), with or without a .py suffix
    (scripts such as roles/firewall/files/cluster-firewall have none)."""
    path = ROOT / relative
    name = name or path.stem.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def action_with_probe(plugin: ModuleType, args: dict, probe: dict, module_result: dict):
    """An action plugin of ours whose cheap probe (`_low_level_execute_command`) answers
    `probe` and whose fallback module run (`_execute_module`) answers `module_result`; both
    are mocks the test inspects (packages_present, services_running)."""
    task = mock.MagicMock()
    task.args = args
    task.async_val = 0
    task.check_mode = False
    act = plugin.ActionModule(task, mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), mock.MagicMock(), None)
    act._low_level_execute_command = mock.MagicMock(return_value=probe)
    act._execute_module = mock.MagicMock(return_value=module_result)
    return act


# The trtllm-serve test double on a loopback port (tests/unit/test_trtllm_standin.py and the
# load scenario's test use it): standin(settings=None, **STANDIN_env) -> its base URL.
STANDIN = Path(__file__).resolve().parents[1] / "doubles" / "trtllm-standin" / "trtllm-serve"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standin(tmp_path):
    def start(settings: dict | None = None, **env: str):
        model = tmp_path / "tiny-model"
        model.mkdir(exist_ok=True)
        if settings:
            (model / "standin.json").write_text(json.dumps(settings))
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(STANDIN),
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend",
                "pytorch",
            ],
            env={"STANDIN_READY_AFTER_S": "0", "STANDIN_TOKEN_DELAY_MS": "1", **env},
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return f"http://127.0.0.1:{port}"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("stand-in did not start")

    procs: list[subprocess.Popen] = []
    start.procs = procs
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=5)
