"""Site keys and the per-lock keys derived from them (HKDF-SHA-256, RFC 5869).

Each site (one municipality deployment) has one random 32-byte site key, kept
by the edge. Every lock gets its own keys, one per purpose, derived with an
HKDF info label that names the purpose and the lock id, so the flash of one
lock reveals neither the site key nor any other lock's keys, and no key does
two jobs:

    token  the lock verifies access tokens and derives session keys with it
    edge   authenticates the edge's commands (time sync, revocation epoch)
           and its audit acks
    audit  the lock MACs its audit entries with it

There are no default keys: a site key comes from `new_site_key()` (the OS
CSPRNG) and is refused if it is obviously not random (a published test key,
a repeated short pattern, a progression, too few distinct bytes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SITE_KEY_BYTES = 32
LOCK_KEY_BYTES = 32
LOCK_KEY_PURPOSES = ("token", "edge", "audit")
# Version the label: a new derivation scheme gets new keys, never reused ones.
_INFO_PREFIX = b"kommune/v1/lock/"
_MAX_LOCK_ID = 0xFFFF_FFFF
# A random 32-byte key has ~30 distinct byte values; fewer than 16 happens
# with probability far below 2**-64.
_MIN_DISTINCT_BYTES = 16
_MAX_PATTERN_BYTES = 16  # a key that repeats a pattern this short is typed, not drawn

#: Keys published in this repository (golden vectors, tests, docs). TEST ONLY:
#: refused as site keys unless a caller says `test_key=True`, which only the
#: vector generator and the tests do.
PUBLISHED_TEST_KEYS = frozenset(
    {
        bytes(range(0x10, 0x30)),  # the golden vectors' site key (LOCK.md)
        bytes(range(32)),
        bytes(range(32, 64)),
        bytes(range(64, 96)),
    }
)


class KeyMaterialError(ValueError):
    """A key or key-derivation input that must not be used."""


def new_site_key() -> bytes:
    """A fresh random site key (store it in the site keystore, never in code)."""
    return secrets.token_bytes(SITE_KEY_BYTES)


def check_site_key(site_key: bytes, *, test_key: bool = False) -> bytes:
    """The site key, if it is 32 bytes and looks drawn, not typed.

    Refused: one repeated byte, a short repeated pattern (b"changeme" * 4),
    an arithmetic progression (bytes(range(32))), fewer than 16 distinct
    bytes, and the keys published in this repository, unless test_key=True
    (the golden-vector generator and tests only; never in a deployment).
    """
    if len(site_key) != SITE_KEY_BYTES:
        raise KeyMaterialError(f"site key is {len(site_key)} bytes, need {SITE_KEY_BYTES}")
    key = bytes(site_key)
    if len(set(key)) == 1:
        raise KeyMaterialError("site key is one repeated byte: a placeholder, not a random key")
    if test_key and key in PUBLISHED_TEST_KEYS:
        return key
    if key in PUBLISHED_TEST_KEYS:
        raise KeyMaterialError("site key is a published test key: generate one (new_site_key)")
    for period in range(1, _MAX_PATTERN_BYTES + 1):
        if key[period:] == key[:-period]:
            raise KeyMaterialError(f"site key repeats a {period}-byte pattern: not a random key")
    steps = {(key[i + 1] - key[i]) % 256 for i in range(len(key) - 1)}
    if len(steps) == 1:
        raise KeyMaterialError("site key is a progression of bytes: not a random key")
    if len(set(key)) < _MIN_DISTINCT_BYTES:
        raise KeyMaterialError(
            f"site key has {len(set(key))} distinct bytes (random keys have ~30): not random"
        )
    return key


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-SHA-256 extract-and-expand (RFC 5869); salt None means HashLen zeros."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def lock_key_info(purpose: str, lock_id: int) -> bytes:
    """HKDF info label: b"kommune/v1/lock/<purpose>/" + lock id (u32, big-endian)."""
    if purpose not in LOCK_KEY_PURPOSES:
        raise KeyMaterialError(
            f"unknown key purpose {purpose!r}; one of {', '.join(LOCK_KEY_PURPOSES)}"
        )
    if not 1 <= lock_id <= _MAX_LOCK_ID:
        raise KeyMaterialError(f"lock id {lock_id} is not in 1..{_MAX_LOCK_ID}")
    return _INFO_PREFIX + purpose.encode() + b"/" + lock_id.to_bytes(4, "big")


def derive_lock_key(
    site_key: bytes, purpose: str, lock_id: int, *, test_key: bool = False
) -> bytes:
    """One 32-byte key for one purpose on one lock.

    No salt: the input key is already 32 uniformly random bytes, so HKDF's
    extract step needs none (RFC 5869, section 3.1); the info label alone
    separates purposes and locks.
    """
    info = lock_key_info(purpose, lock_id)
    checked = check_site_key(site_key, test_key=test_key)
    return hkdf_sha256(checked, info=info, length=LOCK_KEY_BYTES)


@dataclass(frozen=True)
class LockKeys:
    """Everything one lock is provisioned with (its keys are never printed)."""

    lock_id: int
    token_key: bytes = field(repr=False)
    edge_key: bytes = field(repr=False)
    audit_key: bytes = field(repr=False)


def derive_lock_keys(site_key: bytes, lock_id: int, *, test_key: bool = False) -> LockKeys:
    """A lock's three keys (test_key: see check_site_key; tests and vectors only)."""
    return LockKeys(
        lock_id=lock_id,
        token_key=derive_lock_key(site_key, "token", lock_id, test_key=test_key),
        edge_key=derive_lock_key(site_key, "edge", lock_id, test_key=test_key),
        audit_key=derive_lock_key(site_key, "audit", lock_id, test_key=test_key),
    )
