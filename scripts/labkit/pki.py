"""The cluster CA certificate (roles/pki) on the controller: the one way the lab's tools and
tests copy it from a lab host, for clients that verify the lab's TLS (the edge, the S3
gateway, Vault).

Every host has it as <pki_dir>/ca.crt once the pki role ran. Where the copies live: `scripts/lab
summary` keeps one as .lab/ca.crt (layout.CA_COPY); `scripts/lab vault` keeps one per lab
inventory as .lab/vault/<inventory>/cluster-ca.crt (vault.State.ca_copy), which the Vault
lookup of that inventory reads (inventories/lab/group_vars/all/secrets.yml: ca_cert).
"""

from __future__ import annotations

from pathlib import Path

from . import topology
from .shell import LabError, run

HOST_CA = "/etc/ssl/cluster/ca.crt"  # roles/pki: <pki_dir>/ca.crt, on every host


def fetch_ca(topo: topology.Topology, host: str, dest: Path) -> Path:
    """The CA certificate of lab host `host`, written to `dest`; LabError when the host has
    none yet (the site not converged) or what it has is not a certificate."""
    proc = run(["docker", "exec", topo.container(host), "cat", HOST_CA], check=False)
    if proc.returncode != 0 or "BEGIN CERTIFICATE" not in proc.stdout:
        raise LabError(f"{host}: no CA certificate at {HOST_CA}: converge the lab first (make lab-converge)")
    dest.write_text(proc.stdout)
    return dest
