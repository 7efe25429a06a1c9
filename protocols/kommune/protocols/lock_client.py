# The clients' side of the lock handshake: HolderSession (a staff phone,
# `kommune unlock`) and EdgeSession (the edge's authenticated time sync,
# revocation-epoch update and deny-list), and the decoders of what the lock
# sends (decode_result, decode_notice, decode). Kept apart from handshake.py
# so the lock, which never runs it, does not load it. Byte layouts:
# protocols/LOCK.md.
#
#     write(CHALLENGE_REQUEST)  # without response, right behind the subscription
#     holder = HolderSession(issued.token, issued.session_key, issued.lock_id)
#     request = holder.request(challenge_bytes, RIGHT_UNLOCK, os.urandom(16))
#     reply = holder.result(reply_bytes)  # reply.ok: the lock really opened
#     # the lock notifies the next CHALLENGE unasked: a second request needs no ask
from kommune.protocols import token as tokens
from kommune.protocols.errors import (
    BAD_TAG,
    BAD_VALUE,
    TRUNCATED,
    UNKNOWN_TYPE,
    WRONG_LOCK,
    ProtocolError,
)
from kommune.protocols.handshake import (
    CHALLENGE_REQUEST,
    DENY_LABEL,
    MAX_DENY_IDS,
    NOTICE_BYTES,
    RESULT_BYTES,
    RESULT_HEAD_BYTES,
    Challenge,
    Command,
    Notice,
    Request,
    Result,
    check_deny_body,
    check_subject,
    command_mac,
    decode_challenge,
    decode_challenge_request,
    decode_command,
    decode_request,
    proof,
    result_mac,
)
from kommune.protocols.hmac_sha256 import equal
from kommune.protocols.lock_wire import (
    MSG_CHALLENGE,
    MSG_CHALLENGE_REQUEST,
    MSG_COMMAND,
    MSG_DENY_LIST,
    MSG_NOTICE,
    MSG_REQUEST,
    MSG_RESULT,
    OK,
    check_type,
    check_uint,
    lock_key,
    status_reason,
    u32,
)
from kommune.protocols.seal import SealKey, seal

# CHALLENGE_REQUEST (from handshake): what a peer writes to ask for a CHALLENGE.
# It may go as a write without response in the same connection event as the
# subscription's CCCD write, so the first CHALLENGE costs no round trip of its own.
__all__ = ["CHALLENGE_REQUEST"]

# Names of the lock's Verdict.action values (lock_verifier.ACT_*), for people,
# logs and vectors; kept here so the lock does not carry the strings.
ACTION_NAMES = (
    "",
    "open",
    "lock",
    "send_audit",
    "admin",
    "set_time",
    "set_epoch",
    "audit_ack",
    "refuse",
    "drop",
    "challenge",
    "set_deny",
)

# How far a challenge's lock clock may be from the peer's own (s). A phone
# checks only if it trusts its clock; the edge always does: a challenge that
# was held back (relayed late) or comes from a lock whose clock is far off is
# refused, and a deliberate large correction passes an explicit max_skew_s.
HOLDER_MAX_SKEW_S = 300
EDGE_MAX_SKEW_S = 3600


class Reply:
    # What a peer learnt from the lock's answer.
    def __init__(self, kind: int, op: int, status: str, authenticated: bool) -> None:
        self.kind = kind
        self.op = op
        self.status = status
        self.authenticated = authenticated  # False: a NOTICE, which anyone could send

    @property
    def ok(self) -> bool:
        return self.authenticated and self.status == OK

    def __repr__(self) -> str:
        return "Reply(%s%s)" % (self.status, "" if self.authenticated else ", unauthenticated")


def decode_result(data: bytes) -> Result:
    check_type(data, MSG_RESULT, RESULT_BYTES)
    check_subject(data[1], data[2])
    return Result(data[1], data[2], status_reason(data[3]), data[RESULT_HEAD_BYTES:])


def decode_notice(data: bytes) -> Notice:
    check_type(data, MSG_NOTICE, NOTICE_BYTES)
    return Notice(data[1], status_reason(data[2]))


def decode(data: bytes) -> "Challenge | Request | Command | Result | Notice | bytes":
    # Any handshake message, by its type byte; a CHALLENGE_REQUEST (no fields)
    # as its bytes. (Audit messages: audit.py; DENY_LIST needs the key: below.)
    if not data:
        raise ProtocolError(TRUNCATED, "empty message")
    t = data[0]
    if t == MSG_CHALLENGE:
        return decode_challenge(data)
    if t == MSG_CHALLENGE_REQUEST:
        return decode_challenge_request(data)
    if t == MSG_REQUEST:
        return decode_request(data)
    if t == MSG_COMMAND:
        return decode_command(data)
    if t == MSG_RESULT:
        return decode_result(data)
    if t == MSG_NOTICE:
        return decode_notice(data)
    raise ProtocolError(UNKNOWN_TYPE, "type 0x%02x" % t)


def notice(reply: bytes) -> Reply:
    # The lock's answer to a message not bound to a challenge (AUDIT_ACK,
    # DENY_LIST): a NOTICE, unauthenticated (its effect shows, MAC'd, in the
    # audit log: an accepted deny-list is an entry).
    n = decode_notice(reply)
    return Reply(n.kind, 0, n.status, False)


