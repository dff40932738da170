"""Run ansible-playbook and read what happened, task by task.

Uses the `json` stdout callback, so callers (the drift report, the tests) see exactly which
tasks changed on which host, not text that a callback may format differently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from labkit import layout

ROOT = layout.ROOT  # the repository
SITE = layout.SITE


@dataclass
class PlaybookRun:
    rc: int
    stdout: str
    stderr: str
    data: dict = field(default_factory=dict)

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        return self.data.get("stats", {})

    def changed_tasks(self) -> dict[str, list[str]]:
        """host -> names of the tasks that reported changed there."""
        out: dict[str, list[str]] = {}
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for host, res in task.get("hosts", {}).items():
                    if res.get("changed"):
                        out.setdefault(host, []).append(task["task"]["name"])
        return out

    def failures(self) -> dict[str, list[str]]:
        """host -> messages of failed tasks."""
        out: dict[str, list[str]] = {}
        for play in self.data.get("plays", []):
            for task in play.get("tasks", []):
                for host, res in task.get("hosts", {}).items():
                    if res.get("failed") or res.get("unreachable"):
                        msgs = [res.get("msg", "")] + [
                            item.get("msg", "") for item in res.get("results", []) if item.get("failed")
                        ]
                        out.setdefault(host, []).append(f"{task['task']['name']}: {' | '.join(m for m in msgs if m)}")
        return out

    def task_names(self) -> list[str]:
        return [t["task"]["name"] for p in self.data.get("plays", []) for t in p.get("tasks", [])]

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.stats.values())


def _ansible_playbook() -> str:
    """The ansible-playbook of the running interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else (shutil.which("ansible-playbook") or "ansible-playbook")


def playbook_command(playbook: str | Path, inventory: str | Path, *args: str) -> list[str]:
    return [_ansible_playbook(), str(playbook), "-i", str(inventory), *args]


def lab_command(*args: str, playbook: str | Path = SITE) -> list[str]:
    """The lab's site command (or another playbook's): its inventory and vault password file."""
    return playbook_command(playbook, layout.INVENTORY, "--vault-password-file", str(layout.VAULT_PASS), *args)


def run_playbook(
    playbook: str | Path,
    inventory: str | Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> PlaybookRun:
    return run_command(playbook_command(playbook, inventory, *args), env=env, timeout=timeout)


def run_lab(
    *args: str, playbook: str | Path = SITE, env: dict[str, str] | None = None, timeout: float = 1800
) -> PlaybookRun:
    """`lab_command` run with JSON results."""
    return run_command(lab_command(*args, playbook=playbook), env=env, timeout=timeout)


def run_command(argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> PlaybookRun:
    """Run an ansible-playbook command line from the repository with the `json` callback."""
    full_env = dict(os.environ)
    full_env.update(
        {
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
            # Other callbacks (timers) would print around the JSON document.
            "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.default",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    full_env.update(env or {})
    proc = subprocess.run(argv, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    data: dict = {}
    start = proc.stdout.find('{\n    "custom_stats"')
    if start >= 0:
        try:
            data = json.JSONDecoder().raw_decode(proc.stdout[start:])[0]
        except json.JSONDecodeError:
            data = {}
    return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, data)
