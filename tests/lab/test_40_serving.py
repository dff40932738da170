"""The serving layer on the lab: instances behind the edge, updates that drop no request.

The instances run the trtllm-serve TEST DOUBLE (tests/doubles/trtllm-standin), pulled by
digest from the registry on ops1. Releases: v1 (the inventory's), v2, and two broken ones
(v3-never-ready, v3-errors). Every update runs under a load loop through the edge (short
requests and 10 s streams, tests/lab/serving_load.py) and must lose none of them.

Each test asserts relative to the state it finds, and brings about the state it needs
(`at_release`): the tests pass in any order. The last one in the file brings the lab back to
the inventory's state (v1 everywhere), as test_90_drift expects.
"""

from __future__ import annotations

import json
import re
import ssl
import time

import pytest
from conftest import ROOT, Lab, _summary, quote, wait_for
from serving_load import LoadLoop, streams_crossing

pytestmark = pytest.mark.usefixtures("converged")

SERVING = ROOT / "playbooks" / "serving.yml"
MAINTENANCE = ROOT / "playbooks" / "maintenance.yml"
IMAGES = ROOT / ".cache" / "trtllm-standin" / "images.yml"
INSTANCE = "chat"
MIN_REQUESTS = 200


def images() -> dict:
    return json.loads(IMAGES.read_text())


def release(name: str, **settings: object) -> list[str]:
    """Extra vars that deploy stand-in release `name` (and any llm_serving_* settings)."""
    return ["-e", json.dumps({"llm_serving_image_digest": images()["digests"][name], **settings})]


def serving(lab: Lab, *args: str):
    """The serving play alone (the role's tag), as an operator runs an update."""
    return lab.playbook("--tags", "llm_serving", *args, playbook=SERVING)


def fact(lab: Lab, host: str) -> list[dict]:
    return json.loads(lab.exec(host, "cat /etc/ansible/facts.d/llm_serving.fact").stdout)["endpoints"]


def direct(lab: Lab, host: str, port: int, path: str = "/v1/chat/completions") -> str:
    """An answer from an instance itself, asked on its host."""
    script = (
        "import sys, urllib.request as u\n"
        "p = sys.argv[1]\n"
        "r = u.Request('http://127.0.0.1:' + sys.argv[2] + p, data=b'{\"max_tokens\": 2}' if 'v1' in p else None)\n"
        "print(u.urlopen(r, timeout=10).read().decode())\n"
    )
    return lab.exec(host, f"python3 -c {quote(script)} {path} {port}").stdout


def active(lab: Lab, host: str) -> dict:
    """The host's active endpoint of the instance (from its fact)."""
    eps = [e for e in fact(lab, host) if e["instance"] == INSTANCE and e["state"] == "active"]
    assert len(eps) == 1, fact(lab, host)
    return eps[0]


def scraped_ports(lab: Lab, host: str) -> set[int]:
    """The ports of the host's endpoints that Prometheus's serving job scrapes now."""
    targets = lab.monitoring_api("/api/v1/targets", state="active")["data"]["activeTargets"]
    return {
        int(t["labels"]["instance"].rsplit(":", 1)[1])
        for t in targets
        if t["labels"].get("job") == "serving" and t["labels"].get("host") == host
    }


