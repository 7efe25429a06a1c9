# HMAC-SHA-256 (RFC 2104, FIPS 198-1) built on hashlib.sha256 alone:
# MicroPython has no hmac module, and the lock and the edge must share one
# implementation. Checked against the RFC 4231 test cases under both
# interpreters (protocols/vectors/hmac.json).
import hashlib

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

_BLOCK_BYTES = const(64)  # SHA-256 block size
# The pads as 512-bit ints: XOR-ing the key as one int is ~3x faster on
# MicroPython than a byte-by-byte loop.
_IPAD = int.from_bytes(b"\x36" * 64, "big")
_OPAD = int.from_bytes(b"\x5c" * 64, "big")

DIGEST_BYTES = const(32)


class HmacKey:
    # A key with its two padded blocks computed once: the lock MACs many
    # messages under the same few keys.
    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        k = int.from_bytes(key + bytes(_BLOCK_BYTES - len(key)), "big")
        self._inner = (k ^ _IPAD).to_bytes(_BLOCK_BYTES, "big")
        self._outer = (k ^ _OPAD).to_bytes(_BLOCK_BYTES, "big")

    def digest(self, *parts: "bytes | bytearray | memoryview") -> bytes:
        # HMAC over the concatenation of parts, without building it.
        inner = hashlib.sha256(self._inner)
        for part in parts:
            inner.update(part)
        outer = hashlib.sha256(self._outer)
        outer.update(inner.digest())
        return outer.digest()

    def same(self, other: "HmacKey") -> bool:
        # The same key (for refusing one key in two roles); not constant-time.
        return self._inner == other._inner

    def __repr__(self) -> str:
        return "HmacKey(<secret>)"


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return HmacKey(key).digest(message)


def equal(a: bytes, b: bytes) -> bool:
    # Constant-time for equal lengths: no early exit on the first differing
    # byte, so a forger learns nothing from timing. Lengths are public.
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
