"""Filters of the vault role: the keyholders' PGP public keys, checked and in the form init wants.

Vault/OpenBao's `sys/init` takes each PGP public key as the base64 of its binary (unarmored)
form. An ASCII-armored key's body is exactly that base64, so no gpg is needed on the
controller: the armor lines are dropped, the body is decoded to check that it starts with a
public-key packet, and re-encoded on one line.

`vault_keyholders | vault_keyholder_problems` lists what is wrong (for the role's start-of-role
check and preflight); `armored | vault_pgp_b64` converts one key (and fails on a bad one).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ansible.errors import AnsibleFilterError

BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
END = "-----END PGP PUBLIC KEY BLOCK-----"
PUBLIC_KEY_PACKET = 6


def _packet_tag(first: int) -> int | None:
    if not first & 0x80:
        return None
    return first & 0x3F if first & 0x40 else (first >> 2) & 0x0F


def _decode(armored: Any) -> bytes:
    if not isinstance(armored, str) or BEGIN not in armored or END not in armored:
        raise ValueError(f"is not an ASCII-armored PGP public key (no '{BEGIN}' ... '{END}')")
    body = armored.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()
    # Armor headers (Version:, Comment:) end at the first empty line, if there are any.
    if any(not line.strip() for line in body):
        body = body[next(i for i, line in enumerate(body) if not line.strip()) + 1 :]
    lines = [line.strip() for line in body if line.strip() and not line.strip().startswith("=")]
    try:
        data = base64.b64decode("".join(lines), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"has a body that is not base64 ({exc})") from exc
    if not data or _packet_tag(data[0]) != PUBLIC_KEY_PACKET:
        raise ValueError("does not start with a public-key packet (a private key, or not a key at all?)")
    return data


def vault_pgp_b64(armored: Any) -> str:
    """The base64 of the binary key, as sys/init's pgp_keys and root_token_pgp_key want it."""
    try:
        return base64.b64encode(_decode(armored)).decode()
    except ValueError as exc:
        raise AnsibleFilterError(f"PGP public key {exc}") from exc


def vault_keyholder_problems(keyholders: Any, threshold: Any = None) -> list[str]:
    """Everything wrong with vault_keyholders (and vault_key_threshold), one message each."""
    if not isinstance(keyholders, list) or not keyholders:
        return ["vault_keyholders is empty: list the keyholders as {name, pgp_public_key} (ASCII-armored)"]
    problems, names = [], []
    for i, holder in enumerate(keyholders):
        if not isinstance(holder, dict) or not holder.get("name"):
            problems.append(f"vault_keyholders[{i}] needs a name and a pgp_public_key")
            continue
        names.append(holder["name"])
        try:
            _decode(holder.get("pgp_public_key"))
        except ValueError as exc:
            problems.append(
                f"vault_keyholders '{holder['name']}': pgp_public_key {exc}; "
                f"export it with `gpg --armor --export KEYID`"
            )
    if len(set(names)) != len(names):
        problems.append(f"vault_keyholders: names must be unique, got {names}")
    if threshold is not None and not (isinstance(threshold, int) and 1 <= threshold <= len(keyholders)):
        problems.append(
            f"vault_key_threshold is {threshold!r}: it must be between 1 and the number of keyholders "
            f"({len(keyholders)}), one share each"
        )
    return problems


class FilterModule:
    def filters(self) -> dict:
        return {"vault_pgp_b64": vault_pgp_b64, "vault_keyholder_problems": vault_keyholder_problems}
