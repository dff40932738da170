#!/usr/bin/python
"""Merge settings into Docker's daemon.json without losing the keys others put there."""

from __future__ import annotations

DOCUMENTATION = r"""
module: docker_daemon_json
short_description: Merge settings into /etc/docker/daemon.json, keeping every other key
description:
  - Reads the existing daemon.json (if any), deep-merges O(settings) into it (mappings are
    merged key by key, any other value is replaced), and writes the result only when it
    differs. Keys the file has and O(settings) does not name are kept as they are, so a
    setting made by an operator or another role survives.
  - The new file is written next to the old one, checked with O(validate) (for example
    C(dockerd --validate --config-file %s)) and only then moved into place.
  - An existing file that is not valid JSON is never overwritten; the module fails and
    says so.
options:
  path:
    description: The daemon configuration file.
    type: path
    default: /etc/docker/daemon.json
  settings:
    description: The keys to set; nested mappings are merged into the existing ones.
    type: dict
    required: true
  remove:
    description: Top-level keys to remove (for example a setting this toolkit used to manage).
    type: list
    elements: str
    default: []
  validate:
    description: Command that checks the new file before it replaces the old one; C(%s) is the new file.
    type: str
  mode:
    description: File mode of a newly created file.
    type: str
    default: "0644"
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author: llm-cluster toolkit
"""

EXAMPLES = r"""
- name: Log rotation and live-restore, keeping the operator's other keys
  docker_daemon_json:
    settings:
      live-restore: true
      log-driver: json-file
      log-opts: {max-size: 50m, max-file: "5"}
    validate: dockerd --validate --config-file %s
"""

RETURN = r"""
config:
  description: The whole configuration after the merge.
  returned: always
  type: dict
"""

import json
import os
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def deep_merge(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """base with settings merged in: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render(config: dict[str, Any]) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/docker/daemon.json"},
            "settings": {"type": "dict", "required": True},
            "remove": {"type": "list", "elements": "str", "default": []},
            "validate": {"type": "str"},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    before_text = ""
    existing: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            before_text = handle.read()
        if before_text.strip():
            try:
                existing = json.loads(before_text)
            except json.JSONDecodeError as exc:
                module.fail_json(
                    msg=f"{path} is not valid JSON ({exc}); it was left untouched. Fix or remove it, then run again."
                )
            if not isinstance(existing, dict):
                module.fail_json(msg=f"{path} must hold a JSON object; it was left untouched")
    merged = deep_merge(existing, module.params["settings"])
    for key in module.params["remove"]:
        merged.pop(key, None)
    # Compare data, not text: a file with the same keys in another layout is not rewritten.
    changed = merged != existing or not os.path.exists(path)
    after_text = render(merged)
    result: dict[str, Any] = {"changed": changed, "config": merged, "path": path}
    if module._diff:
        result["diff"] = {"before": before_text, "after": after_text if changed else before_text,
                          "before_header": path, "after_header": path}  # fmt: skip
    if not changed or module.check_mode:
        module.exit_json(**result)

    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".daemon.json.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(after_text)
        if os.path.exists(path):
            st = os.stat(path)
            os.chmod(tmp, st.st_mode & 0o7777)
            os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, int(module.params["mode"], 8))
        if module.params["validate"]:
            command = module.params["validate"]
            if "%s" not in command:
                module.fail_json(msg=f"validate must contain %s (the new file): {command!r}")
            rc, out, err = module.run_command(command.replace("%s", tmp))
            if rc != 0:
                module.fail_json(
                    msg=f"the new {path} failed validation ({command}); the old file was kept",
                    rc=rc,
                    stdout=out,
                    stderr=err,
                    config=merged,
                )
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
