"""A small HTTPS client for the edge proxy's tests (stdlib only).

Connects to an address but verifies the certificate for a name (the internal CA's
certificate names the edge host, tests reach it by container address), keeps TLS and
HTTP/2 facts (ALPN), and reads streamed responses chunk by chunk with arrival times.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Stream:
    status: int
    started: float
    # (seconds since the request was sent, bytes) for every read that returned data
    chunks: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return b"".join(c for _, c in self.chunks).decode()


class EdgeClient:
    def __init__(self, address: str, server_name: str, ca_file: str | Path, port: int = 443, timeout: float = 30):
        self.address, self.server_name, self.port, self.timeout = address, server_name, port, timeout
        self.ca_file = str(ca_file)

    def context(self, minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if minimum:
            ctx.minimum_version = minimum
        if maximum:
            ctx.maximum_version = maximum
        return ctx

    def handshake(self, minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None,
                  alpn: list[str] | None = None) -> tuple[str, str | None]:  # fmt: skip
        """(TLS version, ALPN protocol) of a fresh handshake; raises ssl.SSLError when refused."""
        ctx = self.context(minimum, maximum)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        with (
            socket.create_connection((self.address, self.port), timeout=self.timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=self.server_name) as tls,
        ):
            return tls.version() or "", tls.selected_alpn_protocol()

    def _connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout)
        raw = socket.create_connection((self.address, self.port), timeout=self.timeout)
        conn.sock = self.context().wrap_socket(raw, server_hostname=self.server_name)
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> Response:
        hdrs = {"Host": self.server_name, "User-Agent": "edge-tests/1.0", "Accept": "application/json"}
        if isinstance(body, dict):
            body = json.dumps(body)
            hdrs["Content-Type"] = "application/json"
        if key is not None:
            hdrs["X-API-KEY"] = key
        hdrs.update(headers or {})
        conn = self._connection()
        try:
            conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=hdrs)
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def statuses_over_one_connection(self, method: str, path: str, count: int, key: str) -> list[int]:
        """`count` requests one after another over one keep-alive connection (fast bursts)."""
        hdrs = {"Host": self.server_name, "X-API-KEY": key, "User-Agent": "edge-tests/1.0"}
        conn = self._connection()
        out = []
        try:
            for _ in range(count):
                conn.request(method, path, headers=hdrs)
                resp = conn.getresponse()
                resp.read()
                out.append(resp.status)
        finally:
            conn.close()
        return out

    def stream(self, path: str, body: dict, key: str) -> Stream:
        hdrs = {"Host": self.server_name, "Content-Type": "application/json", "X-API-KEY": key,
                "Accept": "text/event-stream", "User-Agent": "edge-tests/1.0"}  # fmt: skip
        conn = self._connection()
        try:
            began = time.monotonic()
            conn.request("POST", path, body=json.dumps(body).encode(), headers=hdrs)
            resp = conn.getresponse()
            out = Stream(resp.status, began)
            while True:
                data = resp.read1(65536)
                if not data:
                    break
                out.chunks.append((time.monotonic() - began, data))
            return out
        finally:
            conn.close()


def http_get(address: str, port: int, path: str, timeout: float = 10) -> Response:
    """Plain HTTP GET (the redirect listener, metrics)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "edge-tests/1.0", "Accept": "*/*"})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
