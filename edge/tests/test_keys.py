"""Site keys and per-lock key derivation: HKDF-SHA-256 against RFC 5869, labels, no defaults."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.edge import keys
from kommune.hil.paths import VECTORS_DIR

# RFC 5869 appendix A, the SHA-256 cases: (IKM, salt, info, L, OKM).
RFC5869 = [
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(
    ("ikm", "salt", "info", "length", "okm"), RFC5869, ids=["A.1", "A.2", "A.3"]
)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    got = keys.hkdf_sha256(
        bytes.fromhex(ikm), salt=bytes.fromhex(salt), info=bytes.fromhex(info), length=length
    )
    assert got.hex() == okm


def test_no_salt_is_hashlen_zeros() -> None:
    # RFC 5869 section 2.2: an absent salt is HashLen zero bytes (case A.3 has an empty one).
    ikm = bytes(range(32))
    assert keys.hkdf_sha256(ikm, info=b"x", length=32) == keys.hkdf_sha256(
        ikm, salt=bytes(32), info=b"x", length=32
    )


def test_info_label_names_purpose_and_lock() -> None:
    assert keys.lock_key_info("token", 1017) == b"kommune/v1/lock/token/\x00\x00\x03\xf9"
    assert keys.lock_key_info("audit", 0xFFFFFFFF).endswith(b"/audit/\xff\xff\xff\xff")


@pytest.mark.parametrize(
    ("purpose", "lock_id"), [("tokens", 1), ("", 1), ("edge", 0), ("edge", 2**32)]
)
def test_info_label_refuses_unknown_purpose_or_lock(purpose: str, lock_id: int) -> None:
    with pytest.raises(keys.KeyMaterialError):
        keys.lock_key_info(purpose, lock_id)


@given(
    st.binary(min_size=32, max_size=32).map(lambda b: hashlib.sha256(b).digest()),
    st.integers(1, 2**32 - 2),
)
def test_every_purpose_and_lock_gets_its_own_key(site_key: bytes, lock_id: int) -> None:
    mine = keys.derive_lock_keys(site_key, lock_id)
    neighbour = keys.derive_lock_keys(site_key, lock_id + 1)
    every = {mine.token_key, mine.edge_key, mine.audit_key, neighbour.token_key}
    assert len(every) == 4 and all(len(k) == keys.LOCK_KEY_BYTES for k in every)
    assert site_key not in every
    assert keys.derive_lock_keys(site_key, lock_id) == mine  # deterministic


def test_derivation_is_hkdf_with_the_label() -> None:
    site = bytes(range(0x10, 0x30))
    expected = keys.hkdf_sha256(site, info=b"kommune/v1/lock/edge/\x00\x00\x03\xf9", length=32)
    assert keys.derive_lock_key(site, "edge", 1017, test_key=True) == expected


def test_golden_vectors_use_derived_keys() -> None:
    # The keys in handshake.json are this derivation of the documented test site key.
    doc = json.loads((VECTORS_DIR / "handshake.json").read_text())
    lock = next(c for c in doc["cases"] if c["name"] == "transcript_unlock_lock_side")["args"][
        "lock"
    ]
    derived = keys.derive_lock_keys(bytes(range(0x10, 0x30)), lock["lock_id"], test_key=True)
    assert lock["token_key"] == derived.token_key.hex()
    assert lock["edge_key"] == derived.edge_key.hex()
    assert lock["audit_key"] == derived.audit_key.hex()


def test_new_site_keys_are_random() -> None:
    fresh = {keys.new_site_key() for _ in range(16)}
    assert len(fresh) == 16
    assert all(keys.check_site_key(k) == k for k in fresh)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33), bytes(32), b"\xff" * 32])
def test_placeholder_or_short_site_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(keys.KeyMaterialError):
        keys.derive_lock_keys(bad, 1017)


def test_keys_are_never_printed() -> None:
    lk = keys.derive_lock_keys(hashlib.sha256(b"printed?").digest(), 7)
    text = repr(lk)
    assert "lock_id=7" in text
    for k in (lk.token_key, lk.edge_key, lk.audit_key):
        assert k.hex() not in text and repr(k) not in text


@pytest.mark.parametrize(
    "weak",
    [
        b"changeme" * 4,  # review: accepted
        b"0123456789abcdef" * 2,  # a 16-byte pattern twice
        b"ab" * 16,
        bytes(range(32)),  # published, and a progression
        bytes(range(0x10, 0x30)),  # the golden vectors' site key (review: accepted)
        bytes(range(200, 232)),  # a progression not published
        bytes((i * 7) % 256 for i in range(32)),  # a progression with step 7
        bytes(x % 10 for x in hashlib.sha256(b"ten symbols").digest()),  # 10 distinct bytes
        b"Password1!" + b"Password2!" + b"Password3!" + b"xx",  # typed: few distinct bytes
    ],
)
def test_published_and_low_entropy_site_keys_are_refused(weak: bytes) -> None:
    assert len(weak) == 32
    with pytest.raises(keys.KeyMaterialError):
        keys.check_site_key(weak)
    with pytest.raises(keys.KeyMaterialError):
        keys.derive_lock_keys(weak, 1017)


def test_published_test_keys_need_an_explicit_test_flag() -> None:
    vector_key = bytes(range(0x10, 0x30))
    assert keys.check_site_key(vector_key, test_key=True) == vector_key
    # The flag admits the published test keys only, never a placeholder.
    for weak in (bytes(32), b"changeme" * 4):
        with pytest.raises(keys.KeyMaterialError):
            keys.check_site_key(weak, test_key=True)


def test_random_keys_pass_the_entropy_checks() -> None:
    # The checks' false-refusal rate is far below 2**-64; 2000 draws all pass.
    for _ in range(2000):
        keys.check_site_key(keys.new_site_key())
