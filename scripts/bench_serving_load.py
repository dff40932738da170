#!/usr/bin/env python3
"""Load-test the serving path (edge, then the serving engines) with Locust at growing
concurrency: throughput, time to first token and total latency per step, the knee where the
P99 latency alert's 500 ms is passed, and whether the alerts saw what the load test saw.

    scripts/bench_serving_load.py --lab [--quick] [--hold SECONDS]
                                  [--output docs/benchmarks/serving-load.md]
    LOADTEST_API_KEY=... scripts/bench_serving_load.py --endpoint https://llm.example.org \\
        --model NAME [--cacert ca.crt] [--prometheus http://prometheus:9090] [...]
    options: [--steps 1,2,4,8,16,24,32,48,64] [--step-seconds 40] [--warmup 5]
             [--max-tokens 64] [--non-stream-share 0] [--locust-python PYTHON]

Each step runs the scenario scripts/loadtest/serving_locustfile.py headless for
--step-seconds with that many users (closed loop, no think time: concurrency = users), and
reads the raw per-request samples it wrote, so the percentiles are exact (Locust's own are
bucketed). The first --warmup seconds of each step are left out: requests started then meet
the queue of the step before, not this step's steady state. --quick runs steps 1, 4, 16, 32
for 10 s each. --hold then keeps the highest step running long enough for the alert rules'
5-minute windows to fill (default 420 s in a full run, none in --quick), and Prometheus is
asked for the state of ServingLatencyP99High and ServingHttp5xxRatioHigh and the recording
rules they read, to compare with what the load test measured against the same thresholds
(the seeds': P99 > 500 ms, 5xx > 1 %).

--lab: the endpoint is the lab's edge, the keys are the lab's user keys that may call the
served model (from its vault; the users are spread over them, as the edge limits streams per
key), the CA comes from the edge host, Prometheus is asked on ops1 through `docker exec` (its
firewall admits no one else), and the stand-in is set to a realistic pace through the
serving role's own interface: the serving play with the lab's instance plus `env:` (rolling
update, about a minute), and the inventory's settings restored by the same play at the end,
also after a failure or Ctrl-C.

Output: the Markdown report (--output), the figures as JSON beside it (.json) and a chart
(.png); the raw samples stay under .cache/bench-serving-load/. Locust and matplotlib come
from requirements-bench.txt, not CI's requirements.txt; the pure logic here (percentiles,
step summaries, knee, verdicts, Markdown) imports neither, so the unit tests run without them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "scripts" / "loadtest" / "serving_locustfile.py"
WORK = ROOT / ".cache" / "bench-serving-load"

FULL_STEPS = [1, 2, 4, 8, 16, 24, 32, 48, 64]
QUICK_STEPS = [1, 4, 16, 32]
FULL_HOLD_S = 420  # 5 minutes for the rate windows to fill, then more than the alert's `for`
# The seeds' thresholds, as roles/prometheus/templates/etc/prometheus/rules/serving.yml.j2 renders them.
P99_THRESHOLD_S = 0.5
P99_FOR_S = 300
HTTP_5XX_THRESHOLD = 0.01
HTTP_5XX_FOR_S = 120
LATENCY_ALERT = "ServingLatencyP99High"
HTTP_5XX_ALERT = "ServingHttp5xxRatioHigh"
LATENCY_RECORD = "llm:request_latency_seconds:p99_5m"
HTTP_5XX_RECORD = "llm:edge_5xx:ratio_rate5m"
SETTLE_S = 30

# The lab's stand-in pace (docs/benchmarks/serving-load.md says why these figures): about 40
# tokens/s per stream, a prefill of tens of ms, 8 generations at once per instance.
LAB_PACE = {
    "STANDIN_TOKEN_DELAY_MS": "25",
    "STANDIN_PREFILL_MS": "60",
    "STANDIN_BATCH_SLOTS": "8",
    "STANDIN_TOKENS": "64",
}


# ---------------------------------------------------------------- pure logic (no locust, no matplotlib)


def percentile(values: list[float], q: float) -> float | None:
    """The exact q-th percentile (0..100) of the values, interpolated linearly between the
    two nearest order statistics (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class SampleRun:
    """One Locust run's samples file: its start, planned run time, and one dict per request."""

    start: float
    run_time: float | None
    stop: float | None
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def end(self) -> float:
        """Where the measured window ends: the planned run time's end (Locust then lets the
        requests in flight finish; they count for latency, not for throughput)."""
        if self.run_time:
            return self.start + self.run_time
        return self.stop or max((s["start"] + s["total"] for s in self.samples), default=self.start)


def read_samples(path: Path) -> SampleRun:
    """Parse the locustfile's JSON lines: a start event, one line per request, a stop event."""
    start = run_time = stop = None
    samples = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("event") == "start":
            start, run_time = record["time"], record.get("run_time")
        elif record.get("event") == "stop":
            stop = record["time"]
        else:
            samples.append(record)
    if start is None:
        start = min((s["start"] for s in samples), default=0.0)
    return SampleRun(start=start, run_time=run_time, stop=stop, samples=samples)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summarize(run: SampleRun, concurrency: int, warmup_s: float, window_s: float | None = None) -> dict[str, Any]:
    """One step's figures. Latencies: requests started after the warm-up (all of them, also
    those that ended after the run time). Throughput: OK requests that ended inside the
    window, per second. window_s: only the window's last seconds (the hold's last 5 minutes)."""
    end = run.end
    begin = run.start + warmup_s if window_s is None else max(run.start + warmup_s, end - window_s)
    measured = [s for s in run.samples if begin <= s["start"] <= end]
    ok = [s for s in measured if s["ok"]]
    streamed = [s["ttft"] for s in ok if s.get("stream", True) and s.get("ttft") is not None]
    whole = [s["total"] for s in ok if not s.get("stream", True)]
    totals = [s["total"] for s in ok]
    completed = [s for s in run.samples if s["ok"] and begin <= s["start"] + s["total"] <= end]
    failed = len(measured) - len(ok)
    count = len(measured)
    errors = Counter(s["error"] for s in measured if not s["ok"])
    figures: dict[str, Any] = {
        "concurrency": concurrency,
        "window_s": round(end - begin, 1),
        "warmup_s": warmup_s,
        "requests": count,
        "ok": len(ok),
        "failed": failed,
        "rps": round(len(completed) / (end - begin), 2) if end > begin else 0.0,
        "error_rate": failed / count if count else 0.0,
        "http_5xx_rate": sum(1 for s in measured if 500 <= s["status"] <= 599) / count if count else 0.0,
        "refused_429_rate": sum(1 for s in measured if s["status"] == 429) / count if count else 0.0,
        "errors": dict(errors.most_common(5)),
        "non_streamed_p99_ms": _ms(percentile(whole, 99)),
    }
    for q in (50, 95, 99):
        figures[f"ttft_p{q}_ms"] = _ms(percentile(streamed, q))
        figures[f"total_p{q}_ms"] = _ms(percentile(totals, q))
    return figures


def alert_latency_ms(step: dict[str, Any]) -> float | None:
    """The P99 the latency alert watches: streamed requests' TTFT, non-streamed ones' total
    time (the rule records both kinds; either one above the threshold raises it)."""
    values = [v for v in (step.get("ttft_p99_ms"), step.get("non_streamed_p99_ms")) if v is not None]
    return max(values) if values else None


def find_knee(steps: list[dict[str, Any]], threshold_ms: float = P99_THRESHOLD_S * 1000) -> dict[str, Any]:
    """The knee: the lowest concurrency whose P99 TTFT passes the threshold; and the highest
    step at or under it, with its throughput."""
    knee = next((s for s in steps if (s["ttft_p99_ms"] or 0) > threshold_ms), None)
    under = [s for s in steps if s["ttft_p99_ms"] is not None and s["ttft_p99_ms"] <= threshold_ms]
    best = max(under, key=lambda s: s["concurrency"]) if under else None
    return {
        "threshold_ms": threshold_ms,
        "knee_concurrency": knee["concurrency"] if knee else None,
        "best_concurrency": best["concurrency"] if best else None,
        "best_rps": best["rps"] if best else None,
        "best_ttft_p99_ms": best["ttft_p99_ms"] if best else None,
    }


def expected_state(crossed_for_s: float, for_s: float) -> str:
    """What an alert with `for: for_s` should be after its measure stood above the threshold
    for crossed_for_s seconds (the rule's 5-minute window fills faster for a P99 than for a
    mean, so this is a lower bound of how long Prometheus saw it)."""
    if crossed_for_s <= 0:
        return "inactive"
    return "firing" if crossed_for_s >= for_s + 60 else "pending"


def alert_verdicts(
    steps: list[dict[str, Any]], hold: dict[str, Any] | None, hold_s: float, prometheus: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """For each of the two alerts: did the load cross the threshold (where), what state should
    the alert be in after the hold, what Prometheus says, and whether the two agree."""
    verdicts = []
    specs = [
        (LATENCY_ALERT, "P99 latency > 500 ms", alert_latency_ms, P99_THRESHOLD_S * 1000, P99_FOR_S, LATENCY_RECORD),
        (
            HTTP_5XX_ALERT,
            "HTTP 5xx > 1 %",
            lambda s: s["http_5xx_rate"],
            HTTP_5XX_THRESHOLD,
            HTTP_5XX_FOR_S,
            HTTP_5XX_RECORD,
        ),
    ]
    for name, label, measure, threshold, for_s, record in specs:
        crossed_at = [s["concurrency"] for s in steps if (measure(s) or 0) > threshold]
        hold_value = measure(hold) if hold else None
        hold_crossed = hold_value is not None and hold_value > threshold
        expected = expected_state(hold_s if hold_crossed else 0, for_s) if hold else None
        observed = (prometheus or {}).get("alerts", {}).get(name)
        verdict = {
            "alert": name,
            "threshold": label,
            "crossed": bool(crossed_at) or hold_crossed,
            "crossed_at_concurrency": crossed_at,
            "hold_value": hold_value,
            "expected_state": expected,
            "prometheus_state": observed,
            "recorded": (prometheus or {}).get("records", {}).get(record),
        }
        if observed is None or expected is None:
            verdict["agrees"] = None
        else:
            verdict["agrees"] = observed == expected
        verdicts.append(verdict)
    return verdicts


def alert_state(series: list[dict[str, Any]]) -> str:
    """An alert's state from `ALERTS{alertname=...}` series: firing wins over pending."""
    states = {s.get("metric", {}).get("alertstate") for s in series}
    return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def user_keys(api_keys: dict[str, Any], model: str) -> list[str]:
    """The API keys (newest of a rotation list) of clients with role `user` that may call model."""
    keys = []
    for _client, entry in sorted(api_keys.items()):
        key = entry
        if isinstance(entry, dict):
            if entry.get("role", "user") != "user" or (entry.get("models") and model not in entry["models"]):
                continue
            key = entry.get("key") or entry.get("keys")
        if isinstance(key, list):
            key = key[-1] if key else None
        if key:
            keys.append(str(key))
    return keys


def render_markdown(result: dict[str, Any]) -> str:
    """The report: setup, the table, the knee, the alert verdicts, versions, what it shows."""
    settings, env, knee = result["settings"], result["environment"], result["knee"]
    lines = [
        "# Serving path under load: throughput, time to first token, the knee and the alerts",
        "",
        f"Measured {result['date']} by `{result['command']}`.",
        "",
        "## Setup",
        "",
        f"- Endpoint: {settings['endpoint']} (model `{settings['model']}`), {settings['keys']} API key(s), "
        f"users spread over them; OpenAI `POST /v1/chat/completions`, `max_tokens` {settings['max_tokens']}, "
        f"{_pct(1 - settings['non_stream_share'])} streamed.",
        f"- Load: scripts/loadtest/serving_locustfile.py (Locust), closed loop without think time "
        f"(concurrency = users), steps {', '.join(map(str, settings['steps']))} of {settings['step_seconds']} s; "
        f"the first {settings['warmup_s']:g} s of each step are discarded as warm-up; percentiles are exact "
        f"(from every request's sample). Hold at the highest step: {settings['hold_s']} s.",
    ]
    if settings.get("pace"):
        pace = settings["pace"]
        lines.append(
            f"- Serving: {settings.get('instances', '?')} instance(s) of the trtllm-serve stand-in set to "
            f"{pace['STANDIN_TOKEN_DELAY_MS']} ms between tokens, {pace['STANDIN_PREFILL_MS']} ms prefill, "
            f"{pace['STANDIN_BATCH_SLOTS']} batch slots, {pace['STANDIN_TOKENS']} tokens per answer "
            "(through the serving role's `env:`; restored afterwards)."
        )
    for host, observed in sorted(settings.get("observed_env", {}).items()):
        lines.append(f"  - {host}: {observed}")
    if "scrape_wait_s" in settings:
        lines.append(f"  - Prometheus scraped these containers {settings['scrape_wait_s']} s after the play.")
    lines += [
        f"- Machine: {env['cores']} cores ({env['machine']}), {env['python']}; load average "
        f"{env['load_before']} before, {env['load_after']} after (the client shares the cores with the lab).",
        "",
        "## Results",
        "",
        "| users | req/s | errors | 5xx | 429 | TTFT p50 | TTFT p95 | TTFT p99 | total p50 | total p95 | total p99 "
        "| requests | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [*result["steps"], *([result["hold"]] if result.get("hold") else [])]
    for step in rows:
        label = f"{step['concurrency']} (hold)" if step.get("phase") == "hold" else str(step["concurrency"])
        latencies = " | ".join(_fmt(step[f"{kind}_p{q}_ms"], " ms") for kind in ("ttft", "total") for q in (50, 95, 99))
        lines.append(
            f"| {label} | {step['rps']:g} | {_pct(step['error_rate'])} | {_pct(step['http_5xx_rate'])} "
            f"| {_pct(step['refused_429_rate'])} | {latencies} | {step['requests']} | {_fmt(step.get('load_avg'))} |"
        )
    lines += [
        "",
        "req/s: OK requests completed per second of the measured window; errors: failed requests (not 200, or a "
        "stream without `[DONE]`) of those started in it, 5xx and 429 (refused by the edge's limits) among them.",
    ]
    errors = Counter()
    for step in rows:
        errors.update(step["errors"])
    if errors:
        lines.append("Errors seen: " + "; ".join(f"{msg} ({n})" for msg, n in errors.most_common(5)) + ".")
    lines += ["", "## The knee", ""]
    if knee["knee_concurrency"] is None:
        lines.append(f"P99 TTFT stayed at or under {knee['threshold_ms']:g} ms at every step: no knee in this range.")
    else:
        lines.append(f"P99 TTFT first passes {knee['threshold_ms']:g} ms at **{knee['knee_concurrency']} users**.")
    if knee["best_concurrency"] is None:
        lines.append("No step stayed at or under the threshold.")
    else:
        lines.append(
            f"The highest step at or under it: {knee['best_concurrency']} users, {knee['best_rps']:g} requests/s "
            f"(P99 TTFT {knee['best_ttft_p99_ms']:g} ms)."
        )
    lines += [
        "",
        "## Alerts",
        "",
        "| alert | threshold | load crossed it | expected after the hold | Prometheus | recorded value | agrees |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in result["verdicts"]:
        where = "yes, in the hold" if v["crossed"] else "no"
        if v["crossed_at_concurrency"]:
            where = f"yes, at {', '.join(map(str, v['crossed_at_concurrency']))} users"
        recorded = ", ".join(f"{k}: {val:.3g}" for k, val in sorted((v["recorded"] or {}).items())) or "-"
        agrees = {True: "yes", False: "**no**", None: "-"}[v["agrees"]]
        lines.append(
            f"| {v['alert']} | {v['threshold']} | {where} | {v['expected_state'] or '-'} "
            f"| {v['prometheus_state'] or 'not asked'} | {recorded} | {agrees} |"
        )
    prom = result.get("prometheus") or {}
    if "asked_after_s" in prom:
        lines += [
            "",
            f"Prometheus was asked {prom['asked_after_s']} s after the load ended (two scrape and rule "
            "evaluation intervals), for the alerts' state and the recording rules' values.",
        ]
    if prom.get("timeline"):
        lines += ["", "Alert states during the hold (seconds into it):", ""]
        for point in prom["timeline"]:
            states = ", ".join(f"{name} {state}" for name, state in sorted(point["alerts"].items()))
            p99 = point.get("records", {}).get(LATENCY_RECORD) or {}
            recorded = ", ".join(f"{kind} {value:.3g} s" for kind, value in sorted(p99.items()))
            lines.append(f"- {point['t']:.0f} s: {states}" + (f" ({LATENCY_RECORD} {recorded})" if recorded else ""))
    if prom.get("note"):
        lines += ["", prom["note"]]
    if result.get("hold"):
        lines += [
            "",
            f"The hold's row is over its last {result['hold']['window_s']:g} s (at most the rules' 5-minute "
            "window, which Prometheus was asked about at the hold's end).",
        ]
    lines += [
        "",
        "## Versions",
        "",
        ", ".join(f"{name} {version}" for name, version in sorted(env["packages"].items())),
        "",
        "## What this shows, and what it does not",
        "",
    ]
    lines += result.get("notes") or []
    lines.append("")
    lines.append(f"Raw figures: `{Path(result['output_json']).name}`.")
    if result.get("chart"):
        lines += ["", f"![Latency and throughput by concurrency]({Path(result['output_png']).name})"]
    else:
        lines += ["", "(No chart: matplotlib is not installed here; requirements-bench.txt has it.)"]
    return "\n".join(lines) + "\n"


LAB_NOTES = [
    "- The stand-in's pace stands for a mid-sized model on one GPU: 25 ms between tokens is 40 tokens/s per "
    "stream (an 8B model under batch load), 60 ms of prefill is a short chat prompt's, 64 tokens a short answer, "
    "so a generation holds its slot about 1.6 s. 8 batch slots per instance is far below a real engine's batch "
    "on purpose: with 2 instances (16 generations at once, about 10 requests/s) the knee falls inside the "
    "steps while the client and the lab share 2 cores.",
    "- The lab has no GPU: its knee is set by that configured capacity (slots x instances, and the time each "
    "generation holds a slot), not by an engine. What it does show is that the path adds little below the knee "
    "(edge, WAF, TLS: TTFT p50 at 1 user against the configured prefill), that requests beyond the slots queue "
    "rather than fail, and whether the latency alert and its recording rule follow what users measure.",
    "- The client runs on the same 2 shared cores as the lab; the load average column says how busy they were.",
    "- The edge limits concurrent streams per API key (edge_proxy_streams_per_key, 16): steps beyond 16 per key "
    "(the users are spread over the lab's user keys) see 429s, which is the edge's limit doing its job, not a "
    "serving failure; refused users back off for a second, as a well-behaved client does.",
    "- Prometheus's P99 comes from the engine's TTFT histogram (buckets 0.25, 0.5, 1, 2.5, 5 s): it is "
    "interpolated inside a bucket, so it agrees with the exact figure here in which bucket it lies, not to the ms.",
    "- On a real site, the same scenario (--endpoint, --model, LOADTEST_API_KEY) measures the real engine: "
    "its knee is where its batch is full and requests start to queue.",
]


SITE_NOTES = [
    "- The knee is where the engine's batch is full and requests start to queue: the concurrency the site "
    "can serve within the latency objective, for this prompt and answer length.",
    "- One client machine: beyond its own limits (CPU, connections) it measures itself; check its load average.",
    "- The edge limits concurrent streams per API key: a test with few keys may see 429s before the engine's knee.",
]


# ---------------------------------------------------------------- chart (matplotlib, imported here only)


def plot(result: dict[str, Any], path: Path) -> bool:
    """p50/p99 TTFT and total latency per concurrency with the 500 ms line; requests/s below.
    False without matplotlib (toolkit.charts: only `make bench` installs it)."""
    from toolkit import charts  # noqa: PLC0415

    plt = charts.pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: PLC0415

    steps = result["steps"]
    users = [s["concurrency"] for s in steps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True, height_ratios=[3, 2])
    for key, label, style in (
        ("ttft_p50_ms", "TTFT p50", "o-"),
        ("ttft_p99_ms", "TTFT p99", "o--"),
        ("total_p50_ms", "total p50", "s-"),
        ("total_p99_ms", "total p99", "s--"),
    ):
        values = [s[key] if s[key] is not None else float("nan") for s in steps]
        top.plot(users, values, style, label=label)
    top.axhline(P99_THRESHOLD_S * 1000, color="red", linewidth=1, label="alert threshold (P99 500 ms)")
    knee = result["knee"]["knee_concurrency"]
    if knee is not None:
        top.axvline(knee, color="grey", linestyle=":", label=f"knee ({knee} users)")
        bottom.axvline(knee, color="grey", linestyle=":")
    top.set_yscale("log")
    # Ticks at 1, 2 and 5 of each decade, written as plain numbers: latencies span decades.
    top.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    top.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("latency (ms, log scale)")
    top.set_title(f"Serving path under load: {result['settings']['endpoint']}")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    bottom.plot(users, [s["rps"] for s in steps], "o-", color="black", label="completed requests/s")
    bottom.set_ylabel("requests/s")
    bottom.set_ylim(bottom=0)
    errors = bottom.twinx()
    errors.plot(users, [s["error_rate"] * 100 for s in steps], "x:", color="red", label="errors (%)")
    errors.set_ylabel("errors (%)")
    errors.set_ylim(0, max(5.0, *(s["error_rate"] * 110 for s in steps)))
    bottom.set_xlabel("concurrent users")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(users, [str(u) for u in users])
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    errors.legend(loc="upper right", fontsize=8)
    charts.save(fig, path)
    plt.close(fig)
    return True


# ---------------------------------------------------------------- running things


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class Prometheus:
    """Instant queries, over HTTP (a site's --prometheus URL) or, in the lab, from inside the
    ops host with `docker exec` (its firewall admits only the host itself)."""

    def __init__(self, url: str | None = None, container: str | None = None) -> None:
        self.url, self.container = url, container

    def get(self, path: str) -> dict[str, Any]:
        if self.container:
            code = (
                "import sys,urllib.request; sys.stdout.write(urllib.request.urlopen("
                f"'http://127.0.0.1:9090/api/v1{path}', timeout=20).read().decode())"
            )
            proc = subprocess.run(
                ["docker", "exec", self.container, "python3", "-c", code],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            return json.loads(proc.stdout)["data"]
        with urllib.request.urlopen(f"{self.url.rstrip('/')}/api/v1{path}", timeout=20) as response:
            return json.load(response)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/query?query=" + urllib.parse.quote(expr))["result"]

    def snapshot(self) -> dict[str, Any]:
        """The two alerts' states and their recording rules' values (by `kind` where there is one)."""
        alerts = {}
        for name in (LATENCY_ALERT, HTTP_5XX_ALERT):
            alerts[name] = alert_state(self.query(f'ALERTS{{alertname="{name}"}}'))
        records = {}
        for record in (LATENCY_RECORD, HTTP_5XX_RECORD):
            values = {s["metric"].get("kind", "value"): float(s["value"][1]) for s in self.query(record)}
            records[record] = {k: v for k, v in values.items() if not math.isnan(v)}
        return {"alerts": alerts, "records": records}


@dataclass
class Target:
    endpoint: str
    model: str
    keys: list[str]
    cacert: str = ""
    prometheus: Prometheus | None = None
    setup: dict[str, Any] = field(default_factory=dict)


def start_locust(
    args: argparse.Namespace, target: Target, users: int, seconds: int, samples: Path
) -> subprocess.Popen[bytes]:
    """Start one headless Locust run of the scenario; its samples land in `samples`, its output beside them."""
    argv = [
        args.locust_python,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host",
        target.endpoint,
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{seconds}s",
        # Requests in flight at the end finish (they count for latency): a generation is seconds.
        "--stop-timeout",
        "120",
        "--model",
        target.model,
        "--max-tokens",
        str(args.max_tokens),
        "--non-stream-share",
        str(args.non_stream_share),
        "--samples-file",
        str(samples),
    ]
    if target.cacert:
        argv += ["--cacert", target.cacert]
    # The keys travel in the environment, never on a command line.
    env = {**os.environ, "LOADTEST_API_KEY": ",".join(target.keys)}
    with open(samples.with_suffix(".log"), "w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def run_step(
    args: argparse.Namespace, target: Target, users: int, seconds: int, samples: Path, while_running=None
) -> SampleRun:
    """Run one Locust step to its end (calling while_running every few seconds); its samples."""
    proc = start_locust(args, target, users, seconds, samples)
    try:
        while proc.poll() is None:
            if while_running is not None:
                while_running()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    if proc.returncode not in (0, 1):  # 1: some requests failed, which the samples say
        tail = samples.with_suffix(".log").read_text()[-3000:]
        raise SystemExit(f"locust failed ({proc.returncode}) at {users} users:\n{tail}")
    return read_samples(samples)


def lab_target() -> Target:
    """The lab's edge, user keys, CA and Prometheus (scripts/labkit, as `scripts/lab summary`)."""
    import yaml  # noqa: PLC0415 (in CI's venv; the lab mode only)
    from labkit import secrets, topology  # noqa: PLC0415
    from labkit.layout import INVENTORY, VAULT_PASS  # noqa: PLC0415
    from labkit.pki import fetch_ca  # noqa: PLC0415
    from labkit.shell import LabError  # noqa: PLC0415

    topo = topology.load(INVENTORY / "topology.yml")
    catalogue = yaml.safe_load((INVENTORY / "group_vars" / "all" / "services.yml").read_text())["cluster_services"]

    def first_host(service: str) -> topology.LabHost:
        return next(h for h in topo.hosts if catalogue[service]["group"] in h.groups)

    instance = lab_instance()
    edge, ops = first_host("https"), first_host("prometheus")
    api_keys = secrets.read_secrets(VAULT_PASS, INVENTORY / "group_vars" / "all" / "secrets.vault.yml")["edge_api_keys"]
    keys = user_keys(api_keys, instance["model"])
    if not keys:
        raise SystemExit(f"no lab API key with role user may call {instance['model']}")
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        ca = fetch_ca(topo, edge.name, WORK / "ca.crt")
    except LabError as exc:
        raise SystemExit(str(exc)) from exc
    gpu_hosts = [h for h in topo.hosts if "gpu_nodes" in h.groups]
    return Target(
        endpoint=f"https://{edge.address}",
        model=instance["model"],
        keys=keys,
        cacert=str(ca),
        prometheus=Prometheus(container=topo.container(ops.name)),
        setup={"instances": len(gpu_hosts), "hosts": {h.name: (topo.container(h.name), h.address) for h in gpu_hosts}},
    )


def lab_instance() -> dict[str, Any]:
    import yaml  # noqa: PLC0415
    from labkit.layout import INVENTORY  # noqa: PLC0415

    serving = yaml.safe_load((INVENTORY / "group_vars" / "all" / "serving.yml").read_text())
    return serving["llm_serving_instances"][0]


def serving_play(extra_vars: dict[str, Any] | None, label: str) -> None:
    """The serving play on the lab, with extra vars (or none: the inventory's settings)."""
    from toolkit.ansible_run import lab_command  # noqa: PLC0415

    WORK.mkdir(parents=True, exist_ok=True)
    argv_extra: list[str] = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=WORK, delete=False) as tmp:
        json.dump(extra_vars or {}, tmp)
    if extra_vars:
        argv_extra = ["-e", f"@{tmp.name}"]
    logfile = WORK / f"serving-play-{label}.log"
    log(f"serving play ({label}), log in {logfile.relative_to(ROOT)}")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    try:
        with open(logfile, "w") as out:
            rc = subprocess.call(
                lab_command(*argv_extra, playbook=ROOT / "playbooks" / "serving.yml"),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
            )
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    if rc != 0:
        raise SystemExit(f"the serving play ({label}) failed ({rc}):\n{logfile.read_text()[-3000:]}")


def serving_containers(target: Target) -> dict[str, dict[str, Any]]:
    """The lab's running serving containers: their STANDIN_* settings and the scrape target
    (host address and published port) of each, as Docker reports them."""
    found = {}
    for host, (container, address) in target.setup.get("hosts", {}).items():
        in_host = ["docker", "exec", container, "docker"]
        listed = [*in_host, "ps", "--filter", "name=llm-serving-", "--format", "{{.Names}} {{.Ports}}"]
        for line in subprocess.run(listed, capture_output=True, text=True, check=False).stdout.splitlines():
            name, _, ports = line.partition(" ")
            inspect = [*in_host, "inspect", "--format", "{{json .Config.Env}}", name]
            env = json.loads(subprocess.run(inspect, capture_output=True, text=True, check=False).stdout or "[]")
            published = re.search(r":(\d+)->", ports)
            found[f"{host} {name}"] = {
                "env": " ".join(sorted(e for e in env if e.startswith("STANDIN_"))) or "no STANDIN_*",
                "target": f"{address}:{published.group(1)}" if published else "",
            }
    return found


def wait_for_scrapes(prometheus: Prometheus, targets: set[str], timeout_s: float = 240) -> float:
    """Seconds until Prometheus scrapes every running serving container: a rollout moves an
    instance to its other colour's port, and the engine's TTFT histogram, which the latency
    alert reads, is only seen once Prometheus follows (file_sd, rewritten by the rollout)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        up = {s["metric"].get("instance") for s in prometheus.query('up{job="serving"} == 1')}
        if targets <= up:
            return time.monotonic() - began
        time.sleep(5)
    raise SystemExit(f"Prometheus did not scrape {sorted(targets)} within {timeout_s:.0f} s")


def package_versions(python: str) -> dict[str, str]:
    """Versions of the load test's packages in the Python that runs Locust."""
    code = (
        "import importlib.metadata as m, json\n"
        "def version(name):\n"
        "    try:\n        return m.version(name)\n"
        "    except m.PackageNotFoundError:\n        return 'not installed'\n"
        "print(json.dumps({n: version(n) for n in ('locust', 'matplotlib')}))"
    )
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--lab", action="store_true", help="the running lab (endpoint, keys, CA, Prometheus, pace)")
    where.add_argument("--endpoint", help="base URL of a site's endpoint, e.g. https://llm.example.org")
    parser.add_argument("--model", help="model name (not with --lab)")
    parser.add_argument("--cacert", default="", help="CA certificate file (default: the system's CAs)")
    parser.add_argument("--prometheus", help="Prometheus base URL, to read the alerts (a site; --lab finds its own)")
    parser.add_argument("--steps", help=f"comma-separated concurrencies (default {','.join(map(str, FULL_STEPS))})")
    parser.add_argument("--step-seconds", type=int, help="seconds per step (default 40; --quick 10)")
    parser.add_argument("--warmup", type=float, help="seconds discarded at each step's start (default 5; --quick 3)")
    parser.add_argument("--quick", action="store_true", help="steps 1,4,16,32 of 10 s, no hold")
    parser.add_argument(
        "--hold", type=int, help=f"seconds at the highest step after the steps (default {FULL_HOLD_S}; --quick 0)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--non-stream-share", type=float, default=0.0, help="fraction of non-streamed requests")
    parser.add_argument("--locust-python", default=sys.executable, help="the Python with Locust (default: this one)")
    parser.add_argument("--output", type=Path, help="Markdown report; .json and .png beside it")
    args = parser.parse_args(argv)
    if args.endpoint and not args.model:
        parser.error("--endpoint needs --model")
    args.steps = [int(s) for s in args.steps.split(",")] if args.steps else QUICK_STEPS if args.quick else FULL_STEPS
    args.step_seconds = args.step_seconds or (10 if args.quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    args.hold = args.hold if args.hold is not None else (0 if args.quick else FULL_HOLD_S)
    if args.warmup >= args.step_seconds:
        parser.error("--warmup must be shorter than --step-seconds")
    return args


def measure(args: argparse.Namespace, target: Target, workdir: Path) -> dict[str, Any]:
    """Every step, then the hold with Prometheus watched; the figures."""
    steps = []
    for users in args.steps:
        run = run_step(args, target, users, args.step_seconds, workdir / f"step-{users:03d}.jsonl")
        figures = summarize(run, users, args.warmup)
        figures["load_avg"] = round(os.getloadavg()[0], 2)
        steps.append(figures)
        log(
            f"{users:3d} users: {figures['rps']:6.2f} req/s, TTFT p99 {_fmt(figures['ttft_p99_ms'], ' ms')}, "
            f"total p99 {_fmt(figures['total_p99_ms'], ' ms')}, errors {_pct(figures['error_rate'])}"
        )
    prom: dict[str, Any] = {}
    hold = None
    if args.hold:
        users = max(args.steps)
        timeline: list[dict[str, Any]] = []
        began = time.monotonic()
        last = [0.0]

        def watch() -> None:
            if target.prometheus and time.monotonic() - last[0] >= 30:
                last[0] = time.monotonic()
                with contextlib.suppress(Exception):  # a missed poll leaves a gap, not a failed run
                    timeline.append({"t": last[0] - began, **target.prometheus.snapshot()})

        log(f"holding {users} users for {args.hold} s")
        run = run_step(args, target, users, args.hold, workdir / "hold.jsonl", while_running=watch)
        hold = summarize(run, users, args.warmup, window_s=min(P99_FOR_S, args.hold - args.warmup))
        hold["load_avg"] = round(os.getloadavg()[0], 2)
        hold["phase"] = "hold"
        prom["timeline"] = timeline
    if target.prometheus:
        # Two scrape and evaluation intervals (15 s each on the lab), so the last seconds of load count.
        time.sleep(SETTLE_S)
        prom["asked_after_s"] = SETTLE_S
        try:
            prom.update(target.prometheus.snapshot())
        except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
            prom["note"] = f"Prometheus could not be asked: {exc}"
    else:
        prom["note"] = "Prometheus was not asked (no --prometheus)."
    return {"steps": steps, "hold": hold, "prometheus": prom}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # A SIGTERM ends the run as Ctrl-C does, so the lab's settings are still restored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = WORK / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    packages = package_versions(args.locust_python)
    if packages.get("locust") in (None, "not installed"):
        raise SystemExit(
            f"no Locust in {args.locust_python}: pip install --require-hashes --no-deps "
            "-r requirements.txt -r requirements-bench.txt"
        )
    load_before = round(os.getloadavg()[0], 2)
    settings: dict[str, Any] = {}
    if args.lab:
        target = lab_target()
        instance = lab_instance()
        settings["pace"] = LAB_PACE
        settings["instances"] = target.setup["instances"]
        paced = {"llm_serving_instances": [{**instance, "env": {**instance.get("env", {}), **LAB_PACE}}]}
    else:
        keys = [k for k in os.environ.get("LOADTEST_API_KEY", "").split(",") if k]
        if not keys:
            raise SystemExit("set LOADTEST_API_KEY (the key stays out of the command line)")
        target = Target(
            endpoint=args.endpoint.rstrip("/"),
            model=args.model,
            keys=keys,
            cacert=args.cacert,
            prometheus=Prometheus(url=args.prometheus) if args.prometheus else None,
        )
    try:
        if args.lab:
            # Inside the try: a pace play that fails half-way is undone too.
            log(f"setting the stand-in's pace: {LAB_PACE}")
            serving_play(paced, "pace")
            containers = serving_containers(target)
            settings["observed_env"] = {name: c["env"] for name, c in containers.items()}
            waited = wait_for_scrapes(target.prometheus, {c["target"] for c in containers.values()})
            settings["scrape_wait_s"] = round(waited)
            log(f"Prometheus scrapes the paced containers ({waited:.0f} s after the play)")
        measured = measure(args, target, workdir)
    finally:
        if args.lab:
            log("restoring the inventory's serving settings")
            serving_play(None, "restore")
    settings.update(
        {
            "endpoint": target.endpoint,
            "model": target.model,
            "keys": len(target.keys),
            "max_tokens": args.max_tokens,
            "non_stream_share": args.non_stream_share,
            "steps": args.steps,
            "step_seconds": args.step_seconds,
            "warmup_s": args.warmup,
            "hold_s": args.hold,
            "samples": str(workdir.relative_to(ROOT)),
        }
    )
    output = args.output or workdir / "serving-load.md"
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in ["scripts/bench_serving_load.py", *(argv or sys.argv[1:])]),
        "settings": settings,
        "environment": {
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "python": f"Python {platform.python_version()}",
            "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
            "packages": packages,
        },
        **measured,
        "knee": find_knee(measured["steps"]),
        "output_json": str(output.with_suffix(".json")),
        "output_png": str(output.with_suffix(".png")),
        "notes": LAB_NOTES if args.lab else SITE_NOTES,
    }
    result["verdicts"] = alert_verdicts(measured["steps"], measured["hold"], args.hold, measured["prometheus"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    result["chart"] = plot(result, output.with_suffix(".png"))
    text = render_markdown(result)
    output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
