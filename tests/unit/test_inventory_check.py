"""The preflight inventory checks, function by function."""

from __future__ import annotations

from conftest import ROOT, load_plugin

from tests.helpers import certs

check = load_plugin("plugins/action/cluster_inventory_check.py")
SPECS = check.load_role_specs(ROOT / "roles")
CLUSTER_SPEC = {"cluster_zones": {"type": "list", "elements": "str"}}


def test_role_specs_are_read_for_every_role():
    assert {"common", "os_tuning", "ssh_hardening", "preflight"} <= set(SPECS)
    assert "os_tuning_sysctl" in SPECS["os_tuning"]


def test_zones_exactly_one_per_host():
    groups = {"all": ["a", "b", "c"], "dmz": ["a"], "app": ["a", "b"], "data": []}
    errors = check.check_zones(groups, ["dmz", "app", "data"])
    assert errors == [
        "host a is in zones dmz, app: a host belongs to exactly one zone",
        "host c is in no zone: add it to exactly one of the groups dmz, app, data",
    ]


def test_zone_without_group_and_bad_zone_list():
    assert "has no group 'dta'" in check.check_zones({"all": []}, ["dta"])[0]
    assert "non-empty list" in check.check_zones({"all": []}, "dmz")[0]


def test_required_groups_need_hosts():
    assert check.check_required_groups({"edge": [], "ops": ["o"]}, ["edge", "ops", "gpu_nodes"]) == [
        "group 'edge' is missing or has no hosts: the cluster needs at least one host in 'edge'",
        "group 'gpu_nodes' is missing or has no hosts: the cluster needs at least one host in 'gpu_nodes'",
    ]


def test_unknown_variables_get_a_suggestion_or_a_pointer():
    errors = check.check_host_variables(
        "h", {"os_tuning_swappines": 1, "ssh_hardening_ciphres": [], "my_site_var": 1}, SPECS, CLUSTER_SPEC, {}
    )
    assert "host h: unknown variable os_tuning_swappines" in errors[0]
    assert errors[1].endswith("did you mean ssh_hardening_ciphers?")
    assert len(errors) == 2  # a site's own variable without a known prefix is not ours to judge


def test_near_miss_of_a_known_name_without_its_prefix():
    errors = check.check_host_variables("h", {"comon_packages": []}, SPECS, CLUSTER_SPEC, {})
    assert errors == ["host h: unknown variable comon_packages; did you mean common_packages?"]


def test_types_follow_the_role_spec():
    errors = check.check_host_variables(
        "h", {"os_tuning_hugepages_2m": "many", "os_tuning_transparent_hugepages": "sometimes"}, SPECS, CLUSTER_SPEC, {}
    )
    text = " ".join(errors)
    assert "os_tuning_hugepages_2m" in text and "int" in text
    assert "os_tuning_transparent_hugepages" in text and "always, madvise, never" in text


def test_valid_values_pass_and_magic_variables_are_ignored():
    hostvars = {"os_tuning_hugepages_2m": 512, "ansible_host": "x", "inventory_hostname": "h", "_private": 1}
    assert check.check_host_variables("h", hostvars, SPECS, CLUSTER_SPEC, {}) == []


def test_removed_variable_carries_its_hint():
    errors = check.check_host_variables("h", {"old_var": 1}, SPECS, CLUSTER_SPEC, {"old_var": "use new_var"})
    assert errors == ["host h: variable old_var was removed: use new_var"]


def test_service_catalogue():
    groups = {"all": ["a"], "edge": ["a"]}
    services = {
        "ok": {"port": 443, "protocol": "tcp", "group": "edge"},
        "range": {"port": 8000, "port_end": 7999, "group": "edge"},
        "proto": {"port": 53, "protocol": "icmp", "group": "all"},
        "clash": {"port": 443, "protocol": "tcp", "group": "edge"},
        "nogroup": {"port": 1, "group": "vault"},
    }
    errors = check.check_services(services, groups)
    assert any(e.startswith("cluster_services.range: port 8000 (port_end 7999)") for e in errors)
    assert "cluster_services.proto: protocol 'icmp' must be tcp or udp" in errors
    assert any("port tcp/443 on group edge is already used by clash" in e for e in errors)
    assert "cluster_services.nogroup: group 'vault' is not an inventory group" in errors
    assert "not set" in check.check_services(None, groups)[0]


def test_duplicate_addresses_and_message_grouping():
    assert check.check_addresses({"a": "10.0.0.1", "b": "10.0.0.1", "c": "10.0.0.2"}) == [
        "hosts a and b share ansible_host 10.0.0.1: each host needs its own address"
    ]
    merged = check.merge_host_messages(["host a: X", "host b: X", "group bad", "host a: Y"])
    assert merged == ["hosts a, b: X", "group bad", "host a: Y"]


