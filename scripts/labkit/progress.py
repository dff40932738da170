"""Step-by-step progress lines for long lab operations (one line per step, with timings)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
