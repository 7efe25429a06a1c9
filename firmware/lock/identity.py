# The lock's identity and keys, written by `kommune provision lock` over the
# raw REPL: /lock/identity.json (format: README.md). Without it, or with keys
# that are not keys, the lock is unprovisioned and opens for no one.
import binascii
import json

from micropython import const

PATH = "/lock/identity.json"
_VERSION = const(1)
_KEY_BYTES = const(32)


class Identity:
    def __init__(
        self, lock_id: int, site_id: str, token_key: bytes, edge_key: bytes, audit_key: bytes
    ) -> None:
        self.lock_id = lock_id
        self.site_id = site_id
        self.token_key = token_key
        self.edge_key = edge_key
        self.audit_key = audit_key


def _key(doc: dict, name: str) -> bytes:
    key = binascii.unhexlify(doc[name])
    if len(key) != _KEY_BYTES:
        raise ValueError(name + " is not 32 bytes")
    return bytes(key)


def load(path: str = PATH) -> "tuple[Identity | None, str]":
    # (identity, "") or (None, why the lock is unprovisioned). The key checks
    # that matter (not one repeated byte, three different keys) are the
    # protocol's: LockVerifier and AuditLog refuse such keys at start.
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError:
        return None, "no identity"
    except ValueError:
        return None, "identity unreadable"
    try:
        if doc["version"] != _VERSION:
            return None, "identity version"
        lock_id = int(doc["lock_id"])
        if not 0 < lock_id <= 0xFFFFFFFF:
            return None, "bad lock id"
        ident = Identity(
            lock_id,
            str(doc.get("site_id", "")),
            _key(doc, "token_key"),
            _key(doc, "edge_key"),
            _key(doc, "audit_key"),
        )
    except (KeyError, ValueError, TypeError):
        return None, "identity malformed"
    return ident, ""
