# The edge's side of the audit trail (the lock never loads it): checks that a
# lock's AUDIT_BATCH holds genuine entries that continue the chain the edge
# already holds, and builds the AUDIT_ACK once they are stored. Two steps, so
# nothing is acked (and pruned on the lock) before it is durable:
#
#     accepted = checker.accept_batch(batch)         # open, verify; anchor unchanged
#     store(accepted.entries, accepted.lost)          # durably
#     checker.commit(accepted)                        # move the anchor
#     write(checker.ack(edge_key))
#
# Byte layouts and the argument: protocols/LOCK.md (Audit trail).
from kommune.protocols.audit import (
    BATCH_HEAD_BYTES,
    BATCH_LABEL,
    ENTRY_BYTES,
    EVENT_LOST,
    GENESIS,
    MAX_BATCH,
    AuditEntry,
    batch_tag,
    decode_entry,
    encode_ack,
    entry_hash,
    entry_mac,
    seq_of,
)
from kommune.protocols.errors import (
    BAD_CHAIN,
    BAD_TAG,
    BAD_VALUE,
    GAP,
    OUT_OF_ORDER,
    RESTARTED,
    TRUNCATED,
    ProtocolError,
)
from kommune.protocols.hmac_sha256 import equal
from kommune.protocols.lock_wire import MSG_AUDIT_BATCH, check_bytes, check_type, lock_key, u32
from kommune.protocols.seal import SealKey, unseal, xor_stream

TYPE_CHECKING = False
if TYPE_CHECKING:  # only the type checkers see this import
    from collections.abc import Callable

# Hashes of the latest accepted entries kept to compare re-sent ones with;
# more than a lock holds unacked (its capacity, 64 by default).
RECENT_HASHES = 256


def encode_batch(entries: list[bytes], key: SealKey, lock_id: int) -> bytes:
    # A sealed AUDIT_BATCH of these entries (the edge's tests and vectors;
    # the lock builds its batches in place, AuditLog.batch).
    if len(entries) > MAX_BATCH:
        raise ProtocolError(BAD_VALUE, "%d entries in one batch" % len(entries))
    for e in entries:
        check_bytes("entry", e, ENTRY_BYTES)
    head = bytes((MSG_AUDIT_BATCH, len(entries)))
    plain = b"".join(entries)
    tag = batch_tag(key, lock_id, head, plain)
    buf = bytearray(head + tag + plain)
    xor_stream(key.enc, tag, buf, BATCH_HEAD_BYTES)
    return bytes(buf)


def open_batch(data: bytes, key: SealKey, lock_id: int) -> list[bytes]:
    # The raw entries of a sealed AUDIT_BATCH from this lock, or an error.
    if len(data) < BATCH_HEAD_BYTES:
        raise ProtocolError(TRUNCATED, "audit batch header")
    check_type(data, MSG_AUDIT_BATCH, BATCH_HEAD_BYTES + data[1] * ENTRY_BYTES)
    plain = unseal(key, BATCH_LABEL, u32(lock_id), data, 2)
    return [bytes(plain[i : i + ENTRY_BYTES]) for i in range(0, len(plain), ENTRY_BYTES)]


def decode_batch(data: bytes, key: SealKey, lock_id: int) -> list[AuditEntry]:
    return [decode_entry(e) for e in open_batch(data, key, lock_id)]


class Accepted:
    # What one batch adds, and the anchor after it; commit() makes it so.
    def __init__(
        self,
        base: tuple[int, bytes],
        *,
        entries: list[AuditEntry],
        hashes: list[tuple[int, bytes]],
        lost: list[tuple[int, int]],
        next_seq: int,
        last_hash: bytes,
        restarted: bool,
    ) -> None:
        self.base = base  # (next_seq, last_hash) it was checked against
        self.entries = entries  # the new entries, in order: store them
        self.hashes = hashes  # (seq, entry_hash) of each
        # Seq ranges (first, last) the edge will never get: reported by the
        # lock's EVENT_LOST marker, or skipped by an explicit resync.
        self.lost = lost
        self.next_seq = next_seq
        self.last_hash = last_hash
        self.restarted = restarted  # the lock's chain began again at seq 1 (resync)


