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
CSPRNG) and is refused if it is obviously not random.
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


class KeyMaterialError(ValueError):
    """A key or key-derivation input that must not be used."""


def new_site_key() -> bytes:
    """A fresh random site key (store it in the site keystore, never in code)."""
    return secrets.token_bytes(SITE_KEY_BYTES)


def check_site_key(site_key: bytes) -> bytes:
    """The site key, if it is 32 bytes and not a placeholder such as all zeros."""
    if len(site_key) != SITE_KEY_BYTES:
        raise KeyMaterialError(f"site key is {len(site_key)} bytes, need {SITE_KEY_BYTES}")
    if len(set(site_key)) == 1:
        raise KeyMaterialError("site key is one repeated byte: a placeholder, not a random key")
    return bytes(site_key)


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


def derive_lock_key(site_key: bytes, purpose: str, lock_id: int) -> bytes:
    """One 32-byte key for one purpose on one lock.

    No salt: the input key is already 32 uniformly random bytes, so HKDF's
    extract step needs none (RFC 5869, section 3.1); the info label alone
    separates purposes and locks.
    """
    info = lock_key_info(purpose, lock_id)
    return hkdf_sha256(check_site_key(site_key), info=info, length=LOCK_KEY_BYTES)


@dataclass(frozen=True)
class LockKeys:
    """Everything one lock is provisioned with (its keys are never printed)."""

    lock_id: int
    token_key: bytes = field(repr=False)
    edge_key: bytes = field(repr=False)
    audit_key: bytes = field(repr=False)


def derive_lock_keys(site_key: bytes, lock_id: int) -> LockKeys:
    return LockKeys(
        lock_id=lock_id,
        token_key=derive_lock_key(site_key, "token", lock_id),
        edge_key=derive_lock_key(site_key, "edge", lock_id),
        audit_key=derive_lock_key(site_key, "audit", lock_id),
    )
