"""The serving load benchmark's arithmetic and report (scripts/bench_serving_load.py), without
Locust or matplotlib, and its Locust scenario for real against a local stand-in where Locust
is installed (requirements-bench.txt)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import bench_serving_load as bench
import pytest


def sample(start: float, ttft: float | None, total: float, status: int = 200, stream: bool = True) -> dict:
    ok = status == 200
    return {"start": start, "ttft": ttft, "total": total, "status": status, "ok": ok,
            "error": "" if ok else f"HTTP {status}", "stream": stream}  # fmt: skip


def step(concurrency: int, ttft_p99_ms: float | None, rps: float = 1.0, http_5xx_rate: float = 0.0) -> dict:
    """A step's figures as summarize() makes them, with the fields a test cares about."""
    figures = {
        "concurrency": concurrency, "rps": rps, "window_s": 35.0, "warmup_s": 5, "requests": 100, "ok": 100,
        "failed": 0, "error_rate": http_5xx_rate, "http_5xx_rate": http_5xx_rate, "refused_429_rate": 0.0,
        "errors": {}, "non_streamed_p99_ms": None, "load_avg": 1.5,
    }  # fmt: skip
    for kind in ("ttft", "total"):
        for q in (50, 95, 99):
            figures[f"{kind}_p{q}_ms"] = ttft_p99_ms
    return figures


def test_percentiles_are_exact_and_interpolate_between_order_statistics():
    values = list(range(1, 101))  # 1..100
    assert bench.percentile(values, 50) == pytest.approx(50.5)
    assert bench.percentile(values, 99) == pytest.approx(99.01)
    assert bench.percentile(values, 100) == 100
    assert bench.percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert bench.percentile([7.0], 99) == 7.0
    assert bench.percentile([], 50) is None


def test_summary_discards_the_warm_up_and_counts_throughput_in_the_window():
    run = bench.SampleRun(start=1000.0, run_time=10, stop=1012.0, samples=[
        sample(1000.5, 5.0, 6.0),  # started in the warm-up: left out of the latencies
        sample(1003.0, 0.1, 1.0),
        sample(1004.0, 0.2, 1.0),
        sample(1005.0, 0.3, 1.0, status=503),
        sample(1006.0, 0.4, 1.0, status=429),
        sample(1009.5, 0.5, 2.0),  # ends after the window: counts for latency, not for throughput
    ])  # fmt: skip
    figures = bench.summarize(run, concurrency=4, warmup_s=2)
    assert figures["window_s"] == 8.0
    assert figures["requests"] == 5 and figures["ok"] == 3 and figures["failed"] == 2
    # Throughput counts OK completions inside the window, whenever they started: 1004, 1005, 1006.5.
    assert figures["rps"] == round(3 / 8, 2)
    assert figures["error_rate"] == pytest.approx(0.4)
    assert figures["http_5xx_rate"] == pytest.approx(0.2)
    assert figures["refused_429_rate"] == pytest.approx(0.2)
    assert figures["ttft_p50_ms"] == 200.0  # 0.1, 0.2, 0.5 (OK streamed, after the warm-up)
    assert figures["total_p99_ms"] == pytest.approx(1980.0)
    assert figures["errors"] == {"HTTP 503": 1, "HTTP 429": 1}


def test_summary_of_a_window_at_the_end_and_of_non_streamed_requests():
    run = bench.SampleRun(start=0.0, run_time=400, stop=401.0, samples=[
        sample(50.0, 2.0, 3.0),
        sample(150.0, 0.1, 1.0),
        sample(200.0, None, 0.9, stream=False),
    ])  # fmt: skip
    figures = bench.summarize(run, concurrency=8, warmup_s=5, window_s=300)
    assert figures["window_s"] == 300.0
    assert figures["requests"] == 2  # the sample at 50 s is before the last 300 s
    assert figures["ttft_p99_ms"] == 100.0
    assert figures["non_streamed_p99_ms"] == 900.0
    assert bench.alert_latency_ms(figures) == 900.0


def test_knee_detection():
    steps = [step(1, 80), step(4, 120, rps=3), step(16, 450, rps=9.5), step(24, 1700, rps=9.8), step(32, 2500)]
    knee = bench.find_knee(steps)
    assert knee["knee_concurrency"] == 24
    assert (knee["best_concurrency"], knee["best_rps"], knee["best_ttft_p99_ms"]) == (16, 9.5, 450)


def test_knee_never_passed_and_passed_at_the_first_step():
    never = bench.find_knee([step(1, 80), step(2, 90, rps=2)])
    assert never["knee_concurrency"] is None and never["best_concurrency"] == 2
    first = bench.find_knee([step(1, 900), step(2, 1200)])
    assert first["knee_concurrency"] == 1 and first["best_concurrency"] is None


def test_alert_verdicts_compare_the_load_with_prometheus():
    steps = [step(1, 80), step(16, 450), step(32, 2500)]
    hold = step(32, 2400)
    prometheus = {
        "alerts": {bench.LATENCY_ALERT: "firing", bench.HTTP_5XX_ALERT: "pending"},
        "records": {bench.LATENCY_RECORD: {"streamed_ttft": 2.3}, bench.HTTP_5XX_RECORD: {"value": 0.0}},
    }
    latency, errors = bench.alert_verdicts(steps, hold, 420, prometheus)
    assert latency["crossed"] and latency["crossed_at_concurrency"] == [32]
    assert (latency["expected_state"], latency["prometheus_state"], latency["agrees"]) == ("firing", "firing", True)
    assert latency["recorded"] == {"streamed_ttft": 2.3}
    assert not errors["crossed"]
    assert (errors["expected_state"], errors["agrees"]) == ("inactive", False)
    # Without a hold or Prometheus there is nothing to compare.
    assert bench.alert_verdicts(steps, None, 0, None)[0]["agrees"] is None
    assert bench.expected_state(120, bench.P99_FOR_S) == "pending"


