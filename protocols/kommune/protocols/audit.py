# The lock's audit trail: every access decision and edge command as an entry
# that is MAC'd on the lock under its audit key and hash-chained to the entry
# before it. Entries travel to the edge (directly or carried by phones) in
# AUDIT_BATCH messages; the edge checks the chain (AuditChecker) and answers
# with an AUDIT_ACK, MAC'd under the lock's edge key, so the lock can prune.
# Byte layouts: protocols/LOCK.md.
import hashlib
import struct

from kommune.protocols.errors import (
    BAD_CHAIN,
    BAD_TAG,
    BAD_VALUE,
    GAP,
    OUT_OF_ORDER,
    TRUNCATED,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey, equal
from kommune.protocols.lock_wire import (
    MSG_AUDIT_ACK,
    MSG_AUDIT_BATCH,
    TAG_BYTES,
    check_bytes,
    check_size,
    check_type,
    check_uint,
    lock_key,
    status_code,
    status_reason,
    u32,
)

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

ENTRY_BYTES = const(55)
HASH_BYTES = const(16)
ACK_BYTES = const(21)
MAX_BATCH = const(255)  # entries per AUDIT_BATCH (count is a u8)
GENESIS = bytes(16)  # prev_hash of entry 1

# seq, time_s, event, op, status, holder_id, token_id, arg
_HEAD_FORMAT = ">IIBBBIII"
_HEAD_BYTES = const(23)
_MACED_BYTES = const(39)  # head + prev_hash
_LABEL_ENTRY = b"AUD1"
_LABEL_ACK = b"ACK1"

EVENT_ACCESS = const(1)  # a REQUEST: op, status, holder/token (0 if not authentic)
EVENT_COMMAND = const(2)  # a COMMAND: op = cmd (0 if not authentic), status, arg = value
EVENT_EPOCH_RAISED = const(3)  # a newer genuine token raised the epoch: arg = new epoch
EVENT_BOOT = const(4)  # firmware: arg = reset cause
EVENT_DOOR = const(5)  # firmware: arg = door/bolt state (firmware-defined)
_EVENT_MAX = const(5)


class AuditEntry:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(
        self,
        *,
        seq: int,
        time_s: int,
        event: int,
        op: int,
        status: str,
        holder_id: int = 0,
        token_id: int = 0,
        arg: int = 0,
        prev_hash: bytes,
        mac: bytes = b"",
    ) -> None:
        self.seq = seq  # 1, 2, 3, ... per lock, never reused
        self.time_s = time_s  # lock clock, site time seconds
        self.event = event
        self.op = op
        self.status = status
        self.holder_id = holder_id
        self.token_id = token_id
        self.arg = arg
        self.prev_hash = prev_hash  # entry_hash() of entry seq-1, GENESIS for seq 1
        self.mac = mac

    def maced(self) -> bytes:
        # The 39 bytes the MAC covers.
        check_uint("seq", self.seq, 32)
        check_uint("time_s", self.time_s, 32)
        check_uint("holder_id", self.holder_id, 32)
        check_uint("token_id", self.token_id, 32)
        check_uint("arg", self.arg, 32)
        check_uint("op", self.op, 8)
        if self.seq == 0 or not 1 <= self.event <= _EVENT_MAX:
            raise ProtocolError(BAD_VALUE, "seq %d event %d" % (self.seq, self.event))
        head = struct.pack(
            _HEAD_FORMAT,
            self.seq,
            self.time_s,
            self.event,
            self.op,
            status_code(self.status),
            self.holder_id,
            self.token_id,
            self.arg,
        )
        return head + check_bytes("prev_hash", self.prev_hash, HASH_BYTES)

    def encode(self) -> bytes:
        return self.maced() + check_bytes("mac", self.mac, TAG_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AuditEntry) and self.encode() == other.encode()


def decode_entry(data: bytes) -> AuditEntry:
    check_size(data, ENTRY_BYTES)
    f = struct.unpack_from(_HEAD_FORMAT, data, 0)
    entry = AuditEntry(
        seq=f[0],
        time_s=f[1],
        event=f[2],
        op=f[3],
        status=status_reason(f[4]),
        holder_id=f[5],
        token_id=f[6],
        arg=f[7],
        prev_hash=data[_HEAD_BYTES:_MACED_BYTES],
        mac=data[_MACED_BYTES:ENTRY_BYTES],
    )
    entry.maced()  # validates seq and event
    return entry


def entry_hash(entry: bytes) -> bytes:
    # The chain link: unkeyed, so anyone holding entries can check they link.
    return hashlib.sha256(entry).digest()[:HASH_BYTES]


def entry_mac(key: HmacKey, lock_id: int, maced: bytes) -> bytes:
    return key.digest(_LABEL_ENTRY, u32(lock_id), maced)[:TAG_BYTES]


class AuditLog:
    # The lock's side: appends MAC'd, chained entries and keeps them until an
    # ack says the edge has them. Bounded: when full, the oldest entry goes
    # (the edge then sees a gap - loss is visible, never silent).
    # Persisting next_seq, last_hash and the entries across resets is the
    # firmware's job; a chain that restarts at 1 is reported by the edge.
    def __init__(
        self,
        audit_key: bytes,
        lock_id: int,
        capacity: int = 64,
        next_seq: int = 1,
        last_hash: bytes = GENESIS,
    ) -> None:
        self._key = lock_key(audit_key)
        self.lock_id = lock_id
        self.capacity = capacity
        self.next_seq = next_seq
        self.last_hash = last_hash
        self.entries: list[bytes] = []
        self.dropped = 0  # entries lost to overflow since boot

    def append(
        self,
        time_s: int,
        event: int,
        op: int,
        status: str,
        *,
        holder_id: int = 0,
        token_id: int = 0,
        arg: int = 0,
    ) -> bytes:
        e = AuditEntry(
            seq=self.next_seq,
            time_s=time_s,
            event=event,
            op=op,
            status=status,
            holder_id=holder_id,
            token_id=token_id,
            arg=arg,
            prev_hash=self.last_hash,
        )
        maced = e.maced()
        entry = maced + entry_mac(self._key, self.lock_id, maced)
        if len(self.entries) >= self.capacity:
            self.entries.pop(0)
            self.dropped += 1
        self.entries.append(entry)
        self.next_seq += 1
        self.last_hash = entry_hash(entry)
        return entry

    def batch(self, max_entries: int) -> bytes:
        # An AUDIT_BATCH with the oldest unacked entries (re-sent until acked).
        return encode_batch(self.entries[:max_entries])

    def prune(self, seq: int) -> int:
        # Drop entries up to seq (acked); returns how many went.
        if seq >= self.next_seq:
            raise ProtocolError(BAD_VALUE, "ack %d for entries not written" % seq)
        n = 0
        while n < len(self.entries) and _seq_of(self.entries[n]) <= seq:
            n += 1
        del self.entries[:n]
        return n


def _seq_of(entry: bytes) -> int:
    seq: int = struct.unpack_from(">I", entry, 0)[0]
    return seq


def encode_batch(entries: list[bytes]) -> bytes:
    if len(entries) > MAX_BATCH:
        raise ProtocolError(BAD_VALUE, "%d entries in one batch" % len(entries))
    for e in entries:
        check_bytes("entry", e, ENTRY_BYTES)
    return bytes((MSG_AUDIT_BATCH, len(entries))) + b"".join(entries)


def decode_batch(data: bytes) -> list[AuditEntry]:
    if len(data) < 2:
        raise ProtocolError(TRUNCATED, "audit batch header")
    check_type(data, MSG_AUDIT_BATCH, 2 + data[1] * ENTRY_BYTES)
    return [decode_entry(data[i : i + ENTRY_BYTES]) for i in range(2, len(data), ENTRY_BYTES)]


class Ack:
    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __init__(self, seq: int, mac: bytes) -> None:
        self.seq = seq  # entries up to and including seq are safe at the edge
        self.mac = mac

    def body(self) -> bytes:
        return bytes((MSG_AUDIT_ACK,)) + u32(check_uint("seq", self.seq, 32))

    def encode(self) -> bytes:
        return self.body() + check_bytes("mac", self.mac, TAG_BYTES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ack) and self.encode() == other.encode()


def decode_ack(data: bytes) -> Ack:
    check_type(data, MSG_AUDIT_ACK, ACK_BYTES)
    return Ack(struct.unpack_from(">I", data, 1)[0], data[5:21])


def _ack_mac(edge_key: HmacKey, lock_id: int, body: bytes) -> bytes:
    return edge_key.digest(_LABEL_ACK, u32(lock_id), body)[:TAG_BYTES]


def encode_ack(edge_key: HmacKey, lock_id: int, seq: int) -> bytes:
    # Not bound to a challenge: an ack may ride on a phone for hours, and a
    # replayed ack prunes nothing that a newer one has not.
    body = Ack(seq, b"").body()
    return body + _ack_mac(edge_key, lock_id, body)


def open_ack(data: bytes, edge_key: HmacKey, lock_id: int) -> int:
    # The acked seq of a genuine ack from this lock's edge.
    ack = decode_ack(data)
    if not equal(ack.mac, _ack_mac(edge_key, lock_id, data[:5])):
        raise ProtocolError(BAD_TAG, "ack MAC")
    return ack.seq


class AuditChecker:
    # The edge's side, one per lock: accepts batches only if every entry is
    # genuine, in order, without gaps, and links to the one before. Persist
    # next_seq and last_hash with the entries; they are the chain's anchor.
    def __init__(
        self, audit_key: bytes, lock_id: int, next_seq: int = 1, last_hash: bytes = GENESIS
    ) -> None:
        self._key = lock_key(audit_key)
        self.lock_id = lock_id
        self.next_seq = next_seq
        self.last_hash = last_hash

    def accept(self, entries: list[bytes]) -> list[AuditEntry]:
        # The new entries, in order; on any error nothing is accepted.
        # Entries already accepted may lead the batch (re-sent until acked);
        # they must chain like the rest, and into the stored anchor.
        fresh: list[AuditEntry] = []
        prev_seq, prev_hash = -1, b""  # the entry before, in this batch
        for i in range(len(entries)):
            raw = entries[i]
            e = decode_entry(raw)
            if not equal(e.mac, entry_mac(self._key, self.lock_id, raw[:_MACED_BYTES])):
                raise ProtocolError(BAD_TAG, "entry %d (seq %d) MAC" % (i, e.seq))
            due = self.next_seq if prev_seq < 0 else prev_seq + 1
            if e.seq != due and (prev_seq >= 0 or e.seq > due):
                later = [_seq_of(x) for x in entries[i + 1 :] if len(x) == ENTRY_BYTES]
                reason = OUT_OF_ORDER if e.seq < due or due in later else GAP
                raise ProtocolError(reason, "seq %d where %d was due" % (e.seq, due))
            if prev_seq >= 0 and e.prev_hash != prev_hash:
                raise ProtocolError(BAD_CHAIN, "seq %d does not link to seq %d" % (e.seq, prev_seq))
            link = entry_hash(raw)
            if e.seq == self.next_seq and e.prev_hash != self.last_hash:
                raise ProtocolError(BAD_CHAIN, "seq %d does not link to the anchor" % e.seq)
            if e.seq == self.next_seq - 1 and link != self.last_hash:
                raise ProtocolError(BAD_CHAIN, "seq %d is not the entry accepted before" % e.seq)
            if e.seq >= self.next_seq:
                fresh.append(e)
            prev_seq, prev_hash = e.seq, link
        if fresh:
            self.next_seq, self.last_hash = prev_seq + 1, prev_hash
        return fresh

    def accept_batch(self, data: bytes) -> list[AuditEntry]:
        decode_batch(data)  # whole message well-formed first
        return self.accept([data[i : i + ENTRY_BYTES] for i in range(2, len(data), ENTRY_BYTES)])

    def ack(self, edge_key: bytes) -> bytes:
        # AUDIT_ACK for everything accepted so far (send once it is stored).
        return encode_ack(lock_key(edge_key), self.lock_id, self.next_seq - 1)
