"""The trtllm-serve test double keeps the HTTP contract the serving, edge and monitoring tests rely on."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_models_and_a_chat_completion(standin):
    base = standin()
    assert _get(base + "/health")[0] == 200
    assert _get(base + "/health_generate")[0] == 200
    models = json.loads(_get(base + "/v1/models")[1])
    assert models["data"][0]["id"] == "tiny-model"
    status, body = _post(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    answer = json.loads(body)
    assert status == 200 and answer["choices"][0]["message"]["content"].startswith("[standin v1]")


def test_stream_arrives_token_by_token_and_ends_with_done(standin):
    base = standin(STANDIN_TOKENS="5")
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps({"stream": True, "messages": []}).encode()
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        events = [line for line in resp.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert len(chunks) == 5 and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_never_ready_release_fails_readiness(standin):
    base = standin({"never_ready": True, "version": "v3"})
    assert _get(base + "/health")[0] == 503
    assert _post(base + "/v1/chat/completions", {"messages": []})[0] == 503


def test_error_rate_is_exact_and_evenly_spread(standin):
    base = standin(STANDIN_ERROR_RATE="0.25")
    codes = [_post(base + "/v1/completions", {"prompt": "x"})[0] for _ in range(8)]
    assert codes.count(500) == 2 and codes != sorted(codes)


def test_metrics_count_generations(standin):
    base = standin()
    for _ in range(3):
        _post(base + "/v1/chat/completions", {"messages": []})
    text = _get(base + "/prometheus/metrics")[1].decode()
    assert 'trtllm_e2e_request_latency_seconds_count{model_name="tiny-model",engine_type="trtllm"} 3' in text
    assert "trtllm_time_to_first_token_seconds_bucket" in text


def test_requests_may_ask_for_long_answers_up_to_the_limit(standin):
    base = standin(STANDIN_MAX_TOKENS="40")
    status, body = _post(base + "/v1/completions", {"prompt": "x", "max_tokens": 30})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 30
    status, body = _post(base + "/v1/completions", {"prompt": "x", "max_tokens": 500})
    assert json.loads(body)["usage"]["completion_tokens"] == 40
    status, body = _post(base + "/v1/completions", {"prompt": "x"})
    assert json.loads(body)["usage"]["completion_tokens"] == 16


def test_batch_slots_queue_requests_and_prefill_delays_the_first_token(standin):
    """The load benchmark's capacity model: with one slot, a second request waits for the
    first to finish, and the engine's time to first token counts the wait and the prefill."""
    base = standin(STANDIN_BATCH_SLOTS="1", STANDIN_PREFILL_MS="300", STANDIN_TOKENS="2")
    results: list[float] = []

    def one() -> None:
        began = time.monotonic()
        assert _post(base + "/v1/completions", {"prompt": "x"})[0] == 200
        results.append(time.monotonic() - began)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert min(results) >= 0.3 and max(results) >= 0.6  # the second waited for the first
    text = _get(base + "/prometheus/metrics")[1].decode()
    # Both times to first token are at least the prefill: none in the 0.25 s bucket.
    assert 'trtllm_time_to_first_token_seconds_bucket{le="0.25",model_name="tiny-model",engine_type="trtllm"} 0' in text


def test_access_log_line_per_request_like_uvicorn(standin):
    base = standin(STANDIN_ERROR_RATE="0.5")
    for _ in range(2):
        _post(base + "/v1/chat/completions", {"messages": []})
    proc = standin.procs[-1]
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = [line for line in out.splitlines() if "/v1/chat/completions" in line]
    assert len(lines) == 2
    assert lines[0].startswith("INFO:     127.0.0.1:") and lines[0].endswith(
        '"POST /v1/chat/completions HTTP/1.1" 200 OK'
    )
    assert lines[1].endswith('"POST /v1/chat/completions HTTP/1.1" 500 Internal Server Error')


def test_sigterm_lets_a_stream_in_flight_finish_and_refuses_new_connections(standin):
    base = standin(STANDIN_TOKEN_DELAY_MS="50", STANDIN_MAX_TOKENS="40")
    proc = standin.procs[-1]
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps({"stream": True, "max_tokens": 40, "messages": []}).encode()
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.readline()  # the stream has begun (about 2 s to go)
        proc.terminate()
        time.sleep(0.3)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=1).close()
        events = [line for line in resp.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert proc.wait(timeout=5) == 0
