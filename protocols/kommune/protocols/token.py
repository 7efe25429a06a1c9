# Access token: one holder may operate one lock during one time window.
#
# Minted and sealed by the edge's token authority (kommune.edge.token_authority):
# its fields (token id, holder, lock, window, rights, epoch) are encrypted and
# authenticated under the lock's token key (seal.py), so they never cross the
# air in clear and the phone, which never holds that key, carries an opaque
# 42-byte blob. The lock opens it with HMAC-SHA-256 alone and derives the
# holder's session key from it, so it stores nothing per holder. Byte layout
# and security argument: protocols/LOCK.md.
import struct

from kommune.protocols.errors import (
    BAD_VALUE,
    BAD_VERSION,
    EXPIRED,
    NO_RIGHT,
    NOT_YET_VALID,
    REVOKED,
    TRUNCATED,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.lock_wire import (
    RIGHT_ADMIN,
    RIGHT_LOCK,
    RIGHT_READ_AUDIT,
    RIGHT_UNLOCK,
    RIGHTS_ALL,
    TAG_BYTES,
    VERSION,
    check_bytes,
    check_size,
    check_uint,
    u32,
)
from kommune.protocols.seal import SealKey, seal, unseal

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

BODY_BYTES = const(25)  # the sealed fields
TOKEN_BYTES = const(42)  # version + 16-byte tag + sealed body
_SEALED_AT = const(17)
# Lock clock vs site clock: drift between time syncs (LOCK.md: skew).
DEFAULT_SKEW_S = const(60)

# token_id, holder_id, lock_id, not_before_s, not_after_s, rights, epoch
_BODY_FORMAT = ">IIIIIBI"
# MAC input labels: one per use of the token key (domain separation). Public:
# the edge's token authority computes the same MACs with `cryptography`.
TAG_LABEL = b"TOK2"
SESSION_LABEL = b"SES2"

RIGHT_NAMES = (
    ("unlock", RIGHT_UNLOCK),
    ("lock", RIGHT_LOCK),
    ("read-audit", RIGHT_READ_AUDIT),
    ("admin", RIGHT_ADMIN),
)


class Token:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(
        self,
        *,
        token_id: int,
        holder_id: int,
        lock_id: int,
        not_before_s: int,
        not_after_s: int,
        rights: int,
        epoch: int,
        tag: bytes = b"",
    ) -> None:
        self.token_id = token_id
        self.holder_id = holder_id
        self.lock_id = lock_id
        self.not_before_s = not_before_s  # site time (Unix seconds, UTC), inclusive
        self.not_after_s = not_after_s  # inclusive
        self.rights = rights  # RIGHT_* bits
        self.epoch = epoch  # revocation epoch of the lock at minting
        self.tag = tag  # the seal's tag; empty until sealed

    def fields(self) -> tuple[int, int, int, int, int, int, int, bytes]:
        return (
            self.token_id,
            self.holder_id,
            self.lock_id,
            self.not_before_s,
            self.not_after_s,
            self.rights,
            self.epoch,
            self.tag,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Token) and self.fields() == other.fields()

    def __repr__(self) -> str:
        return (
            "Token(id=%d holder=%d lock=%d window=%d..%d rights=0x%02x epoch=%d)"
            % self.fields()[:7]
        )


def _validate(tok: Token) -> None:
    # The same invariants on both sides: whatever encodes, decodes. (Plain
    # calls, not a loop over a tuple: this runs per request on the lock.)
    check_uint("token_id", tok.token_id, 32)
    check_uint("holder_id", tok.holder_id, 32)
    check_uint("lock_id", tok.lock_id, 32)
    check_uint("not_before_s", tok.not_before_s, 32)
    check_uint("not_after_s", tok.not_after_s, 32)
    check_uint("epoch", tok.epoch, 32)
    check_uint("rights", tok.rights, 8)
    # 0 means "nobody" in audit entries, so no real id is 0.
    if tok.token_id == 0 or tok.holder_id == 0 or tok.lock_id == 0:
        raise ProtocolError(BAD_VALUE, "token, holder and lock ids are nonzero")
    if tok.rights == 0 or tok.rights & ~RIGHTS_ALL:
        raise ProtocolError(BAD_VALUE, "rights 0x%02x" % tok.rights)
    if tok.not_after_s < tok.not_before_s:
        raise ProtocolError(BAD_VALUE, "window ends before it starts")


def encode_body(tok: Token) -> bytes:
    # The 25 bytes that are sealed.
    _validate(tok)
    return struct.pack(
        _BODY_FORMAT,
        tok.token_id,
        tok.holder_id,
        tok.lock_id,
        tok.not_before_s,
        tok.not_after_s,
        tok.rights,
        tok.epoch,
    )


def decode_body(body: "bytes | bytearray", tag: bytes = b"") -> Token:
    # Fields of an opened (or about to be sealed) body.
    check_size(body, BODY_BYTES)
    f = struct.unpack_from(_BODY_FORMAT, body, 0)
    tok = Token(
        token_id=f[0],
        holder_id=f[1],
        lock_id=f[2],
        not_before_s=f[3],
        not_after_s=f[4],
        rights=f[5],
        epoch=f[6],
        tag=tag,
    )
    _validate(tok)
    return tok


def check_sealed(data: bytes) -> None:
    # Structure of a sealed token: what anyone can check without the key.
    if not data:
        raise ProtocolError(TRUNCATED, "empty token")
    if data[0] != VERSION:
        raise ProtocolError(BAD_VERSION, "token version %d" % data[0])
    check_size(data, TOKEN_BYTES)


def seal_token(key: SealKey, tok: Token) -> bytes:
    # The sealed token. The edge mints with `cryptography`
    # (kommune.edge.token_authority); this one serves tests and vectors.
    return seal(key, TAG_LABEL, b"", bytes((VERSION,)), encode_body(tok))


def session_key(key: SealKey, tok: Token) -> bytes:
    # 32 bytes the holder receives with the token and the lock re-derives.
    # Secret: a MAC under the token key of what only the token key opens.
    return key.mac.digest(SESSION_LABEL, u32(tok.token_id), check_bytes("tag", tok.tag, TAG_BYTES))


def authenticate(data: bytes, key: SealKey, lock_id: int) -> Token:
    # Opened, minted by the authority, and for this lock - or an error. A
    # token of another lock (or site) fails the tag: it was sealed under
    # another key; wrong_lock remains only for an authority fault.
    check_sealed(data)
    body = unseal(key, TAG_LABEL, b"", data, 1)
    tok = decode_body(body, bytes(data[1:_SEALED_AT]))
    if tok.lock_id != lock_id:
        raise ProtocolError(WRONG_LOCK, "token for lock %d, this is %d" % (tok.lock_id, lock_id))
    return tok


def authorize(tok: Token, now_s: int, epoch: int, right: int, skew_s: int = DEFAULT_SKEW_S) -> None:
    # An authentic token, checked against the lock's state and clock.
    if tok.epoch < epoch:
        raise ProtocolError(REVOKED, "token epoch %d < lock epoch %d" % (tok.epoch, epoch))
    if now_s + skew_s < tok.not_before_s:
        raise ProtocolError(
            NOT_YET_VALID, "valid from %d, lock clock %d" % (tok.not_before_s, now_s)
        )
    if now_s - skew_s > tok.not_after_s:
        raise ProtocolError(EXPIRED, "valid until %d, lock clock %d" % (tok.not_after_s, now_s))
    if tok.rights & right != right:
        raise ProtocolError(NO_RIGHT, "rights 0x%02x lack 0x%02x" % (tok.rights, right))


def verify(
    data: bytes,
    key: SealKey,
    lock_id: int,
    *,
    now_s: int,
    epoch: int,
    right: int,
    skew_s: int = DEFAULT_SKEW_S,
) -> Token:
    tok = authenticate(data, key, lock_id)
    authorize(tok, now_s, epoch, right, skew_s)
    return tok


def rights_text(rights: int) -> str:
    # "unlock,read-audit" for people and the CLI.
    names = [name for name, bit in RIGHT_NAMES if rights & bit]
    return ",".join(names)
