"""The vault role's PGP filters: keyholders' keys checked and converted for sys/init."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError
from conftest import load_plugin

plugin = load_plugin("plugins/filter/vault_pgp.py")
ROOT = Path(__file__).resolve().parents[2]
# A TEST key (ed25519 + cv25519), made for these tests only; its secret half was discarded.
ARMORED = (ROOT / "tests" / "fixtures" / "pgp" / "test-keyholder.pub.asc").read_text()


def test_armored_key_becomes_the_base64_of_its_binary_form():
    b64 = plugin.vault_pgp_b64(ARMORED)
    binary = base64.b64decode(b64)
    assert binary[0] & 0x80 and (binary[0] & 0x3F if binary[0] & 0x40 else (binary[0] >> 2) & 0x0F) == 6
    assert "\n" not in b64


def test_armor_headers_are_skipped():
    with_headers = ARMORED.replace(
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n", "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: keyholder 1\n"
    )
    assert plugin.vault_pgp_b64(with_headers) == plugin.vault_pgp_b64(ARMORED)


def test_good_keyholders_have_no_problems():
    holders = [{"name": "a", "pgp_public_key": ARMORED}, {"name": "b", "pgp_public_key": ARMORED}]
    assert plugin.vault_keyholder_problems(holders, 2) == []


@pytest.mark.parametrize(
    ("holders", "threshold", "expected"),
    [
        ([], 1, "vault_keyholders is empty"),
        ([{"name": "a", "pgp_public_key": "ssh-ed25519 AAAA"}], 1, "'a': pgp_public_key is not an ASCII-armored"),
        (
            [
                {
                    "name": "a",
                    "pgp_public_key": ARMORED.replace(
                        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!"
                    ),
                }
            ],
            1,
            "body that is not base64",
        ),
        (
            [{"name": "a", "pgp_public_key": ARMORED}, {"name": "a", "pgp_public_key": ARMORED}],
            1,
            "names must be unique",
        ),
        (
            [{"name": "a", "pgp_public_key": ARMORED}],
            2,
            "vault_key_threshold is 2: it must be between 1 and the number",
        ),
        ([{"pgp_public_key": ARMORED}], 1, "needs a name"),
    ],
)
def test_bad_keyholders_are_named_with_the_fix(holders, threshold, expected):
    problems = plugin.vault_keyholder_problems(holders, threshold)
    assert any(expected in p for p in problems), problems


def test_a_private_key_is_refused():
    private = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + base64.b64encode(bytes([0xC5, 1, 2, 3])).decode()
    private += "\n-----END PGP PUBLIC KEY BLOCK-----\n"
    with pytest.raises(AnsibleFilterError, match="does not start with a public-key packet"):
        plugin.vault_pgp_b64(private)
