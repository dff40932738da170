"""The edge's WAF test sets (tests/data/waf/), turned into requests and run through the edge.

Shared by the molecule scenario `edge` and the lab suite. Requests rotate over the given
API keys and are paced under the per-key rate limit, so a 429 never hides a WAF verdict.
"""

from __future__ import annotations

import copy
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.edge_client import EdgeClient

DATA = Path(__file__).resolve().parents[1] / "data" / "waf"
CHAT = "/v1/chat/completions"
# The stand-in generates `max_tokens` tokens with a delay each: keep answers short.
MAX_TOKENS = 4


@dataclass
class Case:
    id: str
    category: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    rules: list[str] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)  # prompt text that must never reach a log
    status: int = 403  # the expected answer
    param: str | None = None  # for a 400: the field the error must name (its `param` starts with it)


@dataclass
class Result:
    case: Case
    status: int
    request_id: str
    body: bytes


def _set_path(obj: dict, dotted: str, value: str) -> None:
    """Put value at a dotted path (numeric parts index lists), creating what is missing."""
    parts = dotted.split(".")
    cur: Any = obj
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        nxt: Any = [] if (not last and parts[i + 1].isdigit()) else {}
        if isinstance(cur, list):
            idx = int(part)
            while len(cur) <= idx:
                cur.append({} if not last else None)
            if last:
                cur[idx] = value
            elif not isinstance(cur[idx], dict | list):
                cur[idx] = nxt
            cur = cur[idx]
        elif last:
            cur[part] = [value] if part == "stop" else value
        else:
            cur = cur.setdefault(part, nxt)


def _chat(extra: dict | None = None) -> dict:
    body = {"model": "standin", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "Hello there."}]}
    if extra:
        body.update(extra)
    return body


def attack_cases() -> list[Case]:
    data = yaml.safe_load((DATA / "attacks.yaml").read_text())
    cases: list[Case] = []
    fields = data["json_fields"]
    for i, inj in enumerate(data["injections"]):
        payload = inj["payload"]
        query = urllib.parse.urlencode({"q": payload}, quote_via=urllib.parse.quote)
        cases.append(Case(f"{inj['id']}@query", inj["category"], "GET", f"/v1/models?{query}", rules=inj["rules"]))
        body = _chat()
        spec = fields[i % len(fields)]
        where = spec["field"]
        if where.startswith("tools."):
            body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        _set_path(body, where, payload)
        cases.append(
            Case(
                f"{inj['id']}@json:{where}",
                inj["category"],
                "POST",
                CHAT,
                {"Content-Type": "application/json"},
                json.dumps(body).encode(),
                inj["rules"],
                status=spec["status"],
                param=spec.get("param"),
            )
        )
    for req in data["requests"]:
        body = req.get("body")
        cases.append(
            Case(
                req["id"],
                req["category"],
                req["method"],
                req["path"],
                dict(req.get("headers") or {}),
                body.encode() if isinstance(body, str) else None,
                req["rules"],
            )
        )
    return cases


def _with_headers(sets: list[dict], category: str, rules: bool) -> list[Case]:
    """Each header set twice: on GET /v1/models and on a valid chat POST."""
    cases = []
    for hs in sets:
        headers = dict(hs["headers"])
        expected = hs.get("rules", []) if rules else []
        cases.append(Case(f"{hs['id']}@get", category, "GET", "/v1/models", headers, rules=expected))
        post = {"Content-Type": "application/json"} | headers
        cases.append(Case(f"{hs['id']}@post", category, "POST", CHAT, post, json.dumps(_chat()).encode(), expected))
    return cases


def header_attack_cases() -> list[Case]:
    """Payloads in request headers (attacks.yaml `headers`): each 403, with its rules audited."""
    return _with_headers(yaml.safe_load((DATA / "attacks.yaml").read_text())["headers"], "header", rules=True)


def benign_header_cases() -> list[Case]:
    """Ordinary headers of real clients (benign.yaml `headers`): each 200."""
    cases = _with_headers(yaml.safe_load((DATA / "benign.yaml").read_text())["headers"], "benign", rules=False)
    for case in cases:
        case.status = 200
    return cases


