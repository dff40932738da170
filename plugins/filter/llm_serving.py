"""Filters of the llm_serving role: turn the inventory's instances into a checked plan.

`llm_serving_instances | llm_serving_plan(settings)` returns one dict per instance with
everything the tasks and templates need (image reference, host ports and GPUs of both
colours, the merged server options), or fails with a message that names the variable,
what is wrong with it and how to fix it. Doing this in Python keeps the rules in one
place and under unit test (tests/unit/test_llm_serving_filter.py).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from ansible.errors import AnsibleFilterError

COLOURS = ("blue", "green")
NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
STRATEGIES = ("rolling", "blue_green")
KNOWN_KEYS = {
    "name", "model", "model_dir", "model_src", "model_manifest", "port", "gpus", "gpus_green", "weight",
    "update_strategy", "image_repository", "image_digest", "llm_api_options", "args", "env",
}  # fmt: skip


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _gpus(value: Any, where: str) -> list[int] | str:
    if value in (None, [], ""):
        return []
    if value == "all":
        return "all"
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in value):
        raise AnsibleFilterError(
            f"{where}: give GPU indices as a list of numbers (e.g. [0, 1]) or 'all', not {value!r}"
        )
    if len(set(value)) != len(value):
        raise AnsibleFilterError(f"{where}: GPU {sorted(g for g in value if value.count(g) > 1)[0]} is listed twice")
    return sorted(value)


def _overlap(a: list[int] | str, b: list[int] | str) -> bool:
    if not a or not b:
        return False
    if a == "all" or b == "all":
        return True
    return bool(set(a) & set(b))


def llm_serving_plan(instances: Any, settings: dict) -> list[dict]:
    if not isinstance(instances, list):
        raise AnsibleFilterError("llm_serving_instances must be a list of instances (dicts with name, model_dir, port)")
    engine = settings["engine"]
    spec = settings["engines"].get(engine)
    if spec is None:
        raise AnsibleFilterError(f"llm_serving_engine is {engine!r}: use one of {', '.join(settings['engines'])}")
    first, last = int(settings["port_first"]), int(settings["port_last"])
    per_colour = int(spec["ports_per_colour"])
    gpu_mode = settings["gpu_mode"]
    plan: list[dict] = []
    used_ports: dict[int, str] = {}
    for index, inst in enumerate(instances):
        where = f"llm_serving_instances[{index}]"
        if not isinstance(inst, dict):
            raise AnsibleFilterError(f"{where} must be a dict with name, model_dir and port, not {inst!r}")
        name = inst.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise AnsibleFilterError(
                f"{where}.name is {name!r}: use 1-31 lower-case letters, digits and dashes "
                "(it names units and containers)"
            )
        where = f"llm_serving_instances[{index}] ({name})"
        unknown = sorted(set(inst) - KNOWN_KEYS)
        if unknown:
            raise AnsibleFilterError(
                f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})"
            )
        if any(p["name"] == name for p in plan):
            raise AnsibleFilterError(
                f"{where}: the name {name} is used twice on this host; instance names must be unique"
            )
        model_dir = inst.get("model_dir")
        if not isinstance(model_dir, str) or not model_dir.startswith("/") or model_dir.rstrip("/") == "":
            raise AnsibleFilterError(
                f"{where}.model_dir must be an absolute directory path on the host, not {model_dir!r}"
            )
        model_dir = posixpath.normpath(model_dir)
        manifest = inst.get("model_manifest", "SHA256SUMS")
        manifest = manifest if manifest.startswith("/") else posixpath.join(model_dir, manifest)

        port = inst.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            raise AnsibleFilterError(
                f"{where}.port must be a number (the first host port of the instance), not {port!r}"
            )
        colours: dict[str, dict] = {}
        for k, colour in enumerate(COLOURS):
            ports = [port + k * per_colour + j for j in range(per_colour)]
            for p in ports:
                if not first <= p <= last:
                    raise AnsibleFilterError(
                        f"{where}: colour {colour} needs host port {p}, outside the llm_serving service range "
                        f"{first}-{last} (cluster_services.llm_serving); an instance takes {2 * per_colour} ports "
                        f"from its port ({engine}: {per_colour} per colour)"
                    )
                if p in used_ports:
                    raise AnsibleFilterError(
                        f"{where}: host port {p} (colour {colour}) is already taken by instance {used_ports[p]}; "
                        f"space the instances' ports {2 * per_colour} apart"
                    )
                used_ports[p] = name
            colours[colour] = {"port": ports[0], "metrics_port": ports[-1] if per_colour > 1 else ports[0]}

        strategy = inst.get("update_strategy", settings["strategy"])
        if strategy not in STRATEGIES:
            raise AnsibleFilterError(f"{where}.update_strategy is {strategy!r}: use rolling or blue_green")
        gpus = _gpus(inst.get("gpus"), f"{where}.gpus")
        gpus_green = _gpus(inst.get("gpus_green"), f"{where}.gpus_green") if "gpus_green" in inst else None
        if gpu_mode == "none":
            colours["blue"]["gpus"] = colours["green"]["gpus"] = []
        else:
            if not gpus:
                raise AnsibleFilterError(
                    f"{where}.gpus is empty but llm_serving_gpu_mode is {gpu_mode}: list the GPU indices this "
                    f"instance uses (e.g. [0]) or 'all'; set llm_serving_gpu_mode: none only for hosts without GPUs"
                )
            if strategy == "blue_green":
                if gpus_green is None:
                    raise AnsibleFilterError(
                        f"{where}: blue-green updates start the new colour beside the old one, on other GPUs: give "
                        f"gpus_green (e.g. [2, 3]) or use update_strategy: rolling"
                    )
                if _overlap(gpus, gpus_green):
                    raise AnsibleFilterError(
                        f"{where}: gpus {gpus} and gpus_green {gpus_green} overlap; two colours cannot share a GPU "
                        f"(each preallocates its memory). Give disjoint lists or use update_strategy: rolling"
                    )
            colours["blue"]["gpus"] = gpus
            colours["green"]["gpus"] = gpus_green if gpus_green is not None else gpus
            for other in plan:
                for colour in COLOURS:
                    for their in COLOURS:
                        if _overlap(colours[colour]["gpus"], other["colours"][their]["gpus"]):
                            raise AnsibleFilterError(
                                f"{where}: GPUs {colours[colour]['gpus']} (colour {colour}) are also given to instance "
                                f"{other['name']} (colour {their}); give every instance its own GPUs"
                            )

        digest = inst.get("image_digest", settings["digest"])
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise AnsibleFilterError(
                f"{where}: the image digest {digest!r} (llm_serving_image_digest or image_digest) is not "
                f"sha256:<64 hex digits>; images are pinned by digest, read it from your registry mirror"
            )
        registry = settings["registry"]
        if not registry:
            raise AnsibleFilterError(
                "llm_serving_image_registry is empty: set cluster_image_registry (host:port of the site's "
                "registry mirror) or llm_serving_image_registry"
            )
        repository = inst.get("image_repository", settings["repository"])
        weight = inst.get("weight", 100)
        if not isinstance(weight, int) or not 1 <= weight <= 100:
            raise AnsibleFilterError(f"{where}.weight is {weight!r}: use a number from 1 to 100")
        options = inst.get("llm_api_options", {})
        args = inst.get("args", [])
        env = inst.get("env", {})
        if not isinstance(options, dict) or not isinstance(args, list) or not isinstance(env, dict):
            raise AnsibleFilterError(f"{where}: llm_api_options and env must be dicts, args a list")
        merged = _merge(settings["llm_api_options"], options)
        if engine == "trtllm":
            merged["return_perf_metrics"] = True
        plan.append(
            {
                "name": name,
                "model": inst.get("model", posixpath.basename(model_dir)),
                "model_dir": model_dir,
                "model_src": inst.get("model_src", ""),
                "model_manifest": manifest,
                "weight": weight,
                "update_strategy": strategy,
                "image": f"{registry}/{repository}@{digest}",
                "colours": colours,
                "llm_api_options": merged,
                "args": [str(a) for a in args],
                "env": {str(k): str(v) for k, v in env.items()},
            }
        )
    return plan


def llm_serving_canary_weights(weight: int, share: int) -> list[int]:
    """[old, new] weights while the new colour gets `share` percent of the instance's traffic."""
    share = int(share)
    if not 1 <= share <= 99:
        raise AnsibleFilterError(f"llm_serving_canary_share is {share}: use a percentage from 1 to 99")
    new = max(1, round(weight * share / 100))
    return [max(1, weight - new), new]


