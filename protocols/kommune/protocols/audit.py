# The lock's audit trail: every access decision and edge command as an entry
# that is MAC'd on the lock under its audit key and hash-chained to the entry
# before it. Entries travel to the edge (directly or carried by phones) in
# AUDIT_BATCH messages; the edge checks the chain (audit_check.AuditChecker)
# and answers with an AUDIT_ACK, MAC'd under the lock's edge key and bound to
# the acked entry's hash, so the lock can prune. A batch is sealed under the
# audit key (seal.py): a phone carrying it, or a listener, reads nothing.
# Byte layouts: protocols/LOCK.md. The edge's side (opening batches,
# checking the chain, acking) is in audit_check, which the lock never loads.
import hashlib
import struct

from kommune.protocols.errors import (
    BAD_TAG,
    BAD_VALUE,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import HmacKey, equal
from kommune.protocols.lock_wire import (
    MSG_AUDIT_ACK,
    MSG_AUDIT_BATCH,
    OK,
    TAG_BYTES,
    Message,
    check_bytes,
    check_size,
    check_type,
    check_uint,
    status_code,
    status_reason,
    u32,
)
from kommune.protocols.seal import SealKey, xor_stream

try:
    from micropython import const
except ImportError:  # CPython: const() is the identity
    const = int  # type: ignore[assignment]

ENTRY_BYTES = const(55)
HASH_BYTES = const(16)
ACK_BYTES = const(37)
_ACK_MAC_AT = const(21)
MAX_BATCH = const(255)  # entries per AUDIT_BATCH (count is a u8)
BATCH_HEAD_BYTES = const(18)  # type, count, seal tag
# Heap kept free when sizing a batch (the notify and the next request need some).
BATCH_RESERVE_BYTES = const(2048)
GENESIS = bytes(16)  # prev_hash of entry 1

# seq, time_s, event, op, status, holder_id, token_id, arg
_HEAD_FORMAT = ">IIBBBIII"
_HEAD_BYTES = const(23)
_MACED_BYTES = const(39)  # head + prev_hash
_STATUS_AT = const(10)
_LABEL_ENTRY = b"AUD1"
_LABEL_ACK = b"ACK2"
BATCH_LABEL = b"BAT2"

EVENT_ACCESS = const(1)  # a REQUEST: op, status, holder/token (0 if not authentic)
EVENT_COMMAND = const(2)  # a COMMAND: op = cmd (0 if not authentic), status, arg = value
EVENT_EPOCH_RAISED = const(3)  # a newer genuine token raised the epoch: arg = new epoch
EVENT_BOOT = const(4)  # firmware: arg = reset cause
EVENT_DOOR = const(5)  # firmware: arg = door/bolt state (firmware-defined)
# Failures counted, not logged one by one: op = their event (0: mixed), status =
# the last one's, token_id = first time_s, time_s = last time_s, arg = count.
EVENT_FAILURES = const(6)
# Entries lost to overflow: seq = the last lost, arg = the first lost, prev_hash
# = hash of the last lost entry (the next entry links to it); holder_id and
# token_id = the first 4 bytes of the first lost entry's prev_hash and hash.
EVENT_LOST = const(7)
_EVENT_MAX = const(7)


class AuditEntry(Message):
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


def entry_mac(key: HmacKey, lock_id: int, maced: "bytes | memoryview") -> bytes:
    return key.digest(_LABEL_ENTRY, u32(lock_id), maced)[:TAG_BYTES]


class AuditLog:
    # The lock's side: appends MAC'd, chained entries and keeps them until an
    # ack says the edge has them. Bounded (capacity entries), and a flood of
    # failures cannot push out an opening: failure entries (status not ok)
    # take at most max_failure_entries + 1 slots; past that, failures are
    # only counted and logged as one EVENT_FAILURES summary when a slot frees.
    # Only when openings alone fill the log do the oldest entries go, replaced
    # by one EVENT_LOST marker naming the seqs lost (LOCK.md: Audit trail).
    # Persisting next_seq, last_hash and the entries across resets is the
    # firmware's job; a chain that restarts at 1 is reported by the edge.
    def __init__(
        self,
        audit_key: bytes,
        lock_id: int,
        *,
        capacity: int = 64,
        next_seq: int = 1,
        last_hash: bytes = GENESIS,
        last_time_s: int = 0,
        max_failure_entries: int = -1,
    ) -> None:
        if capacity < 4:
            raise ProtocolError(BAD_VALUE, "audit capacity %d < 4" % capacity)
        self._key = SealKey(audit_key)
        self.lock_id = lock_id
        self.capacity = capacity
        if max_failure_entries < 0:
            max_failure_entries = capacity // 4
        self.max_failure_entries = min(max_failure_entries, capacity - 2)
        self.next_seq = next_seq
        self.last_hash = last_hash
        # The newest time_s ever logged: the lock's clock floor (persist it
        # with next_seq and last_hash; LOCK.md: Clock floor).
        self.last_time_s = last_time_s
        # Made at full size once, while the heap is young, so it never grows
        # (a full log's list is one block a fragmented heap may not have).
        self.entries: list[bytes] = [b""] * capacity
        del self.entries[:]
        self.lost = 0  # entries replaced by a lost marker since boot
        self._failures_held = 0  # entries in self.entries with a status other than ok
        # The failure summary being counted: count, first and last time_s,
        # event (0 if mixed), last status code.
        self._sum = [0, 0, 0, 0, 0]

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
        # The new entry, or b"" if a failure was only counted into the summary.
        code = status_code(status)
        if code and (
            self._sum[0]
            or self._failures_held >= self.max_failure_entries
            or len(self.entries) >= self.capacity
        ):
            self._count_failure(time_s, event, code)
            return b""
        self._flush(2)  # never evict an entry to make room for the summary
        if len(self.entries) >= self.capacity:
            self._evict(1)
        return self._store(time_s, event, op, code, holder_id=holder_id, token_id=token_id, arg=arg)

    def restore(self, entries: list[bytes]) -> None:
        # The entries the firmware persisted, oldest first, into a log made
        # with the persisted next_seq, last_hash and last_time_s (at boot).
        # Their MACs and chain are the firmware's store's to check as it reads
        # them; here: at most capacity, 55 bytes each, the last one next_seq - 1.
        # (The failure summary being counted is not persisted: LOCK.md.)
        held = 0
        for e in entries:
            check_bytes("entry", e, ENTRY_BYTES)
            held += e[_STATUS_AT] != 0
        if len(entries) > self.capacity or (entries and seq_of(entries[-1]) != self.next_seq - 1):
            raise ProtocolError(BAD_VALUE, "entries do not end the log")
        self.entries[:] = entries
        self._failures_held = held

    @property
    def mac_key(self) -> HmacKey:
        # For the verifier's check that no two purpose keys are the same.
        return self._key.mac

    def batch(self, max_entries: int, mem_free: int = -1) -> "bytes | bytearray":
        # A sealed AUDIT_BATCH with the oldest unacked entries (re-sent until
        # acked): at most max_entries, and no more than the free heap holds
        # (mem_free, bytes; -1: gc.mem_free() on MicroPython). A heap too
        # fragmented for the buffer gives a smaller batch, down to none.
        self._flush(1)
        if mem_free < 0:
            mem_free = _mem_free()
        n = min(max_entries, len(self.entries), MAX_BATCH)
        n = max(0, min(n, (mem_free - BATCH_RESERVE_BYTES) // ENTRY_BYTES))
        while True:
            try:
                return self._seal_batch(n)
            except MemoryError:
                if n == 0:
                    raise
                n //= 2

    def _seal_batch(self, n: int) -> bytearray:
        # Built and encrypted in one buffer: 18 + 55 n bytes, no copies.
        buf = bytearray(BATCH_HEAD_BYTES + n * ENTRY_BYTES)
        buf[0] = MSG_AUDIT_BATCH
        buf[1] = n
        pos = BATCH_HEAD_BYTES
        for i in range(n):
            buf[pos : pos + ENTRY_BYTES] = self.entries[i]
            pos += ENTRY_BYTES
        mv = memoryview(buf)
        tag = batch_tag(self._key, self.lock_id, mv[:2], mv[BATCH_HEAD_BYTES:])
        buf[2:BATCH_HEAD_BYTES] = tag
        xor_stream(self._key.enc, tag, buf, BATCH_HEAD_BYTES)
        return buf

    def prune(self, seq: int, acked_hash: bytes) -> int:
        # Drop entries up to seq, if the edge holds this lock's entry seq (its
        # hash, or for a lost marker the hash of the entry it replaced);
        # returns how many went. A stale ack (already pruned) drops nothing.
        if seq >= self.next_seq:
            raise ProtocolError(BAD_VALUE, "ack %d for entries not written" % seq)
        for i in range(len(self.entries)):
            e = self.entries[i]
            s = seq_of(e)
            if s > seq:
                break
            if s == seq:
                if not equal(entry_hash(e), acked_hash) and not (
                    e[8] == EVENT_LOST and equal(e[_HEAD_BYTES:_MACED_BYTES], acked_hash)
                ):
                    raise ProtocolError(BAD_VALUE, "ack %d is for another entry %d" % (seq, seq))
                for x in self.entries[: i + 1]:
                    self._failures_held -= x[_STATUS_AT] != 0
                del self.entries[: i + 1]
                return i + 1
        return 0

    def _store(
        self,
        time_s: int,
        event: int,
        op: int,
        code: int,
        *,
        holder_id: int,
        token_id: int,
        arg: int,
    ) -> bytes:
        # Packed in place (no AuditEntry, no copies: this runs per message on
        # the lock). The fields come from the lock and from authentic tokens
        # and commands (all u32 already), except the clock: checked.
        buf = bytearray(ENTRY_BYTES)
        struct.pack_into(
            _HEAD_FORMAT,
            buf,
            0,
            self.next_seq,
            check_uint("time_s", time_s, 32),
            event,
            op,
            code,
            holder_id,
            token_id,
            arg,
        )
        buf[_HEAD_BYTES:_MACED_BYTES] = self.last_hash
        buf[_MACED_BYTES:] = entry_mac(self._key.mac, self.lock_id, memoryview(buf)[:_MACED_BYTES])
        entry = bytes(buf)
        self.entries.append(entry)
        self._failures_held += code != 0
        self.next_seq += 1
        self.last_hash = entry_hash(entry)
        self.last_time_s = max(self.last_time_s, time_s)
        return entry

    def _count_failure(self, time_s: int, event: int, code: int) -> None:
        s = self._sum
        if not s[0]:
            s[1], s[3] = time_s, event
        elif s[3] != event:
            s[3] = 0  # mixed kinds
        s[0] += 1
        s[2] = time_s
        s[4] = code

    def _flush(self, slots: int) -> None:
        # Log the failure summary if `slots` slots are free (it may take the
        # one slot past max_failure_entries).
        s = self._sum
        if (
            s[0]
            and len(self.entries) + slots <= self.capacity
            and self._failures_held <= self.max_failure_entries
        ):
            self._store(s[2], EVENT_FAILURES, s[3], s[4], holder_id=0, token_id=s[1], arg=s[0])
            self._sum = [0, 0, 0, 0, 0]

    def _evict(self, n: int) -> None:
        # Frees n slots: the oldest n + 1 entries become one lost marker with
        # the seq of the last of them, arg = the first seq lost, prev_hash =
        # the hash of the last (so the next entry still links to it), and
        # 4-byte prefixes of the first lost entry's prev_hash (holder_id) and
        # own hash (token_id), so the edge can tell a gap from a restart.
        gone = self.entries[: n + 1]
        head = gone[0]
        if head[8] == EVENT_LOST:  # an earlier marker: extend its range
            into, first_id, first = struct.unpack_from(">III", head, 11)
            self.lost -= 1
        else:
            first = seq_of(head)
            into = struct.unpack_from(">I", head, _HEAD_BYTES)[0]
            first_id = struct.unpack_from(">I", entry_hash(head), 0)[0]
        last = gone[-1]
        e = AuditEntry(
            seq=seq_of(last),
            time_s=struct.unpack_from(">I", last, 4)[0],
            event=EVENT_LOST,
            op=0,
            status=OK,
            holder_id=into,
            token_id=first_id,
            arg=first,
            prev_hash=entry_hash(last),
        )
        maced = e.maced()
        for x in gone:
            self._failures_held -= x[_STATUS_AT] != 0
        self.lost += len(gone)
        self.entries[: n + 1] = [maced + entry_mac(self._key.mac, self.lock_id, maced)]


def seq_of(entry: bytes) -> int:
    seq: int = struct.unpack_from(">I", entry, 0)[0]
    return seq


def _mem_free() -> int:
    # Free heap on MicroPython; CPython has no such limit worth sizing by.
    import gc

    mem_free = getattr(gc, "mem_free", None)
    if mem_free is None:
        return 1 << 30
    free: int = mem_free()
    return free


def batch_tag(
    key: SealKey, lock_id: int, head: "bytes | memoryview", plain: "bytes | memoryview"
) -> bytes:
    return key.mac.digest(BATCH_LABEL, u32(lock_id), head, plain)[:TAG_BYTES]


class Ack(Message):
    def __init__(self, seq: int, entry_hash: bytes, mac: bytes) -> None:
        self.seq = seq  # entries up to and including seq are safe at the edge
        self.entry_hash = entry_hash  # entry_hash() of the edge's entry seq
        self.mac = mac

    def body(self) -> bytes:
        return (
            bytes((MSG_AUDIT_ACK,))
            + u32(check_uint("seq", self.seq, 32))
            + check_bytes("entry_hash", self.entry_hash, HASH_BYTES)
        )

    def encode(self) -> bytes:
        return self.body() + check_bytes("mac", self.mac, TAG_BYTES)


def decode_ack(data: bytes) -> Ack:
    check_type(data, MSG_AUDIT_ACK, ACK_BYTES)
    return Ack(struct.unpack_from(">I", data, 1)[0], data[5:_ACK_MAC_AT], data[_ACK_MAC_AT:])


def _ack_mac(edge_key: HmacKey, lock_id: int, body: bytes) -> bytes:
    return edge_key.digest(_LABEL_ACK, u32(lock_id), body)[:TAG_BYTES]


def encode_ack(edge_key: HmacKey, lock_id: int, seq: int, acked_hash: bytes) -> bytes:
    # Not bound to a challenge (an ack may ride on a phone for hours) but to
    # the entry it acks: a replayed ack prunes nothing a newer one has not,
    # and nothing of a chain that restarted since.
    body = Ack(seq, acked_hash, b"").body()
    return body + _ack_mac(edge_key, lock_id, body)


def open_ack(data: bytes, edge_key: HmacKey, lock_id: int) -> Ack:
    # A genuine ack from this lock's edge.
    ack = decode_ack(data)
    if not equal(ack.mac, _ack_mac(edge_key, lock_id, data[:_ACK_MAC_AT])):
        raise ProtocolError(BAD_TAG, "ack MAC")
    return ack
