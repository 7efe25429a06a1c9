# Sealing: authenticated encryption on HMAC-SHA-256 alone, for what must not
# cross the air in clear (a token's fields, audit batches). MicroPython has
# hashlib.sha256 everywhere but AES-CTR only on some ports (cryptolib's unix
# port here offers ECB and CBC), so the cipher is HMAC-SHA-256 in counter
# mode, and the construction is SIV (RFC 5297's scheme, with HMAC as PRF):
#
#     tag        = HMAC(mac key, label || ad || head || plaintext)[:16]
#     keystream  = HMAC(enc key, tag || u32(0)) || HMAC(enc key, tag || u32(1)) || ...
#     sealed     = head || tag || plaintext XOR keystream
#
# The tag is the IV: no nonce to carry or to get wrong (the same plaintext
# gives the same bytes, nothing more), and the plaintext is authenticated
# before anyone acts on it. Encryption and MAC use different keys, both from
# one 32-byte key: the MAC key is the key itself (each use with its own
# label), the encryption key is HMAC(key, "ENC2"). Layout: protocols/LOCK.md.
from kommune.protocols.errors import BAD_TAG, ProtocolError
from kommune.protocols.hmac_sha256 import HmacKey, equal
from kommune.protocols.lock_wire import TAG_BYTES, lock_key, u32

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

_BLOCK_BYTES = const(32)  # one HMAC-SHA-256 output of keystream
ENC_KEY_LABEL = b"ENC2"


class SealKey:
    # A lock key split into its MAC and encryption halves (computed once).
    def __init__(self, key: bytes) -> None:
        self.mac = lock_key(key)
        self.enc = HmacKey(self.mac.digest(ENC_KEY_LABEL))

    def __repr__(self) -> str:
        return "SealKey(<secret>)"


def xor_stream(enc: HmacKey, iv: bytes, buf: bytearray, start: int) -> None:
    # buf[start:] ^= keystream(iv), in place (no copy of a long buffer).
    block = 0
    pos = start
    end = len(buf)
    while pos < end:
        ks = enc.digest(iv, u32(block))
        stop = min(end, pos + _BLOCK_BYTES)
        for i in range(pos, stop):
            buf[i] ^= ks[i - pos]
        pos = stop
        block += 1


def seal(key: SealKey, label: bytes, ad: bytes, head: bytes, plaintext: bytes) -> bytes:
    # head || tag || ciphertext. ad: bound to the tag, not sent (e.g. lock id).
    tag = key.mac.digest(label, ad, head, plaintext)[:TAG_BYTES]
    out = bytearray(head)
    out.extend(tag)
    out.extend(plaintext)
    xor_stream(key.enc, tag, out, len(head) + TAG_BYTES)
    return bytes(out)


def unseal(key: SealKey, label: bytes, ad: bytes, data: bytes, head_bytes: int) -> bytearray:
    # The plaintext of seal(...)'s output (head_bytes long head), or bad_tag.
    # The caller has checked the size.
    tag = bytes(data[head_bytes : head_bytes + TAG_BYTES])
    plain = bytearray(data[head_bytes + TAG_BYTES :])
    xor_stream(key.enc, tag, plain, 0)
    if not equal(key.mac.digest(label, ad, data[:head_bytes], plain)[:TAG_BYTES], tag):
        raise ProtocolError(BAD_TAG, "sealed message tag")
    return plain
