"""Thin wrappers around subprocess that raise LabError with the command's own output."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence


class LabError(RuntimeError):
    """A lab step failed; the message says what and how to fix it."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    input_text: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv; on failure raise LabError carrying the command line and its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            check=False,
            text=True,
            input=input_text,
            capture_output=capture,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()
        raise LabError(f"`{shlex.join(argv)}` exited {proc.returncode}: {detail[-2000:]}")
    return proc


def ok(argv: Sequence[str], timeout: float | None = 30) -> bool:
    """True when the command exits 0 (output discarded)."""
    try:
        return run(argv, check=False, timeout=timeout).returncode == 0
    except LabError:
        return False
