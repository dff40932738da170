"""A small load loop for OpenAI-style chat endpoints, to prove an update drops no request.

Worker threads send chat completions until stopped: short ones (streamed and not) and long
streams (about 10 s with the trtllm-serve stand-in) that are in flight while traffic
switches. Every request is recorded; a request counts as failed unless it answered 200 and,
when streamed, ended with `data: [DONE]`. The stand-in names its release in the first
token (`[standin v2] ...`) and its host name (container ID) in `standin_host`, so each
result also says which release and which instance answered.

Kept light on purpose (our machines have 2 cores shared by several engineers): by default
2 short workers pausing 0.8 s between requests and 5 long-stream workers (10 s each).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

VERSION = re.compile(r"\[standin (v[\w.-]+)\]")
HOST = re.compile(r'"standin_host": "([^"]+)"')


@dataclass
class Result:
    kind: str
    started: float
    ended: float
    status: int
    ok: bool
    version: str = ""
    error: str = ""
    host: str = ""


@dataclass
class LoadLoop:
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    context: ssl.SSLContext | None = None
    short_workers: int = 2
    long_workers: int = 5
    short_pause_s: float = 0.8
    long_tokens: int = 500
    timeout_s: float = 60
    results: list[Result] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        url = urlsplit(self.base_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")

    # -- one request -------------------------------------------------------------------
    def request(self, kind: str, stream: bool, max_tokens: int) -> Result:
        body = json.dumps(
            {
                "model": "standin-chat",
                "messages": [{"role": "user", "content": "Say something about zero-downtime updates."}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
        )
        headers = {"Content-Type": "application/json", **self.headers}
        started = time.time()
        status, ok, version, error, host = 0, False, "", "", ""
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s, context=self.context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        try:
            conn.request("POST", f"{self._prefix}/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            if stream:
                events = []
                for raw in resp:
                    line = raw.decode(errors="replace").strip()
                    if line.startswith("data: "):
                        events.append(line[6:])
                text = "".join(events[:2])
                ok = status == 200 and bool(events) and events[-1] == "[DONE]"
                if status == 200 and not ok:
                    error = f"stream ended without [DONE] after {len(events)} events"
            else:
                text = resp.read().decode(errors="replace")
                ok = status == 200
            match = VERSION.search(text)
            version = match.group(1) if match else ""
            match = HOST.search(text)
            host = match.group(1) if match else ""
            if not ok and not error:
                error = f"HTTP {status}: {text[:200]}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        return Result(kind, started, time.time(), status, ok, version, error, host)

    # -- workers -----------------------------------------------------------------------
    def _short(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            result = self.request("short", stream=(n + index) % 2 == 0, max_tokens=4)
            self._record(result)
            n += 1
            self._stop.wait(self.short_pause_s)

    def _long(self, index: int) -> None:
        # Stagger the long streams so some are always in flight.
        self._stop.wait(index * 10.0 / max(1, self.long_workers))
        while not self._stop.is_set():
            self._record(self.request("long", stream=True, max_tokens=self.long_tokens))

    def _record(self, result: Result) -> None:
        with self._lock:
            self.results.append(result)

    def start(self) -> LoadLoop:
        for i in range(self.short_workers):
            self._threads.append(threading.Thread(target=self._short, args=(i,), daemon=True))
        for i in range(self.long_workers):
            self._threads.append(threading.Thread(target=self._long, args=(i,), daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Result]:
        """Stop sending; requests in flight (long streams too) are waited for."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        return list(self.results)

    # -- what the tests assert -----------------------------------------------------------
    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        by_version: dict[str, int] = {}
        for r in self.results:
            by_version[r.version or "?"] = by_version.get(r.version or "?", 0) + 1
        longs = [r for r in self.results if r.kind == "long"]
        return (
            f"{len(self.results)} requests ({len(longs)} long streams), {len(self.failures())} failed, "
            f"answered by {dict(sorted(by_version.items()))}"
        )


def streams_crossing(results: list[Result], old_instance: str) -> list[Result]:
    """Long streams of the old instance that were in flight when it took its last new request.

    An instance's last new request marks the moment the edge stopped sending to it (the
    switch, or the drain); streams it was still answering then crossed the switch.
    `old_instance` is the instance's host name (the stand-in's container ID).
    """
    mine = [r for r in results if r.host == old_instance]
    if not mine:
        return []
    last = max(r.started for r in mine)
    return [r for r in mine if r.kind == "long" and r.started < last - 0.5 and r.ended > last + 0.5]