TABLE = check.yaml.safe_load((ROOT / "roles" / "preflight" / "files" / "compatibility.yml").read_text())
DEFAULT_PINS = {k: v for k, v in check.load_defaults(ROOT / "roles").items() if k in check.PINS}


def test_the_shipped_pins_work_together():
    assert check.check_compatibility(DEFAULT_PINS, TABLE) == []


def test_cuda_on_a_too_old_driver_names_the_nearest_working_pair():
    errors = check.check_compatibility({**DEFAULT_PINS, "nvidia_driver_version": "560.35.03"}, TABLE)
    assert errors == [
        "cuda_toolkit_version 13.0.2 needs NVIDIA driver 580.65.06 or later (CUDA 13), but nvidia_driver_version "
        "is 560.35.03: raise nvidia_driver_version to 580.65.06, or pin a CUDA 12.6 release for driver 560.35.03"
    ]


def test_libraries_and_docker_pins_against_the_table():
    pins = {**DEFAULT_PINS, "cuda_toolkit_cudnn_version": "9.10.2.21", "cuda_toolkit_nccl": False,
            "cuda_toolkit_nccl_version": "2.20.5", "container_runtime_package_source": "docker_ce",
            "container_runtime_docker_ce_version": "24.0.9", "nvidia_container_toolkit_mode": "cdi"}  # fmt: skip
    errors = check.check_compatibility(pins, TABLE)
    assert len(errors) == 2
    assert "cuda_toolkit_cudnn_version 9.10.2.21 has no build for CUDA 13" in errors[0]
    assert "needs Docker 25.0.0 or later" in errors[1]
    assert check.check_compatibility({**pins, "nvidia_container_toolkit_mode": "auto"}, TABLE) == errors[:1]


def test_unknown_cuda_major_is_named():
    assert (
        "CUDA 11 is not in the compatibility table"
        in check.check_compatibility({"cuda_toolkit_version": "11.8.0", "nvidia_driver_version": "580.95.05"}, TABLE)[0]
    )


def test_admin_keys_accepted_and_refused():
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBw/I6Cctv/B9P3JJYSawPlSi/edHCbmNaFGZHZW/oSk ops"
    assert check.check_ssh_key("k", good) is None
    assert "does not parse" in check.check_ssh_key("k", "ssh-ed25519 AAAAC3Nz ops")
    leaked = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecretbody\n-----END OPENSSH PRIVATE KEY-----"
    message = check.check_ssh_key("k", leaked)
    assert "PRIVATE key (not shown)" in message and "secretbody" not in message


def test_placeholders_of_the_example_are_named():
    assert check.check_placeholders("ansible_host", "198.51.100.10")
    assert check.check_placeholders("common_ntp_servers", ["ntp1.corp.example"])
    assert check.check_placeholders("ansible_host", "10.0.0.5") == []
    assert check.check_placeholders("llm_serving_image_digest", "sha256:" + "0123456789abcdef" * 4)
    assert check.check_placeholders("llm_serving_image_digest", "sha256:" + "9f86d081884c7d65" * 4) == []
    secret = check.check_placeholders("cluster_secrets", {"a": "REPLACE_ME", "b": "x.corp.example"})
    assert secret == ["cluster_secrets.a still holds the example's placeholder: "
                      "it is a placeholder from inventories/example: replace it with your site's value"]  # fmt: skip


def test_inventory_become_false_is_refused():
    assert "outranks the plays' `become: true`" in check.check_connection({"ansible_become": False})[0]
    assert check.check_connection({"ansible_become": True}) == []


def test_vault_raft_group_size_keyholders_and_threshold():
    key = (ROOT / "tests/fixtures/pgp/test-keyholder.pub.asc").read_text()
    good = {"vault_keyholders": [{"name": "a", "pgp_public_key": key}, {"name": "b", "pgp_public_key": key}]}
    three = {"all": ["v1", "v2", "v3"], "vault": ["v1", "v2", "v3"]}
    assert check.check_vault({h: good for h in three["all"]}, three) == ([], [])
    assert check.check_vault({"x": {}}, {"all": ["x"]}) == ([], [])
    one = {"all": ["v1"], "vault": ["v1"]}
    errors, warnings = check.check_vault({"v1": good}, one)
    assert errors == [] and "no failover" in warnings[0]
    two = {"all": ["v1", "v2"], "vault": ["v1", "v2"]}
    bad = {"vault_key_threshold": 3, "vault_keyholders": [{"name": "a", "pgp_public_key": "ssh-ed25519 AAAA"}]}
    errors, _ = check.check_vault({"v1": bad, "v2": bad}, two)
    assert any("raft needs an odd number" in e for e in errors)
    assert any("'a': pgp_public_key is not an ASCII-armored" in e for e in errors)
    assert any("vault_key_threshold is 3: it must be at most the number of keyholders (1)" in e for e in errors)
    renamed = {"all": ["v1", "v2", "v3"], "secrets": ["v1", "v2", "v3"]}
    moved = {h: {**good, "vault_group": "secrets"} for h in renamed["all"]}
    assert check.check_vault(moved, renamed) == ([], [])


