"""The site as a whole: check mode on fresh hosts, a clean converge, a no-change re-run."""

from __future__ import annotations

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
