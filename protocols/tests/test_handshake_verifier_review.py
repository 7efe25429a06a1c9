"""The lock's verifier against the attacks a first security review found: each
test reproduces one (challenge held past a ticks wrap, delayed time set,
epoch ratchet, stale acks, junk pushing an opening out of the log)."""

from __future__ import annotations

from test_handshake_verifier import (
    EDGE_KEY,
    EPOCH,
    LOCK,
    RELAY_BOUND_MS,
    TOKEN_KEY,
    VISIT,
    _challenge,
    _holder,
    _lock,
    _session,
    _token,
    _unlock,
)

from kommune.protocols import audit
from kommune.protocols.errors import BAD_VALUE, REPLAY, TOO_LATE
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_client import EdgeSession
from kommune.protocols.lock_verifier import ACT_DROP, ACT_REFUSE, MAX_EPOCH_STEP
from kommune.protocols.lock_wire import CMD_TIME_SET, OK, RIGHT_UNLOCK

WRAP_MS = 2**30  # ticks_ms() period on an ESP32


def test_challenge_held_past_a_ticks_wrap_is_not_fresh_again() -> None:
    # An attacker keeps a challenge for 2**30 + 300 ms: the ticks difference
    # wraps back into the relay bound, but the lock dropped the challenge
    # when its bound passed (the firmware calls tick() from its main loop).
    lock, _ = _lock()
    conn, ch = _challenge(lock, b"w" * 16, 1000)
    msg = _holder().request(ch, 1, b"h" * 16)
    lock.tick(1000 + RELAY_BOUND_MS + 1)
    late = (1000 + WRAP_MS + 300) & (WRAP_MS - 1)
    assert lock.respond(conn, msg, late, VISIT + (WRAP_MS + 300) // 1000).status == REPLAY


def test_challenge_clock_bounds_the_answer_even_without_ticks() -> None:
    # Defence in depth: no tick() ran, the ticks wrapped, but the lock clock
    # moved by days since the challenge.
    lock, _ = _lock()
    conn, ch = _challenge(lock, b"w" * 16, 1000)
    msg = _holder().request(ch, 1, b"h" * 16)
    late = (1000 + WRAP_MS + 300) & (WRAP_MS - 1)
    late_s = VISIT + (WRAP_MS + 300) // 1000
    assert lock.respond(conn, msg, late, late_s).status == TOO_LATE
    conn, ch = _challenge(lock, b"x" * 16, 5000)
    msg = _holder().request(ch, 1, b"h" * 16)
    assert lock.respond(conn, msg, 5100, VISIT + 3).status == TOO_LATE  # 3 s in 100 ms


def test_delayed_time_set_cannot_roll_the_clock_back() -> None:
    lock, _ = _lock()
    conn, ch = _challenge(lock, b"t" * 16, 5000)
    held = EdgeSession(EDGE_KEY, LOCK).command(ch, CMD_TIME_SET, VISIT, b"e" * 16, now_s=VISIT)
    lock.tick(6000)
    later_ms = (5000 + WRAP_MS + 200) & (WRAP_MS - 1)
    v = lock.respond(conn, held, later_ms, VISIT + (WRAP_MS + 200) // 1000)
    assert not v.ok and v.status == REPLAY


def test_a_time_set_drops_outstanding_challenges() -> None:
    lock, _ = _lock()
    other, other_ch = _challenge(lock, b"o" * 16, 1000)
    edge = EdgeSession(EDGE_KEY, LOCK)
    conn, ch = _challenge(lock, b"t" * 16, 1000)
    cmd = edge.command(ch, CMD_TIME_SET, VISIT + 30, b"e" * 16, now_s=VISIT)
    assert lock.respond(conn, cmd, 1010, VISIT).ok
    msg = _holder().request(other_ch, 1, b"h" * 16)
    assert lock.respond(other, msg, 1020, VISIT + 30).status == REPLAY


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
        conn, ch = _challenge(lock, epoch.to_bytes(16, "big"))
        msg = _holder(token, _session(token)).request(ch, 1, b"h" * 16)
        v = lock.respond(conn, msg, 1010, VISIT)
        assert (v.status, lock.epoch, v.epoch_changed) == (status, after, status == OK)


def test_authentic_stale_acks_are_not_charged() -> None:
    # After a lock reset the edge's acks name entries the lock no longer has:
    # refused, but they are not guesses, and the edge's connection stays.
    lock, _ = _lock()
    edge = lock.connect(1000)
    stale = audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 1, bytes(16))
    for i in range(10):
        v = lock.respond(edge, stale, 1001 + i, VISIT)
        assert (v.status, v.action) == (BAD_VALUE, ACT_REFUSE)
    forged = audit.encode_ack(HmacKey(TOKEN_KEY), LOCK, 1, bytes(16))
    assert lock.respond(edge, forged, 1100, VISIT).action == ACT_DROP


def test_junk_writes_cannot_push_an_unlock_out_of_the_log() -> None:
    # Reviewer: ~54 junk writes evicted a genuine unlock ("every opening logged").
    lock, log = _lock()
    assert _unlock(lock, b"u" * 16, 1050)[1].ok
    opening = log.entries[-1]
    for i in range(2000):
        conn = lock.connect(2000 + i)
        assert lock.respond(conn, b"\x02junk", 2000 + i, VISIT).action == ACT_DROP
    assert opening in log.entries
    assert sum(e[10] != 0 for e in log.entries) <= log.max_failure_entries + 1
