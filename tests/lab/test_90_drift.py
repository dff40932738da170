"""Drift: a manual change shows in `--check --diff` exactly, and a per-role run repairs it.

Runs last: it changes hosts by hand.
"""

from __future__ import annotations

from conftest import Lab, _summary

SYSCTL_FILE = "/etc/sysctl.d/60-cluster-tuning.conf"
SYSCTL_TASK = "os_tuning : OS tuning | Kernel settings, login and service limits, boot-time tuning script and unit"
SSHD_TASK = "ssh_hardening : SSH hardening | sshd configuration (sshd -t tests it first) and its unit drop-in"
SSHD_HANDLERS = {"ssh_hardening : Reload the systemd manager for sshd", "ssh_hardening : Reload sshd"}


def test_check_diff_reports_exactly_the_drift_and_tags_repair_it(converged: Lab):
    gpu, edge = converged.hosts("gpu_nodes")[0], converged.hosts("edge")[0]
    converged.exec(gpu, f"sed -i 's/^vm.swappiness = 1$/vm.swappiness = 60/' {SYSCTL_FILE}")
    converged.exec(edge, "sed -i 's/^MaxAuthTries 3$/MaxAuthTries 6/' /etc/ssh/sshd_config")

    check = converged.playbook("--check", "--diff")
    assert check.rc == 0, _summary(check)
    changed = check.changed_tasks()
    assert set(changed) == {gpu, edge}, changed
    assert changed[gpu] == [SYSCTL_TASK]
    assert SSHD_TASK in changed[edge] and set(changed[edge]) <= {SSHD_TASK} | SSHD_HANDLERS
    # Check mode changed nothing.
    assert "vm.swappiness = 60" in converged.exec(gpu, f"cat {SYSCTL_FILE}").stdout

    fix_sysctl = converged.playbook("--tags", "os_tuning", "--limit", gpu)
    fix_sshd = converged.playbook("--tags", "ssh_hardening", "--limit", edge)
    assert fix_sysctl.rc == 0 and fix_sshd.rc == 0, _summary(fix_sysctl) + _summary(fix_sshd)
    assert fix_sysctl.changed_tasks() == {gpu: [SYSCTL_TASK]}
    assert SSHD_TASK in fix_sshd.changed_tasks()[edge]

    assert "vm.swappiness = 1" in converged.exec(gpu, f"cat {SYSCTL_FILE}").stdout.splitlines()
    assert "MaxAuthTries 3" in converged.exec(edge, "cat /etc/ssh/sshd_config").stdout.splitlines()
    effective = converged.exec(edge, "sshd -T -C user=labadmin,host=x,addr=127.0.0.1").stdout
    assert "maxauthtries 3" in effective.splitlines()

    # The two hosts report no drift left (the full check above showed the others had none).
    after = converged.playbook("--check", "--limit", f"{gpu},{edge}")
    assert after.rc == 0 and after.changed_tasks() == {}, after.changed_tasks()
