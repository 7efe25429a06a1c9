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
from kommune.protocols.lock_verifier import LockVerifier, RateLimiter, ticks_diff
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

LOCK = 1017
TOKEN_KEY = hashlib.sha256(b"test token key").digest()
EDGE_KEY = hashlib.sha256(b"test edge key").digest()
AUDIT_KEY = hashlib.sha256(b"test audit key").digest()
EPOCH = 3
VISIT = 1_767_258_600
RELAY_BOUND_MS = 500
MAX_CHALLENGES = 3
MAX_FAILURES = 5
WINDOW_MS = 10_000
BACKOFF_MS = 5_000


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
    return T.sign(HmacKey(token_key), tok)


def _session(token: bytes, token_key: bytes = TOKEN_KEY) -> bytes:
    return T.session_key(HmacKey(token_key), T.decode(token))


TOKEN = _token()
SESSION = _session(TOKEN)


def _lock(**over: int) -> tuple[LockVerifier, AuditLog]:
    log = AuditLog(AUDIT_KEY, LOCK, capacity=10_000)
    limiter = RateLimiter(MAX_FAILURES, WINDOW_MS, BACKOFF_MS)
    lock = LockVerifier(
        LOCK,
        TOKEN_KEY,
        EDGE_KEY,
        over.get("epoch", EPOCH),
        log,
        relay_bound_ms=RELAY_BOUND_MS,
        max_challenges=MAX_CHALLENGES,
        limiter=limiter,
    )
    return lock, log


class LockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lock, self.log = _lock()
        self.now_ms = 1_000
        self.counter = 0
        self.challenges: dict[bytes, bytes] = {}  # every challenge ever issued: nonce -> message
        self.outstanding: dict[bytes, int] = {}  # model: nonce -> issued ms, oldest first
        self.sent: list[bytes] = []
        self.failures: list[int] = []  # model of the rate limiter
        self.blocked_at: int | None = None
        self.accepted: set[bytes] = set()  # challenge nonces that opened the lock

    # --- the model -----------------------------------------------------------

    def _blocked(self) -> bool:
        if self.blocked_at is not None and self.now_ms - self.blocked_at < BACKOFF_MS:
            return True
        self.blocked_at = None
        return False

    def _failed(self) -> None:
        self.failures = [*self.failures, self.now_ms][-MAX_FAILURES:]
        if len(self.failures) == MAX_FAILURES and self.now_ms - self.failures[0] <= WINDOW_MS:
            self.failures, self.blocked_at = [], self.now_ms
            self.outstanding.clear()  # a back-off uses up every challenge

    def _expire(self) -> None:
        # The lock keeps no challenge older than the relay bound.
        for nonce, issued in list(self.outstanding.items()):
            if self.now_ms - issued > RELAY_BOUND_MS:
                del self.outstanding[nonce]

    def _send(self, msg: bytes, consumes: bytes | None, expect: str | None) -> str:
        # consumes: the nonce the lock must use up (if outstanding); expect:
        # the exact status, or None for "anything but ok".
        blocked = self._blocked()
        seq = self.log.next_seq
        v = self.lock.respond(msg, self.now_ms, VISIT)
        self.sent.append(msg)
        if blocked:
            assert v.status == RATE_LIMITED, v
            assert self.log.next_seq == seq, "a refused message costs no log entry"
            self.outstanding.clear()  # ... but it uses up every challenge
            return v.status
        if consumes is not None and consumes in self.outstanding:
            issued = self.outstanding.pop(consumes)
            if expect == OK and self.now_ms - issued > RELAY_BOUND_MS:
                expect = TOO_LATE
        elif expect == OK:
            expect = REPLAY
        if expect is None:
            assert v.status != OK, f"accepted a message it should not: {msg.hex()}"
        else:
            assert v.status == expect, (v.status, expect)
        if msg[:1] == b"\x02":
            assert self.log.next_seq > seq, "every access attempt is logged"
        if v.ok:
            assert consumes not in self.accepted, "one challenge opened the lock twice"
            self.accepted.add(consumes)  # type: ignore[arg-type]
        else:
            self._failed()
        self._expire()
        return v.status

    @staticmethod
    def _named_challenge(msg: bytes) -> bytes | None:
        # The challenge nonce a REQUEST names, if its header decodes (type, size,
        # op): such a message uses the challenge up, whoever sends it and when.
        # (A message refused while rate limited is not decoded, but the refusal
        # drops every outstanding challenge, so its replay finds none.)
        if len(msg) == hs.REQUEST_BYTES and msg[0] == MSG_REQUEST and is_op(msg[1]):
            return msg[2:18]
        return None

    def _fresh_nonce(self) -> bytes:
        self.counter += 1
        return hashlib.sha256(self.counter.to_bytes(4, "big")).digest()[:16]

    # --- rules ---------------------------------------------------------------

    @rule()
    def challenge(self) -> None:
        nonce = self._fresh_nonce()
        self.challenges[nonce] = self.lock.challenge(nonce, self.now_ms, VISIT)
        self._expire()
        self.outstanding[nonce] = self.now_ms
        while len(self.outstanding) > MAX_CHALLENGES:
            del self.outstanding[next(iter(self.outstanding))]

    @rule(ms=st.integers(0, 800))
    def time_passes(self, ms: int) -> None:
        self.now_ms += ms

    @rule(ms=st.integers(BACKOFF_MS - 100, 2 * WINDOW_MS))
    def long_pause(self, ms: int) -> None:
        # Lets back-offs end, so the machine does not spend its steps locked out.
        self.now_ms += ms

    @rule(delay_ms=st.integers(0, 600), op=st.sampled_from([RIGHT_UNLOCK, RIGHT_LOCK]))
    def visit(self, delay_ms: int, op: int) -> None:
        # The everyday flow: a challenge, answered after a BLE round trip.
        self.challenge()
        nonce = next(reversed(self.outstanding))
        self.now_ms += delay_ms
        msg = HolderSession(TOKEN, SESSION).request(self.challenges[nonce], op, b"v" * 16)
        self._send(msg, nonce, OK)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), op=st.sampled_from([RIGHT_UNLOCK, RIGHT_LOCK]))
    def honest_request(self, data: st.DataObject, op: int) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        msg = HolderSession(TOKEN, SESSION).request(self.challenges[nonce], op, b"h" * 16)
        self._send(msg, nonce, OK)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data())
    def request_without_the_right(self, data: st.DataObject) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        msg = HolderSession(TOKEN, SESSION).request(self.challenges[nonce], RIGHT_ADMIN, b"h" * 16)
        self._send(msg, nonce, None)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        msg = data.draw(st.sampled_from(self.sent))
        self._send(msg, self._named_challenge(msg), None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), proof=st.binary(min_size=16, max_size=16))
    def guessed_proof(self, data: st.DataObject, proof: bytes) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        body = hs.Request(RIGHT_UNLOCK, nonce, b"g" * 16, TOKEN, b"").body()
        self._send(body + proof, nonce, None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data(), key=st.binary(min_size=32, max_size=32))
    def forged_token(self, data: st.DataObject, key: bytes) -> None:
        # A well-formed token for this lock under a guessed key, with a proof
        # that is right for the forger's own session key.
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        token = _token(key)
        msg = HolderSession(token, _session(token, key)).request(
            self.challenges[nonce], RIGHT_UNLOCK, b"f" * 16
        )
        self._send(msg, nonce, None)

    @precondition(lambda self: self.challenges)
    @rule(data=st.data())
    def flipped_bit(self, data: st.DataObject) -> None:
        nonce = data.draw(st.sampled_from(sorted(self.challenges)))
        good = HolderSession(TOKEN, SESSION).request(self.challenges[nonce], 1, b"b" * 16)
        bit = data.draw(st.integers(0, 8 * len(good) - 1))
        bad = bytearray(good)
        bad[bit // 8] ^= 1 << (bit % 8)
        # Type, op and nonce flips fail before the challenge is looked up.
        self._send(bytes(bad), nonce if bit // 8 >= 18 else None, None)

    @rule(junk=st.binary(max_size=120))
    def junk(self, junk: bytes) -> None:
        self._send(junk, self._named_challenge(junk), None)

    # --- invariants ----------------------------------------------------------

    @invariant()
    def ram_is_bounded(self) -> None:
        assert len(self.lock._pending) <= MAX_CHALLENGES
        assert len(self.lock.limiter._failures) <= MAX_FAILURES


LockMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_lock_state_machine = LockMachine.TestCase


# --- single behaviours -------------------------------------------------------


def _challenge(lock: LockVerifier, nonce: bytes, now_ms: int = 1000) -> bytes:
    return lock.challenge(nonce, now_ms, VISIT)


def test_oldest_challenge_is_evicted_when_the_table_is_full() -> None:
    lock, _ = _lock()
    first = _challenge(lock, b"\x01" * 16)
    for i in range(MAX_CHALLENGES):
        _challenge(lock, bytes([i + 2]) * 16)
    msg = HolderSession(TOKEN, SESSION).request(first, RIGHT_UNLOCK, b"h" * 16)
    assert lock.respond(msg, 1050, VISIT).status == REPLAY


def test_every_access_is_logged_with_the_holder() -> None:
    lock, log = _lock()
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"n" * 16), 1, b"h" * 16)
    v = lock.respond(msg, 1100, VISIT)
    assert v.ok and v.kind == MSG_REQUEST and v.op == RIGHT_UNLOCK and v.token is not None
    entry = decode_entry(log.entries[-1])
    assert (entry.event, entry.op, entry.status) == (EVENT_ACCESS, RIGHT_UNLOCK, OK)
    assert (entry.holder_id, entry.token_id, entry.time_s) == (22, 11, VISIT)