def readiness_lost(lab: Lab, host: str, seconds: float) -> float:
    """How often Prometheus saw the host's readiness go from ready to not ready in the last
    `seconds` (what ServingModelLoadFailures counts as lost readiness)."""
    query = f'sum(resets(probe_success{{job="serving_readiness",host="{host}"}}[{int(seconds) + 1}s]))'
    result = lab.monitoring_api("/api/v1/query", query=query)["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def release_of(lab: Lab, host: str) -> str | None:
    """The stand-in release the host's active endpoint answers with (v1, v2), or None."""
    eps = [e for e in fact(lab, host) if e["instance"] == INSTANCE and e["state"] == "active"]
    if len(eps) != 1:
        return None
    match = re.search(r"\[standin (v[^\]\s]+)", direct(lab, host, eps[0]["port"]))
    return match.group(1) if match else None


def at_release(lab: Lab, host: str, name: str) -> None:
    """Bring `host` to release `name` (blue-green: nothing is dropped) unless it is there."""
    if release_of(lab, host) != name:
        run = serving(lab, "--limit", host, *release(name, llm_serving_update_strategy="blue_green"))
        assert run.rc == 0, _summary(run)
    assert release_of(lab, host) == name


def other_colour(colour: str) -> tuple[str, int]:
    """The other colour and its port (blue serves on 8000, green on 8001)."""
    return ("green", 8001) if colour == "blue" else ("blue", 8000)


def container_id(lab: Lab, host: str) -> str:
    """The serving container's ID on a host (the stand-in's host name, in its answers)."""
    ids = lab.exec(host, "docker ps --filter label=org.llmlab.serving.instance --format '{{.ID}}'").stdout.split()
    assert len(ids) == 1, ids
    return ids[0]


def units(lab: Lab, host: str) -> list[str]:
    return lab.exec(host, "ls /etc/systemd/system/ | grep llm-serving- || true").stdout.split()


def started_at(lab: Lab, host: str) -> dict[str, str]:
    out = lab.exec(
        host, "docker ps --filter label=org.llmlab.serving.instance --format '{{.Names}} {{.ID}}'"
    ).stdout.split()
    names = out[0::2]
    return {
        name: lab.exec(host, f"docker inspect --format '{{{{.State.StartedAt}}}}' {name}").stdout.strip()
        for name in names
    }


@pytest.fixture(scope="module")
def edge(converged: Lab, api_keys: dict[str, str]) -> dict:
    """How a client reaches the model: the edge's HTTPS address and a lab API key."""
    context = ssl.create_default_context()
    # The lab's internal CA signed the edge's certificate; this suite tests serving, the
    # edge suite tests TLS.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    host = converged.hosts("edge")[0]
    return {
        "url": f"https://{converged.address(host)}",
        "headers": {"X-API-KEY": api_keys["lab-client"]},
        "context": context,
    }


def load(edge: dict, **kw) -> LoadLoop:
    return LoadLoop(edge["url"], headers=edge["headers"], context=edge["context"], **kw)


def update_under_load(lab: Lab, edge: dict, *args: str) -> tuple[object, LoadLoop, float]:
    """Run the serving play while the load loop runs; return (run, loop, seconds)."""
    loop = load(edge).start()
    time.sleep(3)  # streams are in flight before anything changes
    began = time.monotonic()
    run = serving(lab, *args)
    seconds = time.monotonic() - began
    # Keep going until the minimum count is reached and the last streams have finished.
    deadline = time.monotonic() + 60
    while len(loop.results) < MIN_REQUESTS and time.monotonic() < deadline:
        time.sleep(1)
    loop.stop()
    return run, loop, seconds


def crossing_report(loop: LoadLoop, old: str) -> str:
    mine = [r for r in loop.results if r.host == old]
    last = max((r.started for r in mine), default=0)
    longs = [(round(r.started - last, 1), round(r.ended - last, 1)) for r in mine if r.kind == "long"]
    return f"{len(mine)} requests on the old instance {old}; its long streams relative to its last request: {longs}"


def versions_through_edge(edge: dict, n: int = 20) -> set[str]:
    loop = load(edge, short_workers=0, long_workers=0)
    results = [loop.request("probe", stream=i % 2 == 0, max_tokens=2) for i in range(n)]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return {r.version for r in results}


# -- deployed state -------------------------------------------------------------------------


def test_instances_run_the_image_pinned_by_digest_from_the_site_registry(converged: Lab):
    v1 = images()["digests"]["v1"]
    registry = converged.hosts("ops")[0]
    for host in converged.hosts("gpu_nodes"):
        at_release(converged, host, "v1")
        colour = active(converged, host)["colour"]
        unit = converged.exec(host, f"cat /etc/systemd/system/llm-serving-{INSTANCE}-{colour}.service").stdout
        assert f"ops1:5000/{images()['repository']}@{v1}" in unit and "--pull never" in unit
        digests = converged.exec(host, "docker image ls --digests --format '{{.Repository}}@{{.Digest}}'").stdout
        assert f"ops1:5000/{images()['repository']}@{v1}" in digests.split()
    # The registry serves every release with the digest the build computed.
    for tag, digest in images()["digests"].items():
        head = converged.exec(
            registry,
            'python3 -c "import urllib.request as u; r = u.urlopen(u.Request('
            f"'http://127.0.0.1:5000/v2/{images()['repository']}/manifests/{tag}', method='HEAD', headers="
            "{'Accept': 'application/vnd.oci.image.manifest.v1+json'})); print(r.headers['Docker-Content-Digest'])\"",
        ).stdout.strip()
        assert head == digest, tag


def test_endpoints_are_published_as_the_contract_says(converged: Lab):
    for host in converged.hosts("gpu_nodes"):
        published = fact(converged, host)
        assert len(published) == 1 and published[0]["colour"] in ("blue", "green"), published
        port = 8000 if published[0]["colour"] == "blue" else 8001
        assert published == [
            {
                "colour": published[0]["colour"],
                "instance": INSTANCE,
                "metrics_path": "/prometheus/metrics",
                "model": "standin-chat",
                "port": port,
                "state": "active",
                "weight": 100,
            }
        ]
        assert "trtllm_e2e_request_latency_seconds" in direct(converged, host, port, "/prometheus/metrics")
        mode = converged.exec(host, "stat -c '%U %a' /etc/ansible/facts.d/llm_serving.fact").stdout.split()
        assert mode == ["root", "644"]


def test_a_streamed_chat_completion_through_the_edge(converged: Lab, edge: dict):
    loop = load(edge)
    result = loop.request("probe", stream=True, max_tokens=30)
    assert result.ok, result.error
    assert result.version in {release_of(converged, h) for h in converged.hosts("gpu_nodes")}
    assert result.ended - result.started >= 0.5  # 30 tokens, 20 ms apart: it streamed


def test_a_killed_container_is_restarted_and_ready_again(converged: Lab, record_property):
    host = converged.hosts("gpu_nodes")[0]
    endpoint = active(converged, host)
    name = f"llm-serving-{INSTANCE}-{endpoint['colour']}"
    converged.exec(host, f"docker kill {name}")
    killed = time.monotonic()
    ready_after = None
    while time.monotonic() - killed < 60:
        probe = converged.exec(
            host,
            'python3 -c "import urllib.request as u; print(u.urlopen('
            f"'http://127.0.0.1:{endpoint['port']}/health_generate', timeout=2).status)\"",
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "200":
            ready_after = time.monotonic() - killed
            break
        time.sleep(0.5)
    record_property("ready_after_kill_s", ready_after)
    print(f"\n{host}: {name} killed; ready again after {ready_after:.1f} s" if ready_after else "")
    assert ready_after is not None, converged.exec(host, f"journalctl -u {name} -n 30 --no-pager").stdout
    # systemd restarted it (RestartSec=5 in the unit), not anything else.
    restarts = converged.exec(host, f"systemctl show -p NRestarts --value {name}").stdout.strip()
    assert int(restarts) >= 1
    assert ready_after < 30


# -- updates under load -------------------------------------------------------------------


def test_blue_green_update_v1_to_v2_drops_no_request(converged: Lab, edge: dict, record_property):
    host = converged.hosts("gpu_nodes")[0]
    at_release(converged, host, "v1")
    new_colour, new_port = other_colour(active(converged, host)["colour"])
    old = container_id(converged, host)
    began = time.monotonic()
    run, loop, seconds = update_under_load(
        converged,
        edge,
        "--limit",
        host,
        *release("v2", llm_serving_update_strategy="blue_green", llm_serving_canary_share=30),
    )
    record_property("blue_green_update_s", round(seconds, 1))
    print(f"\nblue-green v1 -> v2 on {host} in {seconds:.0f}s: {loop.summary()}")
    assert run.rc == 0, _summary(run)
    assert loop.failures() == [], loop.summary()
    assert len(loop.results) >= MIN_REQUESTS, loop.summary()
    assert streams_crossing(loop.results, old), (
        f"no 10 s stream was in flight across the switch: {crossing_report(loop, old)}"
    )
    new = container_id(converged, host)
    assert {r.version for r in loop.results if r.host == new} == {"v2"}
    assert [(e["colour"], e["state"]) for e in fact(converged, host)] == [(new_colour, "active")]
    assert "[standin v2]" in direct(converged, host, new_port)
    assert units(converged, host) == [f"llm-serving-{INSTANCE}-{new_colour}.service"]
    # Prometheus stopped probing the old colour before it was stopped: a planned update
    # counts no lost readiness (more than three an hour raise ServingModelLoadFailures).
    assert readiness_lost(converged, host, time.monotonic() - began) == 0


def test_rolling_update_v1_to_v2_drops_no_request(converged: Lab, edge: dict, record_property):
    host = converged.hosts("gpu_nodes")[1]
    for other in converged.hosts("gpu_nodes"):
        if other != host:
            at_release(converged, other, release_of(converged, other) or "v1")  # capacity elsewhere
    at_release(converged, host, "v1")
    new_colour, _ = other_colour(active(converged, host)["colour"])
    old = container_id(converged, host)
    began = time.monotonic()
    run, loop, seconds = update_under_load(
        converged, edge, "--limit", host, *release("v2", llm_serving_update_strategy="rolling")
    )
    record_property("rolling_update_s", round(seconds, 1))
    print(f"\nrolling v1 -> v2 on {host} in {seconds:.0f}s: {loop.summary()}")
    assert run.rc == 0, _summary(run)
    assert loop.failures() == [], loop.summary()
    assert len(loop.results) >= MIN_REQUESTS, loop.summary()
    assert streams_crossing(loop.results, old), (
        f"no 10 s stream was in flight across the switch: {crossing_report(loop, old)}"
    )
    new = container_id(converged, host)
    assert {r.version for r in loop.results if r.host == new} == {"v2"}
    assert [(e["colour"], e["state"]) for e in fact(converged, host)] == [(new_colour, "active")]
    assert release_of(converged, host) == "v2"
    # Monitoring followed the move, although the run was limited to this node: Prometheus
    # scrapes the new colour's port, not the stopped one (which raised TargetDown).
    port = active(converged, host)["port"]
    wait_for(f"Prometheus scraping {host}:{port} only", lambda: scraped_ports(converged, host) == {port}, timeout=60)
    assert readiness_lost(converged, host, time.monotonic() - began) == 0


def test_a_release_that_never_becomes_ready_is_rolled_back(converged: Lab, edge: dict):
    # Both nodes: the first fails, and the release must not reach the second at all (the
    # staging play only pulls its image there).
    host, other = converged.hosts("gpu_nodes")[:2]
    for h in (host, other):
        at_release(converged, h, release_of(converged, h) or "v1")  # both serve
    host_before, versions_before = fact(converged, host), versions_through_edge(edge)
    other_before = (container_id(converged, other), fact(converged, other), units(converged, other))
    run, loop, _ = update_under_load(converged, edge, *release("v3-never-ready", llm_serving_ready_timeout=15))
    print(f"\nv3 (never ready), rolling on {host}: {loop.summary()}")
    assert run.rc != 0
    assert (container_id(converged, other), fact(converged, other), units(converged, other)) == other_before
    message = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "ROLLED BACK" in message and "did not become ready within 15s" in message, message
    assert "stand-in trtllm-serve v3" in message  # the container's own log lines
    assert loop.failures() == [], loop.summary()
    assert {r.version for r in loop.results} == versions_before
    assert fact(converged, host) == host_before
    assert versions_through_edge(edge) == versions_before


def test_a_release_answering_5xx_is_rolled_back_by_its_canary(converged: Lab, edge: dict):
    host = converged.hosts("gpu_nodes")[1]
    at_release(converged, host, release_of(converged, host) or "v1")
    host_before, versions_before = fact(converged, host), versions_through_edge(edge)
    run, loop, _ = update_under_load(
        converged,
        edge,
        "--limit",
        host,
        *release("v3-errors", llm_serving_update_strategy="blue_green", llm_serving_canary_share=50),
    )
    print(f"\nv3 (5xx), blue-green canary on {host}: {loop.summary()}")
    assert run.rc != 0
    message = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "ROLLED BACK" in message and "answered 5xx" in message, message
    assert loop.failures() == [], loop.summary()
    assert fact(converged, host) == host_before
    assert versions_through_edge(edge) == versions_before


def test_a_model_that_does_not_match_its_manifest_is_refused_before_any_change(converged: Lab):
    host = converged.hosts("gpu_nodes")[0]
    weights = "/srv/models/standin-chat/model.safetensors"
    at_release(converged, host, "v2")  # so that v1 is an update
    before, fact_before = container_id(converged, host), fact(converged, host)
    converged.exec(host, f"cp {weights} /root/weights.bak && echo corrupted >> {weights}")
    try:
        # The model is staged on the host (no model_src to copy it again), the image changes.
        instance = {"name": INSTANCE, "model": "standin-chat", "model_dir": "/srv/models/standin-chat", "port": 8000}
        run = serving(converged, "--limit", host, *release("v1", llm_serving_instances=[instance]))
    finally:
        converged.exec(host, f"mv /root/weights.bak {weights}")
    assert run.rc != 0
    message = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "does not match /srv/models/standin-chat/SHA256SUMS" in message and "model.safetensors: FAILED" in message
    assert container_id(converged, host) == before
    assert fact(converged, host) == fact_before


def test_maintenance_drains_a_node_works_on_it_and_brings_it_back(converged: Lab, edge: dict):
    host, other = converged.hosts("gpu_nodes")[:2]
    at_release(converged, other, release_of(converged, other) or "v1")  # capacity elsewhere
    fact_before, release_before = fact(converged, host), release_of(converged, host)
    loop = load(edge).start()
    time.sleep(3)
    run = converged.playbook(
        "-e", f"maintenance_host={host}", "-e", '{"maintenance_roles": ["os_tuning"]}', playbook=MAINTENANCE
    )
    deadline = time.monotonic() + 60
    while len(loop.results) < MIN_REQUESTS and time.monotonic() < deadline:
        time.sleep(1)
    loop.stop()
    print(f"\nmaintenance of {host}: {loop.summary()}")
    assert run.rc == 0, _summary(run)
    assert loop.failures() == [], loop.summary()
    tasks = run.task_names()
    assert tasks.index("Maintenance | Drain the node at the edge and stop its instances") < tasks.index(
        "os_tuning : OS tuning | Kernel settings, login and service limits, boot-time tuning script and unit"
    )
    assert fact(converged, host) == fact_before
    assert release_of(converged, host) == release_before


# -- removal, and back to the inventory -----------------------------------------------------


def test_a_removed_instance_leaves_no_unit_fact_or_upstream_and_the_capacity_floor_holds(converged: Lab, edge: dict):
    removed, host = converged.hosts("gpu_nodes")[1], converged.hosts("gpu_nodes")[0]
    at_release(converged, host, release_of(converged, host) or "v1")
    versions_before = {release_of(converged, host)}
    try:
        run = serving(converged, "--limit", removed, "-e", '{"llm_serving_instances": []}')
        assert run.rc == 0, _summary(run)
        assert fact(converged, removed) == []
        assert units(converged, removed) == []
        assert converged.exec(removed, "docker ps -q --filter label=org.llmlab.serving.instance").stdout.strip() == ""
        upstreams = converged.exec(converged.hosts("edge")[0], "cat /etc/nginx/edge/upstreams.conf").stdout
        assert converged.address(removed) not in upstreams
        assert versions_through_edge(edge) == versions_before  # the other node serves

        # The removed node serves nothing: taking the other's endpoint out for a rolling
        # update would leave the instance no capacity, so it is refused before any change.
        before, fact_before = container_id(converged, host), fact(converged, host)
        target = "v2" if release_of(converged, host) == "v1" else "v1"
        run = serving(converged, "--limit", host, *release(target, llm_serving_update_strategy="rolling"))
        assert run.rc != 0
        message = " ".join(m for msgs in run.failures().values() for m in msgs)
        assert "would leave only 0 active endpoint(s) of it" in message and "Nothing was changed" in message, message
        assert container_id(converged, host) == before
        assert fact(converged, host) == fact_before
    finally:
        back = serving(converged, "--limit", removed)
        assert back.rc == 0, _summary(back)


def test_the_inventory_state_returns_and_an_unchanged_rerun_touches_nothing(converged: Lab, edge: dict):
    # Blue-green brings every node back to v1 without taking it out (or deploys it afresh).
    back = serving(converged, "-e", "llm_serving_update_strategy=blue_green")
    assert back.rc == 0, _summary(back)
    assert versions_through_edge(edge) == {"v1"}
    before = {host: started_at(converged, host) for host in converged.hosts("gpu_nodes")}
    again = serving(converged)
    assert again.rc == 0, _summary(again)
    assert again.changed_tasks() == {}, again.changed_tasks()
    # Nothing to roll out: no node entered the one-node-at-a-time play beyond its first task.
    rollout = {
        t["task"]["name"]
        for p in again.data["plays"]
        if p["play"]["name"].startswith("Serving | Roll the changes out")
        for t in p["tasks"]
    }
    assert rollout <= {"Serving | Nothing to roll out on this node"}, rollout
    after = {host: started_at(converged, host) for host in converged.hosts("gpu_nodes")}
    assert after == before and all(before.values()), (before, after)
