"""The lock's verifier: a model-checked state machine, and its bounds.

The rule-based machine drives a LockVerifier with honest requests, replays,
guessed proofs, forged tokens, bit flips and junk, against a small model of
what the lock must do. It checks the one property that matters most - the
lock accepts exactly the honest, fresh, in-time requests the token allows -
and that the lock's RAM stays bounded whatever it is sent.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kommune.protocols import audit
from kommune.protocols import handshake as hs
from kommune.protocols import token as T
from kommune.protocols.audit import EVENT_ACCESS, EVENT_COMMAND, AuditLog, decode_entry
from kommune.protocols.errors import (
    BAD_VALUE,
    RATE_LIMITED,
    REPLAY,
    TOO_LATE,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_client import EdgeSession, HolderSession
from kommune.protocols.lock_verifier import (
    ACT_AUDIT_ACK,
    ACT_DROP,
    ACT_OPEN,
    ACT_REFUSE,
    ACT_SET_EPOCH,
    ACT_SET_TIME,
    Connection,
    LockVerifier,
    Verdict,
    ticks_diff,
)
from kommune.protocols.lock_wire import (
    CMD_EPOCH_SET,
    CMD_TIME_SET,
    MSG_AUDIT_ACK,
    MSG_REQUEST,
    OK,
    RIGHT_ADMIN,
    RIGHT_LOCK,
    RIGHT_UNLOCK,
    is_op,
)
from kommune.protocols.seal import SealKey

LOCK = 1017
TOKEN_KEY = hashlib.sha256(b"test token key").digest()
EDGE_KEY = hashlib.sha256(b"test edge key").digest()
AUDIT_KEY = hashlib.sha256(b"test audit key").digest()
EPOCH = 3
VISIT = 1_767_258_600
RELAY_BOUND_MS = 500
MAX_CONNECTIONS = 3
MAX_REFUSALS = 3


def _token(
    token_key: bytes = TOKEN_KEY, rights: int = RIGHT_UNLOCK | RIGHT_LOCK, epoch: int = EPOCH
) -> bytes:
    tok = T.Token(
        token_id=11,
        holder_id=22,
        lock_id=LOCK,
        not_before_s=VISIT - 600,
        not_after_s=VISIT + 3000,
        rights=rights,
        epoch=epoch,
    )
    return T.seal_token(SealKey(token_key), tok)


def _session(token: bytes, token_key: bytes = TOKEN_KEY) -> bytes:
    key = SealKey(token_key)
    return T.session_key(key, T.authenticate(token, key, LOCK))


TOKEN = _token()
SESSION = _session(TOKEN)


def _holder(token: bytes = TOKEN, session: bytes = SESSION) -> HolderSession:
    return HolderSession(token, session, LOCK)


def _lock(**over: int) -> tuple[LockVerifier, AuditLog]:
    log = AuditLog(AUDIT_KEY, LOCK, capacity=10_000, last_time_s=over.get("floor", 0))
    lock = LockVerifier(
        LOCK,
        TOKEN_KEY,
        EDGE_KEY,
        over.get("epoch", EPOCH),
        log,
        relay_bound_ms=RELAY_BOUND_MS,
        max_connections=over.get("max_connections", MAX_CONNECTIONS),
        max_refusals=MAX_REFUSALS,
    )
    return lock, log


class LockMachine(RuleBasedStateMachine):
    # Peers on up to MAX_CONNECTIONS connections; the model knows each
    # connection's outstanding challenge and whether the lock dropped it.
    def __init__(self) -> None:
        super().__init__()
        self.lock, self.log = _lock()
        self.now_ms = 1_000
        self.counter = 0
        self.conns: list[Connection] = []
        self.challenges: dict[bytes, bytes] = {}  # every challenge ever issued: nonce -> message
        self.outstanding: dict[int, tuple[bytes, int]] = {}  # model: id(conn) -> (nonce, ms)
        self.sent: list[bytes] = []
        self.accepted: set[bytes] = set()  # challenge nonces that opened the lock

    # --- the model -----------------------------------------------------------

    def _expire(self) -> None:
        # The lock keeps no challenge older than the relay bound.
        for key, (_, issued) in list(self.outstanding.items()):
            if self.now_ms - issued > RELAY_BOUND_MS:
                del self.outstanding[key]

    def _send(
        self, conn: Connection, msg: bytes, consumes: bytes | None, expect: str | None
    ) -> str:
        # consumes: the nonce the message names (if its header decodes); expect:
        # the exact status, or None for "anything but ok".
        seq = self.log.next_seq
        was_closed = conn.closed
        v = self.lock.respond(conn, msg, self.now_ms, VISIT)
        self.sent.append(msg)
        if was_closed:
            assert (v.status, v.action) == (RATE_LIMITED, ACT_DROP), v
            assert self.log.next_seq == seq, "a dropped connection costs no log entry"
            return v.status
        mine = self.outstanding.get(id(conn))
        if consumes is not None and mine is not None and mine[0] == consumes:
            del self.outstanding[id(conn)]
            if expect == OK and self.now_ms - mine[1] > RELAY_BOUND_MS:
                expect = TOO_LATE
        elif expect == OK:
            expect = REPLAY  # not this connection's outstanding challenge
        if expect is None:
            assert v.status != OK, f"accepted a message it should not: {msg.hex()}"
        else:
            assert v.status == expect, (v.status, expect)
        if msg[:1] == b"\x02" and len(msg) > 1:
            assert self.log.next_seq > seq, "every access attempt is logged"
        if v.ok:
            assert consumes not in self.accepted, "one challenge opened the lock twice"
            self.accepted.add(consumes)  # type: ignore[arg-type]
            assert v.action != ACT_DROP
        elif v.reply[:1] == b"\x04":
            assert v.action == ACT_DROP, "an unauthenticated failure drops the connection"
        if v.action == ACT_DROP:
            assert conn.closed
            self.outstanding.pop(id(conn), None)
            self.conns.remove(conn)
        self._expire()
        return v.status

    @staticmethod
    def _named_challenge(msg: bytes) -> bytes | None:
        # The challenge nonce a REQUEST names, if its header decodes (type, size, op).
        if len(msg) == hs.REQUEST_BYTES and msg[0] == MSG_REQUEST and is_op(msg[1]):
            return msg[2:18]
        return None

    def _fresh_nonce(self) -> bytes:
        self.counter += 1
        return hashlib.sha256(self.counter.to_bytes(4, "big")).digest()[:16]

    def _conn(self, data: st.DataObject) -> Connection:
        if not self.conns:
            self.connect()
        return data.draw(st.sampled_from(self.conns))

    # --- rules ---------------------------------------------------------------

    @rule()
    def connect(self) -> None:
        full = len(self.conns) == MAX_CONNECTIONS
        conn = self.lock.connect(self.now_ms)
        gone = [c for c in self.conns if c.closed]
        assert len(gone) == full  # one was evicted (the least recently active) if full
        for c in gone:
            self.conns.remove(c)
            self.outstanding.pop(id(c), None)
        self.conns.append(conn)

    @rule(data=st.data())
    def challenge(self, data: st.DataObject) -> None:
        conn = self._conn(data)
        nonce = self._fresh_nonce()
        self.challenges[nonce] = self.lock.challenge(conn, nonce, self.now_ms, VISIT)
        self._expire()
        self.outstanding[id(conn)] = (nonce, self.now_ms)

    @rule(ms=st.integers(0, 800))
    def time_passes(self, ms: int) -> None:
        self.now_ms += ms

    @rule(delay_ms=st.integers(0, 600), op=st.sampled_from([RIGHT_UNLOCK, RIGHT_LOCK]))
    def visit(self, delay_ms: int, op: int) -> None:
        # The everyday flow: connect, a challenge, answered after a BLE round trip.
        self.connect()
        conn = self.conns[-1]
        nonce = self._fresh_nonce()
        self.challenges[nonce] = self.lock.challenge(conn, nonce, self.now_ms, VISIT)
        self.outstanding[id(conn)] = (nonce, self.now_ms)
        self.now_ms += delay_ms
        msg = _holder().request(self.challenges[nonce], op, b"v" * 16)
        self._send(conn, msg, nonce, OK)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), op=st.sampled_from([RIGHT_UNLOCK, RIGHT_LOCK]))
    def honest_request(self, data: st.DataObject, op: int) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        msg = _holder().request(self.challenges[nonce], op, b"h" * 16)
        self._send(self._conn(data), msg, nonce, OK)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data())
    def request_without_the_right(self, data: st.DataObject) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        msg = _holder().request(self.challenges[nonce], RIGHT_ADMIN, b"h" * 16)
        self._send(self._conn(data), msg, nonce, None)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        msg = data.draw(st.sampled_from(self.sent))
        self._send(self._conn(data), msg, self._named_challenge(msg), None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), proof=st.binary(min_size=16, max_size=16))
    def guessed_proof(self, data: st.DataObject, proof: bytes) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        body = hs.Request(RIGHT_UNLOCK, nonce, b"g" * 16, TOKEN, b"").body()
        self._send(self._conn(data), body + proof, nonce, None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), key=st.binary(min_size=32, max_size=32).filter(lambda k: len(set(k)) > 1))
    def forged_token(self, data: st.DataObject, key: bytes) -> None:
        # A well-formed token sealed under a guessed key, with a proof that is
        # right for the forger's own session key.
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        token = _token(key)
        msg = _holder(token, T.session_key(SealKey(key), T.authenticate(token, SealKey(key), LOCK)))
        self._send(self._conn(data), msg.request(self.challenges[nonce], 1, b"f" * 16), nonce, None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data())
    def flipped_bit(self, data: st.DataObject) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        good = _holder().request(self.challenges[nonce], 1, b"b" * 16)
        bit = data.draw(st.integers(0, 8 * len(good) - 1))
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        # Type, op and nonce flips fail before the challenge is looked up.
        self._send(self._conn(data), bytes(bad), nonce if bit // 8 >= 18 else None, None)

    @rule(data=st.data(), junk=st.binary(max_size=120))
    def junk(self, data: st.DataObject, junk: bytes) -> None:
        self._send(self._conn(data), junk, self._named_challenge(junk), None)

    # --- invariants ----------------------------------------------------------

    @invariant()
    def ram_is_bounded(self) -> None:
        assert len(self.lock._conns) <= MAX_CONNECTIONS
        assert len(self.lock._recent) == 16

    @invariant()
    def outstanding_matches_the_model(self) -> None:
        live = {id(c): bytes(c.nonce) for c in self.lock._conns if c.pending}
        assert live == {k: n for k, (n, _) in self.outstanding.items()}


LockMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_lock_state_machine = LockMachine.TestCase


# --- single behaviours -------------------------------------------------------


def _challenge(
    lock: LockVerifier, nonce: bytes, now_ms: int = 1000, conn: Connection | None = None
) -> tuple[Connection, bytes]:
    conn = conn if conn is not None else lock.connect(now_ms)
    return conn, lock.challenge(conn, nonce, now_ms, VISIT)


def _unlock(lock: LockVerifier, nonce: bytes, now_ms: int = 1000) -> tuple[Connection, Verdict]:
    conn, ch = _challenge(lock, nonce, now_ms)
    return conn, lock.respond(conn, _holder().request(ch, 1, b"h" * 16), now_ms + 50, VISIT)


def test_least_recently_active_connection_is_evicted_when_full() -> None:
    lock, _ = _lock()
    first, ch = _challenge(lock, b"\x01" * 16, 1000)
    others = [_challenge(lock, bytes([i + 2]) * 16, 1001 + i)[0] for i in range(MAX_CONNECTIONS)]
    assert first.closed and not any(c.closed for c in others)
    v = lock.respond(first, _holder().request(ch, RIGHT_UNLOCK, b"h" * 16), 1050, VISIT)
    assert (v.status, v.action) == (RATE_LIMITED, ACT_DROP)


def test_every_access_is_logged_with_the_holder() -> None:
    lock, log = _lock()
    _, v = _unlock(lock, b"n" * 16)
    assert v.ok and v.kind == MSG_REQUEST and v.op == RIGHT_UNLOCK and v.token is not None
    assert v.action == ACT_OPEN
    entry = decode_entry(log.entries[-1])
    assert (entry.event, entry.op, entry.status) == (EVENT_ACCESS, RIGHT_UNLOCK, OK)
    assert (entry.holder_id, entry.token_id, entry.time_s) == (22, 11, VISIT)


def test_forged_token_is_logged_without_a_holder() -> None:
    lock, log = _lock()
    key = bytes(range(32))
    token = _token(key)
    holder = _holder(token, _session(token, key))
    conn, ch = _challenge(lock, b"n" * 16)
    v = lock.respond(conn, holder.request(ch, 1, b"h" * 16), 1100, VISIT)
    assert v.status == "bad_tag" and v.token is None and v.action == ACT_DROP
    assert v.reply == hs.Notice(MSG_REQUEST, "bad_tag").encode()
    entry = decode_entry(log.entries[-1])
    assert (entry.holder_id, entry.token_id, entry.status) == (0, 0, "bad_tag")


def test_newer_token_raises_the_epoch() -> None:
    lock, log = _lock(epoch=EPOCH - 1)
    _, v = _unlock(lock, b"n" * 16)
    assert v.ok and v.epoch_changed and v.state_changed and lock.epoch == EPOCH
    assert [decode_entry(e).event for e in log.entries] == [3, EVENT_ACCESS]


def test_guessed_proof_does_not_raise_the_epoch() -> None:
    lock, _ = _lock(epoch=EPOCH - 1)
    body = hs.Request(1, b"n" * 16, b"h" * 16, TOKEN, b"").body()
    conn, _ = _challenge(lock, b"n" * 16)
    v = lock.respond(conn, body + bytes(16), 1100, VISIT)
    assert v.status == "bad_proof" and not v.epoch_changed and lock.epoch == EPOCH - 1


def test_edge_commands_time_and_epoch() -> None:
    lock, log = _lock()
    edge = EdgeSession(EDGE_KEY, LOCK)
    conn, ch = _challenge(lock, b"a" * 16)
    v = lock.respond(
        conn, edge.command(ch, CMD_TIME_SET, VISIT + 7, b"e" * 16, now_s=VISIT), 1010, VISIT
    )
    assert v.ok and v.op == CMD_TIME_SET and v.value == VISIT + 7 and not v.epoch_changed
    assert v.action == ACT_SET_TIME
    assert edge.result(v.reply).ok
    _, ch = _challenge(lock, b"b" * 16, conn=conn)
    v = lock.respond(conn, edge.command(ch, CMD_EPOCH_SET, 9, b"e" * 16, now_s=VISIT), 1010, VISIT)
    assert v.ok and v.epoch_changed and lock.epoch == 9 and v.action == ACT_SET_EPOCH
    _, ch = _challenge(lock, b"c" * 16, conn=conn)
    v = lock.respond(conn, edge.command(ch, CMD_EPOCH_SET, 8, b"e" * 16, now_s=VISIT), 1010, VISIT)
    reply = edge.result(v.reply)
    assert reply.authenticated and reply.status == BAD_VALUE and lock.epoch == 9
    assert v.action == ACT_REFUSE
    entries = [decode_entry(e) for e in log.entries]
    assert [(e.event, e.op, e.status, e.arg) for e in entries] == [
        (EVENT_COMMAND, CMD_TIME_SET, OK, VISIT + 7),
        (EVENT_COMMAND, CMD_EPOCH_SET, OK, 9),
        (EVENT_COMMAND, CMD_EPOCH_SET, BAD_VALUE, 8),
    ]


def test_a_replayed_ack_proves_nothing() -> None:
    # An ack crosses the air and stays valid: replayed by anyone, it prunes nothing, and
    # must not make a squatter's connection "proven" (proven ones are evicted last).
    lock, log = _lock()
    assert _unlock(lock, b"a" * 16, 1000)[1].ok
    ack = audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 1, audit.entry_hash(log.entries[0]))
    edge = lock.connect(1010)
    assert lock.respond(edge, ack, 1010, VISIT).ok
    assert edge.proven
    squatter = lock.connect(1020)
    v = lock.respond(squatter, ack, 1020, VISIT)
    assert v.ok  # genuine and harmless: answered, not charged
    assert not squatter.proven and not squatter.closed


def test_holder_session_key_cannot_command() -> None:
    # The session key is not the edge key: a holder cannot set the clock.
    lock, _ = _lock()
    edge = EdgeSession(SESSION, LOCK)
    conn, ch = _challenge(lock, b"a" * 16)
    v = lock.respond(conn, edge.command(ch, CMD_TIME_SET, 1, b"e" * 16, now_s=VISIT), 1010, VISIT)
    assert v.status == "bad_tag" and v.action == ACT_DROP


def test_ack_prunes_the_log_through_the_verifier() -> None:
    lock, log = _lock()
    for i in range(3):
        assert _unlock(lock, bytes([i]) * 16, 1000 + i)[1].ok
    h2 = audit.entry_hash(log.entries[1])
    edge = lock.connect(1020)
    v = lock.respond(edge, audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 2, h2), 1020, VISIT)
    assert v.ok and v.kind == MSG_AUDIT_ACK and v.value == 2 and v.action == ACT_AUDIT_ACK
    assert [decode_entry(e).seq for e in log.entries] == [3]
    v = lock.respond(edge, audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 9, h2), 1030, VISIT)
    assert v.status == BAD_VALUE and len(log.entries) == 1  # never prune what was not written
    v = lock.respond(edge, audit.encode_ack(HmacKey(TOKEN_KEY), LOCK, 3, h2), 1040, VISIT)
    assert v.status == "bad_tag" and len(log.entries) == 1 and v.action == ACT_DROP


def test_refusals_are_charged_to_their_connection() -> None:
    lock, _ = _lock()
    conn = lock.connect(1000)
    actions = []
    for i in range(MAX_REFUSALS):
        _, ch = _challenge(lock, bytes([i + 1]) * 16, 1000 + i, conn=conn)
        v = lock.respond(conn, _holder().request(ch, RIGHT_ADMIN, b"h" * 16), 1010 + i, VISIT)
        actions.append((v.status, v.action))
    assert actions == [("no_right", ACT_REFUSE)] * 2 + [("no_right", ACT_DROP)]
    with pytest.raises(ProtocolError, match=RATE_LIMITED):
        lock.challenge(conn, b"z" * 16, 1100, VISIT)
    assert _unlock(lock, b"y" * 16, 1200)[1].ok  # others are not charged


def test_verifier_limits_must_be_positive() -> None:
    with pytest.raises(ProtocolError):
        _lock(max_connections=0)


@pytest.mark.parametrize(
    ("end", "start", "diff"),
    [
        (5, 3, 2),
        (3, 5, -2),
        (0x10, 0x3FFFFFF0, 0x20),
        (0x3FFFFFF0, 0x10, -0x20),
        (2**40 + 7, 2**40, 7),
    ],
)
def test_ticks_diff_matches_micropython(end: int, start: int, diff: int) -> None:
    assert ticks_diff(end, start) == diff
