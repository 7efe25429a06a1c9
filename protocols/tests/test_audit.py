"""The audit trail: entry layout, round trips, totality, and that the edge's chain
check catches every gap, reorder, modification and forgery."""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lock_strategies import acks, entries, keys

from kommune.protocols import audit, audit_check
from kommune.protocols.audit_check import AuditChecker
from kommune.protocols.errors import (
    BAD_CHAIN,
    BAD_LENGTH,
    BAD_TAG,
    BAD_VALUE,
    GAP,
    OUT_OF_ORDER,
    RESTARTED,
    TOO_LONG,
    TRUNCATED,
    UNKNOWN_TYPE,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey
from kommune.protocols.lock_wire import MSG_AUDIT_BATCH, OK, STATUSES
from kommune.protocols.seal import SealKey

LOCK = 1017
AUDIT_KEY = hashlib.sha256(b"test audit key").digest()
EDGE_KEY = hashlib.sha256(b"test edge key").digest()
SEAL = SealKey(AUDIT_KEY)

events = st.fixed_dictionaries(
    {
        "time_s": st.integers(0, 2**32 - 1),
        "event": st.integers(1, 5),
        "op": st.integers(0, 255),
        "status": st.sampled_from(STATUSES),
        "holder_id": st.integers(0, 2**32 - 1),
    }
)


def _log(n: int, capacity: int = 64) -> audit.AuditLog:
    log = audit.AuditLog(AUDIT_KEY, LOCK, capacity=capacity)
    for i in range(n):
        log.append(1000 + i, audit.EVENT_ACCESS, 1, OK, holder_id=i + 1, token_id=7)
    return log


def _checker(**kw: object) -> AuditChecker:
    return AuditChecker(AUDIT_KEY, LOCK, **kw)  # type: ignore[arg-type]


def _collect(
    checker: AuditChecker, entries: list[bytes], resync: bool = False, markers: bool = True
) -> list[int]:
    # What an edge does: check, store (here: nothing to store), commit.
    accepted = checker.accept(entries, resync)
    checker.commit(accepted)
    return [e.seq for e in accepted.entries if markers or e.event != audit.EVENT_LOST]


def _ack(log: audit.AuditLog, checker: AuditChecker) -> int:
    ack = audit.open_ack(checker.ack(EDGE_KEY), HmacKey(EDGE_KEY), LOCK)
    return log.prune(ack.seq, ack.entry_hash)


@given(entries)
def test_entry_round_trip(entry: audit.AuditEntry) -> None:
    data = entry.encode()
    assert len(data) == audit.ENTRY_BYTES
    assert audit.decode_entry(data) == entry


@given(st.lists(entries, max_size=5))
def test_batch_round_trip(batch: list[audit.AuditEntry]) -> None:
    data = audit_check.encode_batch([e.encode() for e in batch], SEAL, LOCK)
    assert len(data) == 18 + audit.ENTRY_BYTES * len(batch)
    assert audit_check.decode_batch(data, SEAL, LOCK) == batch
    for e in batch:  # sealed: no entry's fields in the clear
        assert e.encode()[:23] not in data


def test_batch_is_sealed_to_the_audit_key_and_lock() -> None:
    log = _log(3)
    sealed = log.batch(255)
    assert audit_check.open_batch(sealed, SEAL, LOCK) == log.entries
    for entry in log.entries:
        assert entry[11:15] not in sealed  # holder ids
    for key, lock in ((SealKey(EDGE_KEY), LOCK), (SEAL, LOCK + 1)):
        with pytest.raises(ProtocolError, match=BAD_TAG):
            audit_check.open_batch(sealed, key, lock)


def test_batch_size_follows_free_memory() -> None:
    log = _log(40)
    for free, n in ((10**6, 32), (audit.BATCH_RESERVE_BYTES + 5 * 55, 5), (100, 0)):
        batch = log.batch(32, mem_free=free)
        assert batch[1] == n and len(batch) == 18 + 55 * n


@given(acks)
def test_ack_round_trip(ack: audit.Ack) -> None:
    assert audit.decode_ack(ack.encode()) == ack


@given(st.binary(max_size=130))
def test_decoders_are_total(data: bytes) -> None:
    for decode in (audit.decode_entry, audit.decode_ack):
        try:
            decode(data)
        except ProtocolError as e:
            assert e.reason in STATUSES
    try:
        audit_check.decode_batch(data, SEAL, LOCK)
    except ProtocolError as e:
        assert e.reason in STATUSES


@given(st.integers(0, 255), st.binary(max_size=140))
def test_batch_decoder_is_total_with_any_count(count: int, body: bytes) -> None:
    try:
        audit_check.decode_batch(bytes([MSG_AUDIT_BATCH, count]) + body, SEAL, LOCK)
    except ProtocolError as e:
        assert e.reason in (TRUNCATED, TOO_LONG, BAD_TAG)
    else:
        raise AssertionError("random bytes opened as a batch")


def test_batch_limits() -> None:
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        audit_check.encode_batch([bytes(55)] * 256, SEAL, LOCK)
    with pytest.raises(ProtocolError, match=BAD_LENGTH):
        audit_check.encode_batch([bytes(54)], SEAL, LOCK)
    with pytest.raises(ProtocolError, match=UNKNOWN_TYPE):
        audit_check.decode_batch(b"\x06\x00" + bytes(16), SEAL, LOCK)


@given(keys, st.lists(events, min_size=1, max_size=6))
def test_entries_match_lock_md(key: bytes, evs: list[dict[str, int | str]]) -> None:
    log = audit.AuditLog(key, LOCK)
    prev = bytes(16)
    for seq, ev in enumerate(evs, 1):
        entry = log.append(
            int(ev["time_s"]),
            int(ev["event"]),
            int(ev["op"]),
            str(ev["status"]),
            holder_id=int(ev["holder_id"]),
        )
        head = struct.pack(
            ">IIBBBIII",
            seq,
            ev["time_s"],
            ev["event"],
            ev["op"],
            STATUSES.index(str(ev["status"])),
            ev["holder_id"],
            0,
            0,
        )
        mac = std_hmac.new(key, b"AUD1" + struct.pack(">I", LOCK) + head + prev, hashlib.sha256)
        assert entry == head + prev + mac.digest()[:16]
        prev = hashlib.sha256(entry).digest()[:16]
    assert log.last_hash == prev and log.next_seq == len(evs) + 1


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(1, 5), st.booleans()), max_size=12))
def test_collections_deliver_every_entry_once_in_order(
    rounds: list[tuple[int, int, bool]],
) -> None:
    # Each round: the lock logs some events, a collector fetches a batch,
    # and the ack either reaches the lock or is lost.
    log, checker, got, written = audit.AuditLog(AUDIT_KEY, LOCK), _checker(), [], 0
    for new, batch_size, ack_arrives in rounds:
        for _ in range(new):
            written += 1
            log.append(written, audit.EVENT_ACCESS, 1, OK, holder_id=written)
        got += _collect(checker, _entries(log.batch(batch_size)))
        if ack_arrives and checker.next_seq > 1:
            _ack(log, checker)
    got += _collect(checker, _entries(log.batch(255)))
    assert got == list(range(1, written + 1))
    if written:
        _ack(log, checker)
    assert log.entries == []


