"""The readiness and canary probe the llm_serving role installs on every GPU node."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

PROBE = ROOT / "roles" / "llm_serving" / "files" / "llm-serving-probe"
STANDIN = ROOT / "tests" / "doubles" / "trtllm-standin" / "trtllm-serve"


def _load_probe():
    loader = importlib.machinery.SourceFileLoader("llm_serving_probe", str(PROBE))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


probe = _load_probe()


@pytest.fixture
def standin(tmp_path):
    procs = []

    def start(**env: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(STANDIN), str(tmp_path), "--host", "127.0.0.1", "--port", str(port)],
                env={**os.environ, "STANDIN_TOKEN_DELAY_MS": "1", "STANDIN_ACCESS_LOG": "0", **env},
                stdout=subprocess.DEVNULL,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=5)


def run_probe(*args: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, json.loads(proc.stdout)


def ready(base: str, timeout: str, interval: str) -> tuple[int, dict]:
    return run_probe(
        "ready", "--health", base + "/health", "--generate", base + "/health_generate", "--timeout", timeout,
        "--interval", interval,
    )  # fmt: skip


def test_ready_waits_for_health_and_a_generation(standin):
    base = standin(STANDIN_READY_AFTER_S="1.5")
    began = time.monotonic()
    rc, out = ready(base, "20", "0.2")
    assert rc == 0 and out["ok"] and out["generate"] == 200
    assert time.monotonic() - began >= 1.4


def test_ready_gives_up_at_the_timeout_and_says_what_answered(standin):
    base = standin(STANDIN_NEVER_READY="1")
    rc, out = ready(base, "2", "0.5")
    assert rc == 1 and not out["ok"]
    assert "did not become ready within 2s" in out["error"] and "answered 503" in out["error"]


def test_ready_reports_a_failing_generation(standin):
    base = standin(STANDIN_ERROR_RATE="1")
    rc, out = ready(base, "2", "0.5")
    assert rc == 1 and "a one-token generation answered 500" in out["error"]


ACCESS = 'INFO:     172.17.0.1:4{i} - "{method} {path} HTTP/1.1" {status} X'


def canary_with(monkeypatch, lines: list[str], *args: str) -> dict:
    monkeypatch.setattr(probe, "journal", lambda unit, since=None: lines)
    monkeypatch.setattr(probe, "log_tail", lambda unit, n: lines[-n:])
    ns = probe.argparse.Namespace(unit="u", seconds=0.0, max_error_rate=1.0, min_requests=0, since=1.0, metrics=None,
                                  log_lines=5)  # fmt: skip
    for key, value in zip(args[::2], args[1::2], strict=True):
        setattr(ns, key, value)
    return probe.canary(ns)


def test_canary_counts_generations_in_the_access_log(monkeypatch):
    lines = [ACCESS.format(i=i, method="POST", path="/v1/chat/completions", status=200) for i in range(99)]
    lines += [ACCESS.format(i=0, method="GET", path="/health", status=503)] * 20  # probes do not count
    lines += [ACCESS.format(i=1, method="POST", path="/v1/completions", status=500)]
    out = canary_with(monkeypatch, lines)
    assert out["ok"] and out["requests"] == 100 and out["errors"] == 1 and out["error_rate"] == 1.0


def test_canary_fails_above_the_threshold_and_below_the_minimum(monkeypatch):
    lines = [
        ACCESS.format(i=i, method="POST", path="/v1/chat/completions", status=200 if i % 2 else 500) for i in range(10)
    ]
    out = canary_with(monkeypatch, lines)
    assert not out["ok"] and "5 of 10 generation requests answered 5xx (50.0 %" in out["error"]
    out = canary_with(monkeypatch, lines[1::2], "min_requests", 20)
    assert not out["ok"] and "only 5 generation requests" in out["error"]