class AuditChecker:
    # One per lock. Persist next_seq, last_hash and recent with the entries:
    # they are the chain's anchor and what re-sent entries are compared with.
    # lookup(seq) -> entry_hash or None: the edge's durable store, asked for
    # entries older than `recent`; without it such entries cannot be compared
    # and a batch that needs them is refused (bad_chain), never waved through.
    def __init__(
        self,
        audit_key: bytes,
        lock_id: int,
        next_seq: int = 1,
        last_hash: bytes = GENESIS,
        recent: "dict[int, bytes] | None" = None,
        *,
        lookup: "Callable[[int], bytes | None] | None" = None,
    ) -> None:
        self._seal = SealKey(audit_key)
        self._key = self._seal.mac
        self.lookup = lookup
        self.lock_id = lock_id
        self.next_seq = next_seq
        self.last_hash = last_hash
        self.recent: dict[int, bytes] = dict(recent or {})  # seq -> entry_hash
        self.lost: list[tuple[int, int]] = []  # committed lost ranges, for the record
        self.restarts = 0  # committed chain restarts

    def accept_batch(self, data: bytes, resync: bool = False) -> Accepted:
        # A sealed AUDIT_BATCH: opened (bad_tag if not this lock's), then checked.
        return self.accept(open_batch(data, self._seal, self.lock_id), resync)

    def known(self, seq: int, recent: "dict[int, bytes]") -> "bytes | None":
        # The hash of the edge's entry seq, from memory or the durable store.
        h = recent.get(seq)
        if h is None and self.lookup is not None and recent is self.recent:
            h = self.lookup(seq)
        return h

    def accept(self, entries: list[bytes], resync: bool = False) -> Accepted:
        # Checks a batch against the committed anchor; on any error nothing is
        # accepted. resync=True is the audited way past a hole no lost marker
        # explains, or a chain restarted at seq 1: the skipped range is
        # reported in Accepted.lost / .restarted for the operator's record.
        try:
            return self._check(entries, self.next_seq, self.last_hash, self.recent, resync)
        except ProtocolError as e:
            if not (resync and e.reason == RESTARTED):
                raise
        accepted = self._check(entries, 1, GENESIS, {}, resync)
        accepted.base = (self.next_seq, self.last_hash)
        accepted.restarted = True
        return accepted

    def commit(self, accepted: Accepted) -> None:
        # After accepted.entries are stored durably: move the anchor.
        if accepted.base != (self.next_seq, self.last_hash):
            raise ProtocolError(BAD_VALUE, "accepted against another anchor")
        if accepted.restarted:
            self.recent = {}
            self.restarts += 1
        for seq, h in accepted.hashes:
            self.recent[seq] = h
        if len(self.recent) > RECENT_HASHES:
            for seq in sorted(self.recent)[: len(self.recent) - RECENT_HASHES]:
                del self.recent[seq]
        self.lost += accepted.lost
        self.next_seq, self.last_hash = accepted.next_seq, accepted.last_hash

    def ack(self, edge_key: bytes) -> bytes:
        # AUDIT_ACK for everything committed so far, bound to the last entry.
        if self.next_seq <= 1:
            raise ProtocolError(BAD_VALUE, "nothing accepted to ack")
        return encode_ack(lock_key(edge_key), self.lock_id, self.next_seq - 1, self.last_hash)

    def _was_lost(self, seq: int) -> bool:
        return any(first <= seq <= last for first, last in self.lost)

    def _check_marker(
        self,
        e: AuditEntry,
        due: int,
        link: bytes,
        recent: "dict[int, bytes]",
        from_genesis: bool,
    ) -> None:
        # A lost marker says which entries it replaced: the first of them must
        # be the edge's entry (if already accepted), or continue the edge's
        # chain (if next due). An accepted entry the edge cannot look up any
        # more cannot be compared: refused, as a wiped lock would look the same
        # (unless the lock reported it lost before: then the marker extends that one).
        first = e.arg
        if first > due:
            return  # a gap, already handled
        if first == due:
            ok = link[:4] == u32(e.holder_id)
        else:
            known = self.known(first, recent)
            if known is None and recent is self.recent and self._was_lost(first):
                return  # it extends a marker the edge already holds: nothing to compare
            if known is None:
                raise ProtocolError(
                    BAD_CHAIN,
                    "lost marker seq %d replaced entry %d, which the edge cannot look up"
                    % (e.seq, first),
                )
            ok = known[:4] == u32(e.token_id)
        if not ok:
            _chain(from_genesis, "lost marker seq %d replaced other entries than ours" % e.seq)

    def _check(
        self,
        entries: list[bytes],
        due: int,
        link: bytes,
        recent: "dict[int, bytes]",
        resync: bool,
    ) -> Accepted:
        fresh: list[AuditEntry] = []
        hashes: list[tuple[int, bytes]] = []
        lost: list[tuple[int, int]] = []
        prev_seq, prev_link = -1, b""  # the entry before, in this batch
        unverified = False  # re-sent entries not yet tied to what the edge holds
        from_genesis = False  # the batch starts a chain at seq 1
        for i in range(len(entries)):
            raw = entries[i]
            e = decode_entry(raw)
            if not equal(e.mac, entry_mac(self._key, self.lock_id, raw[:39])):
                raise ProtocolError(BAD_TAG, "entry %d (seq %d) MAC" % (i, e.seq))
            h = entry_hash(raw)
            marker = e.event == EVENT_LOST
            nxt = e.prev_hash if marker else h  # what the next entry links to
            if prev_seq >= 0:
                want = prev_seq + 1
                if e.seq != want:
                    later = [seq_of(x) for x in entries[i + 1 :] if len(x) == ENTRY_BYTES]
                    reason = OUT_OF_ORDER if e.seq < want or want in later else GAP
                    raise ProtocolError(reason, "seq %d where %d was due" % (e.seq, want))
                if marker:
                    raise ProtocolError(BAD_CHAIN, "lost marker seq %d inside a batch" % e.seq)
                if e.prev_hash != prev_link:
                    raise ProtocolError(
                        BAD_CHAIN, "seq %d does not link to seq %d" % (e.seq, prev_seq)
                    )
            else:
                from_genesis = (e.arg if marker else e.seq) == 1 and (
                    marker or e.prev_hash == GENESIS
                )
                if e.seq >= due:
                    first = e.arg if marker else e.seq  # first seq this entry shows
                    if first > due:
                        if not resync:
                            raise ProtocolError(
                                GAP, "seq %d where %d was due, no lost marker" % (first, due)
                            )
                        lost.append((due, first - 1))
                    if marker:
                        lost.append((max(due, first), e.seq))
                    elif e.seq == due and e.prev_hash != link:
                        _chain(from_genesis, "seq %d does not link to the anchor" % e.seq)
                if marker:
                    self._check_marker(e, due, link, recent, from_genesis)
            if e.seq < due:
                known = self.known(e.seq, recent)
                if known is not None and known != h and not (marker and known == e.prev_hash):
                    _chain(from_genesis, "seq %d differs from the entry accepted" % e.seq)
                unverified = known is None
                if e.seq == due - 1:
                    if nxt != link:
                        _chain(from_genesis, "seq %d is not the entry accepted before" % e.seq)
                    unverified = False
            else:
                fresh.append(e)
                hashes.append((e.seq, h))
            prev_seq, prev_link = e.seq, nxt
        if unverified:
            raise ProtocolError(BAD_CHAIN, "re-sent entries cannot be compared with ours")
        if fresh:
            due, link = prev_seq + 1, prev_link
        return Accepted(
            (self.next_seq, self.last_hash),
            entries=fresh,
            hashes=hashes,
            lost=lost,
            next_seq=due,
            last_hash=link,
            restarted=False,
        )


def _chain(from_genesis: bool, detail: str) -> None:
    # A batch that starts a new chain at seq 1 is a restart, else a fork.
    raise ProtocolError(RESTARTED if from_genesis else BAD_CHAIN, detail)
