# The lock's BLE handshake messages and their MACs, shared by the lock's side
# (kommune.protocols.lock_verifier) and its clients' (kommune.protocols.
# lock_client: a staff phone, `kommune unlock`, the edge). Byte layouts:
# protocols/LOCK.md.
#
#   lock  -> peer  CHALLENGE  fresh nonce, lock clock, lock id, epoch
#   peer  -> lock  REQUEST    op, both nonces, sealed token, proof (session key)
#               or COMMAND    time/epoch, both nonces, MAC (edge key)
#   lock  -> peer  RESULT     status, MAC'd with the same key
#               or NOTICE     status, unauthenticated (the peer proved no key)
import struct

from kommune.protocols import token as tokens
from kommune.protocols.errors import (
    BAD_VALUE,
    BAD_VERSION,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_CHALLENGE,
    MSG_COMMAND,
    MSG_NOTICE,
    MSG_REQUEST,
    MSG_RESULT,
    NONCE_BYTES,
    TAG_BYTES,
    VERSION,
    check_bytes,
    check_type,
    check_uint,
    is_op,
    status_code,
    status_reason,
    u32,
)

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

CHALLENGE_BYTES = const(30)
REQUEST_BYTES = const(92)
RESULT_BYTES = const(20)
NOTICE_BYTES = const(3)
COMMAND_BYTES = const(54)
PROOF_AT = const(76)  # a REQUEST's proof covers the bytes before it
COMMAND_MAC_AT = const(38)  # likewise a COMMAND's MAC
RESULT_HEAD_BYTES = const(4)  # the RESULT bytes its MAC covers

_LABEL_PROOF = b"PRF1"
_LABEL_COMMAND = b"CMD1"
_LABEL_RESULT = b"RES1"


class Challenge:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, lock_id: int, clock_s: int, epoch: int, nonce: bytes) -> None:
        self.lock_id = lock_id
        self.clock_s = clock_s  # lock clock, site time seconds: lets peers see skew
        self.epoch = epoch  # lock's revocation epoch: a holder sees a revoked token early
        self.nonce = nonce

    def encode(self) -> bytes:
        check_uint("lock_id", self.lock_id, 32)
        check_uint("clock_s", self.clock_s, 32)
        check_uint("epoch", self.epoch, 32)
        head = struct.pack(">BBIII", MSG_CHALLENGE, VERSION, self.lock_id, self.clock_s, self.epoch)
        return head + check_bytes("nonce", self.nonce, NONCE_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Challenge) and self.encode() == other.encode()


class Request:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, op: int, lock_nonce: bytes, holder_nonce: bytes, token: bytes, proof: bytes):
        self.op = op  # one RIGHT_* bit
        self.lock_nonce = lock_nonce  # echoed: names the challenge answered
        self.holder_nonce = holder_nonce
        self.token = token  # raw token bytes; the lock authenticates them
        self.proof = proof

    def body(self) -> bytes:
        if not is_op(check_uint("op", self.op, 8)):
            raise ProtocolError(BAD_VALUE, "op 0x%02x is not one right" % self.op)
        return (
            bytes((MSG_REQUEST, self.op))
            + check_bytes("lock_nonce", self.lock_nonce, NONCE_BYTES)
            + check_bytes("holder_nonce", self.holder_nonce, NONCE_BYTES)
            + check_bytes("token", self.token, tokens.TOKEN_BYTES)
        )

    def encode(self) -> bytes:
        return self.body() + check_bytes("proof", self.proof, TAG_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self.encode() == other.encode()


class Command:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, cmd: int, lock_nonce: bytes, edge_nonce: bytes, value: int, mac: bytes):
        self.cmd = cmd  # CMD_TIME_SET (value: site time s) or CMD_EPOCH_SET (value: epoch)
        self.lock_nonce = lock_nonce
        self.edge_nonce = edge_nonce
        self.value = value
        self.mac = mac

    def body(self) -> bytes:
        if self.cmd not in (CMD_TIME_SET, CMD_EPOCH_SET):
            raise ProtocolError(BAD_VALUE, "command %r" % self.cmd)
        check_uint("value", self.value, 32)
        return (
            bytes((MSG_COMMAND, self.cmd))
            + check_bytes("lock_nonce", self.lock_nonce, NONCE_BYTES)
            + check_bytes("edge_nonce", self.edge_nonce, NONCE_BYTES)
            + u32(self.value)
        )

    def encode(self) -> bytes:
        return self.body() + check_bytes("mac", self.mac, TAG_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Command) and self.encode() == other.encode()