def schema_cases() -> list[Case]:
    """Chat requests that break the request schema (attacks.yaml `schema`): each 400 naming the field."""
    cases = []
    for spec in yaml.safe_load((DATA / "attacks.yaml").read_text())["schema"]:
        body = _chat(spec.get("set"))
        for name in spec.get("unset", []):
            body.pop(name)
        raw = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        cases.append(Case(spec["id"], "schema", "POST", CHAT, headers, raw, status=400, param=spec["param"]))
    return cases


def _texts(body: dict) -> list[str]:
    """The prompt texts of a request body (what must never be logged)."""
    out: list[str] = []
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [part.get("text", "") for part in content if isinstance(part, dict)]
        for call in msg.get("tool_calls") or []:
            out.append(call["function"]["arguments"])
    prompt = body.get("prompt")
    out += prompt if isinstance(prompt, list) else [prompt] if prompt else []
    return [t for t in out if t]


def benign_cases() -> list[Case]:
    data = yaml.safe_load((DATA / "benign.yaml").read_text())
    cases = []
    for req in data["requests"]:
        body = copy.deepcopy(req["body"])
        body["max_tokens"] = min(int(body.get("max_tokens", MAX_TOKENS)), MAX_TOKENS)
        pad = int(req.get("pad_to_bytes", 0))
        if pad:
            last = body["messages"][-1]
            block = last["content"]
            while len(json.dumps(body)) < pad:
                last["content"] += "\n" + block
        raw = json.dumps(body).encode()
        # Markers: a distinctive line of each prompt text, searched for in the logs later.
        markers = [max(t.splitlines() or [t], key=len).strip()[:60] for t in _texts(body)]
        cases.append(
            Case(
                req["id"],
                "benign",
                "POST",
                req.get("path", CHAT),
                {"Content-Type": "application/json"},
                raw,
                markers=[m for m in markers if len(m) >= 12],
            )
        )
    return cases


class Pacer:
    """Round-robin over API keys, at most `rate` requests per second per key."""

    def __init__(self, keys: list[str], rate: float) -> None:
        self.keys, self.interval, self.i = keys, 1.0 / rate, 0
        self.last = dict.fromkeys(keys, 0.0)

    def next_key(self) -> str:
        key = self.keys[self.i % len(self.keys)]
        self.i += 1
        wait = self.last[key] + self.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last[key] = time.monotonic()
        return key


def run_cases(client: EdgeClient, cases: list[Case], keys: list[str], rate_per_key: float) -> list[Result]:
    pacer = Pacer(keys, rate_per_key)
    results = []
    for case in cases:
        resp = client.request(case.method, case.path, case.body, case.headers, key=pacer.next_key())
        results.append(Result(case, resp.status, resp.headers.get("x-request-id", ""), resp.body))
    return results


def audit_rule_ids(audit_log_text: str) -> dict[str, set[str]]:
    """request id (ModSecurity transaction id) -> CRS rule IDs in its audit log entry."""
    out: dict[str, set[str]] = {}
    for raw in audit_log_text.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        tx = json.loads(line).get("transaction", {})
        ids = {str(m.get("details", {}).get("ruleId", "")) for m in tx.get("messages", [])}
        out.setdefault(tx.get("unique_id", ""), set()).update(i for i in ids if i)
    return out


def _param(body: bytes) -> str | None:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error.get("param") if error.get("type") == "invalid_request_error" else None


def verdict_problems(results: list[Result], audit: dict[str, set[str]]) -> list[str]:
    """What is wrong with refusals: not the expected status; for a 400, an error that does not
    name the expected field; for a 403, an audit log entry without the expected rules."""
    problems = []
    for r in results:
        ids = audit.get(r.request_id, set())
        if r.status != r.case.status:
            problems.append(f"{r.case.id}: status {r.status}, expected {r.case.status}")
        elif r.status == 400:
            param = _param(r.body)
            if param is None or not param.startswith(r.case.param or ""):
                problems.append(f"{r.case.id}: error names {param!r}, expected {r.case.param!r}")
        elif "949110" not in ids or not any(i.startswith(p) for i in ids for p in r.case.rules):
            problems.append(f"{r.case.id}: audit log rules {sorted(ids)}, expected 949110 and {r.case.rules}")
    return problems
