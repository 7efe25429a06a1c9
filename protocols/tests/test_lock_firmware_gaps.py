"""What the lock firmware needed from the protocol and had to work around (issue 8):
a CHALLENGE_REQUEST, statuses for a faulty mechanism and an unprovisioned lock, a
deny-list over the air with a public verifier hook, a RESULT restated after the bolt
failed, a public restore of the audit log, and LOCK.md's persist-before-replying list
naming the audit batch."""

from __future__ import annotations

import hashlib
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.hil.paths import PROTOCOLS_ROOT
from kommune.protocols import handshake as hs
from kommune.protocols import token as T
from kommune.protocols.audit import EVENT_ACCESS, EVENT_COMMAND, AuditLog, decode_entry
from kommune.protocols.errors import (
    BAD_LENGTH,
    BAD_TAG,
    BAD_VALUE,
    BAD_VERSION,
    MECHANISM_FAULT,
    REVOKED,
    TOO_LONG,
    TRUNCATED,
    UNPROVISIONED,
    ProtocolError,
)
from kommune.protocols.lock_client import (
    ACTION_NAMES,
    CHALLENGE_REQUEST,
    EdgeSession,
    HolderSession,
    decode,
    decode_notice,
    deny_body,
    deny_ids,
    notice,
)
from kommune.protocols.lock_verifier import (
    ACT_CHALLENGE,
    ACT_DROP,
    ACT_LOCK,
    ACT_OPEN,
    ACT_REFUSE,
    ACT_SET_DENY,
    LockVerifier,
)
from kommune.protocols.lock_wire import (
    CMD_DENY_SET,
    MSG_CHALLENGE_REQUEST,
    MSG_DENY_LIST,
    OK,
    RIGHT_ADMIN,
    RIGHT_LOCK,
    RIGHT_UNLOCK,
    STATUSES,
    status_code,
    status_reason,
)
from kommune.protocols.seal import SealKey, seal

LOCK = 1017
TOKEN_KEY = hashlib.sha256(b"gap token key").digest()
EDGE_KEY = hashlib.sha256(b"gap edge key").digest()
AUDIT_KEY = hashlib.sha256(b"gap audit key").digest()
EPOCH = 3
VISIT = 1_767_258_600
HOLDER = 4242
TOKEN_ID = 0x0A0B0C0D
LOCK_MD = (PROTOCOLS_ROOT / "LOCK.md").read_text()


def _lock(**over: object) -> LockVerifier:
    return LockVerifier(LOCK, TOKEN_KEY, EDGE_KEY, EPOCH, AuditLog(AUDIT_KEY, LOCK), **over)  # type: ignore[arg-type]


def _holder(token_id: int = TOKEN_ID, holder_id: int = HOLDER) -> HolderSession:
    key = SealKey(TOKEN_KEY)
    tok = T.Token(
        token_id=token_id,
        holder_id=holder_id,
        lock_id=LOCK,
        not_before_s=VISIT - 600,
        not_after_s=VISIT + 600,
        rights=RIGHT_UNLOCK | RIGHT_LOCK | RIGHT_ADMIN,
        epoch=EPOCH,
    )
    sealed = T.seal_token(key, tok)
    return HolderSession(sealed, T.session_key(key, T.authenticate(sealed, key, LOCK)), LOCK)


def _unlock(lock: LockVerifier, holder: HolderSession, op: int = RIGHT_UNLOCK, at: int = 0):  # type: ignore[no-untyped-def]
    conn = lock.connect(at)
    ch = lock.challenge(conn, hashlib.sha256(b"n%d" % at).digest()[:16], at, VISIT)
    return conn, lock.respond(conn, holder.request(ch, op, b"h" * 16), at + 30, VISIT)


# -- 1. CHALLENGE_REQUEST ------------------------------------------------------------