def _tampered(chain: list[bytes], how: str, i: int) -> list[bytes]:
    c = list(chain)
    if how == "drop":
        del c[i]
    elif how == "swap":
        c[i], c[i + 1] = c[i + 1], c[i]
    elif how == "duplicate":
        c.insert(i + 1, c[i])
    elif how == "forge_mac":
        c[i] = c[i][:39] + bytes(16)
    return c


@given(st.integers(3, 8), st.sampled_from(["drop", "swap", "duplicate", "forge_mac"]), st.data())
def test_chain_check_catches_tampering(n: int, how: str, data: st.DataObject) -> None:
    chain = _log(n).entries
    last = n - 1 if how == "forge_mac" else n - 2  # dropping the tail: see the next test
    i = data.draw(st.integers(0, last))
    checker = _checker()
    with pytest.raises(ProtocolError) as e:
        checker.accept(_tampered(chain, how, i))
    assert e.value.reason in (GAP, OUT_OF_ORDER, BAD_TAG)


@given(st.integers(1, 6), st.data())
def test_chain_check_catches_any_flipped_bit(n: int, data: st.DataObject) -> None:
    chain = _log(n).entries
    i = data.draw(st.integers(0, n - 1))
    bit = data.draw(st.integers(0, 8 * audit.ENTRY_BYTES - 1))
    bad = bytearray(chain[i])
    bad[bit // 8] ^= 1 << (bit % 8)
    chain[i] = bytes(bad)
    with pytest.raises(ProtocolError):
        _checker().accept(chain)


def _entries(batch: bytes) -> list[bytes]:
    return audit_check.open_batch(batch, SEAL, LOCK)


def test_a_stripped_tail_is_sent_again() -> None:
    # Dropping the newest entries in transit hides nothing: the ack covers
    # only what arrived, so the lock keeps and re-sends the rest.
    log, checker = _log(4), _checker()
    assert _collect(checker, log.entries[:2]) == [1, 2]
    _ack(log, checker)
    assert _collect(checker, _entries(log.batch(10))) == [3, 4]


def test_a_forked_history_breaks_the_chain() -> None:
    # The lock's flash rolled back and it wrote a different entry 3.
    log, checker = _log(3), _checker()
    _collect(checker, log.entries)
    fork = audit.AuditLog(AUDIT_KEY, LOCK, next_seq=4, last_hash=bytes(16))
    fork.append(5000, audit.EVENT_BOOT, 0, OK)
    with pytest.raises(ProtocolError, match=BAD_CHAIN):
        checker.accept(fork.entries)


def test_resent_entries_must_be_the_ones_accepted() -> None:
    # A lock whose chain restarted re-sends "entry 2" that is not the entry 2
    # the edge holds: a restart, never silently skipped.
    log, checker = _log(3), _checker()
    _collect(checker, log.entries[:2])
    other = audit.AuditLog(AUDIT_KEY, LOCK)
    other.append(1, audit.EVENT_BOOT, 0, OK)
    other.append(2, audit.EVENT_BOOT, 0, OK)
    with pytest.raises(ProtocolError, match=RESTARTED):
        checker.accept(other.entries)
    assert _collect(checker, log.entries) == [3]


def test_entries_of_another_lock_are_rejected() -> None:
    other = audit.AuditLog(AUDIT_KEY, LOCK + 1)
    other.append(1, audit.EVENT_BOOT, 0, OK)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        _checker().accept(other.entries)


def test_prune_keeps_unacked_entries() -> None:
    log = _log(4)
    h2 = audit.entry_hash(log.entries[1])
    assert log.prune(0, bytes(16)) == 0
    assert log.prune(2, h2) == 2 and log.prune(2, h2) == 0
    assert [audit.decode_entry(e).seq for e in log.entries] == [3, 4]
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        log.prune(5, h2)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        log.prune(3, h2)  # an ack for another entry 3


def test_ack_is_bound_to_the_lock_and_key() -> None:
    ack = audit.encode_ack(HmacKey(EDGE_KEY), LOCK, 9, b"h" * 16)
    assert ack[:21] == b"\x06\x00\x00\x00\x09" + b"h" * 16 and len(ack) == audit.ACK_BYTES
    opened = audit.open_ack(ack, HmacKey(EDGE_KEY), LOCK)
    assert (opened.seq, opened.entry_hash) == (9, b"h" * 16)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        audit.open_ack(ack, HmacKey(EDGE_KEY), LOCK + 1)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        audit.open_ack(ack, HmacKey(AUDIT_KEY), LOCK)


def test_entry_refuses_bad_fields() -> None:
    ok = {
        "seq": 1,
        "time_s": 0,
        "event": 1,
        "op": 0,
        "status": OK,
        "prev_hash": bytes(16),
        "mac": bytes(16),
    }
    for change in ({"seq": 0}, {"event": 0}, {"event": 8}, {"op": 256}, {"arg": 2**32}):
        with pytest.raises(ProtocolError, match=BAD_VALUE):
            audit.AuditEntry(**{**ok, **change}).encode()  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=BAD_LENGTH):
        audit.AuditEntry(**{**ok, "prev_hash": bytes(15)}).encode()  # type: ignore[arg-type]