# Operator-provided certificates (pki_certificates, provider: provided). Certificates and keys
# are generated by the test (tests/helpers/certs.py), never committed.
def _provided(cert: str, secret: str = "web_key") -> dict:
    return {
        "pki_certificates": [{"name": "web", "provider": "provided", "certificate": cert, "private_key_secret": secret}]
    }


def test_a_valid_provided_pair_passes():
    key = certs.new_key()
    cert, _ = certs.self_signed(key, 200)
    host = {**_provided(cert), "cluster_secrets": {"web_key": certs.key_pem(key)}}
    assert check.check_provided_certificates(host, {"pki_renew_before_days": 30}) == []


def test_an_expired_certificate_names_its_not_after_date():
    key = certs.new_key()
    cert, not_after = certs.self_signed(key, -3)
    errors = check.check_provided_certificates(_provided(cert), {"pki_renew_before_days": 30})
    assert errors == [
        f"pki_certificates[web].certificate (CN=preflight-test.internal) expired on "
        f"{not_after:%Y-%m-%d %H:%M} UTC (notAfter): get it renewed and paste the new one"
    ]


def test_a_certificate_inside_the_renewal_window_is_refused_and_the_host_setting_counts():
    cert, not_after = certs.self_signed(certs.new_key(), 10)
    errors = check.check_provided_certificates(_provided(cert), {"pki_renew_before_days": 30})
    assert len(errors) == 1
    assert f"expires on {not_after:%Y-%m-%d %H:%M} UTC (notAfter), within pki_renew_before_days (30 days)" in errors[0]
    assert check.check_provided_certificates({**_provided(cert), "pki_renew_before_days": 5}, {}) == []


def test_garbage_certificate_and_only_provided_entries_are_checked():
    host = {
        "pki_certificates": [
            {"name": "server", "common_name": "h"},
            {"name": "web", "provider": "provided", "certificate": "not a certificate"},
            {"name": "api", "provider": "provided"},
        ]
    }
    errors = check.check_provided_certificates(host, {})
    assert [e.split(" does not parse")[0] for e in errors] == [
        "pki_certificates[web].certificate",
        "pki_certificates[api].certificate",
    ]
    assert "not a certificate" not in " ".join(errors)


def test_a_key_that_does_not_match_or_parse_is_refused_without_being_shown():
    cert, _ = certs.self_signed(certs.new_key(), 200)
    other = certs.key_pem(certs.new_key())
    errors = check.check_provided_certificates({**_provided(cert), "cluster_secrets": {"web_key": other}}, {})
    assert errors == [
        "pki_certificates[web].private_key_secret: the key in secret 'web_key' (not shown) does not match the "
        "public key of the certificate (CN=preflight-test.internal): store the key the certificate was issued "
        "for, or paste the certificate of this key"
    ]
    garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n-----END PRIVATE KEY-----\n"
    errors = check.check_provided_certificates({**_provided(cert), "cluster_secrets": {"web_key": garbage}}, {})
    assert len(errors) == 1 and "does not parse as an unencrypted PEM private key" in errors[0]
    assert "c2VjcmV0LXZhbHVl" not in errors[0] and other not in errors[0]


def test_an_unreadable_or_missing_secret_says_nothing_about_matching():
    cert, _ = certs.self_signed(certs.new_key(), 200)
    other = certs.key_pem(certs.new_key())
    vault = {**_provided(cert), "cluster_secrets_backend": "hashi_vault", "cluster_secrets": {"web_key": other}}
    assert check.check_provided_certificates(vault, {}) == []
    assert check.check_provided_certificates({**_provided(cert), "cluster_secrets": {}}, {}) == []


def test_a_secret_read_only_under_one_value_of_a_setting_is_required_only_then():
    need = {"role": "vault", "group": "vault", "setting": "vault_seal_static_key_secret", "when": "vault_seal"}
    need["equals"] = "static"
    defaults = {"vault_seal": "shamir", "vault_seal_static_key_secret": "vault_seal_key"}
    groups = {"all": ["v1", "e1"], "vault": ["v1"]}
    shamir = {"cluster_secrets": {}}
    static = {"cluster_secrets": {}, "vault_seal": "static"}
    assert check.check_secrets("v1", shamir, defaults, [need], groups) == []
    assert check.check_secrets("v1", static, defaults, [need], groups) == [
        ("vault_seal_key", "vault (vault_seal_static_key_secret)")
    ]
    assert check.check_secrets("e1", static, defaults, [need], groups) == []
    present = {"cluster_secrets": {"vault_seal_key": "0" * 64}, "vault_seal": "static"}
    assert check.check_secrets("v1", present, defaults, [need], groups) == []