class Result:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, kind: int, op: int, status: str, mac: bytes) -> None:
        self.kind = kind  # MSG_REQUEST or MSG_COMMAND: what this answers
        self.op = op  # the request's op or the command's cmd
        self.status = status  # OK or a reason from errors.py
        self.mac = mac

    def head(self) -> bytes:
        _check_subject(self.kind, self.op)
        return bytes((MSG_RESULT, self.kind, self.op, status_code(self.status)))

    def encode(self) -> bytes:
        return self.head() + check_bytes("mac", self.mac, TAG_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result) and self.encode() == other.encode()


class Notice:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, kind: int, status: str) -> None:
        self.kind = kind  # first byte of the message answered (0 if empty)
        self.status = status

    def encode(self) -> bytes:
        check_uint("kind", self.kind, 8)
        return bytes((MSG_NOTICE, self.kind, status_code(self.status)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Notice) and self.encode() == other.encode()


def _check_subject(kind: int, op: int) -> None:
    if kind == MSG_REQUEST and is_op(op):
        return
    if kind == MSG_COMMAND and op in (CMD_TIME_SET, CMD_EPOCH_SET):
        return
    raise ProtocolError(BAD_VALUE, "kind 0x%02x op 0x%02x" % (kind, op))


def decode_challenge(data: bytes) -> Challenge:
    check_type(data, MSG_CHALLENGE, CHALLENGE_BYTES)
    _, version, lock_id, clock_s, epoch = struct.unpack_from(">BBIII", data, 0)
    if version != VERSION:
        raise ProtocolError(BAD_VERSION, "challenge version %d" % version)
    return Challenge(lock_id, clock_s, epoch, bytes(data[14:30]))


def decode_request(data: bytes) -> Request:
    check_type(data, MSG_REQUEST, REQUEST_BYTES)
    if not is_op(data[1]):
        raise ProtocolError(BAD_VALUE, "op 0x%02x is not one right" % data[1])
    return Request(data[1], data[2:18], data[18:34], data[34:PROOF_AT], data[PROOF_AT:])


def decode_command(data: bytes) -> Command:
    check_type(data, MSG_COMMAND, COMMAND_BYTES)
    value = struct.unpack_from(">I", data, 34)[0]
    cmd = Command(data[1], data[2:18], data[18:34], value, data[COMMAND_MAC_AT:])
    cmd.body()  # validates the command number
    return cmd


def decode_result(data: bytes) -> Result:
    check_type(data, MSG_RESULT, RESULT_BYTES)
    _check_subject(data[1], data[2])
    return Result(data[1], data[2], status_reason(data[3]), data[RESULT_HEAD_BYTES:])


def decode_notice(data: bytes) -> Notice:
    check_type(data, MSG_NOTICE, NOTICE_BYTES)
    return Notice(data[1], status_reason(data[2]))


def decode(data: bytes) -> "Challenge | Request | Command | Result | Notice":
    # Any handshake message, by its type byte. (Audit messages: audit.py.)
    if not data:
        raise ProtocolError(TRUNCATED, "empty message")
    t = data[0]
    if t == MSG_CHALLENGE:
        return decode_challenge(data)
    if t == MSG_REQUEST:
        return decode_request(data)
    if t == MSG_COMMAND:
        return decode_command(data)
    if t == MSG_RESULT:
        return decode_result(data)
    if t == MSG_NOTICE:
        return decode_notice(data)
    raise ProtocolError(UNKNOWN_TYPE, "type 0x%02x" % t)


# The MACs. Each covers the message bytes as sent, behind a label naming its
# use and the lock id; nonces are bound where the message does not carry them.
def proof(session: HmacKey, lock_id: int, body: bytes) -> bytes:
    return session.digest(_LABEL_PROOF, u32(lock_id), body)[:TAG_BYTES]


def command_mac(edge_key: HmacKey, lock_id: int, body: bytes) -> bytes:
    return edge_key.digest(_LABEL_COMMAND, u32(lock_id), body)[:TAG_BYTES]


def result_mac(
    key: HmacKey, lock_id: int, lock_nonce: bytes, peer_nonce: bytes, head: bytes
) -> bytes:
    return key.digest(_LABEL_RESULT, u32(lock_id), lock_nonce, peer_nonce, head)[:TAG_BYTES]


def encode_result(
    key: HmacKey,
    lock_id: int,
    lock_nonce: bytes,
    peer_nonce: bytes,
    *,
    kind: int,
    op: int,
    status: str,
) -> bytes:
    head = Result(kind, op, status, b"").head()
    return head + result_mac(key, lock_id, lock_nonce, peer_nonce, head)
