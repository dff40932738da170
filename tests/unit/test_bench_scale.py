"""scripts/bench_scale.py: the sized lab it builds, and the report it writes from its figures."""

from __future__ import annotations

import bench_scale as bench
import pytest
from labkit import topology


def test_a_sized_lab_keeps_the_other_hosts_and_makes_gpu_nodes_like_the_first():
    topo = bench.sized_topology(16, instance=1)
    names = [h.name for h in topo.hosts]
    assert "edge1" in names and "ops1" in names
    gpus = [h for h in topo.hosts if "gpu_nodes" in h.groups]
    assert [h.name for h in gpus] == [f"gpu{i}" for i in range(1, 17)]
    assert all(h.zone == "app" and "container_hosts" in h.groups for h in gpus)
    addresses = [h.address for h in topo.hosts]
    assert len(set(addresses)) == len(addresses) and all(a.startswith("172.31.241.") for a in addresses)
    assert topo.container("gpu16") == "llmlab1-gpu16"
    inventory = topology.inventory(topo)["all"]["children"]
    assert len(inventory["gpu_nodes"]["hosts"]) == 16


def _play(name: str, start: str, end: str, tasks: list[tuple[str, str, str]]) -> dict:
    return {
        "play": {"name": name, "duration": {"start": start, "end": end}},
        "tasks": [{"task": {"name": t, "duration": {"start": s, "end": e}}, "hosts": {}} for t, s, e in tasks],
    }


def test_durations_sum_a_task_repeated_in_a_play_and_ignore_one_left_unfinished():
    data = {
        "plays": [
            _play(
                "Serving",
                "2026-12-05T01:00:00Z",
                "2026-12-05T01:00:30Z",
                [
                    ("Roll out", "2026-12-05T01:00:00Z", "2026-12-05T01:00:10Z"),
                    ("Roll out", "2026-12-05T01:00:10.5Z", "2026-12-05T01:00:20Z"),
                    ("Interrupted", "2026-12-05T01:00:20Z", ""),
                ],
            )
        ]
    }
    tasks, plays = bench.durations(data)
    assert tasks == {"Serving / Roll out": 19.5, "Serving / Interrupted": 0.0}
    assert plays == {"Serving": 30.0}


def _run(kind, setting, seconds, host_tasks, plays):
    return {"kind": kind, "setting": setting, "seconds": seconds, "host_tasks": host_tasks, "skipped": 0,
            "changed": {}, "tasks": {}, "plays": plays}  # fmt: skip


def _size(nodes, hosts, first, noop, serving):
    return {
        "gpu_nodes": nodes,
        "hosts": hosts,
        "load_average": 2.0,
        "runs": [
            _run("first", "default", first, 100 * hosts, {"Serving": serving, "Base": 10.0}),
            _run("noop", "default", noop, 80 * hosts, {"Serving": serving / 4, "Base": 5.0}),
            _run("noop", "default", noop + 2, 80 * hosts, {"Serving": serving / 4 + 1, "Base": 5.0}),
            _run("noop", "accelerated", noop / 2, 80 * hosts, {}),
        ],
    }


def test_medians_per_run_and_setting_and_the_growth_report():
    small, large = _size(1, 3, 300.0, 100.0, 20.0), _size(16, 18, 1500.0, 400.0, 320.0)
    m = bench.medians(large)
    assert m[("noop", "default")]["seconds"] == 401.0 and m[("noop", "default")]["all"] == [400.0, 402.0]
    assert round(m[("first", "default")]["per_host_task"], 3) == round(1500 / 1800, 3)
    (top, a, b, ratio), *_ = bench.growth(small, large, "first", "plays")
    assert (top, a, b, ratio) == ("Serving", 20.0, 320.0, 16.0)
    doc = {"measured": "now", "command": "scripts/bench_scale.py", "cores": 2, "machine": "x86_64", "rounds": 2,
           "settings": ["default", "accelerated"], "environment": "python 3.12", "sizes": [large, small]}  # fmt: skip
    text = bench.report(doc)
    assert "| 16 | 18 | first converge | default | 1500.0 |" in text
    assert "| no-op re-run | default | 101.0 -> 401.0 | x3.97 |" in text
    assert "| Serving | 20.0 | 320.0 | x16.0 |" in text
    assert "changed something" not in text


def test_the_chart_is_a_png_of_both_panels(tmp_path):
    pytest.importorskip("matplotlib")  # requirements-bench.txt, which `make unit` installs
    doc = {"cores": 2, "settings": ["default", "accelerated"],
           "sizes": [_size(1, 3, 300.0, 100.0, 20.0), _size(4, 6, 600.0, 200.0, 80.0)]}  # fmt: skip
    assert bench.chart(doc, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