def test_a_challenge_request_is_answered_by_the_next_challenge_and_costs_nothing() -> None:
    lock = _lock()
    conn = lock.connect(0)
    assert bytes((MSG_CHALLENGE_REQUEST, 2)) == CHALLENGE_REQUEST
    assert decode(CHALLENGE_REQUEST) == hs.decode_challenge_request(CHALLENGE_REQUEST)
    v = lock.respond(conn, CHALLENGE_REQUEST, 10, VISIT)
    assert (v.status, v.action, v.reply, ACTION_NAMES[v.action]) == (
        OK,
        ACT_CHALLENGE,
        b"",
        "challenge",
    )
    assert lock.audit.entries == [] and not v.state_changed and not conn.closed
    # The firmware answers with the connection's challenge, and a holder uses it.
    ch = lock.challenge(conn, bytes(range(16)), 20, VISIT)
    assert lock.respond(conn, _holder().request(ch, RIGHT_UNLOCK, b"h" * 16), 50, VISIT).ok


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"\x08\x01", BAD_VERSION), (b"\x08", TRUNCATED), (b"\x08\x02\x00", TOO_LONG)],
)
def test_a_malformed_challenge_request_drops_the_connection(data: bytes, reason: str) -> None:
    lock = _lock()
    conn = lock.connect(0)
    v = lock.respond(conn, data, 10, VISIT)
    assert (v.status, v.action, v.reply) == (reason, ACT_DROP, bytes((4, 8, status_code(reason))))
    assert conn.closed and lock.audit.entries == []


def test_lock_md_specifies_the_challenge_request_and_its_round_trips() -> None:
    assert re.search(r"\| 0x08 \| CHALLENGE_REQUEST \| peer → lock \| 2 \|", LOCK_MD)
    assert "write without response" in LOCK_MD


# -- 2. statuses ---------------------------------------------------------------------


def test_mechanism_fault_and_unprovisioned_have_their_own_codes() -> None:
    assert (status_code(MECHANISM_FAULT), status_code(UNPROVISIONED)) == (18, 19)
    assert STATUSES[17] == "clock_stale"  # append-only: nothing before them moved
    assert status_reason(18) == MECHANISM_FAULT and status_reason(19) == UNPROVISIONED
    assert decode_notice(hs.Notice(8, UNPROVISIONED).encode()).status == UNPROVISIONED
    assert "| 18 | mechanism_fault" in LOCK_MD and "| 19 | unprovisioned" in LOCK_MD


def test_a_faulty_mechanism_refuses_unlocks_before_the_motor_runs() -> None:
    lock = _lock()
    lock.mechanism_fault = 16
    _, v = _unlock(lock, _holder())
    assert (v.status, v.action) == (MECHANISM_FAULT, ACT_REFUSE)
    reply = decode_entry(lock.audit.entries[-1])
    assert (reply.event, reply.status, reply.holder_id) == (EVENT_ACCESS, MECHANISM_FAULT, HOLDER)
    _, v = _unlock(lock, _holder(), RIGHT_LOCK, at=1000)  # locking is still tried
    assert (v.status, v.action) == (OK, ACT_LOCK)
    lock.mechanism_fault = 0
    assert _unlock(lock, _holder(), at=2000)[1].action == ACT_OPEN


# -- 3. deny-list --------------------------------------------------------------------


def _deny_list(version: int, tokens: list[int], holders: list[int], epoch: int = EPOCH) -> bytes:
    return EdgeSession(EDGE_KEY, LOCK).deny_list(epoch, version, tokens, holders)


def test_a_deny_list_is_sealed_and_opens_only_under_this_locks_edge_key() -> None:
    msg = _deny_list(1, [TOKEN_ID], [HOLDER])
    assert len(msg) == 27 + 4 * 2 and msg[0] == MSG_DENY_LIST
    assert struct.pack(">I", HOLDER) not in msg and struct.pack(">I", TOKEN_ID) not in msg
    epoch, version, body = hs.open_deny_list(msg, SealKey(EDGE_KEY), LOCK)
    assert (epoch, version, deny_ids(body)) == (EPOCH, 1, ([TOKEN_ID], [HOLDER]))
    for i in range(len(msg)):
        flipped = bytearray(msg)
        flipped[i] ^= 1
        with pytest.raises(ProtocolError) as e:
            hs.open_deny_list(bytes(flipped), SealKey(EDGE_KEY), LOCK)
        assert e.value.reason in (BAD_TAG, "unknown_type"), i
    with pytest.raises(ProtocolError, match=BAD_TAG):
        hs.open_deny_list(msg, SealKey(EDGE_KEY), LOCK + 1)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        hs.open_deny_list(msg, SealKey(TOKEN_KEY), LOCK)


