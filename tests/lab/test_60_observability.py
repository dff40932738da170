"""The observability layer on the converged lab: Prometheus on the ops host scrapes the
whole lab, the rules and dashboards read metrics that exist, and alerts reach a receiver.

The expected scrape targets are computed here from the inventory (topology, cluster_services,
the hosts' own local facts), independently of the prometheus role's scrape configuration.

Where the serving layer is not in this tree yet, a TEST FIXTURE stands in for it: it runs the
trtllm-serve test double (tests/doubles/trtllm-standin) with python3 as a transient systemd
unit on every GPU node and writes the llm_serving local fact as the serving role would
(docs/serving-edge-contract.md), then re-runs the prometheus role so it picks them up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import subprocess
import time

import pytest
import yaml
from conftest import ROOT, Lab, _summary, quote, wait_for
from labkit import pki

from tests.helpers.edge_client import EdgeClient
from tests.promtool import promkit

pytestmark = pytest.mark.usefixtures("converged")

SERVICES = ROOT / "inventories" / "lab" / "group_vars" / "all" / "services.yml"
GPU_ONLY = set(yaml.safe_load((ROOT / "tests" / "promtool" / "gpu-only-metrics.yml").read_text())["metrics"])
STANDIN = ROOT / "tests" / "doubles" / "trtllm-standin" / "trtllm-serve"
STANDIN_DIR = "/opt/llmlab-standin"
STANDIN_UNIT = "llm-serving-standin-chat-blue"
STANDIN_MODEL = "llama-3.1-8b-instruct"
HAS_SERVING = (ROOT / "roles" / "llm_serving" / "tasks" / "main.yml").is_file()
HAS_EDGE = (ROOT / "roles" / "edge_proxy" / "tasks" / "main.yml").is_file()
RULES_DIR = "/etc/prometheus/rules.d"


def _services() -> dict:
    for path in (SERVICES, ROOT / "inventories" / "example" / "group_vars" / "all" / "services.yml"):
        if path.is_file():
            return yaml.safe_load(path.read_text())["cluster_services"]
    raise AssertionError("no cluster_services file found")


def ops_host(lab: Lab) -> str:
    return lab.hosts("ops")[0]


def query(lab: Lab, expr: str) -> list[dict]:
    return lab.monitoring_api("/api/v1/query", query=expr)["data"]["result"]


def read_fact(lab: Lab, host: str, name: str) -> dict | None:
    out = lab.exec(host, f"cat /etc/ansible/facts.d/{name}.fact", check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None


def start_standin(lab: Lab, host: str, **env: str) -> None:
    """(Re)start the stand-in as a transient unit named like the serving units."""
    lab.exec(host, f"systemctl stop {STANDIN_UNIT}; systemctl reset-failed {STANDIN_UNIT}; true", check=False)
    setenv = " ".join(f"--setenv={k}={quote(v)}" for k, v in env.items())
    lab.exec(
        host,
        f"systemd-run --unit={STANDIN_UNIT} --property=Restart=always {setenv} "
        f"python3 {STANDIN_DIR}/trtllm-serve {STANDIN_DIR}/model --host 0.0.0.0 --port 8000",
    )


@contextlib.contextmanager
def for_overlay(lab: Lab, rule_file: str, alert: str):
    """TEST OVERLAY: the deployed rule file with `alert`'s `for:` set to 0s (checked by
    promtool, Prometheus reloaded), put back byte for byte afterwards, so no role run is
    needed and the host is left as converged."""
    ops = ops_host(lab)
    path = f"{RULES_DIR}/{rule_file}"
    original = lab.exec(ops, f"cat {path}").stdout
    pattern = re.compile(rf"(- alert: {alert}\n(?:(?!\s*- alert:).*\n)*?\s*for: )\S+")
    changed, count = pattern.subn(r"\g<1>0s", original)
    assert count == 1, f"no `for:` of {alert} in {path}"

    def install(text: str) -> None:
        data = base64.b64encode(text.encode()).decode()
        lab.exec(ops, f"echo {data} | base64 -d > {path}.new && promtool check rules {path}.new >/dev/null"
                      f" && mv {path}.new {path} && systemctl reload prometheus")  # fmt: skip

    def duration() -> float | None:
        groups = lab.monitoring_api("/api/v1/rules", type="alert")["data"]["groups"]
        found = [r["duration"] for g in groups for r in g["rules"] if r["name"] == alert]
        return found[0] if found else None

    install(changed)
    try:
        wait_for(f"{alert} reloaded with for: 0s", lambda: duration() == 0, timeout=60)
        yield
    finally:
        install(original)
        wait_for(f"{alert} reloaded as deployed", lambda: duration() not in (None, 0), timeout=60)


@pytest.fixture(scope="module")
def serving(converged: Lab, api_keys: dict[str, str], tmp_path_factory) -> Lab:
    """Serving endpoints on the GPU nodes (the serving role's, or the stand-in fixture's),
    and a few chat requests through the edge: the edge's request and upstream series, which
    the rules and the serving dashboard read, exist only once traffic passed (so this file
    does not depend on the serving and edge tests having sent some before it)."""
    if not HAS_SERVING:
        for host in converged.hosts("gpu_nodes"):
            container = converged.topo.container(host)
            converged.exec(host, f"mkdir -p {STANDIN_DIR}/model /etc/ansible/facts.d")

            subprocess.run(["docker", "cp", str(STANDIN), f"{container}:{STANDIN_DIR}/trtllm-serve"], check=True)
            config = json.dumps({"_name_or_path": STANDIN_MODEL})
            converged.exec(host, f"echo {quote(config)} > {STANDIN_DIR}/model/config.json")
            start_standin(converged, host)
            endpoint = {"instance": "chat", "model": STANDIN_MODEL, "colour": "blue", "port": 8000, "weight": 100}
            fact = {"endpoints": [{**endpoint, "state": "active", "metrics_path": "/prometheus/metrics"}]}
            converged.exec(host, f"echo {quote(json.dumps(fact))} > /etc/ansible/facts.d/llm_serving.fact")
        # The layers that read the serving facts follow them, as after a serving rollout.
        run = converged.playbook("--tags", "prometheus,edge_proxy")
        assert run.rc == 0, _summary(run)
    if HAS_EDGE:
        edge = converged.hosts("edge")[0]
        ca = pki.fetch_ca(converged.topo, edge, tmp_path_factory.mktemp("edge") / "ca.crt")
        client = EdgeClient(converged.address(edge), edge, ca)
        chat = {"model": "standin", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello."}]}
        key = api_keys["lab-client"]
        assert [client.request("POST", "/v1/chat/completions", chat, key=key).status for _ in range(5)] == [200] * 5
    return converged


def expected_targets(lab: Lab) -> set[tuple[str, str]]:
    """(job, instance) of every target the lab should have, from the inventory and facts."""
    services = _services()
    ops = ops_host(lab)
    expected = {("node", f"{lab.address(h)}:{services['node_exporter']['port']}") for h in lab.hosts()}
    expected |= {("prometheus", f"{lab.address(ops)}:{services['prometheus']['port']}"),
                 ("alertmanager", f"{lab.address(ops)}:{services['alertmanager']['port']}"),
                 ("blackbox", "127.0.0.1:9115")}  # fmt: skip
    if HAS_EDGE:
        expected |= {("edge", f"{lab.address(h)}:{services['edge_metrics']['port']}") for h in lab.hosts("edge")}
    expected |= {("vault", f"{lab.address(h)}:{services['vault']['port']}") for h in lab.hosts("vault")}
    for host in lab.hosts("storage"):
        if (read_fact(lab, host, "object_storage") or {}).get("manager"):
            expected.add(("ceph", f"{lab.address(host)}:{services['object_storage_metrics']['port']}"))
    for host in lab.hosts("gpu_nodes"):
        if (read_fact(lab, host, "nvidia_gpu") or {}).get("count", 0) > 0:
            expected.add(("dcgm", f"{lab.address(host)}:{services['dcgm_exporter']['port']}"))
        for ep in (read_fact(lab, host, "llm_serving") or {}).get("endpoints", []):
            if ep.get("state", "active") != "down":
                expected.add(("serving", f"{lab.address(host)}:{ep['port']}"))
            if ep.get("state", "active") == "active":  # a draining endpoint is not probed
                expected.add(("serving_readiness", f"http://{lab.address(host)}:{ep['port']}/health"))
    return expected


def test_prometheus_scrapes_every_expected_target_and_each_is_up(serving: Lab):
    expected = expected_targets(serving)
    assert any(job == "serving" for job, _ in expected), "no serving endpoint in the lab"

    def state():
        active = serving.monitoring_api("/api/v1/targets", state="active")["data"]["activeTargets"]
        seen = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in active}
        if any(seen.get(t) != "up" for t in expected):
            return None
        return seen

    try:
        seen = wait_for("every expected target up", state, timeout=90)
    except AssertionError:
        active = serving.monitoring_api("/api/v1/targets", state="active")["data"]["activeTargets"]
        report = {(t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"]) for t in active}
        raise AssertionError(f"expected {sorted(expected)}\nPrometheus has {report}") from None
    unexpected = set(seen) - expected
    if not HAS_EDGE:
        # The edge's mtail is scraped from cluster_services, but the edge layer is not built yet.
        unexpected = {t for t in unexpected if t[0] != "edge"}
    assert not unexpected, f"targets Prometheus scrapes that the inventory does not explain: {unexpected}"


def _deployed_rules(lab: Lab) -> list[dict]:
    out = lab.exec(ops_host(lab), f"for f in {RULES_DIR}/*.yml; do echo '---'; cat $f; done").stdout
    rules = []
    for doc in yaml.safe_load_all(out):
        for group in (doc or {}).get("groups") or []:
            rules.extend(group.get("rules") or [])
    return rules


def _metric_names(lab: Lab) -> set[str]:
    return set(lab.monitoring_api("/api/v1/label/__name__/values")["data"])


def _not_in_lab(names: set[str], lab: Lab) -> set[str]:
    """The series the lab cannot have: GPU-only ones (no GPU here), the edge's until the edge
    layer exists, and Vault's where the lab's `vault` group is empty."""
    prefixes = tuple(p for p, absent in (("edge_", not HAS_EDGE), ("vault_", not lab.hosts("vault"))) if absent)
    return (names & GPU_ONLY) | {n for n in names if prefixes and n.startswith(prefixes)}


def _written_by_backup_runs(names: set[str]) -> set[str]:
    """The backup series that only a backup, copy, drill or full-read run writes: test_55
    asserts them after its runs, so this file does not depend on running after it. The time
    a set was configured is written by the converge, and stays asserted here."""
    return {n for n in names if n.startswith("cluster_backup_") and n != "cluster_backup_configured_timestamp_seconds"}


def test_every_metric_the_rules_read_is_in_the_lab_scrape(serving: Lab):
    """Except the series the lab cannot have (_not_in_lab) and those of backup runs."""
    rules = _deployed_rules(serving)
    recorded = {r["record"] for r in rules if "record" in r}
    # Series with a colon are recording rules (the unit tests check each is recorded by a rule).
    used = {n for n in set().union(*(promkit.metric_names(r["expr"]) for r in rules)) - recorded if ":" not in n}
    needed = used - _not_in_lab(used, serving) - _written_by_backup_runs(used)
    try:
        wait_for("the rules' metrics in the scrape", lambda: not (needed - _metric_names(serving)), timeout=60)
    except AssertionError:
        missing = sorted(needed - _metric_names(serving))
        raise AssertionError(f"metrics the rules read, not in the lab: {missing}") from None


def _not_in_lab_only(expr: str, rules: list[dict], lab: Lab) -> bool:
    """Whether an expression reads only series the lab cannot have (_not_in_lab), directly or
    through recording rules."""
    by_name: dict[str, set[str]] = {}
    for r in rules:
        if "record" in r:
            by_name.setdefault(r["record"], set()).update(promkit.metric_names(r["expr"]))

    def sources(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name not in by_name or name in seen:
            return {name}
        return set().union(*(sources(n, seen | {name}) for n in by_name[name]))

    leaves = set().union(*(sources(n) for n in promkit.metric_names(expr)))
    return bool(leaves) and leaves <= _not_in_lab(leaves, lab)


def test_every_dashboard_query_returns_data(serving: Lab):
    rules = _deployed_rules(serving)
    queries = [(p.name, e) for p in sorted(promkit.DASHBOARDS.glob("*.json")) for e in promkit.dashboard_exprs(p)]
    assert queries

    def empty() -> list[str]:
        wanted = [(name, expr) for name, expr in queries if not _not_in_lab_only(expr, rules, serving)]
        return [f"{name}: {expr}" for name, expr in wanted if not query(serving, expr)]

    # Recording rules over 1h windows and rates need a few evaluations after the first scrape.
    deadline = time.monotonic() + 90
    while (left := empty()) and time.monotonic() < deadline:
        time.sleep(5)
    assert not left, "dashboard queries without data in the lab:\n" + "\n".join(left)


@pytest.fixture
def alert_sink(serving: Lab):
    """The notifications Alertmanager sent since the test began: the lab's receiver is the
    prometheus role's alert log receiver, one JSON line per notification in the ops host's
    journal (inventories/lab/group_vars/all/observability.yml)."""
    ops = ops_host(serving)
    since = serving.exec(ops, "date +%s").stdout.strip()
    return lambda: [
        json.loads(line)
        for line in serving.exec(ops, f"journalctl -u alert-log-receiver -o cat --since @{since}").stdout.splitlines()
        if line.startswith("{")
    ]


def _received(posts: list[dict], alertname: str, status: str = "firing") -> list[dict]:
    return [a for p in posts for a in p.get("alerts", []) if a["labels"].get("alertname") == alertname
            and a["status"] == status]  # fmt: skip


def test_watchdog_reaches_the_webhook_receiver(alert_sink):
    posts = wait_for("the Watchdog at the webhook", lambda: _received(alert_sink(), "Watchdog") or None, timeout=120)
    assert posts[0]["labels"]["severity"] == "none"


@pytest.mark.skipif(HAS_SERVING, reason="the readiness switch is the stand-in fixture's; serving has its own tests")
def test_an_endpoint_losing_readiness_alerts_the_receiver_and_resolves(serving: Lab, alert_sink):
    """End to end: the stand-in's never_ready switch -> blackbox probe -> rule -> Alertmanager
    -> webhook; then healthy again -> resolved. Test overlay: the alert's `for` is 0s."""
    gpu = serving.hosts("gpu_nodes")[0]
    with for_overlay(serving, "serving.yml", "ServingEndpointNotReady"):
        try:
            start_standin(serving, gpu, STANDIN_NEVER_READY="1")
            alerts = wait_for(
                "ServingEndpointNotReady at the webhook",
                lambda: [a for a in _received(alert_sink(), "ServingEndpointNotReady") if a["labels"]["host"] == gpu],
                timeout=150,
            )
            assert alerts[0]["labels"]["serving_instance"] == "chat" and alerts[0]["labels"]["colour"] == "blue"
            start_standin(serving, gpu)
            wait_for(
                "ServingEndpointNotReady resolved at the webhook",
                lambda: [
                    a
                    for a in _received(alert_sink(), "ServingEndpointNotReady", "resolved")
                    if a["labels"]["host"] == gpu
                ],
                timeout=240,
            )
        finally:
            start_standin(serving, gpu)


