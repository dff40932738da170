"""Step-by-step progress lines for long lab operations (one line per step, with timings)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .shell import LabError

_START = time.monotonic()


def _stamp() -> str:
    return f"[lab {time.monotonic() - _START:6.1f}s]"


def info(message: str) -> None:
    print(f"{_stamp()} {message}", flush=True)


def warn(message: str) -> None:
    print(f"{_stamp()} WARNING: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(message: str) -> Iterator[None]:
    """Print the step, run the body, then print how long it took (or that it failed)."""
    began = time.monotonic()
    info(f"{message} ...")
    try:
        yield
    except BaseException:
        info(f"{message}: failed after {time.monotonic() - began:.1f}s")
        raise
    info(f"{message}: done in {time.monotonic() - began:.1f}s")


def run_watched(argv: list[str], what: str, *, every_s: float = 10.0, timeout: float | None = None) -> None:
    """Run a long command, printing its latest output line every `every_s` seconds, so a
    step that takes minutes (debootstrap) is never silent; on failure raise LabError with
    the output's tail."""
    began = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                lines.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    shown = ""
    while reader.is_alive():
        reader.join(every_s)
        if timeout is not None and time.monotonic() - began > timeout:
            proc.kill()
            raise LabError(f"{what}: timed out after {timeout:.0f}s")
        if reader.is_alive() and lines and lines[-1] != shown:
            shown = lines[-1]
            info(f"  {what}: {shown[:100]}")
    if proc.wait() != 0:
        tail = "\n".join(lines[-20:])
        raise LabError(f"{what} exited {proc.returncode}:\n{tail}")