def test_a_deny_list_is_bounded() -> None:
    edge = EdgeSession(EDGE_KEY, LOCK)
    full = edge.deny_list(EPOCH, 1, list(range(1, 17)), list(range(1, 17)))
    assert len(full) == 155
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        edge.deny_list(EPOCH, 1, list(range(1, 18)), list(range(1, 17)))
    with pytest.raises(ProtocolError, match=TOO_LONG):
        hs.open_deny_list(full + bytes(4), SealKey(EDGE_KEY), LOCK)
    with pytest.raises(ProtocolError, match=BAD_TAG):
        hs.open_deny_list(full[:-1], SealKey(EDGE_KEY), LOCK)
    # Counts that disagree with the length are refused even under a good seal.
    forged = seal(SealKey(EDGE_KEY), hs.DENY_LABEL, struct.pack(">I", LOCK), full[:9], b"\x03\x00")
    with pytest.raises(ProtocolError, match=BAD_LENGTH):
        hs.open_deny_list(forged, SealKey(EDGE_KEY), LOCK)


@given(st.binary(max_size=200))
def test_any_bytes_open_as_a_deny_list_or_raise_protocol_error(data: bytes) -> None:
    try:
        hs.open_deny_list(b"\x09" + data, SealKey(EDGE_KEY), LOCK)
    except ProtocolError:
        pass


@given(st.lists(st.integers(1, 2**32 - 1), max_size=16), st.integers(1, 2**32 - 1))
def test_denies_matches_whole_ids_only(ids: list[int], probe: int) -> None:
    body = deny_body(ids, [])
    assert hs.denies(body, probe, 0) == (probe in ids)
    assert not hs.denies(body, 0, probe)  # token ids are not holder ids


def test_the_verifier_refuses_a_denied_token_or_holder_and_keeps_only_newer_lists() -> None:
    lock = _lock()
    conn = lock.connect(0)
    v = lock.respond(conn, _deny_list(2, [0x77], [HOLDER]), 10, VISIT)
    assert (v.status, v.action, notice(v.reply).status) == (OK, ACT_SET_DENY, OK)
    assert lock.deny[:2] == (EPOCH, 2)
    entry = decode_entry(lock.audit.entries[-1])
    assert (entry.event, entry.op, entry.status, entry.arg) == (EVENT_COMMAND, CMD_DENY_SET, OK, 2)
    # The holder's genuine token: revoked (an authenticated RESULT, logged with the holder).
    _, v = _unlock(lock, _holder())
    assert (v.status, v.action, v.token.holder_id) == (REVOKED, ACT_REFUSE, HOLDER)  # type: ignore[union-attr]
    # Another holder with a denied token id: revoked; an unlisted one opens.
    assert _unlock(lock, _holder(0x77, 5), at=100)[1].status == REVOKED
    assert _unlock(lock, _holder(0x78, 5), at=200)[1].action == ACT_OPEN
    # An older list (or one of an older epoch) never replaces it, and is not charged.
    for old in (_deny_list(1, [], []), _deny_list(9, [], [], epoch=EPOCH - 1)):
        v = lock.respond(conn, old, 300, VISIT)
        assert (v.status, v.action, v.counts) == (BAD_VALUE, ACT_REFUSE, False)
    # The same version with other ids is an edge fault, refused too.
    v = lock.respond(conn, _deny_list(2, [], []), 310, VISIT)
    assert v.status == BAD_VALUE
    assert deny_ids(lock.deny[2]) == ([0x77], [HOLDER])
    # A forged list drops the connection and changes nothing.
    forged = bytearray(_deny_list(3, [], []))
    forged[-1] ^= 1
    v = lock.respond(conn, bytes(forged), 320, VISIT)
    assert (v.status, v.action) == (BAD_TAG, ACT_DROP)
    assert lock.deny[1] == 2
    # A new epoch's list replaces it (versions restart per epoch).
    conn = lock.connect(400)
    assert lock.respond(conn, _deny_list(1, [], [], epoch=EPOCH + 1), 400, VISIT).ok
    assert _unlock(lock, _holder(), at=500)[1].action == ACT_OPEN


def test_a_replayed_deny_list_proves_nothing() -> None:
    # Anyone may replay the lock's current list from the air: it must not make a
    # squatter's connection "proven" (proven connections are evicted last).
    lock = _lock()
    current = _deny_list(2, [], [HOLDER])
    edge = lock.connect(0)
    assert lock.respond(edge, current, 10, VISIT).action == ACT_SET_DENY
    assert edge.proven
    squatter = lock.connect(20)
    v = lock.respond(squatter, current, 30, VISIT)
    assert (v.status, squatter.proven) == (OK, False)
    v = lock.respond(squatter, _deny_list(1, [], []), 40, VISIT)
    assert (v.status, squatter.proven, squatter.closed) == (BAD_VALUE, False, False)


