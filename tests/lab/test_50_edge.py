"""The edge layer on the lab: edge1 in front of the serving endpoints of gpu1 and gpu2.

What needs the whole site: balancing over several serving hosts, traffic changes through
edge_proxy's `upstreams` entry point with its parameter (as the serving role calls it), a
broken template refused on a converged edge, the other zones trusting the edge. TLS, keys,
the WAF sets, limits, streaming, metrics and log privacy are asserted once, by the edge
scenario (molecule/edge). Every test leaves the edge as it found it.
"""

from __future__ import annotations

import json
import time

import pytest
from conftest import Lab, _summary
from labkit import pki

from tests.helpers.edge_client import EdgeClient

pytestmark = pytest.mark.usefixtures("converged")

FACT = "/etc/ansible/facts.d/llm_serving.fact"
ACCESS_LOG = "/var/log/nginx/edge-access.log"
CHAT = "/v1/chat/completions"
AUDIT_LOG = "/var/log/modsecurity/edge-audit.log"
# A caller of the entry point, as the serving role's publish step is one: the backends as data.
UPSTREAMS_CALL = """\
- name: Tell the edge about serving endpoint states (edge_proxy, tasks_from upstreams)
  hosts: edge
  become: true
  gather_facts: false
  tasks:
    - name: The edge follows the given backends
      ansible.builtin.include_role:
        name: edge_proxy
        tasks_from: upstreams
      vars:
        edge_proxy_upstreams_backends: "{{ backends }}"
"""


@pytest.fixture(scope="module")
def edge(converged: Lab, tmp_path_factory) -> EdgeClient:
    host = converged.hosts("edge")[0]
    ca = pki.fetch_ca(converged.topo, host, tmp_path_factory.mktemp("edge") / "ca.crt")
    return EdgeClient(converged.address(host), host, ca)


def _chat(**extra) -> dict:
    return {"model": "standin", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello."}]} | extra


@pytest.fixture(scope="module")
def serving(converged: Lab) -> list[str]:
    """The GPU hosts, each publishing at least one active serving endpoint."""
    gpus = converged.hosts("gpu_nodes")
    for host in gpus:
        endpoints = json.loads(converged.exec(host, f"cat {FACT}").stdout)["endpoints"]
        assert any(e["state"] == "active" for e in endpoints), (host, endpoints)
    return gpus


def _answering(converged: Lab, edge: EdgeClient, key: str, n: int) -> set[str]:
    """The GPU hosts that answered n chat requests, from the edge's own access log (each
    answer's X-Request-ID is a log line's request_id, and its upstream_addr names the host)."""
    ids = set()
    for _ in range(n):
        resp = edge.request("POST", CHAT, _chat(), key=key)
        assert resp.status == 200, resp.body[:200]
        ids.add(resp.headers["x-request-id"])
    by_address = {converged.address(h): h for h in converged.hosts("gpu_nodes")}
    edge_host = converged.hosts("edge")[0]
    lines = converged.exec(edge_host, f"tail -n {4 * n + 50} {ACCESS_LOG}").stdout.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    answered = [e["upstream_addr"].split(", ")[-1].rsplit(":", 1)[0] for e in entries if e["request_id"] in ids]
    assert len(answered) == n, f"{len(answered)} of {n} requests found in {ACCESS_LOG}"
    return {by_address.get(a, a) for a in answered}


def test_chat_is_balanced_over_every_serving_host(converged: Lab, edge, serving, api_keys):
    assert _answering(converged, edge, api_keys["lab-client"], 8) == set(serving)


def _tell_the_edge(lab: Lab, tmp_path, backends: dict) -> None:
    playbook = tmp_path / "upstreams-call.yml"
    playbook.write_text(UPSTREAMS_CALL)
    run = lab.playbook("-e", json.dumps({"backends": backends}), playbook=playbook)
    assert run.rc == 0, _summary(run)


def _published(lab: Lab, hosts: list[str], state: str | None = None) -> dict:
    """The entry point's parameter for these hosts: what they publish, or every endpoint in `state`."""
    out = {}
    for host in hosts:
        endpoints = json.loads(lab.exec(host, f"cat {FACT}").stdout)["endpoints"]
        endpoints = [e | {"state": state} for e in endpoints] if state else endpoints
        out[host] = {"address": lab.address(host), "endpoints": endpoints}
    return out


def test_the_upstreams_entry_point_drains_a_host_and_answers_503_without_endpoints(
    converged: Lab, edge, serving, api_keys, tmp_path
):
    key = api_keys["lab-client"]
    first = serving[0]
    try:
        _tell_the_edge(converged, tmp_path, _published(converged, [first], "draining"))
        assert first not in _answering(converged, edge, key, 6)
        _tell_the_edge(converged, tmp_path, _published(converged, serving, "draining"))
        resp = edge.request("POST", CHAT, _chat(), key=key)
        assert resp.status == 503
        assert resp.json()["error"]["message"] == "No serving endpoint is available."
    finally:
        _tell_the_edge(converged, tmp_path, _published(converged, serving))
    assert _answering(converged, edge, key, 8) == set(serving)


def test_a_broken_template_fails_the_run_and_the_proxy_keeps_serving(converged: Lab, edge, serving, api_keys):
    host = converged.hosts("edge")[0]
    before = converged.exec(host, "sha256sum /etc/nginx/edge/site.conf").stdout
    broken = {"edge_proxy_extra_server_config": ["proxy_buffering sometimes;"]}
    run = converged.playbook("--tags", "edge_proxy", "--limit", host, "-e", json.dumps(broken))
    assert run.rc != 0
    messages = " ".join(m for msgs in run.failures().values() for m in msgs)
    # managed_files names the file whose new content nginx -t refused, and keeps the old one.
    assert "/etc/nginx/edge/site.conf: the new content failed validation" in messages, messages
    assert converged.exec(host, "sha256sum /etc/nginx/edge/site.conf").stdout == before
    assert edge.request("POST", CHAT, _chat(), key=api_keys["lab-client"]).status == 200


def test_internal_hosts_trust_the_edge_certificate_and_scrape_its_metrics(converged: Lab, edge, serving, api_keys):
    ops, edge_host = converged.hosts("ops")[0], converged.hosts("edge")[0]
    assert edge.request("POST", CHAT, _chat(), key=api_keys["lab-client"]).status == 200
    # The system trust store of every host holds the internal CA (pki): plain urllib verifies.
    health = converged.exec(
        ops, f"python3 -c \"import urllib.request; print(urllib.request.urlopen('https://{edge_host}/health').status)\""
    )
    assert health.stdout.strip() == "200"
    time.sleep(1.5)  # mtail polls the access log
    metrics = converged.exec(
        ops, f"python3 -c \"import urllib.request; print(urllib.request.urlopen('http://{edge_host}:3903/metrics').read().decode())\""
    ).stdout  # fmt: skip
    assert 'edge_http_requests_total{client="lab-client",route="chat",status="200"}' in metrics
    assert "edge_http_request_duration_seconds_bucket" in metrics
