"""The site as a whole: check mode on fresh hosts, a clean converge, a no-change re-run."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from conftest import Lab, _summary


def test_check_mode_on_fresh_hosts_does_not_fail(converged: Lab):
    if not converged.fresh:
        pytest.skip("lab reused (LAB_REUSE=1): its hosts are not fresh")
    run = converged.runs["check_fresh"]
    assert run.rc == 0, _summary(run)
    assert run.total("failures") == 0 and run.total("unreachable") == 0


def test_converge_succeeds_on_every_host(converged: Lab):
    if not converged.fresh:
        pytest.skip("lab reused (LAB_REUSE=1)")
    run = converged.runs["converge"]
    assert set(run.stats) == set(converged.hosts())
    assert run.total("failures") == 0 and run.total("unreachable") == 0


def test_second_run_changes_nothing(converged: Lab):
    if not converged.fresh:
        pytest.skip("lab reused (LAB_REUSE=1)")
    run = converged.runs["second"]
    assert run.rc == 0, _summary(run)
    assert run.changed_tasks() == {}, f"tasks that changed on a re-run: {run.changed_tasks()}"


def _instant(text: str) -> float:
    """Prometheus's RFC 3339 time (nanosecond fractions, Z or an offset) as epoch seconds."""
    whole, fraction, zone = re.fullmatch(r"([^.Z+-]+(?:-[^.Z+-]+){2}T[^.Z+-]+)(\.\d+)?(Z|[+-].*)", text).groups()
    stamp = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return stamp + float(fraction or 0)


def test_a_fresh_lab_raises_no_alert_but_the_watchdog(converged: Lab):
    """Right after the converge, before any test disturbs a host: every rule as deployed,
    evaluated on scraped data, finds nothing (pending or firing) but the Watchdog. What a
    container lab cannot have is switched off in its inventory, each with its reason
    (inventories/lab/group_vars/all/observability.yml)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # every target scraped at least once...
        targets = converged.monitoring_api("/api/v1/targets", state="active")["data"]["activeTargets"]
        if targets and all(t["health"] != "unknown" for t in targets):
            break
        time.sleep(5)
    scraped = max(_instant(t["lastScrape"]) for t in targets)
    while time.monotonic() < deadline:  # ...and every rule group evaluated after that
        groups = converged.monitoring_api("/api/v1/rules")["data"]["groups"]
        if all(_instant(g["lastEvaluation"]) > scraped for g in groups):
            break
        time.sleep(5)
    else:
        raise AssertionError("Prometheus did not scrape every target and evaluate every rule in 180 s")
    active = converged.monitoring_api("/api/v1/alerts")["data"]["alerts"]
    raised = sorted(f"{a['labels']['alertname']} ({a['state']}) {a['labels'].get('host', '')}" for a in active)
    assert [a["labels"]["alertname"] for a in active] == ["Watchdog"], raised
