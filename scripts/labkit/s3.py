"""S3 clients for the lab's object storage (roles/object_storage): the lab tests and
scripts/bench_s3.py use them, with the identities' keys from the lab's secrets and the
cluster CA copied from the storage host (labkit.pki)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import yaml
from botocore.config import Config

from . import secrets, topology
from .layout import INVENTORY, VAULT_PASS

SECRETS_FILE = INVENTORY / "group_vars" / "all" / "secrets.vault.yml"


def storage_host(topo: topology.Topology) -> str:
    return next(h.name for h in topo.hosts if "storage" in h.groups)


def keys() -> dict[str, dict[str, str]]:
    """uid -> {access_key, secret_key}, from the lab's encrypted secrets."""
    return dict(secrets.read_secrets(VAULT_PASS, SECRETS_FILE)["object_storage_s3_keys"])


def client(topo: topology.Topology, uid: str, ca: Path, **config: Any) -> Any:
    """A boto3 S3 client of identity `uid` against the lab's gateway, TLS verified.

    Checksums only where S3 requires them: boto3 since 1.36 adds CRC trailers to every
    upload by default, which Ceph before Reef does not accept."""
    address = next(h.address for h in topo.hosts if h.name == storage_host(topo))
    catalogue = yaml.safe_load((INVENTORY / "group_vars" / "all" / "services.yml").read_text())["cluster_services"]
    key = keys()[uid]
    return boto3.client(
        "s3",
        endpoint_url=f"https://{address}:{catalogue['object_storage']['port']}",
        aws_access_key_id=key["access_key"],
        aws_secret_access_key=key["secret_key"],
        verify=str(ca),
        region_name="default",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            **config,
        ),
    )