def _chat_through_the_edge(lab: Lab, key: str, n: int) -> list[int]:
    """n small chat completions through the edge (HTTPS, the lab's own CA not checked)."""
    import ssl  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    edge = lab.address(lab.hosts("edge")[0])
    body = json.dumps({"model": STANDIN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    context = ssl._create_unverified_context()  # the lab CA is not in the trust store
    codes = []
    for _ in range(n):
        request = urllib.request.Request(
            f"https://{edge}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json", "X-API-KEY": key},
        )
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                codes.append(response.status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
        time.sleep(0.2)
    return codes


@pytest.mark.skipif(not HAS_EDGE, reason="5xx is measured at the edge (mtail); the edge layer is not in this tree")
@pytest.mark.skipif(HAS_SERVING, reason="the error switch used here is the stand-in fixture's")
def test_serving_errors_raise_the_5xx_alert_at_the_webhook(serving: Lab, alert_sink, api_keys: dict[str, str]):
    """End to end: the stand-in answers 500 to every other generation -> the edge logs them
    -> mtail -> Prometheus -> ServingHttp5xxRatioHigh -> Alertmanager -> webhook. Test
    overlay: the alert's `for` is 0s."""
    key = api_keys["lab-client"]
    gpus = serving.hosts("gpu_nodes")
    with for_overlay(serving, "serving.yml", "ServingHttp5xxRatioHigh"):
        try:
            for gpu in gpus:
                start_standin(serving, gpu, STANDIN_ERROR_RATE="0.5")
            time.sleep(3)
            codes = _chat_through_the_edge(serving, key, 40)
            assert codes.count(500) + codes.count(502) >= 10, codes
            alerts = wait_for(
                "ServingHttp5xxRatioHigh at the webhook",
                lambda: _received(alert_sink(), "ServingHttp5xxRatioHigh"),
                timeout=180,
            )
            assert alerts[0]["labels"]["severity"] == "critical"
        finally:
            for gpu in gpus:
                start_standin(serving, gpu)


def test_rule_files_on_the_ops_host_pass_promtool(serving: Lab):
    checks = (
        f"promtool check rules {RULES_DIR}/*.yml && amtool check-config /etc/prometheus/alertmanager.yml"
        " && promtool check config /etc/prometheus/prometheus.yml"
    )
    out = serving.exec(ops_host(serving), checks)
    assert "SUCCESS" in out.stdout


def test_gpu_roles_skip_hosts_without_a_gpu(serving: Lab):
    for host in serving.hosts("gpu_nodes"):
        assert serving.exec(host, "test -e /etc/systemd/system/dcgm-exporter.service", check=False).returncode != 0
        assert serving.exec(host, "test -e /etc/systemd/system/nvml-collector.timer", check=False).returncode != 0
        assert read_fact(serving, host, "dcgm_exporter") is None


def test_retention_is_bounded_by_time_and_size(serving: Lab):
    flags = serving.monitoring_api("/api/v1/status/flags")["data"]
    assert flags["storage.tsdb.retention.time"] == "30d"
    # Prometheus' size units are powers of 1024: it reports 20GB as 20GiB.
    assert flags["storage.tsdb.retention.size"] in ("20GB", "20GiB")


def test_a_down_host_inhibits_its_other_alerts(serving: Lab):
    """Alertmanager's inhibition, asked directly: a HostDown for gpu1 silences gpu1's other
    alerts and nobody else's (alerts posted to the API, no host stopped)."""
    ops = ops_host(serving)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600))
    alerts = [{"labels": {"alertname": name, "host": host, "severity": sev, "test": "inhibition"},
               "startsAt": now, "endsAt": later}
              for name, host, sev in (("HostDown", "gpu1", "critical"), ("TargetDown", "gpu1", "warning"),
                                      ("TargetDown", "gpu2", "warning"))]  # fmt: skip
    post = (
        "import json,urllib.request; urllib.request.urlopen(urllib.request.Request("
        f"'http://127.0.0.1:9093/api/v2/alerts', data=json.dumps({alerts!r}).encode(), "
        "headers={'Content-Type': 'application/json'}))"
    )
    serving.exec(ops, f"python3 -c {quote(post)}")

    def states():
        got = serving.monitoring_api("/api/v2/alerts", port=9093, filter='test="inhibition"')
        found = {(a["labels"]["alertname"], a["labels"]["host"]): a["status"]["state"] for a in got}
        return found if len(found) == 3 else None

    found = wait_for("the posted alerts in Alertmanager", states, timeout=30)
    assert found[("TargetDown", "gpu1")] == "suppressed"
    assert found[("TargetDown", "gpu2")] == "active"
    assert found[("HostDown", "gpu1")] == "active"
    # End them again, so no receiver sees them later.
    ended = [{**a, "endsAt": now} for a in alerts]
    serving.exec(ops, f"python3 -c {quote(post.replace(repr(alerts), repr(ended)))}")
