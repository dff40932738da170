"""Make sure a Docker engine answers: install Debian's docker.io and start dockerd if needed.

Our build and CI machines have only the Docker client. Starting the engine ourselves (in its
own session, logging to a file) is what the lab and the test suite need; on a workstation
with a running engine this module does nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from . import progress
from .shell import LabError, ok, run

ENGINE_PACKAGES = ["docker.io"]


def engine_answers() -> bool:
    return shutil.which("docker") is not None and ok(["docker", "info"], timeout=20)


def apt_install(packages: list[str]) -> None:
    """apt-get update and install, waiting (up to 10 min) for another apt run to finish."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    for argv in (["apt-get", *wait, "update", "-q"], ["apt-get", *wait, "install", "-y", "-q", *packages]):
        proc = subprocess.run(argv, env=env, text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()[-1500:]}")


def ensure_packages(packages: list[str], commands: list[str]) -> None:
    """Install Debian packages when any of `commands` is missing (root only)."""
    missing = [c for c in commands if shutil.which(c) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise LabError(
            f"missing {', '.join(missing)}; install them with `sudo apt-get install {' '.join(packages)}` and run again"
        )
    with progress.step(f"installing {' '.join(packages)} from the distribution"):
        apt_install(packages)


def ensure_engine(state_dir: Path, wait_s: float = 90) -> None:
    """Return once `docker info` answers; start dockerd ourselves when we may."""
    if engine_answers():
        return
    if os.geteuid() != 0:
        raise LabError(
            "no Docker engine answers and this is not root: start Docker "
            "(`sudo systemctl start docker`) or add yourself to the docker group, then run again"
        )
    ensure_packages(ENGINE_PACKAGES, ["dockerd"])
    if shutil.which("systemctl") and ok(["systemctl", "is-system-running"], timeout=10):
        run(["systemctl", "start", "docker"], check=False)
    if not engine_answers():
        state_dir.mkdir(parents=True, exist_ok=True)
        log = state_dir / "dockerd.log"
        with progress.step(f"starting dockerd (log: {log})"):
            with log.open("ab") as out:
                subprocess.Popen(
                    ["dockerd"],
                    stdout=out,
                    stderr=out,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            deadline = time.monotonic() + wait_s
            while not engine_answers():
                if time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-1500:]
                    raise LabError(f"dockerd did not answer within {wait_s:.0f}s; log tail:\n{tail}")
                time.sleep(1)
