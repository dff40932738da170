"""The serving role's plan and endpoint bookkeeping (plugins/filter/llm_serving.py)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_plugin

f = load_plugin("plugins/filter/llm_serving.py")
DIGEST = "sha256:" + "a" * 64
ENGINES = {
    "trtllm": {"ports_per_colour": 1, "metrics_path": "/prometheus/metrics"},
    "triton": {"ports_per_colour": 2, "metrics_path": "/metrics"},
}


def settings(**kw):
    base = {
        "engine": "trtllm", "engines": ENGINES, "registry": "mirror:5000", "repository": "nvidia/tensorrt-llm/release",
        "digest": DIGEST, "gpu_mode": "gpus", "port_first": 8000, "port_last": 8015, "strategy": "rolling",
        "llm_api_options": {"return_perf_metrics": False, "kv_cache_config": {"free_gpu_memory_fraction": 0.9}},
    }  # fmt: skip
    return base | kw


def inst(**kw):
    return {"name": "chat", "model_dir": "/srv/models/llama/", "port": 8000, "gpus": [0, 1]} | kw


def test_plan_names_image_ports_gpus_and_merged_options():
    [p] = f.llm_serving_plan([inst(llm_api_options={"kv_cache_config": {"enable_block_reuse": True}})], settings())
    assert p["image"] == f"mirror:5000/nvidia/tensorrt-llm/release@{DIGEST}"
    assert p["model"] == "llama" and p["model_dir"] == "/srv/models/llama"
    assert p["model_manifest"] == "/srv/models/llama/SHA256SUMS"
    assert p["colours"]["blue"] == {"port": 8000, "metrics_port": 8000, "gpus": [0, 1]}
    assert p["colours"]["green"] == {"port": 8001, "metrics_port": 8001, "gpus": [0, 1]}  # rolling: same GPUs
    # return_perf_metrics is forced on (it mounts /prometheus/metrics); nested options merge
    assert p["llm_api_options"] == {
        "return_perf_metrics": True,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True},
    }


def test_triton_takes_two_ports_per_colour():
    [p] = f.llm_serving_plan([inst()], settings(engine="triton"))
    assert p["colours"]["blue"]["port"] == 8000 and p["colours"]["blue"]["metrics_port"] == 8001
    assert p["colours"]["green"]["port"] == 8002 and p["colours"]["green"]["metrics_port"] == 8003
    entry = f.llm_serving_endpoint(p, "green", "/metrics", state="active", weight=100)
    assert entry["metrics_port"] == 8003 and entry["port"] == 8002


@pytest.mark.parametrize(
    ("instances", "kw", "message"),
    [
        ([inst(name="Chat")], {}, "lower-case"),
        ([inst(), inst(port=8002)], {}, "used twice"),
        ([inst(), inst(name="b", port=8001, gpus=[2])], {}, "already taken by instance chat"),
        ([inst(port=8015)], {}, "outside the llm_serving service range 8000-8015"),
        ([inst(gpus=[])], {}, "llm_serving_gpu_mode is gpus"),
        ([inst(update_strategy="blue_green")], {}, "give gpus_green"),
        ([inst(update_strategy="blue_green", gpus_green=[1, 2])], {}, "overlap"),
        ([inst(), inst(name="b", port=8002, gpus=[1])], {}, "also given to instance chat"),
        ([inst(image_digest="latest")], {}, "pinned by digest"),
        ([inst()], {"registry": ""}, "cluster_image_registry"),
        ([inst(model_dir="models/x")], {}, "absolute"),
        ([inst(colour="blue")], {}, "unknown keys colour"),
        ([inst(weight=0)], {}, "from 1 to 100"),
    ],
)
def test_bad_instances_are_refused_with_the_fix(instances, kw, message):
    with pytest.raises(AnsibleFilterError, match=message):
        f.llm_serving_plan(instances, settings(**kw))


def test_without_gpus_both_colours_may_run_side_by_side():
    [p] = f.llm_serving_plan([inst(gpus=[], update_strategy="blue_green")], settings(gpu_mode="none"))
    assert p["colours"]["blue"]["gpus"] == [] and p["update_strategy"] == "blue_green"


def test_canary_weights_split_the_instance_weight():
    assert f.llm_serving_canary_weights(100, 10) == [90, 10]
    assert f.llm_serving_canary_weights(5, 1) == [4, 1]
    with pytest.raises(AnsibleFilterError):
        f.llm_serving_canary_weights(100, 100)


def test_state_round_trips_to_a_stable_fact():
    fact = [
        {"instance": "chat", "colour": "green", "port": 8001, "weight": 10, "state": "active", "model": "m",
         "metrics_path": "/p"},
        {"instance": "chat", "colour": "blue", "port": 8000, "weight": 90, "state": "active", "model": "m",
         "metrics_path": "/p"},
    ]  # fmt: skip
    state = f.llm_serving_index(fact)
    state = f.llm_serving_set(state, "chat", "blue", state="draining")
    state = f.llm_serving_set(state, "chat", "green", {"instance": "chat", "colour": "green"}, weight=100)
    out = f.llm_serving_endpoints(state)
    assert [(e["colour"], e["state"], e["weight"]) for e in out] == [("blue", "draining", 90), ("green", "active", 100)]
    assert list(out[0]) == ["instance", "model", "colour", "port", "weight", "state", "metrics_path"]
    assert f.llm_serving_endpoints(f.llm_serving_drop(state, "chat")) == []
    with pytest.raises(AnsibleFilterError):
        f.llm_serving_set(state, "chat", "blue", state="gone")