ENDPOINT_KEYS = ("instance", "model", "colour", "port", "weight", "state", "metrics_path")
STATES = ("active", "draining", "down")


def llm_serving_index(endpoints: Any) -> dict[str, dict]:
    """The fact's endpoint list as a dict keyed INSTANCE/COLOUR (what the tasks update)."""
    return {
        f"{e['instance']}/{e['colour']}": dict(e) for e in endpoints or [] if isinstance(e, dict) and "instance" in e
    }


def llm_serving_set(
    current: dict, which_instance: str, which_colour: str, entry: dict | None = None, **fields: Any
) -> dict:
    """A copy of `current` where INSTANCE/COLOUR has the keys of `entry` and `fields` (created when missing)."""
    fields = {**(entry or {}), **fields}
    if "state" in fields and fields["state"] not in STATES:
        raise AnsibleFilterError(f"endpoint state {fields['state']!r}: use one of {', '.join(STATES)}")
    key = f"{which_instance}/{which_colour}"
    out = {k: dict(v) for k, v in current.items()}
    out[key] = {**out.get(key, {"instance": which_instance, "colour": which_colour}), **fields}
    return out


def llm_serving_drop(state: dict, instance: str, colour: str | None = None) -> dict:
    """A copy of `state` without INSTANCE/COLOUR (every colour of INSTANCE when colour is None)."""
    return {k: dict(v) for k, v in state.items() if not (v["instance"] == instance and colour in (None, v["colour"]))}


def llm_serving_endpoints(state: dict) -> list[dict]:
    """The fact's endpoint list: contract keys first, sorted, so an unchanged state writes the same file."""
    out = []
    for key in sorted(state):
        e = state[key]
        out.append(
            {k: e[k] for k in ENDPOINT_KEYS if k in e} | {k: v for k, v in sorted(e.items()) if k not in ENDPOINT_KEYS}
        )
    return out


def llm_serving_endpoint(instance: dict, colour: str, metrics_path: str, **fields: Any) -> dict:
    """The fact entry of one colour of a planned instance, with `fields` (weight, state) added."""
    ports = instance["colours"][colour]
    entry = {
        "instance": instance["name"],
        "model": instance["model"],
        "colour": colour,
        "port": int(ports["port"]),
        "metrics_path": metrics_path,
    }
    if ports["metrics_port"] != ports["port"]:
        entry["metrics_port"] = int(ports["metrics_port"])
    return {**entry, **fields}


class FilterModule:
    def filters(self) -> dict:
        return {
            "llm_serving_plan": llm_serving_plan,
            "llm_serving_canary_weights": llm_serving_canary_weights,
            "llm_serving_index": llm_serving_index,
            "llm_serving_set": llm_serving_set,
            "llm_serving_drop": llm_serving_drop,
            "llm_serving_endpoints": llm_serving_endpoints,
            "llm_serving_endpoint": llm_serving_endpoint,
        }
