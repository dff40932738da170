"""Filters of the backup role: per-host repository passwords, and the files the backup
program reads (plugins run on the controller; the program on the host reads plain JSON)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError


def backup_repository_password(site_key: Any, host: str) -> str:
    """This host's repository password: HMAC-SHA256 of the site's backup key and the host's
    name. A host holds only its own; the controller derives any host's for a restore."""
    key = str(site_key or "")
    if len(key) < 32:
        raise AnsibleFilterError(
            "the backup key (backup_password_secret) must have at least 32 characters: generate one with "
            "`openssl rand -base64 48`"
        )
    return hmac.new(key.encode(), f"restic-repository:{host}".encode(), hashlib.sha256).hexdigest()


def backup_set_file(backup_set: Mapping[str, Any]) -> dict[str, Any]:
    """What the backup program reads for one set (sets/<name>.json)."""
    return {
        "name": f"sets/{backup_set['name']}",
        "content": {
            "paths": list(backup_set.get("paths") or []),
            "exclude": list(backup_set.get("exclude") or []),
            "before": str(backup_set.get("before") or ""),
            "after": str(backup_set.get("after") or ""),
            "after_restore": str(backup_set.get("after_restore") or ""),
            "keep": dict(backup_set.get("keep") or {}),
        },
    }


def backup_copy_repositories(copies: Any, host: str) -> list[dict[str, str]]:
    """The copy repositories of this host ({host} replaced by its name)."""
    return [{"name": str(c["name"]), "repository": str(c["repository"]).replace("{host}", host)} for c in copies or []]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "backup_repository_password": backup_repository_password,
            "backup_set_file": backup_set_file,
            "backup_copy_repositories": backup_copy_repositories,
        }
