"""The lock's verifier against the attacks a security review found: each test
reproduces one (challenge held past a ticks wrap, delayed time set, replay
after a back-off, epoch ratchet, stale acks tripping the limiter)."""

from __future__ import annotations

from test_handshake_verifier import (
    BACKOFF_MS,
    EDGE_KEY,
    EPOCH,
    LOCK,
    MAX_FAILURES,
    RELAY_BOUND_MS,
    SESSION,
    TOKEN,
    TOKEN_KEY,
    VISIT,
    _challenge,
    _lock,
    _session,
    _token,
)

from kommune.protocols import audit
from kommune.protocols.audit import EVENT_COMMAND, decode_entry
from kommune.protocols.errors import BAD_VALUE, RATE_LIMITED, REPLAY, TOO_LATE
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_client import EdgeSession, HolderSession
from kommune.protocols.lock_verifier import MAX_EPOCH_STEP, RateLimiter
from kommune.protocols.lock_wire import CMD_TIME_SET, OK, RIGHT_UNLOCK

WRAP_MS = 2**30  # ticks_ms() period on an ESP32


def test_challenge_held_past_a_ticks_wrap_is_not_fresh_again() -> None:
    # An attacker keeps a challenge for 2**30 + 300 ms: the ticks difference
    # wraps back into the relay bound, but the lock dropped the challenge
    # when its bound passed (the firmware calls tick() from its main loop).
    lock, _ = _lock()
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"w" * 16, 1000), 1, b"h" * 16)
    lock.tick(1000 + RELAY_BOUND_MS + 1)
    late = (1000 + WRAP_MS + 300) & (WRAP_MS - 1)
    assert lock.respond(msg, late, VISIT + (WRAP_MS + 300) // 1000).status == REPLAY


def test_challenge_clock_bounds_the_answer_even_without_ticks() -> None:
    # Defence in depth: no tick() ran, the ticks wrapped, but the lock clock
    # moved by days since the challenge.
    lock, _ = _lock()
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"w" * 16, 1000), 1, b"h" * 16)
    late = (1000 + WRAP_MS + 300) & (WRAP_MS - 1)
    assert lock.respond(msg, late, VISIT + (WRAP_MS + 300) // 1000).status == TOO_LATE
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"x" * 16, 5000), 1, b"h" * 16)
    assert lock.respond(msg, 5100, VISIT + 3).status == TOO_LATE  # clock jumped 3 s in 100 ms


def test_delayed_time_set_cannot_roll_the_clock_back() -> None:
    lock, _ = _lock()
    held = EdgeSession(EDGE_KEY, LOCK).command(
        _challenge(lock, b"t" * 16, 5000), CMD_TIME_SET, VISIT, b"e" * 16, now_s=VISIT
    )
    lock.tick(6000)
    later_ms = (5000 + WRAP_MS + 200) & (WRAP_MS - 1)
    v = lock.respond(held, later_ms, VISIT + (WRAP_MS + 200) // 1000)
    assert not v.ok and v.status == REPLAY


def test_a_time_set_drops_outstanding_challenges() -> None:
    lock, _ = _lock()
    other = _challenge(lock, b"o" * 16, 1000)
    edge = EdgeSession(EDGE_KEY, LOCK)
    cmd = edge.command(
        _challenge(lock, b"t" * 16, 1000), CMD_TIME_SET, VISIT + 30, b"e" * 16, now_s=VISIT
    )
    assert lock.respond(cmd, 1010, VISIT).ok
    msg = HolderSession(TOKEN, SESSION).request(other, 1, b"h" * 16)
    assert lock.respond(msg, 1020, VISIT + 30).status == REPLAY


def test_a_challenge_refused_while_rate_limited_is_used_up() -> None:
    lock, _ = _lock()
    for i in range(MAX_FAILURES):
        lock.respond(b"\x09junk", 1000 + i, VISIT)
    ch = _challenge(lock, b"r" * 16, 1000 + BACKOFF_MS - 100)
    msg = HolderSession(TOKEN, SESSION).request(ch, 1, b"h" * 16)
    assert lock.respond(msg, 1000 + BACKOFF_MS - 50, VISIT).status == RATE_LIMITED
    assert lock.respond(msg, 1000 + MAX_FAILURES + BACKOFF_MS, VISIT).status == REPLAY


def test_rate_limiter_stays_blocked_when_ticks_go_back() -> None:
    r = RateLimiter(1, 1000, 500)
    assert r.failure(10_000)
    assert r.blocked(9_000)  # elapsed negative: still blocked
    assert r.blocked(10_499) and not r.blocked(10_500)


def test_back_off_entry_names_the_kind_that_caused_it() -> None:
    lock, log = _lock()
    for i in range(MAX_FAILURES):
        lock.respond(b"\x05junk", 1000 + i, VISIT)
    last = decode_entry(log.entries[-1])
    assert (last.event, last.status, last.arg) == (EVENT_COMMAND, RATE_LIMITED, 0x05)


def test_one_token_cannot_ratchet_the_epoch_far() -> None:
    # A token minted at a typo'd (or the last) epoch would revoke every
    # other token for good.
    lock, _ = _lock()
    for epoch, status, after in (
        (0xFFFF_FFFF, BAD_VALUE, EPOCH),
        (EPOCH + MAX_EPOCH_STEP + 1, BAD_VALUE, EPOCH),
        (EPOCH + MAX_EPOCH_STEP, OK, EPOCH + MAX_EPOCH_STEP),
    ):
        token = _token(rights=RIGHT_UNLOCK, epoch=epoch)
        session = _session(token)
        ch = _challenge(lock, epoch.to_bytes(16, "big"))
        v = lock.respond(HolderSession(token, session).request(ch, 1, b"h" * 16), 1010, VISIT)
        assert (v.status, lock.epoch, v.epoch_changed) == (status, after, status == OK)


def test_authentic_stale_acks_do_not_trip_the_limiter() -> None:
    # After a lock reset the edge's acks name entries the lock no longer has:
    # refused, but they are not guesses.
    lock, _ = _lock()
    lock.respond(b"\x09junk", 1000, VISIT)
    stale = audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 1, bytes(16))
    for i in range(2 * MAX_FAILURES):
        assert lock.respond(stale, 1001 + i, VISIT).status == BAD_VALUE
    forged = audit.encode_ack(HmacKey(TOKEN_KEY), LOCK, 1, bytes(16))
    statuses = [lock.respond(forged, 1100 + i, VISIT).status for i in range(MAX_FAILURES)]
    # The junk counted once; the stale acks not at all; forgeries do.
    assert statuses == ["bad_tag"] * (MAX_FAILURES - 1) + [RATE_LIMITED]


def test_junk_writes_cannot_push_an_unlock_out_of_the_log() -> None:
    # Reviewer: ~54 junk writes evicted a genuine unlock ("every opening logged").
    lock, log = _lock()
    msg = HolderSession(TOKEN, SESSION).request(_challenge(lock, b"u" * 16), 1, b"h" * 16)
    assert lock.respond(msg, 1100, VISIT).ok
    opening = log.entries[-1]
    now = 2000
    for _ in range(2000):
        if lock.respond(b"\x02junk", now, VISIT).status == RATE_LIMITED:
            now += BACKOFF_MS
        now += 1
    assert opening in log.entries
    assert sum(e[10] != 0 for e in log.entries) <= log.max_failure_entries + 1
