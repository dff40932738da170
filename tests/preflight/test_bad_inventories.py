"""Broken inventories are refused by preflight, with a message that names the fix,
before any task runs on any host."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from toolkit.ansible_run import PlaybookRun, run_playbook  # noqa: E402

INVENTORIES = Path(__file__).resolve().parent / "inventories"
BASE = INVENTORIES / "base.yml"
SITE = ROOT / "playbooks" / "site.yml"
IMAGE = "local/llmlab-debian12:bookworm"
UBUNTU_2004 = 'NAME="Ubuntu"\nVERSION_ID="20.04"\nVERSION="20.04.6 LTS (Focal Fossa)"\nID=ubuntu\nID_LIKE=debian\n'


def _run(*inventories: Path, extra: tuple[str, ...] = ()) -> PlaybookRun:
    args: list[str] = []
    for inv in inventories[1:]:
        args += ["-i", str(inv)]
    return run_playbook(SITE, inventories[0], *args, *extra, env={"ANSIBLE_CACHE_PLUGIN": "memory"}, timeout=300)


def _assert_refused_before_any_host(run: PlaybookRun, *expected: str) -> None:
    assert run.rc != 0, "preflight accepted a broken inventory"
    messages = " ".join(m for msgs in run.failures().values() for m in msgs)
    for text in expected:
        assert text in messages, f"missing {text!r} in: {messages}"
    assert all(name.startswith("preflight :") for name in run.task_names()), run.task_names()
    assert run.total("unreachable") == 0, "a host was contacted"
    assert "Gathering Facts" not in run.stdout


CASES = {
    "host_without_zone": ["host gpu3 is in no zone: add it to exactly one of the groups dmz, app, data"],
    "host_in_two_zones": ["host edge1 is in zones dmz, app: a host belongs to exactly one zone"],
    "wrong_type": [
        "role os_tuning:",
        "os_tuning_hugepages_2m",
        "int",
        "role ssh_hardening:",
        "ssh_hardening_password_authentication",
    ],
    "unknown_variable": [
        "unknown variable ssh_hardening_pasword_authentication",
        "did you mean ssh_hardening_password_authentication?",
        "unknown variable os_tuning_swapiness",
    ],
    "contradictory": ["cluster_admin_users newhire have no ssh_keys", "locked out"],
    "duplicate_address": ["hosts gpu1 and gpu2 share ansible_host preflight-absent-gpu1"],
    "bad_service": ["cluster_services.metrics: port 70000", "cluster_services.vault: group 'vault_servers'"],
    "removed_variable": ["variable common_ntp_server was removed: use common_ntp_servers (a list)"],
    "vault_cluster": [
        "vault_keyholders 'alice': pgp_public_key is not an ASCII-armored PGP public key",
        "vault_keyholders 'bob': pgp_public_key is not an ASCII-armored",
        "vault_key_threshold is 3",
        "group 'vault' has 2 hosts (ops1, gpu1): raft needs an odd number",
    ],
}


@pytest.mark.parametrize(("case", "expected"), CASES.items(), ids=list(CASES))
def test_broken_overlay_is_refused(case: str, expected: list[str]):
    _assert_refused_before_any_host(_run(BASE, INVENTORIES / f"{case}.yml"), *expected)


def test_missing_group_is_refused():
    run = _run(INVENTORIES / "missing_group.yml")
    _assert_refused_before_any_host(run, "group 'ops' is missing or has no hosts")


def test_every_problem_is_reported_at_once():
    run = _run(BASE, INVENTORIES / "unknown_variable.yml", INVENTORIES / "host_without_zone.yml")
    _assert_refused_before_any_host(run, "os_tuning_swapiness", "host gpu3 is in no zone", "3 problem(s)")


@pytest.fixture(scope="module")
def probe_host():
    """A real (plain, not systemd) container from the lab image for the OS checks."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode:
        pytest.skip(f"{IMAGE} not built (make images)")
    name = f"preflight-probe-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "run", "-d", "--name", name, IMAGE, "sleep", "infinity"], check=True, capture_output=True)
    yield name
    subprocess.run(["docker", "rm", "-f", name], check=False, capture_output=True)


def _os_check(host: str) -> PlaybookRun:
    return run_playbook(
        ROOT / "playbooks" / "preflight.yml",
        INVENTORIES / "unsupported_os.yml",
        "-e",
        f"ansible_host={host}",
        env={"ANSIBLE_CACHE_PLUGIN": "memory"},
        timeout=300,
    )


def test_supported_os_passes(probe_host: str):
    run = _os_check(probe_host)
    assert run.rc == 0, run.failures() or run.stderr[-2000:]


def test_unsupported_os_is_refused_before_changes(probe_host: str):
    subprocess.run(["docker", "exec", "-i", probe_host, "sh", "-c", "cat > /etc/os-release"],
                   input=UBUNTU_2004, text=True, check=True)  # fmt: skip
    run = _os_check(probe_host)
    assert run.rc != 0
    messages = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "oldhost runs Ubuntu 20.04, which this toolkit does not support" in messages
    assert "Debian 12" in messages and "Ubuntu 22.04/24.04" in messages


@pytest.mark.parametrize("site", ["example", "lab"])
def test_shipped_inventories_are_valid(site: str):
    """The example site (what operators copy) and the lab pass every inventory check."""
    inventory = ROOT / "inventories" / site
    if site == "lab" and not (inventory / "hosts.yml").exists():
        pytest.skip("the lab inventory is written by `scripts/lab up`")
    extra = ["--skip-tags", "preflight_hosts"]
    if site == "lab":
        extra += ["--vault-password-file", str(ROOT / ".lab" / "vault-pass")]
    run = run_playbook(ROOT / "playbooks" / "preflight.yml", inventory, *extra, env={"ANSIBLE_CACHE_PLUGIN": "memory"})
    assert run.rc == 0, run.failures() or run.stderr[-2000:]
    assert run.total("unreachable") == 0
