"""Broken inventories are refused by preflight, with a message that names the fix,
before any task runs on any host."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from labkit.layout import VAULT_PASS
from toolkit.ansible_run import PlaybookRun, run_playbook

from tests.helpers import certs, example_site

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = Path(__file__).resolve().parent / "inventories"
BASE = INVENTORIES / "base.yml"
SITE = ROOT / "playbooks" / "site.yml"
IMAGE = "local/llmlab-debian12:bookworm"
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBw/I6Cctv/B9P3JJYSawPlSi/edHCbmNaFGZHZW/oSk admin@laptop"
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
    # Value rules (meta/value_rules.yml): only the broken rule, with the value and the fix.
    "rule_range": [
        "ssh_hardening_max_auth_tries is 50: it must be at most 10. Fix: set it to a value that is 1 to 10",
        "host edge1: edge_proxy_streams_per_key is 0: it must be at least 1",
    ],
    "rule_regex": ["group app (hosts gpu1, gpu2): nvidia_driver_version is 'latest': it must match"],
    "rule_regex_image": ["dcgm_exporter_image_digest is 'sha256:1234'", "64 hex digits"],
    "rule_list_length": ["ssh_hardening_ciphers is []: it must have at least 1 item(s) (has 0)"],
    "rule_unique": ["edge_proxy_server_names", "must not repeat an item (repeats 'api.corp.internal')"],
    "rule_network": [
        "cluster_admin_networks[0] is '10.20.0.7/24'",
        "(has host bits set)",
        "cluster_admin_networks[1] is '10.20.0.0/33'",
    ],
    "rule_address": ["llm_serving_bind_address is '10.0.0.256': it must be an IP address"],
    "rule_port": ["node_exporter_port is 70000: it must be a port number, 1-65535"],
    "rule_ordered": ["llm_serving_port_first is 8015: it must be at most llm_serving_port_last (8000)"],
    "rule_dict_keys": [
        "os_tuning_sysctl_extra key 'VM Swappiness'",
        "pki_renew_before_days is 30: it must be less than pki_certificate_valid_days (30)",
    ],
    "rule_list_items": [
        "luks_volumes is a list of 2 items: it must have a unique name per item (Data repeated)",
        "luks_volumes[Data].device is 'sdb': it must match /dev/.+",
    ],
    "admin_name": ["cluster_admin_users[Ops Admin].name is 'Ops Admin'", "unique name per item"],
    # Consistency between settings.
    "serving_port_outside_range": [
        "llm_serving_instances[chat].port 9000 is outside the catalogue's serving range 8000-8015",
        "llm_serving_instances[embed].port 8002 is already taken by instance code",
    ],
    "unknown_group_reference": [
        "edge_proxy_backend_group names group 'gpu_node', which the inventory does not have",
        "pki_ca_host names host 'ops9'",
        "prometheus_scrape_services.node names service 'node_exportr'",
    ],
    "missing_secret": ["secret 'edge_api_keys', read by edge_proxy (edge_proxy_api_keys_secret), is not in"],
    "edge_key_roles": [
        "cluster secret 'edge_api_keys' (edge_proxy_api_keys_secret): client preflight-boss: role 'boss' is not one",
        "client preflight-models: `models` must be a list of model names",
        "client preflight-nokey: give exactly one of `key` (one key) or `keys`",
    ],
    # Version compatibility (roles/preflight/files/compatibility.yml).
    "version_mismatch": [
        "cuda_toolkit_version 13.0.2 needs NVIDIA driver 580.65.06 or later",
        "or pin a CUDA 12.8 release for driver 570.86.15",
        "cuda_toolkit_nccl_version 2.26.2 has no build for CUDA 13",
    ],
    "docker_too_old_for_cdi": ["nvidia_container_toolkit_mode cdi needs Docker 25.0.0 or later"],
    # Keys, placeholders, privilege escalation.
    "ssh_key_garbage": ["cluster_admin_users[ops].ssh_keys[0] (ssh-ed25519 ... ops@laptop) does not parse"],
    "ssh_key_rsa_short": ["is an RSA key of 2048 bits: at least 3072 are needed"],
    "placeholder_values": [
        "common_ntp_servers[0] is 'ntp1.corp.example', a name under .example",
        "llm_serving_image_digest still holds the example's placeholder",
        "host gpu2: ansible_host is 192.0.2.22, a documentation address",
    ],
    "become_defeated": ["ansible_become is false in the inventory: it outranks the plays' `become: true`"],
    "certificate_garbage": [
        "group all (hosts edge1, gpu1, gpu2, ops1): pki_certificates[web].certificate does not parse as a PEM X.509"
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


def test_a_pasted_private_key_is_refused_without_echoing_it(tmp_path: Path):
    private = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
        "-----END OPENSSH PRIVATE KEY-----"
    )
    overlay = tmp_path / "private_key.yml"
    overlay.write_text(f"all:\n  vars:\n    cluster_admin_users:\n      - name: ops\n        ssh_keys: [{private!r}]\n")
    run = _run(BASE, overlay)
    _assert_refused_before_any_host(run, "cluster_admin_users[ops].ssh_keys[0] is a PRIVATE key (not shown)")
    assert "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" not in run.stdout + run.stderr


def _assert_inventory_passes(inventory: Path, *extra: str) -> None:
    """Preflight's inventory checks, with every role's checks, accept this inventory (hosts are
    not contacted)."""
    run = run_playbook(
        ROOT / "playbooks" / "preflight.yml",
        inventory,
        *extra,
        "--skip-tags",
        "preflight_hosts",
        "-e",
        "preflight_roles=all",
        env={"ANSIBLE_CACHE_PLUGIN": "memory"},
    )
    assert run.rc == 0, run.failures() or run.stderr[-2000:]


def _provided_certificate(tmp_path: Path, name: str, cert: str, key: str) -> Path:
    """An overlay giving every host one operator-provided certificate, its key in a secret
    (test-only, generated by the test, kept with the base's secrets)."""
    base_secrets = yaml.safe_load(BASE.read_text())["all"]["vars"]["cluster_secrets"]
    entry = {"name": "web", "provider": "provided", "certificate": cert, "private_key_secret": "web_key"}
    overlay = tmp_path / f"{name}.yml"
    data = {"pki_certificates": [entry], "cluster_secrets": {**base_secrets, "web_key": key}}
    overlay.write_text(yaml.safe_dump({"all": {"vars": data}}))
    return overlay


def test_an_expired_provided_certificate_is_refused_with_its_date(tmp_path: Path):
    key = certs.new_key()
    cert, not_after = certs.self_signed(key, -2)
    run = _run(BASE, _provided_certificate(tmp_path, "certificate_expired", cert, certs.key_pem(key)))
    _assert_refused_before_any_host(
        run,
        f"pki_certificates[web].certificate (CN=preflight-test.internal) expired on {not_after:%Y-%m-%d %H:%M} UTC",
    )


def test_a_provided_key_that_does_not_match_is_refused_without_being_shown(tmp_path: Path):
    cert, _ = certs.self_signed(certs.new_key(), 200)
    other = certs.key_pem(certs.new_key())
    run = _run(BASE, _provided_certificate(tmp_path, "certificate_key_mismatch", cert, other))
    _assert_refused_before_any_host(run, "the key in secret 'web_key' (not shown) does not match the public key")
    body = other.splitlines()[1]
    assert body not in run.stdout + run.stderr


def test_a_valid_provided_certificate_passes(tmp_path: Path):
    key = certs.new_key()
    cert, _ = certs.self_signed(key, 200)
    _assert_inventory_passes(
        BASE, "-i", str(_provided_certificate(tmp_path, "certificate_valid", cert, certs.key_pem(key)))
    )


def test_layer_playbook_alone_refuses_bad_input():
    """Each layer playbook imports preflight: run alone, it stops before touching a host."""
    for layer in ("base", "gpu", "serving", "edge", "observability", "security/firewall"):
        run = run_playbook(
            ROOT / "playbooks" / f"{layer}.yml",
            BASE,
            "-i",
            str(INVENTORIES / "rule_port.yml"),
            env={"ANSIBLE_CACHE_PLUGIN": "memory"},
            timeout=300,
        )
        _assert_refused_before_any_host(run, "node_exporter_port is 70000")


def test_example_is_refused_only_for_its_placeholders():
    """inventories/example as shipped: every problem is a placeholder to replace, nothing else."""
    run = run_playbook(
        ROOT / "playbooks" / "preflight.yml",
        ROOT / "inventories" / "example",
        "--skip-tags",
        "preflight_hosts",
        env={"ANSIBLE_CACHE_PLUGIN": "memory"},
    )
    assert run.rc != 0
    problems = [p for msgs in run.failures().values() for m in msgs for p in m.split("\n  - ")[1:]]
    assert len(problems) >= 8, problems
    assert all("placeholder" in p for p in problems), problems


@pytest.mark.parametrize("site", ["lab"])
def test_shipped_inventories_are_valid(site: str):
    """The lab passes every inventory check."""
    inventory = ROOT / "inventories" / site
    if site == "lab" and not (inventory / "hosts.yml").exists():
        pytest.skip("the lab inventory is written by `scripts/lab up`")
    extra = ["--skip-tags", "preflight_hosts"]
    if site == "lab":
        extra += ["--vault-password-file", str(VAULT_PASS)]
    run = run_playbook(ROOT / "playbooks" / "preflight.yml", inventory, *extra, env={"ANSIBLE_CACHE_PLUGIN": "memory"})
    assert run.rc == 0, run.failures() or run.stderr[-2000:]
    assert run.total("unreachable") == 0


def test_a_site_copied_from_the_example_as_the_readme_says_passes(tmp_path: Path):
    """README "Pointing it at real hosts", steps 1-3, then preflight with every role's checks:
    the documented path gives an inventory preflight accepts (hosts are not contacted)."""
    addresses = {"edge01": "10.255.1.10", "gpu01": "10.255.2.21", "gpu02": "10.255.2.22", "ops01": "10.255.3.31"}
    admins = [{"name": "alice", "ssh_keys": [ADMIN_KEY]}, {"name": "bob", "ssh_keys": [ADMIN_KEY]}]
    site, vault_pass = example_site.copy_example(tmp_path, addresses, ["10.255.0.0/24"], admins)
    _assert_inventory_passes(site, "--vault-password-file", str(vault_pass))


def test_a_role_run_alone_refuses_a_value_that_breaks_its_rules(tmp_path: Path):
    """Without preflight, the role's first task checks its settings against the same rules."""
    play = tmp_path / "alone.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: ssh_hardening}\n"
        "      vars: {ssh_hardening_max_auth_tries: 50, ssh_hardening_login_grace_time: 30}\n"
    )
    run = run_playbook(play, "localhost,", "-c", "local", env={"ANSIBLE_CACHE_PLUGIN": "memory"}, timeout=300)
    assert run.rc != 0
    messages = " ".join(m for msgs in run.failures().values() for m in msgs)
    assert "ssh_hardening_max_auth_tries is 50: it must be at most 10" in messages
    assert "login_grace_time" not in messages, "a satisfied rule was listed"
    assert run.total("changed") == 0
