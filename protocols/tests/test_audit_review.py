"""The audit trail against the attacks a security review found: failure
floods evicting openings, overflow wedging the edge on a gap, a restarted
chain silently dropped, replayed acks, acks before storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_audit import AUDIT_KEY, EDGE_KEY, LOCK, _ack, _checker, _collect, _entries, _log

from kommune.protocols import audit
from kommune.protocols.errors import BAD_CHAIN, BAD_VALUE, GAP, RESTARTED, ProtocolError
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_wire import OK


def _failures(log: audit.AuditLog, n: int, t0: int = 5000) -> None:
    for i in range(n):
        log.append(t0 + i, audit.EVENT_ACCESS, 1, "bad_tag")


def test_a_flood_of_failures_cannot_evict_an_opening() -> None:
    log = audit.AuditLog(AUDIT_KEY, LOCK)  # capacity 64, 16 failure entries
    opening = log.append(1000, audit.EVENT_ACCESS, 1, OK, holder_id=22, token_id=11)
    _failures(log, 10_000)
    assert opening in log.entries
    held = [audit.decode_entry(e) for e in log.entries]
    assert sum(e.status != OK for e in held) == log.max_failure_entries == 16
    log.append(9000, audit.EVENT_ACCESS, 1, OK, holder_id=23, token_id=12)
    events = [audit.decode_entry(e) for e in log.entries]
    summary = events[-2]
    assert (summary.event, summary.op, summary.status) == (
        audit.EVENT_FAILURES,
        audit.EVENT_ACCESS,
        "bad_tag",
    )
    assert (summary.arg, summary.token_id, summary.time_s) == (10_000 - 16, 5016, 5000 + 9999)
    assert opening in log.entries and len(log.entries) == 19
    checker = _checker()
    assert _collect(checker, _entries(log.batch(255)))[-1] == 19  # a clean chain
    _failures(log, 3)
    assert len(log.entries) == 19  # still over budget until an ack frees slots
    _ack(log, checker)
    _failures(log, 1)
    assert [audit.decode_entry(e).event for e in _entries(log.batch(255))] == [
        audit.EVENT_FAILURES,
    ]


def test_overflow_of_openings_leaves_a_lost_marker_the_edge_accepts() -> None:
    log, checker = _log(2, capacity=8), _checker()
    assert _collect(checker, log.entries) == [1, 2]  # collected, ack lost
    for i in range(10):
        log.append(2000 + i, audit.EVENT_ACCESS, 1, OK, holder_id=100 + i, token_id=7)
    held = [audit.decode_entry(e) for e in log.entries]
    marker = held[0]
    assert (marker.event, marker.arg, marker.seq) == (audit.EVENT_LOST, 1, 5)
    assert [e.seq for e in held] == [5, 6, 7, 8, 9, 10, 11, 12] and log.lost == 5
    accepted = checker.accept_batch(log.batch(255))
    assert accepted.lost == [(3, 5)]
    assert [e.seq for e in accepted.entries] == [5, 6, 7, 8, 9, 10, 11, 12]
    checker.commit(accepted)
    assert checker.lost == [(3, 5)]
    _ack(log, checker)
    assert log.entries == []
    log.append(3000, audit.EVENT_BOOT, 0, OK)
    assert _collect(checker, _entries(log.batch(255))) == [13]  # no permanent gap


def test_a_marker_for_entries_the_edge_holds_prunes_by_their_hash() -> None:
    log, checker = _log(4, capacity=4), _checker()
    assert _collect(checker, log.entries) == [1, 2, 3, 4]
    log.append(3000, audit.EVENT_BOOT, 0, OK)  # entries 1, 2 become a marker at seq 2
    assert _collect(checker, _entries(log.batch(255))) == [5]
    _ack(log, checker)
    assert log.entries == []


def test_an_unexplained_hole_needs_an_explicit_resync() -> None:
    log, checker = _log(6), _checker()
    with pytest.raises(ProtocolError, match=GAP):
        checker.accept(log.entries[3:])
    accepted = checker.accept(log.entries[3:], resync=True)
    assert accepted.lost == [(1, 3)] and [e.seq for e in accepted.entries] == [4, 5, 6]
    checker.commit(accepted)
    assert (checker.lost, checker.next_seq) == ([(1, 3)], 7)


def test_a_restarted_chain_is_reported_not_dropped() -> None:
    # Reviewer: after a flash reset the lock's new entries 1..10 were
    # "already accepted" and silently dropped.
    checker = _checker()
    assert _collect(checker, _log(20).entries) == list(range(1, 21))
    reset = audit.AuditLog(AUDIT_KEY, LOCK)
    for i in range(10):
        reset.append(5000 + i, audit.EVENT_ACCESS, 1, OK, holder_id=666, token_id=1)
    with pytest.raises(ProtocolError, match=RESTARTED):
        checker.accept_batch(reset.batch(10))
    accepted = checker.accept_batch(reset.batch(10), resync=True)
    assert accepted.restarted and [e.seq for e in accepted.entries] == list(range(1, 11))
    checker.commit(accepted)
    assert (checker.restarts, checker.next_seq) == (1, 11)


def test_old_entries_alone_must_match_the_stored_ones() -> None:
    log, checker = _log(6), _checker()
    _collect(checker, log.entries)
    assert _collect(checker, log.entries[1:3]) == []  # the same entries: nothing new
    forged = audit.AuditLog(AUDIT_KEY, LOCK, next_seq=2, last_hash=bytes(16))
    forged.append(1, audit.EVENT_BOOT, 0, OK)
    with pytest.raises(ProtocolError, match=BAD_CHAIN):
        checker.accept(forged.entries)
    far = _checker(next_seq=7, last_hash=audit.entry_hash(log.entries[5]))  # no recent hashes
    with pytest.raises(ProtocolError, match=BAD_CHAIN):
        far.accept(log.entries[1:3])  # cannot be compared with anything
    assert _collect(far, log.entries[1:6]) == []  # reaches the anchor: fine


def test_a_replayed_old_ack_does_not_prune_a_restarted_chain() -> None:
    log, checker = _log(20), _checker()
    _collect(checker, log.entries)
    old_ack = checker.ack(EDGE_KEY)  # recorded from the air
    reset = audit.AuditLog(AUDIT_KEY, LOCK)  # the lock restarted and wrote 25 new entries
    for i in range(25):
        reset.append(9000 + i, audit.EVENT_ACCESS, 1, OK, holder_id=666, token_id=1)
    ack = audit.open_ack(old_ack, HmacKey(EDGE_KEY), LOCK)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        reset.prune(ack.seq, ack.entry_hash)
    assert len(reset.entries) == 25


def test_nothing_is_acked_before_it_is_committed() -> None:
    log, checker = _log(3), _checker()
    accepted = checker.accept(log.entries)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        checker.ack(EDGE_KEY)  # storing failed: nothing to ack
    assert [e.seq for e in checker.accept(log.entries).entries] == [1, 2, 3]  # not skipped
    checker.commit(accepted)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        checker.commit(accepted)  # once only
    assert _ack(log, checker) == 3


def test_recent_hashes_are_bounded() -> None:
    checker = _checker()
    log = _log(300, capacity=400)
    for i in range(0, 300, 100):
        _collect(checker, log.entries[i : i + 100])
    assert len(checker.recent) == 256 and min(checker.recent) == 45


@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 30), st.integers(1, 12), st.booleans()),
        max_size=15,
    ),
    st.integers(4, 12),
)
def test_every_opening_reaches_the_edge_or_is_reported_lost(
    rounds: list[tuple[int, int, int, bool]], capacity: int
) -> None:
    # Each round: some openings and failures on the lock, a collection of a
    # batch, and an ack that may be lost. Whatever the overflow, the edge's
    # chain check never wedges, and every opening is delivered or in a range
    # the lock reported lost.
    log, checker = audit.AuditLog(AUDIT_KEY, LOCK, capacity=capacity), _checker()
    openings, got, t = [], set(), 0
    for ok_count, fail_count, batch_size, ack_arrives in rounds:
        for _ in range(ok_count):
            t += 1
            openings.append(audit.decode_entry(log.append(t, 1, 1, OK, holder_id=t)).seq)
        _failures(log, fail_count, t)
        assert sum(e[10] != 0 for e in log.entries) <= log.max_failure_entries + 1
        assert len(log.entries) <= capacity
        got |= set(_collect(checker, _entries(log.batch(batch_size)), markers=False))
        if ack_arrives and checker.next_seq > 1:
            _ack(log, checker)
    got |= set(_collect(checker, _entries(log.batch(255)), markers=False))
    lost = {s for first, last in checker.lost for s in range(first, last + 1)}
    for seq in openings:
        assert (seq in got) != (seq in lost), seq
