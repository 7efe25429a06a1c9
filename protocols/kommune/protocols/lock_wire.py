# Numbers and field checks shared by the lock protocol modules (token,
# handshake, lock_verifier, audit). Byte layouts: protocols/LOCK.md.
import struct

from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_PROOF,
    BAD_TAG,
    BAD_VALUE,
    BAD_VERSION,
    CLOCK_STALE,
    EXPIRED,
    MECHANISM_FAULT,
    NO_RIGHT,
    NOT_YET_VALID,
    RATE_LIMITED,
    REPLAY,
    REVOKED,
    TOO_LATE,
    TOO_LONG,
    TRUNCATED,
    UNKNOWN_TYPE,
    UNPROVISIONED,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

VERSION = const(2)  # of the token and of the lock's BLE messages (2: sealed tokens)
KEY_BYTES = const(32)  # every lock key: token, edge, audit, session
NONCE_BYTES = const(16)
TAG_BYTES = const(16)  # truncated HMAC-SHA-256 (LOCK.md: why 128 bits)

# Message types: the first byte of every message on the lock's BLE characteristic.
MSG_CHALLENGE = const(0x01)  # lock -> holder/edge
MSG_REQUEST = const(0x02)  # holder -> lock: token + proof
MSG_RESULT = const(0x03)  # lock -> holder/edge: status, MAC'd
MSG_NOTICE = const(0x04)  # lock -> anyone: status, not MAC'd (no key to MAC with)
MSG_COMMAND = const(0x05)  # edge -> lock: time set / epoch set
MSG_AUDIT_ACK = const(0x06)  # edge -> lock (maybe carried by a phone)
MSG_AUDIT_BATCH = const(0x07)  # lock -> collector
MSG_CHALLENGE_REQUEST = const(0x08)  # peer -> lock: "send me a CHALLENGE" (no event on subscribe)
MSG_DENY_LIST = const(0x09)  # edge -> lock (maybe carried by a phone): sealed, versioned deny-list

# Rights in a token; a request's op is exactly one of them.
RIGHT_UNLOCK = const(0x01)
RIGHT_LOCK = const(0x02)
RIGHT_READ_AUDIT = const(0x04)
RIGHT_ADMIN = const(0x08)
RIGHTS_ALL = const(0x0F)

# Edge commands (the op of a MSG_COMMAND).
CMD_TIME_SET = const(0x01)
CMD_EPOCH_SET = const(0x02)
# The op of the audit entry (event 2, command) for an accepted deny-list; not a COMMAND cmd.
CMD_DENY_SET = const(0x03)

OK = "ok"
# Status byte on the wire -> reason. Append only: the index is the wire value.
STATUSES = (
    OK,
    TRUNCATED,
    TOO_LONG,
    BAD_LENGTH,
    BAD_VERSION,
    UNKNOWN_TYPE,
    BAD_VALUE,
    BAD_TAG,
    BAD_PROOF,
    WRONG_LOCK,
    EXPIRED,
    NOT_YET_VALID,
    REVOKED,
    REPLAY,
    RATE_LIMITED,
    TOO_LATE,
    NO_RIGHT,
    CLOCK_STALE,
    MECHANISM_FAULT,
    UNPROVISIONED,
)


class Message:
    # A message with encode(): equal when its bytes are (one __eq__ for all of
    # them, as the lock carries every method it loads). Mutable, so unhashable.
    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.encode() == other.encode()


def status_code(reason: str) -> int:
    # A reason outside the table (none today) goes out as bad_value.
    for i in range(len(STATUSES)):
        if STATUSES[i] == reason:
            return i
    return status_code(BAD_VALUE)


def status_reason(code: int) -> str:
    if code >= len(STATUSES):
        raise ProtocolError(BAD_VALUE, "status %d unknown" % code)
    return STATUSES[code]


def is_op(op: int) -> bool:
    # One right bit: a request asks for exactly one thing.
    return op != 0 and op & RIGHTS_ALL == op and op & (op - 1) == 0


def check_type(data: bytes, msg_type: int, size: int) -> None:
    # Exact-size message starting with msg_type, else a clean error.
    if not data:
        raise ProtocolError(TRUNCATED, "empty message")
    if data[0] != msg_type:
        raise ProtocolError(UNKNOWN_TYPE, "type 0x%02x, expected 0x%02x" % (data[0], msg_type))
    check_size(data, size)


def check_size(data: "bytes | bytearray", size: int) -> None:
    if len(data) < size:
        raise ProtocolError(TRUNCATED, "%d bytes, need %d" % (len(data), size))
    if len(data) > size:
        raise ProtocolError(TOO_LONG, "%d bytes, expected %d" % (len(data), size))


def check_uint(name: str, value: int, bits: int) -> int:
    # struct.pack on MicroPython wraps out-of-range values silently.
    if not 0 <= value < (1 << bits):
        raise ProtocolError(BAD_VALUE, "%s=%r is not a u%d" % (name, value, bits))
    return value


def check_bytes(name: str, value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ProtocolError(BAD_LENGTH, "%s is %d bytes, need %d" % (name, len(value), size))
    return bytes(value)


def lock_key(key: bytes) -> HmacKey:
    # Every key the lock protocol uses is 32 random bytes; nothing shorter,
    # and never a placeholder such as all zeros (one repeated byte).
    check_bytes("key", key, KEY_BYTES)
    diff = 0
    for b in key:
        diff |= b ^ key[0]
    if not diff:
        raise ProtocolError(BAD_VALUE, "key is one repeated byte: not provisioned")
    return HmacKey(key)


def check_distinct(*keys: HmacKey) -> None:
    # The lock's purpose keys (token, edge, audit) are three different keys:
    # one key in every slot would let a holder's token key forge commands.
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if keys[i].same(keys[j]):
                raise ProtocolError(BAD_VALUE, "two purpose keys are the same key")


def u32(value: int) -> bytes:
    return struct.pack(">I", value)