def test_forged_token_is_logged_without_a_holder() -> None:
    lock, log = _lock()
    token = _token(bytes(32))
    holder = HolderSession(token, _session(token, bytes(32)))
    v = lock.respond(holder.request(_challenge(lock, b"n" * 16), 1, b"h" * 16), 1100, VISIT)
    assert v.status == "bad_tag" and v.token is None
    assert v.reply == hs.Notice(MSG_REQUEST, "bad_tag").encode()
    entry = decode_entry(log.entries[-1])
    assert (entry.holder_id, entry.token_id, entry.status) == (0, 0, "bad_tag")


def test_newer_token_raises_the_epoch() -> None:
    lock, log = _lock(epoch=EPOCH - 1)
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"n" * 16), 1, b"h" * 16)
    v = lock.respond(msg, 1100, VISIT)
    assert v.ok and v.epoch_changed and lock.epoch == EPOCH
    assert [decode_entry(e).event for e in log.entries] == [3, EVENT_ACCESS]


def test_guessed_proof_does_not_raise_the_epoch() -> None:
    lock, _ = _lock(epoch=EPOCH - 1)
    body = hs.Request(1, b"n" * 16, b"h" * 16, TOKEN, b"").body()
    _challenge(lock, b"n" * 16)
    v = lock.respond(body + bytes(16), 1100, VISIT)
    assert v.status == "bad_proof" and not v.epoch_changed and lock.epoch == EPOCH - 1


def test_edge_commands_time_and_epoch() -> None:
    lock, log = _lock()
    edge = EdgeSession(EDGE_KEY, LOCK)
    v = lock.respond(
        edge.command(_challenge(lock, b"a" * 16), CMD_TIME_SET, VISIT + 7, b"e" * 16, now_s=VISIT),
        1010,
        VISIT,
    )
    assert v.ok and v.op == CMD_TIME_SET and v.value == VISIT + 7 and not v.epoch_changed
    assert edge.result(v.reply).ok
    v = lock.respond(
        edge.command(_challenge(lock, b"b" * 16), CMD_EPOCH_SET, 9, b"e" * 16, now_s=VISIT),
        1010,
        VISIT,
    )
    assert v.ok and v.epoch_changed and lock.epoch == 9
    v = lock.respond(
        edge.command(_challenge(lock, b"c" * 16), CMD_EPOCH_SET, 8, b"e" * 16, now_s=VISIT),
        1010,
        VISIT,
    )
    reply = edge.result(v.reply)
    assert reply.authenticated and reply.status == BAD_VALUE and lock.epoch == 9
    entries = [decode_entry(e) for e in log.entries]
    assert [(e.event, e.op, e.status, e.arg) for e in entries] == [
        (EVENT_COMMAND, CMD_TIME_SET, OK, VISIT + 7),
        (EVENT_COMMAND, CMD_EPOCH_SET, OK, 9),
        (EVENT_COMMAND, CMD_EPOCH_SET, BAD_VALUE, 8),
    ]


def test_holder_session_key_cannot_command() -> None:
    # The session key is not the edge key: a holder cannot set the clock.
    lock, _ = _lock()
    edge = EdgeSession(SESSION, LOCK)
    v = lock.respond(
        edge.command(_challenge(lock, b"a" * 16), CMD_TIME_SET, 1, b"e" * 16, now_s=VISIT),
        1010,
        VISIT,
    )
    assert v.status == "bad_tag"


def test_ack_prunes_the_log_through_the_verifier() -> None:
    lock, log = _lock()
    for i in range(3):
        msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, bytes([i]) * 16), 1, b"h" * 16)
        assert lock.respond(msg, 1010, VISIT).ok
    h2 = audit.entry_hash(log.entries[1])
    v = lock.respond(audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 2, h2), 1020, VISIT)
    assert v.ok and v.kind == MSG_AUDIT_ACK and v.value == 2
    assert [decode_entry(e).seq for e in log.entries] == [3]
    v = lock.respond(audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 9, h2), 1030, VISIT)
    assert v.status == BAD_VALUE and len(log.entries) == 1  # never prune what was not written
    v = lock.respond(audit.encode_ack(HmacKey(TOKEN_KEY), LOCK, 3, h2), 1040, VISIT)
    assert v.status == "bad_tag" and len(log.entries) == 1


def test_rate_limiter_window_and_backoff() -> None:
    r = RateLimiter(3, 1000, 500)
    assert not r.failure(0) and not r.failure(600)
    assert not r.failure(1100)  # the first of three fell out of the window
    assert r.failure(1200)  # 600, 1100, 1200
    assert r.blocked(1200) and r.blocked(1699)
    assert not r.blocked(1700)
    assert not r.failure(1800)  # history was cleared by the back-off


def test_rate_limiter_survives_ticks_wrap() -> None:
    r = RateLimiter(2, 1000, 500)
    assert not r.failure(0x3FFFFFF0) and r.failure(0x10)
    assert r.blocked(0x100) and not r.blocked(0x300)


def test_rate_limiter_needs_a_positive_limit() -> None:
    with pytest.raises(ProtocolError):
        RateLimiter(0)


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
