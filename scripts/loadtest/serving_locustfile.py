"""Locust scenario: chat users of an OpenAI-compatible endpoint, streamed, as an LLM's users are.

    LOADTEST_API_KEY=... locust -f scripts/loadtest/serving_locustfile.py --headless \\
        --host https://llm.example.org -u 16 -r 16 -t 60s \\
        --model llama-3.1-8b-instruct [--cacert ca.crt] [--max-tokens 64] \\
        [--non-stream-share 0.1] [--samples-file samples.jsonl]

Works against any site: the endpoint is Locust's `--host`, the model, CA and sample file are
options below (or LOADTEST_* environment variables), and the API key is read from the
environment (`LOADTEST_API_KEY`, or the variable `--api-key-env` names) so it stays out of
process lists. Several keys, comma-separated, are spread over the users (user i takes key
i mod n): an edge limits concurrent streams per key, and a site's load comes from many keys.

Each user sends `POST /v1/chat/completions` in a closed loop, without think time (so the
concurrency is the number of users), asking for `"stream": true` (a share of requests,
`--non-stream-share`, asks for a whole answer instead). It reads the server-sent events and
measures, from the moment the request was sent:
  * ttft: time to the first `data:` event that carries content (the first token);
  * total: time to `data: [DONE]` (non-streamed: to the whole answer).
A request is OK only if it answered 200 and, streamed, ended with `[DONE]`. Both figures are
Locust request events (names `ttft` and `total`; Locust's own event for the request, the
time to its response headers, is named `headers`), and every request is also written as one
JSON line to `--samples-file` (start, ttft, total, status, ok, error, stream), from which
scripts/bench_serving_load.py computes exact percentiles: Locust's own are rounded into
buckets. A request refused with 429 (the edge's rate or stream limits) is followed by a
pause (`--refused-backoff`, as a well-behaved client backs off), so refused users do not
turn into a flood of instant retries.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from gevent import sleep
from locust import HttpUser, events, task

# A short, realistic chat turn: what the sample's prompt costs is the prefill, not the text.
SYSTEM_PROMPT = "You are a helpful assistant for the operations team. Answer briefly and precisely."
USER_PROMPT = (
    "Our nightly backup job sometimes takes twice as long as usual. What are the three most likely "
    "causes, and what should I check first on the storage host?"
)


# The scenario's options: (option, default, help); each may also come from LOADTEST_<NAME>.
OPTIONS = [
    ("--model", "", "model name sent in each request"),
    ("--api-key-env", "LOADTEST_API_KEY", "environment variable holding the API key (or comma-separated keys)"),
    ("--cacert", "", "CA certificate file to verify the endpoint with (default: the system's CAs)"),
    ("--max-tokens", 64, "max_tokens asked for"),
    ("--non-stream-share", 0.0, "fraction (0..1) of requests sent without streaming"),
    ("--samples-file", "", "write every request as a JSON line here (appended)"),
    ("--request-timeout", 120.0, "seconds a request may wait for the next byte"),
    ("--refused-backoff", 1.0, "seconds a user pauses after a 429 before its next request"),
]


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("serving load test (scripts/loadtest/serving_locustfile.py)")
    for option, default, help_text in OPTIONS:
        env_var = "LOADTEST_" + option[2:].upper().replace("-", "_")
        group.add_argument(option, env_var=env_var, type=type(default), default=default, help=help_text)


class SampleLog:
    """The per-request JSON lines file. Users are greenlets of one process, and a line is
    written in one call without yielding, so lines never interleave."""

    def __init__(self) -> None:
        self.file = None

    def open(self, path: str, run_time: float | None) -> None:
        if path:
            self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (open across the test)
            # The run's start: the driver discards a warm-up after it and ends the window at start + run_time.
            self.write({"event": "start", "time": time.time(), "run_time": run_time})

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is not None:
            self.write({"event": "stop", "time": time.time()})
            self.file.close()
            self.file = None


SAMPLES = SampleLog()


@events.test_start.add_listener
def open_samples(environment: Any, **_kwargs: Any) -> None:
    options = environment.parsed_options
    SAMPLES.open(options.samples_file, options.run_time)


@events.test_stop.add_listener
def close_samples(environment: Any, **_kwargs: Any) -> None:
    SAMPLES.close()


def has_content(event: dict[str, Any]) -> bool:
    """Whether a streamed chunk carries a token (role-only and empty deltas do not)."""
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


class ChatUser(HttpUser):
    """One chat client: a request, its whole answer, then the next request at once."""

    # Spread users over the keys in order of their start.
    started = 0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        keys = [k.strip() for k in os.environ.get(options.api_key_env, "").split(",") if k.strip()]
        if not keys:
            raise SystemExit(f"no API key: set {options.api_key_env}")
        key = keys[ChatUser.started % len(keys)]
        ChatUser.started += 1
        self.client.headers["Authorization"] = f"Bearer {key}"
        self.client.verify = options.cacert or True
        self.options = options
        self.sent = 0

    def body(self, stream: bool) -> dict[str, Any]:
        return {
            "model": self.options.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}],
            "max_tokens": self.options.max_tokens,
            "temperature": 0.7,
            "stream": stream,
        }

    def stream_now(self) -> bool:
        """Deterministic mix: every user sends the share of non-streamed requests evenly spread."""
        share = self.options.non_stream_share
        self.sent += 1
        return int(self.sent * share) == int((self.sent - 1) * share)

    def report(self, name: str, seconds: float, length: int, error: str) -> None:
        self.environment.events.request.fire(
            request_type="POST", name=name, response_time=seconds * 1000, response_length=length,
            exception=RuntimeError(error) if error else None, context={},
        )  # fmt: skip

    def on_failure_pause(self, status: int) -> None:
        if status == 429 and self.options.refused_backoff > 0:
            sleep(self.options.refused_backoff)

    @task
    def chat(self) -> None:
        stream = self.stream_now()
        started_wall, began = time.time(), time.perf_counter()
        ttft: float | None = None
        status, error, received = 0, "", 0
        try:
            response = self.client.post(
                "/v1/chat/completions", json=self.body(stream), stream=stream, name="request", catch_response=True,
                timeout=(10, self.options.request_timeout),
            )  # fmt: skip
            with response:
                status = response.status_code
                if response.error is not None and not status:
                    error = f"{type(response.error).__name__}: {response.error}"
                elif status != 200:
                    error = f"HTTP {status}"
                elif stream:
                    ttft, done, received = self.read_events(response, began)
                    if not done:
                        error = "stream ended without [DONE]"
                else:
                    received = len(response.content)
                    ttft = None
                # Locust's own event for the request measures the time to its response headers.
                response.request_meta["name"] = "headers"
                if error:
                    response.failure(error)
                else:
                    response.success()
        except Exception as exc:  # a broken connection mid-stream is a failed request, not a crash
            error = error or f"{type(exc).__name__}: {exc}"
        total = time.perf_counter() - began
        if ttft is not None:
            self.report("ttft", ttft, 0, error)
        self.report("total", total, received, error)
        SAMPLES.write({"start": started_wall, "ttft": ttft, "total": total, "status": status, "ok": not error,
                       "error": error, "stream": stream})  # fmt: skip
        if error:
            self.on_failure_pause(status)

    @staticmethod
    def read_events(response: Any, began: float) -> tuple[float | None, bool, int]:
        """Read server-sent events as they arrive: (time to first token, saw [DONE], bytes)."""
        ttft, done, received, pending = None, False, 0, b""
        # chunk_size=None: each chunk as it arrives (a fixed size would wait for that many bytes).
        for chunk in response.iter_content(chunk_size=None):
            received += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                elif ttft is None and has_content(json.loads(data)):
                    ttft = time.perf_counter() - began
        return ttft, done, received