def test_the_deny_list_the_firmware_persisted_is_loaded_at_boot() -> None:
    lock = _lock()
    lock.respond(lock.connect(0), _deny_list(2, [], [HOLDER]), 10, VISIT)
    saved = lock.deny  # (epoch, version, body): what the firmware persists
    rebooted = _lock()
    rebooted.load_deny(*saved)
    assert rebooted.deny == lock.deny
    assert _unlock(rebooted, _holder())[1].status == REVOKED
    with pytest.raises(ProtocolError):
        rebooted.load_deny(EPOCH, 2, saved[2][:-1])  # a damaged body is not a list


# -- 4. restatus ---------------------------------------------------------------------


def test_restatus_gives_the_same_requests_result_with_the_mechanisms_status() -> None:
    lock = _lock()
    holder = _holder()
    conn = lock.connect(0)
    ch = lock.challenge(conn, bytes(range(16)), 0, VISIT)
    request = holder.request(ch, RIGHT_UNLOCK, b"h" * 16)
    v = lock.respond(conn, request, 30, VISIT)
    assert v.action == ACT_OPEN
    logged = list(lock.audit.entries)
    reply = lock.restatus(v, request, MECHANISM_FAULT)
    assert (v.reply, v.status, v.action, v.counts) == (reply, MECHANISM_FAULT, ACT_REFUSE, False)
    got = holder.result(reply)
    assert (got.status, got.authenticated, got.ok) == (MECHANISM_FAULT, True, False)
    assert lock.audit.entries == logged  # the firmware logs what the bolt did
    # A NOTICE has no key to restate it with.
    junk = lock.respond(lock.connect(100), b"\x02", 100, VISIT)
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        lock.restatus(junk, b"\x02", MECHANISM_FAULT)
    # An edge command's RESULT is restated under the edge key.
    edge = EdgeSession(EDGE_KEY, LOCK)
    conn = lock.connect(200)
    ch = lock.challenge(conn, bytes(range(1, 17)), 200, VISIT)
    command = edge.command(ch, 1, VISIT, b"e" * 16, now_s=VISIT)
    v = lock.respond(conn, command, 230, VISIT)
    assert edge.result(lock.restatus(v, command, BAD_VALUE)).status == BAD_VALUE


# -- 5. AuditLog.restore -------------------------------------------------------------


def test_an_audit_log_restores_its_entries_and_failure_budget() -> None:
    log = AuditLog(AUDIT_KEY, LOCK, capacity=8)
    for i in range(3):
        log.append(VISIT + i, EVENT_ACCESS, 1, OK)
    log.append(VISIT + 3, EVENT_ACCESS, 1, "expired")
    log.append(VISIT + 4, EVENT_ACCESS, 1, "expired")  # the budget is 8 // 4 = 2 failures
    restored = AuditLog(
        AUDIT_KEY,
        LOCK,
        capacity=8,
        next_seq=log.next_seq,
        last_hash=log.last_hash,
        last_time_s=log.last_time_s,
    )
    restored.restore(list(log.entries))
    assert restored.entries == log.entries
    # The next failure is counted, not logged, exactly as in the log it came from.
    assert restored.append(VISIT + 5, EVENT_ACCESS, 1, "expired") == b""
    assert log.append(VISIT + 5, EVENT_ACCESS, 1, "expired") == b""
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        restored.restore(log.entries[1:3])  # not ending at next_seq - 1
    with pytest.raises(ProtocolError, match=BAD_LENGTH):
        restored.restore([log.entries[0][:-1]])
    with pytest.raises(ProtocolError, match=BAD_VALUE):
        AuditLog(AUDIT_KEY, LOCK, capacity=4, next_seq=6).restore(log.entries)


# -- 6. LOCK.md: persist after batch() -----------------------------------------------


def test_lock_md_says_to_persist_after_batch_and_before_sending_it() -> None:
    persist = LOCK_MD.split("- **Persist before replying.**", 1)[1].split("\n- ", 1)[0]
    assert "batch()" in persist and "before" in persist and "deny" in persist
