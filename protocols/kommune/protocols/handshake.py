# The lock's BLE handshake messages and their MACs, shared by the lock's side
# (kommune.protocols.lock_verifier) and its clients' (kommune.protocols.
# lock_client: a staff phone, `kommune unlock`, the edge). Byte layouts:
# protocols/LOCK.md.
#
#   peer  -> lock  CHALLENGE_REQUEST  (2 bytes; may ride with the subscription)
#   lock  -> peer  CHALLENGE  fresh nonce, lock clock, lock id, epoch
#   peer  -> lock  REQUEST    op, both nonces, sealed token, proof (session key)
#               or COMMAND    time/epoch, both nonces, MAC (edge key)
#   lock  -> peer  RESULT     status, MAC'd with the same key
#               or NOTICE     status, unauthenticated (the peer proved no key)
#
# Only what the lock needs is here (it runs in 64 KB): the decoders of what
# the lock sends (RESULT, NOTICE, and decode() of any message) are the
# peers', in lock_client.
import struct

from kommune.protocols import token as tokens
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_VALUE,
    BAD_VERSION,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_CHALLENGE,
    MSG_CHALLENGE_REQUEST,
    MSG_COMMAND,
    MSG_DENY_LIST,
    MSG_NOTICE,
    MSG_REQUEST,
    MSG_RESULT,
    NONCE_BYTES,
    TAG_BYTES,
    VERSION,
    Message,
    check_bytes,
    check_type,
    check_uint,
    is_op,
    status_code,
    u32,
)
from kommune.protocols.seal import SealKey, unseal

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

CHALLENGE_BYTES = const(30)
_CHALLENGE_REQUEST_BYTES = const(2)
CHALLENGE_REQUEST = bytes((MSG_CHALLENGE_REQUEST, VERSION))
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


class Challenge(Message):
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


class Request(Message):
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


class Command(Message):
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


class Result(Message):
    def __init__(self, kind: int, op: int, status: str, mac: bytes) -> None:
        self.kind = kind  # MSG_REQUEST or MSG_COMMAND: what this answers
        self.op = op  # the request's op or the command's cmd
        self.status = status  # OK or a reason from errors.py
        self.mac = mac

    def head(self) -> bytes:
        check_subject(self.kind, self.op)
        return bytes((MSG_RESULT, self.kind, self.op, status_code(self.status)))

    def encode(self) -> bytes:
        return self.head() + check_bytes("mac", self.mac, TAG_BYTES)


class Notice(Message):
    def __init__(self, kind: int, status: str) -> None:
        self.kind = kind  # first byte of the message answered (0 if empty)
        self.status = status

    def encode(self) -> bytes:
        check_uint("kind", self.kind, 8)
        return bytes((MSG_NOTICE, self.kind, status_code(self.status)))


def check_subject(kind: int, op: int) -> None:
    if kind == MSG_REQUEST and is_op(op):
        return
    if kind == MSG_COMMAND and op in (CMD_TIME_SET, CMD_EPOCH_SET):
        return
    raise ProtocolError(BAD_VALUE, "kind 0x%02x op 0x%02x" % (kind, op))


def decode_challenge_request(data: bytes) -> bytes:
    # A peer asks for a CHALLENGE: type and version, nothing else.
    check_type(data, MSG_CHALLENGE_REQUEST, _CHALLENGE_REQUEST_BYTES)
    if data[1] != VERSION:
        raise ProtocolError(BAD_VERSION)
    return CHALLENGE_REQUEST


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


# DENY_LIST (the edge's; lock_client seals it): 27 + 4 n bytes, n ids at most
# MAX_DENY_IDS. The lock keeps a list as (epoch, version, body), body being
# the plaintext as sent: n_tokens, n_holders, the token ids, the holder ids.
MAX_DENY_IDS = const(32)
_DENY_HEAD_BYTES = const(9)  # type, epoch, version (in clear, bound to the seal)
_DENY_MIN_BYTES = const(27)  # head, seal tag, the two counts
_DENY_MAX_BYTES = const(155)  # _DENY_MIN_BYTES + 4 * MAX_DENY_IDS
DENY_LABEL = b"DNY1"
NO_DENY = (0, 0, b"\x00\x00")  # a lock that never got a list


def check_deny_body(body: "bytes | bytearray") -> None:
    # The counts match the length, and no more than MAX_DENY_IDS ids.
    n = len(body) - 2
    if n < 0 or n != 4 * (body[0] + body[1]) or n > 4 * MAX_DENY_IDS:
        raise ProtocolError(BAD_LENGTH, "deny-list body")


def open_deny_list(data: bytes, key: SealKey, lock_id: int) -> "tuple[int, int, bytes]":
    # (epoch, version, body) of a genuine DENY_LIST from this lock's edge
    # (key: SealKey of the edge key), or an error: bad_tag if forged,
    # altered, another lock's or another site's.
    check_type(data, MSG_DENY_LIST, min(max(len(data), _DENY_MIN_BYTES), _DENY_MAX_BYTES))
    body = bytes(unseal(key, DENY_LABEL, u32(lock_id), data, _DENY_HEAD_BYTES))
    check_deny_body(body)
    return struct.unpack_from(">I", data, 1)[0], struct.unpack_from(">I", data, 5)[0], body


def denies(body: bytes, token_id: int, holder_id: int) -> bool:
    # Whether a list's body names the token or the holder: a search for the
    # 4 bytes, aligned to the ids (no allocation per id).
    split = 2 + 4 * body[0]
    return _names(body, u32(token_id), 2, split) or _names(body, u32(holder_id), split, len(body))


def _names(body: bytes, needle: bytes, start: int, end: int) -> bool:
    i = body.find(needle, start, end)
    while i >= 0:
        if not (i - 2) % 4:
            return True
        i = body.find(needle, i + 1, end)
    return False


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