class _Peer:
    def __init__(self, key: bytes, kind: int) -> None:
        self._key = lock_key(key)
        self._kind = kind
        # (lock_id, op, lock_nonce, peer_nonce) of the request awaiting its answer
        self._expect: "tuple[int, int, bytes, bytes] | None" = None

    def _challenge(
        self, challenge: bytes, lock_id: int, now_s: "int | None", max_skew_s: int
    ) -> Challenge:
        ch = decode_challenge(challenge)
        if ch.lock_id != lock_id:
            raise ProtocolError(
                WRONG_LOCK, "challenge from lock %d, not %d" % (ch.lock_id, lock_id)
            )
        if now_s is not None and abs(ch.clock_s - now_s) > max_skew_s:
            raise ProtocolError(
                BAD_VALUE,
                "challenge clock %d is %d s from ours (max %d)"
                % (ch.clock_s, ch.clock_s - now_s, max_skew_s),
            )
        return ch

    def result(self, reply: bytes) -> Reply:
        # The lock's answer to the last request; a forged RESULT raises bad_tag.
        if self._expect is None:
            raise ProtocolError(BAD_VALUE, "no request outstanding")
        lock_id, op, lock_nonce, peer_nonce = self._expect
        if reply[:1] == bytes((MSG_NOTICE,)):
            return Reply(self._kind, op, decode_notice(reply).status, False)
        res = decode_result(reply)
        head = reply[:RESULT_HEAD_BYTES]
        if not equal(res.mac, result_mac(self._key, lock_id, lock_nonce, peer_nonce, head)):
            raise ProtocolError(BAD_TAG, "result MAC")
        if res.kind != self._kind or res.op != op:
            raise ProtocolError(BAD_VALUE, "result answers another request")
        self._expect = None  # one answer per request: a replayed RESULT gets nothing
        return Reply(res.kind, res.op, res.status, True)


class HolderSession(_Peer):
    # A staff phone: its sealed token and session key, as the token authority
    # gave them, and the lock id (from the issued record: the phone cannot
    # open the token). It answers only a challenge from that lock id; what
    # it sends is the opaque token and a proof bound to that challenge.
    def __init__(self, token: bytes, session_key: bytes, lock_id: int) -> None:
        super().__init__(session_key, MSG_REQUEST)
        tokens.check_sealed(token)
        self.lock_id = lock_id
        self._token_bytes = bytes(token)

    def request(
        self,
        challenge: bytes,
        op: int,
        holder_nonce: bytes,
        now_s: "int | None" = None,
        max_skew_s: int = HOLDER_MAX_SKEW_S,
    ) -> bytes:
        # holder_nonce: 16 fresh random bytes (os.urandom / secrets); now_s:
        # the phone's site time, if it trusts its clock.
        ch = self._challenge(challenge, self.lock_id, now_s, max_skew_s)
        body = Request(op, ch.nonce, holder_nonce, self._token_bytes, b"").body()
        self._expect = (ch.lock_id, op, ch.nonce, bytes(holder_nonce))
        return body + proof(self._key, ch.lock_id, body)


class EdgeSession(_Peer):
    # The edge, holding one lock's edge key.
    def __init__(self, edge_key: bytes, lock_id: int) -> None:
        super().__init__(edge_key, MSG_COMMAND)
        self.lock_id = lock_id
        self._raw_key = bytes(edge_key)
        self._deny_key: "SealKey | None" = None

    def command(
        self,
        challenge: bytes,
        cmd: int,
        value: int,
        edge_nonce: bytes,
        *,
        now_s: int,
        max_skew_s: int = EDGE_MAX_SKEW_S,
    ) -> bytes:
        # now_s: the edge's site time; required (see EDGE_MAX_SKEW_S).
        ch = self._challenge(challenge, self.lock_id, now_s, max_skew_s)
        body = Command(cmd, ch.nonce, edge_nonce, value, b"").body()
        self._expect = (ch.lock_id, cmd, ch.nonce, bytes(edge_nonce))
        return body + command_mac(self._key, ch.lock_id, body)

    def deny_list(
        self, epoch: int, version: int, token_ids: list[int], holder_ids: list[int]
    ) -> bytes:
        # A sealed DENY_LIST (no challenge needed: the lock keeps only the
        # newest by (epoch, version), so the edge or a phone may deliver it
        # any time); its answer is a NOTICE (notice()).
        if self._deny_key is None:
            self._deny_key = SealKey(self._raw_key)
        head = bytes((MSG_DENY_LIST,)) + u32(check_uint("epoch", epoch, 32))
        head += u32(check_uint("version", version, 32))
        body = deny_body(token_ids, holder_ids)
        return seal(self._deny_key, DENY_LABEL, u32(self.lock_id), head, body)


def deny_body(token_ids: list[int], holder_ids: list[int]) -> bytes:
    # The plaintext of a DENY_LIST (and the body a lock keeps): counts, then ids.
    if len(token_ids) + len(holder_ids) > MAX_DENY_IDS:
        raise ProtocolError(BAD_VALUE, "a deny-list holds at most %d ids" % MAX_DENY_IDS)
    body = bytes((len(token_ids), len(holder_ids)))
    for i in token_ids + holder_ids:
        body += u32(check_uint("id", i, 32))
    check_deny_body(body)
    return body


def deny_ids(body: bytes) -> tuple[list[int], list[int]]:
    # (token ids, holder ids) of a deny-list body (verifier.deny[2], open_deny_list's).
    check_deny_body(body)
    ids = [int.from_bytes(body[i : i + 4], "big") for i in range(2, len(body), 4)]
    return ids[: body[0]], ids[body[0] :]
