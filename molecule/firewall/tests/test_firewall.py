"""The zone firewall on four hosts, seen over the network: real TCP and SSH between the hosts
and from the controller (molecule's own `docker exec` connection is used only to set things up
and to look at the rules).

Verify only reads: it runs after the side_effect step (tamper_firewall.py: refusals, the
rollback over real SSH, Docker and host restarts), so the zone matrix here also shows that
those left every host as converged. Drift and its repair: tests/lab/test_20_firewall.py.
"""

from __future__ import annotations

from conftest import ADDRESS, CONTROLLER, HOSTS, SSH_OPTS, matrix, our_rules, sh, ssh_from_controller


def test_zone_matrix_every_zone_to_every_other_both_directions(listeners):
    assert matrix([*HOSTS, CONTROLLER], HOSTS) == []


def test_the_published_port_is_the_container_behind_docker_user(listeners):
    # The edge gets the container's answer through Docker's DNAT...
    fetch = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://172.30.4.21:8000/', timeout=5).read().decode())\""  # noqa: E501
    assert sh("fw-edge", fetch).stdout.strip() == "served-by-container"
    # ...and the client is stopped in DOCKER-USER (INPUT never sees published ports).
    rules = our_rules("fw-gpu")
    assert "-A DOCKER-USER -j CLUSTER-FW-DOCKER" in rules
    assert any("--ctorigdstport 8000:8015" in r and "172.30.4.11/32" in r for r in rules)


def test_ssh_rate_limit_fourth_new_connection_in_a_minute_is_dropped():
    """From the client (allowed, not exempt): real SSH logins 1-3 work, the 4th is dropped."""
    sh("fw-edge", "echo / > /proc/net/xt_recent/cluster_fw_ssh")  # forget the matrix's probes
    ssh = f"ssh {SSH_OPTS} -o ConnectTimeout=4 -i /root/fw_key labadmin@{ADDRESS['fw-edge']} true"
    try:
        outcomes = [sh("fw-client", ssh, check=False).returncode for _ in range(4)]
        late = sh("fw-client", ssh, check=False)
    finally:
        sh("fw-edge", "echo / > /proc/net/xt_recent/cluster_fw_ssh")
    assert outcomes[:3] == [0, 0, 0], outcomes
    assert outcomes[3] != 0
    assert "timed out" in late.stderr, late.stderr
    # The controller (admin network, exempt) is never counted: many logins in a row work.
    assert [ssh_from_controller("fw-edge").returncode for _ in range(6)] == [0] * 6
