"""HMAC-SHA-256 on hashlib.sha256 alone, against CPython's hmac module.

The RFC 4231 cases run under both interpreters in vectors/hmac.json; here
hypothesis compares against the stdlib for every key length around the block
size and for messages fed in parts.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac

from hypothesis import given
from hypothesis import strategies as st

from kommune.protocols.hmac_sha256 import DIGEST_BYTES, HmacKey, equal, hmac_sha256

keys = st.binary(min_size=0, max_size=200)  # below, at and above the 64-byte block
messages = st.binary(max_size=300)


@given(keys, messages)
def test_matches_stdlib_hmac(key: bytes, message: bytes) -> None:
    expected = std_hmac.new(key, message, hashlib.sha256).digest()
    assert hmac_sha256(key, message) == expected
    assert len(expected) == DIGEST_BYTES


@given(keys, st.lists(st.binary(max_size=80), max_size=6))
def test_parts_are_concatenated(key: bytes, parts: list[bytes]) -> None:
    assert HmacKey(key).digest(*parts) == hmac_sha256(key, b"".join(parts))


@given(keys, messages)
def test_key_object_is_reusable(key: bytes, message: bytes) -> None:
    k = HmacKey(key)
    assert k.digest(message) == k.digest(message) == hmac_sha256(key, message)


def test_block_size_boundary_keys_differ() -> None:
    # A 64-byte key is used as is; a 65-byte key is hashed first.
    assert hmac_sha256(b"k" * 64, b"m") != hmac_sha256(b"k" * 65, b"m")
    hashed = hashlib.sha256(b"k" * 65).digest()
    assert hmac_sha256(b"k" * 65, b"m") == hmac_sha256(hashed, b"m")


def test_repr_hides_the_key() -> None:
    assert "6b6b" not in repr(HmacKey(b"kk")) and "kk" not in repr(HmacKey(b"kk"))


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_equal_is_bytes_equality(a: bytes, b: bytes) -> None:
    assert equal(a, b) == (a == b)
    assert equal(a, a)


@given(st.binary(min_size=1, max_size=40), st.data())
def test_equal_sees_every_single_bit(a: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(a) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(a)
    flipped[i] ^= 1 << bit
    assert not equal(a, bytes(flipped))
