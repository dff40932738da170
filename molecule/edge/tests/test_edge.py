"""Behaviour of the edge proxy, seen by a client from outside (the controller) and in its logs.

The serving host runs the trtllm-serve TEST DOUBLE (prepare.yml); everything else is the
real thing: Debian's nginx, ModSecurity v3, OWASP CRS 3.3.4, mtail, and the pki role's CA.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import waf_sets
from tests.helpers.edge_client import EdgeClient, http_get

SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
testinfra_hosts = ["edge-proxy"]

_INVENTORY = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["provisioner"]["inventory"]["group_vars"]
KEYS: dict[str, str | list[str]] = _INVENTORY["all"]["cluster_secrets"]["edge_api_keys"]
LIMITS = _INVENTORY["edge"]
CLIENT_KEY = KEYS["molecule-client"]
SECOND_OLD, SECOND_NEW = KEYS["molecule-second"]
LIMITED_KEY = KEYS["molecule-limited"]["key"]
AUDITOR_KEY = KEYS["molecule-auditor"]["key"]
ADMIN_KEY = KEYS["molecule-admin"]["keys"][0]
ALL_KEYS = [CLIENT_KEY, SECOND_OLD, SECOND_NEW, KEYS["molecule-burst"], KEYS["molecule-streams"], LIMITED_KEY,
            AUDITOR_KEY, ADMIN_KEY]  # fmt: skip
# What the stand-in publishes in the llm_serving fact; `standin` is an extra name (molecule.yml).
SERVED_MODEL = "standin-llama-3.1-8b-instruct"
WAF_KEYS = [CLIENT_KEY, SECOND_OLD, SECOND_NEW]
PACE = LIMITS["edge_proxy_rate_per_key"] * 0.75
CHAT = "/v1/chat/completions"
AUDIT_LOG = "/var/log/modsecurity/edge-audit.log"


def _address(container: str) -> str:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture(scope="module")
def edge(host, tmp_path_factory) -> EdgeClient:
    ca = tmp_path_factory.mktemp("edge") / "ca.crt"
    ca.write_text(host.file("/etc/ssl/cluster/ca.crt").content_string)
    return EdgeClient(_address("edge-proxy"), "edge-proxy", ca)


def _chat(**extra) -> dict:
    return {"model": "standin", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello."}]} | extra


# --- TLS and HTTP ------------------------------------------------------------------------


def test_tls13_accepted_and_http2_offered(edge):
    version, alpn = edge.handshake(alpn=["h2", "http/1.1"])
    assert version == "TLSv1.3"
    assert alpn == "h2"


def test_tls12_refused(edge):
    with pytest.raises(ssl.SSLError):
        edge.handshake(maximum=ssl.TLSVersion.TLSv1_2)


def test_hsts_and_request_id_on_every_answer(edge):
    for resp in (edge.request("GET", "/v1/models", key=CLIENT_KEY), edge.request("GET", "/v1/models")):
        assert resp.headers["strict-transport-security"] == "max-age=63072000"
        assert len(resp.headers["x-request-id"]) == 32


def test_plain_http_only_redirects(edge):
    resp = http_get(edge.address, 80, "/v1/models?x=1")
    assert resp.status == 301
    assert resp.headers["location"] == "https://" + edge.address + "/v1/models?x=1"


# --- API keys --------------------------------------------------------------------------


def test_missing_or_wrong_key_is_401_before_anything_else(edge, host):
    for headers in ({}, {"X-API-KEY": "not-a-key-but-long-enough-000000"}, {"Authorization": "Bearer wrong"}):
        # Even an attack is answered 401: the WAF never sees unauthenticated requests.
        resp = edge.request("GET", "/v1/models?id=1%27%20OR%20%271%27=%271", headers=headers)
        assert resp.status == 401, headers
        assert resp.json()["error"]["code"] == "invalid_api_key"
        assert resp.headers["x-request-id"] not in host.file(AUDIT_LOG).content_string


def test_keys_accepted_as_header_or_bearer_and_both_rotation_keys_work(edge):
    assert edge.request("GET", "/v1/models", key=CLIENT_KEY).status == 200
    assert edge.request("GET", "/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}).status == 200
    assert edge.request("GET", "/v1/models", key=SECOND_OLD).status == 200
    assert edge.request("GET", "/v1/models", key=SECOND_NEW).status == 200


def test_routes_and_methods(edge):
    resp = edge.request("POST", CHAT, _chat(), key=CLIENT_KEY)
    assert resp.status == 200 and resp.json()["choices"][0]["message"]["content"].startswith("[standin")
    assert edge.request("GET", "/health").status == 200  # for load balancers: no key
    missing = edge.request("GET", "/v1/nowhere", key=CLIENT_KEY)
    assert missing.status == 404 and missing.json()["error"]["code"] == 404
    assert edge.request("GET", CHAT, key=CLIENT_KEY).status == 405


# --- WAF -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attack_results(edge, host):
    results = waf_sets.run_cases(edge, waf_sets.attack_cases(), WAF_KEYS, PACE)
    return results, waf_sets.audit_rule_ids(host.file(AUDIT_LOG).content_string)


def test_attacks_in_query_headers_paths_and_protocol_are_403_with_crs_rules_audited(attack_results):
    results, audit = attack_results
    outside_json = [r for r in results if "@json:" not in r.case.id]
    assert len(outside_json) >= 30
    assert waf_sets.verdict_problems(outside_json, audit) == []


def test_the_same_payloads_in_non_prompt_json_fields_are_refused_by_the_schema_or_the_waf(attack_results):
    """A field the schema constrains answers 400 naming it; free text (stop) goes to CRS: 403, audited."""
    results, audit = attack_results
    in_json = [r for r in results if "@json:" in r.case.id]
    assert len(in_json) == 20
    assert {r.status for r in in_json} == {400, 403}
    assert waf_sets.verdict_problems(in_json, audit) == []


def test_attacks_in_request_headers_are_403_with_their_rules_audited(edge, host):
    """SQL injection in X-Forwarded-For, Referer, Cookie, User-Agent; JNDI and template
    lookups in custom headers; scanners: on GET and on a valid chat POST."""
    cases = waf_sets.header_attack_cases()
    assert len(cases) == 32
    results = waf_sets.run_cases(edge, cases, WAF_KEYS, PACE)
    audit = waf_sets.audit_rule_ids(host.file(AUDIT_LOG).content_string)
    assert waf_sets.verdict_problems(results, audit) == []


def test_schema_violations_are_400_naming_the_field(edge):
    cases = waf_sets.schema_cases()
    assert len(cases) == 20
    results = waf_sets.run_cases(edge, cases, WAF_KEYS, PACE)
    assert waf_sets.verdict_problems(results, {}) == []
    error = json.loads(results[0].body)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_benign_prompts_full_of_code_sql_shell_and_html_pass(edge, host):
    cases = waf_sets.benign_cases()
    assert len(cases) >= 30
    assert max(len(c.body or b"") for c in cases) > 128 * 1024
    results = waf_sets.run_cases(edge, cases, WAF_KEYS, PACE)
    blocked = {r.case.id: r.status for r in results if r.status != 200}
    assert blocked == {}, f"benign requests refused: {blocked}"
    audited = waf_sets.audit_rule_ids(host.file(AUDIT_LOG).content_string)
    assert not any(r.request_id in audited for r in results), "a benign request reached the WAF audit log"


def test_ordinary_client_headers_pass(edge, host):
    cases = waf_sets.benign_header_cases()
    assert len(cases) == 20
    results = waf_sets.run_cases(edge, cases, WAF_KEYS, PACE)
    blocked = {r.case.id: r.status for r in results if r.status != 200}
    assert blocked == {}, f"benign headers refused: {blocked}"
    audited = waf_sets.audit_rule_ids(host.file(AUDIT_LOG).content_string)
    assert not any(r.request_id in audited for r in results), "a benign request reached the WAF audit log"


# --- Roles on API keys ---------------------------------------------------------------------

ROLE_MATRIX = {
    # key: (chat with `standin`, chat with the other served model, /v1/models, /v1/usage, /metrics)
    "user": (CLIENT_KEY, (200, 200, 200, 403, 403)),
    "user limited to standin": (LIMITED_KEY, (200, 403, 200, 403, 403)),
    "auditor": (AUDITOR_KEY, (403, 403, 403, 200, 403)),
    "admin": (ADMIN_KEY, (200, 200, 200, 200, 200)),
}


def test_each_role_reaches_the_routes_it_is_given(edge):
    got = {}
    for name, (key, _) in ROLE_MATRIX.items():
        got[name] = (
            edge.request("POST", CHAT, _chat(), key=key).status,
            edge.request("POST", CHAT, _chat(model=SERVED_MODEL), key=key).status,
            edge.request("GET", "/v1/models", key=key).status,
            edge.request("GET", "/v1/usage", key=key).status,
            edge.request("GET", "/metrics", key=key).status,
        )
    assert got == {name: expected for name, (_, expected) in ROLE_MATRIX.items()}


def test_a_limited_key_sees_only_its_models_and_is_told_why_others_are_refused(edge):
    listed = edge.request("GET", "/v1/models", key=LIMITED_KEY).json()
    assert [m["id"] for m in listed["data"]] == ["standin"]
    refused = edge.request("POST", CHAT, _chat(model=SERVED_MODEL), key=LIMITED_KEY).json()["error"]
    assert (refused["code"], refused["param"]) == ("model_not_allowed", "model")
    role = edge.request("POST", CHAT, _chat(), key=AUDITOR_KEY).json()["error"]
    assert role["code"] == "role_forbidden"


def test_usage_per_key_name_for_auditors(edge):
    assert edge.request("POST", CHAT, _chat(), key=CLIENT_KEY).status == 200
    time.sleep(1.5)  # mtail polls the log
    usage = edge.request("GET", "/v1/usage", key=AUDITOR_KEY)
    assert usage.status == 200
    mine = {row["client"]: row for row in usage.json()["data"]}["molecule-client"]
    assert mine["requests"] >= 1 and mine["prompt_tokens"] >= 1 and mine["completion_tokens"] >= 1
    assert not any(k.encode() in usage.body for k in ALL_KEYS)


def test_body_over_the_limit_is_413(edge):
    big = _chat(messages=[{"role": "user", "content": "x" * (5 * 1024 * 1024)}])
    resp = edge.request("POST", CHAT, big, key=CLIENT_KEY)
    assert resp.status == 413 and resp.json()["error"]["code"] == 413


# --- Limits and streaming ----------------------------------------------------------------


def test_burst_over_the_per_key_limit_is_429(edge):
    rate, burst = LIMITS["edge_proxy_rate_per_key"], LIMITS["edge_proxy_burst_per_key"]
    began = time.monotonic()
    statuses = edge.statuses_over_one_connection("GET", "/v1/models", 3 * burst + 20, KEYS["molecule-burst"])
    elapsed = time.monotonic() - began
    allowed = burst + 1 + int(rate * elapsed) + 1
    assert set(statuses) == {200, 429}, statuses
    assert statuses.count(200) <= allowed, f"{statuses.count(200)} passed in {elapsed:.2f}s, at most {allowed} may"
    resp = edge.request("GET", "/v1/models", key=KEYS["molecule-burst"])
    if resp.status == 429:
        assert resp.json()["error"]["code"] == 429


def test_streamed_completion_arrives_token_by_token(edge):
    stream = edge.stream(CHAT, _chat(stream=True, max_tokens=500), key=CLIENT_KEY)
    assert stream.status == 200
    times = [t for t, _ in stream.chunks]
    assert times[0] < 1.0, f"first chunk after {times[0]:.2f}s"
    assert times[-1] >= 5.0, f"stream lasted only {times[-1]:.2f}s"
    # Chunks keep arriving while the model generates: at least one in every second.
    seconds_with_data = {int(t) for t in times}
    assert set(range(int(times[-1]))) <= seconds_with_data, sorted(seconds_with_data)
    assert len(stream.chunks) >= 50
    assert stream.text.rstrip().endswith("data: [DONE]")


def test_concurrent_streams_per_key_are_limited(edge):
    limit = LIMITS["edge_proxy_streams_per_key"]
    statuses: list[int] = []

    def one():
        statuses.append(edge.stream(CHAT, _chat(stream=True, max_tokens=150), key=KEYS["molecule-streams"]).status)

    threads = [threading.Thread(target=one) for _ in range(limit)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the first streams are running (1.5 s each)
    extra = edge.request("POST", CHAT, _chat(), key=KEYS["molecule-streams"])
    for t in threads:
        t.join()
    assert statuses == [200] * limit
    assert extra.status == 429 and extra.json()["error"]["code"] == 429
    assert edge.request("POST", CHAT, _chat(), key=KEYS["molecule-streams"]).status == 200


# --- Metrics ------------------------------------------------------------------------------


def _metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text as (name, labels, value)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and not line.startswith("#"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def test_metrics_from_the_access_log(edge):
    edge.request("POST", CHAT, _chat(), key=CLIENT_KEY)
    # A request of its own for the WAF to block, and one for the schema, whatever ran before.
    assert edge.request("GET", "/v1/models?id=1%27%20OR%20%271%27=%271", key=CLIENT_KEY).status == 403
    assert edge.request("POST", CHAT, _chat(temperature=9), key=CLIENT_KEY).status == 400
    time.sleep(1.5)  # mtail polls the log
    text = http_get(edge.address, 3903, "/metrics").body.decode()
    samples = _metrics(text)

    def value(name: str, **labels: str) -> float:
        return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())

    assert value("edge_http_requests_total", route="chat", status="200", client="molecule-client") >= 1
    assert value("edge_waf_blocked_requests_total") >= 1
    assert value("edge_http_request_duration_seconds_count", route="chat") >= 1
    assert value("edge_http_request_duration_seconds_bucket", route="chat", le="0.5") >= 1
    assert value("edge_http_upstream_header_seconds_count", route="chat") >= 1
    assert value("edge_http_response_bytes_total", route="chat") > 0
    # Per key name: tokens of the answers (their usage objects); the edge's own refusals apart.
    assert value("edge_client_prompt_tokens_total", client="molecule-client") >= 1
    assert value("edge_client_completion_tokens_total", client="molecule-client") >= 1
    assert value("edge_refused_requests_total", route="chat", reason="schema") >= 1
    assert not any(k in text for k in ALL_KEYS)


def test_admins_read_the_metrics_over_https(edge):
    resp = edge.request("GET", "/metrics", key=ADMIN_KEY)
    assert resp.status == 200 and b"edge_http_requests_total" in resp.body


# --- Changes made by the side_effect step (side_effect.yml) ---------------------------------


def _serial(host, command: str) -> str:
    return host.check_output(command).strip()


def test_a_renewed_certificate_is_served(edge, host):
    """side_effect.yml renewed the server certificate; the edge serves the new one."""
    before = host.file("/root/server-serial-before").content_string.strip()
    now = _serial(host, "openssl x509 -noout -serial -in /etc/ssl/cluster/server.crt")
    assert now.startswith("serial=") and now != before
    served = _serial(
        host,
        "echo | openssl s_client -connect 127.0.0.1:443 -servername edge-proxy 2>/dev/null"
        " | openssl x509 -noout -serial",
    )
    assert served == now
    assert edge.handshake()[0] == "TLSv1.3"


def test_the_operator_certificate_is_installed_with_its_own_key(host):
    """side_effect.yml installed a provided pair, then had a mismatched key refused: the pair stays."""
    key = host.file("/etc/ssl/cluster/private/operator.key")
    assert key.mode == 0o600 and key.user == "root"
    cert_pub = host.check_output("openssl x509 -noout -pubkey -in /etc/ssl/cluster/operator.crt")
    key_pub = host.check_output("openssl pkey -pubout -in /etc/ssl/cluster/private/operator.key")
    assert cert_pub == key_pub
    assert "llm.example.test" in host.check_output("openssl x509 -noout -subject -in /etc/ssl/cluster/operator.crt")


# --- Privacy ----------------------------------------------------------------------------


def test_no_prompt_text_and_no_api_key_in_any_log(edge, host):
    """Every log file (compressed ones too) and the journal: no key, no line of a prompt."""
    # Prompts of its own first, so the logs hold their traffic whatever ran before.
    own = waf_sets.run_cases(edge, waf_sets.benign_cases()[:5], WAF_KEYS, PACE)
    assert [r.status for r in own] == [200] * len(own)
    access = host.file("/var/log/nginx/edge-access.log").content_string
    assert all(r.request_id in access for r in own)
    secrets = ALL_KEYS + [m for c in waf_sets.benign_cases() for m in c.markers]
    patterns = " ".join("-e " + shlex.quote(p) for p in secrets)
    found = host.run(
        "{ find /var/log -type f -name '*.gz' -exec zcat {} + ; find /var/log -type f ! -name '*.gz' -exec cat {} + ;"
        f" journalctl --no-pager -o cat ; }} 2>/dev/null | grep -aoF {patterns} | sort -u"
    ).stdout.strip()
    assert found == "", f"{len(found.splitlines())} key(s) or prompt lines found in the logs"
