"""TCP listeners and probes for the firewall tests.

The scripts below run inside test hosts with `python3 -c` (every host has Python for Ansible),
or on the controller with `probe_here`. A probe result is "open" (the handshake completed),
"timeout" (dropped), "refused" (rejected, or nothing listens) or "error: ...". Tests start a
listener on every probed port first, so "refused" can never pass for "blocked".
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable

# Listens on every port given that nothing else holds yet, accepts and closes connections.
LISTENER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("0.0.0.0", port))
    except OSError:
        s.close()
        continue
    s.listen(256)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
            conn.close()
        except OSError:
            pass
"""

# argv: JSON list of [address, port], timeout in seconds, "parallel" or "serial".
PROBER = r"""
import concurrent.futures, json, socket, sys
targets, timeout, mode = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def probe(target):
    address, port = target
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.settimeout(timeout)
    try:
        s.connect((address, int(port)))
        return "open"
    except socket.timeout:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return "error: %s" % exc
    finally:
        s.close()
if mode == "serial":
    results = [probe(t) for t in targets]
else:
    with concurrent.futures.ThreadPoolExecutor(max(1, min(64, len(targets)))) as pool:
        results = list(pool.map(probe, targets))
print(json.dumps(results))
"""


def listener_command(ports: Iterable[int]) -> str:
    """A shell command that starts the listener in the background (it outlives the shell) and
    prints its process id."""
    args = " ".join(str(p) for p in sorted(set(ports)))
    return f"nohup python3 -c {_quote(LISTENER)} {args} >/dev/null 2>&1 </dev/null & echo $!"


def probe_command(targets: list[tuple[str, int]], timeout: float = 3.0, serial: bool = False) -> str:
    payload = json.dumps([list(t) for t in targets])
    return f"python3 -c {_quote(PROBER)} {_quote(payload)} {timeout} {'serial' if serial else 'parallel'}"


def parse(targets: list[tuple[str, int]], output: str) -> dict[tuple[str, int], str]:
    return dict(zip(targets, json.loads(output.strip().splitlines()[-1]), strict=True))


def probe_here(
    targets: list[tuple[str, int]], timeout: float = 3.0, serial: bool = False
) -> dict[tuple[str, int], str]:
    """Probe from the machine running the tests (the controller)."""
    payload = json.dumps([list(t) for t in targets])
    proc = subprocess.run(
        [sys.executable, "-c", PROBER, payload, str(timeout), "serial" if serial else "parallel"],
        capture_output=True, text=True, check=True, timeout=timeout * len(targets) + 60,
    )  # fmt: skip
    return parse(targets, proc.stdout)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