def test_alert_state_and_user_keys():
    assert bench.alert_state([]) == "inactive"
    series = [{"metric": {"alertstate": "pending"}}, {"metric": {"alertstate": "firing"}}]
    assert bench.alert_state(series) == "firing"
    keys = {
        "a-plain": "k1",
        "b-rotated": ["old", "k2"],
        "c-admin": {"key": "no", "role": "admin"},
        "d-other-model": {"keys": ["no"], "models": ["other"]},
        "e-allowed": {"keys": ["old", "k3"], "models": ["standin-chat"]},
        "f-auditor": {"key": "no", "role": "auditor"},
    }
    assert bench.user_keys(keys, "standin-chat") == ["k1", "k2", "k3"]


def test_markdown_report_of_a_small_result():
    steps = [step(1, 80, rps=0.6), step(4, 700, rps=2.4, http_5xx_rate=0.02)]
    steps[1]["errors"] = {"HTTP 502": 2}
    hold = step(4, 650, rps=2.4) | {"phase": "hold"}
    result = {
        "date": "2026-12-05 02:00 UTC", "command": "scripts/bench_serving_load.py --lab --quick",
        "settings": {"endpoint": "https://172.31.240.11", "model": "standin-chat", "keys": 2, "max_tokens": 64,
                     "non_stream_share": 0.0, "steps": [1, 4], "step_seconds": 10, "warmup_s": 3, "hold_s": 420,
                     "pace": bench.LAB_PACE, "instances": 2, "observed_env": {"gpu1 llm-serving-chat-blue": "X=1"}},
        "environment": {"cores": 2, "machine": "x86_64", "python": "Python 3.12.1", "load_before": 1.0,
                        "load_after": 2.0, "packages": {"locust": "2.47.0", "matplotlib": "3.11.2"}},
        "steps": steps, "hold": hold,
        "prometheus": {"timeline": [{"t": 0, "alerts": {bench.LATENCY_ALERT: "pending"},
                                      "records": {bench.LATENCY_RECORD: {"streamed_ttft": 0.74}}}]},
        "knee": bench.find_knee(steps), "output_json": "x/serving-load.json", "output_png": "x/serving-load.png",
        "notes": bench.LAB_NOTES,
    }  # fmt: skip
    result["verdicts"] = bench.alert_verdicts(steps, hold, 420, None)
    text = bench.render_markdown(result)
    assert "P99 TTFT first passes 500 ms at **4 users**" in text
    assert "1 users, 0.6 requests/s" in text
    assert "| 4 (hold) | 2.4 |" in text
    assert "| 4 | 2.4 | 2.00 % | 2.00 % | 0.00 % | 700 ms |" in text
    assert "| ServingHttp5xxRatioHigh | HTTP 5xx > 1 % | yes, at 4 users |" in text
    assert "25 ms between tokens, 60 ms prefill, 8 batch slots, 64 tokens" in text
    assert "HTTP 502 (2)" in text and "locust 2.47.0, matplotlib 3.11.2" in text
    assert "- 0 s: ServingLatencyP99High pending (llm:request_latency_seconds:p99_5m streamed_ttft 0.74 s)" in text


def test_samples_file_parsing(tmp_path):
    path = tmp_path / "step.jsonl"
    lines = [
        {"event": "start", "time": 100.0, "run_time": 40},
        sample(101.0, 0.2, 1.6),
        sample(102.0, None, 0.01, status=429),
        {"event": "stop", "time": 141.0},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    run = bench.read_samples(path)
    assert (run.start, run.run_time, run.stop, run.end) == (100.0, 40, 141.0, 140.0)
    assert [s["status"] for s in run.samples] == [200, 429]
    # Without its start line (a run cut short), the first request's start stands in.
    path.write_text(json.dumps(sample(5.0, 0.1, 1.0)) + "\n")
    assert bench.read_samples(path).start == 5.0


def test_the_locust_scenario_against_a_local_stand_in(standin, tmp_path):
    # Looked up, not imported: importing Locust monkey-patches the standard library (gevent)
    # for the rest of the pytest session, which pytest.importorskip would do.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("Locust is not installed (requirements-bench.txt)")
    base = standin(STANDIN_TOKEN_DELAY_MS="5", STANDIN_PREFILL_MS="20", STANDIN_TOKENS="8", STANDIN_ACCESS_LOG="0")
    samples = tmp_path / "samples.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(bench.LOCUSTFILE), "--headless", "--only-summary",
         "--host", base, "-u", "2", "-r", "2", "-t", "3s", "--stop-timeout", "10", "--model", "tiny-model",
         "--max-tokens", "8", "--samples-file", str(samples)],
        env={**os.environ, "LOADTEST_API_KEY": "test-key"}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = bench.read_samples(samples)
    assert run.run_time == 3 and run.stop is not None
    assert len(run.samples) >= 10
    assert all(s["ok"] and s["stream"] and s["status"] == 200 for s in run.samples), run.samples[:3]
    assert all(0.02 <= s["ttft"] < s["total"] for s in run.samples)
