# What the lock keeps in flash across resets and power cuts: its revocation
# epoch, needs_time, the bolt's latched fault, the audit log (entries,
# next_seq, last_hash, the clock floor last_time_s). Written before a reply
# is notified or the bolt moves.
#
# Two files (byte layout: README.md, "Flash formats"):
#
#   /lock/audit.bin  a ring of SLOTS fixed 55-byte slots; entry seq lives in
#                    slot (seq - 1) % SLOTS. Entries are only ever written to
#                    slots no live entry uses (see save), never rewritten.
#   /lock/deny.bin   the deny-list in force (LockVerifier.deny), replaced
#                    atomically on ACT_SET_DENY before the reply.
#   /lock/state.bin  the header: epoch, flags, first_seq, next_seq, last_hash,
#                    last_time_s, and the log's front lost marker (the one
#                    entry that replaces others), with a CRC-32. Replaced
#                    atomically (write + rename), and always written last.
#
# So the header is the commit: a power cut before its rename leaves the old
# header, which names only entries written before it; the new slots it did
# not commit are never read. Every entry carries its MAC and its chain link,
# and load() checks both, so even a torn slot could not pass as an entry.
import binascii
import os
import struct

from common import files
from micropython import const

from kommune.protocols.audit import (
    ENTRY_BYTES,
    EVENT_LOST,
    GENESIS,
    AuditLog,
    entry_hash,
    entry_mac,
    seq_of,
)
from kommune.protocols.hmac_sha256 import equal
from kommune.protocols.seal import SealKey

DIR = "/lock"
STATE_PATH = "/lock/state.bin"
RING_PATH = "/lock/audit.bin"
DENY_PATH = "/lock/deny.bin"
_DENY_MAGIC = b"KLD1"
_DENY_HEAD = ">4sII"  # magic, epoch, version; then the list's body, then a CRC-32
_DENY_HEAD_BYTES = const(12)
_MAGIC = b"KLS1"
# magic, flags, epoch, first_seq, next_seq, last_time_s, last_hash, front marker
_HEAD = ">4sBIIII16s"
_HEAD_BYTES = const(37)
_STATE_BYTES = const(92)  # head + marker
_FLAG_NEEDS_TIME = const(1)
_FLAG_MARKER = const(2)
_FLAG_JAM_UNLOCKING = const(4)  # the bolt's latched fault (bolt.FAULT_*), kept across resets
_FLAG_JAM_LOCKING = const(8)
_FAULT_JAM_UNLOCKING = const(16)
_FAULT_JAM_LOCKING = const(17)
# Ring slots beyond the log's capacity: entries appended between two saves
# land in slots the last committed header does not name (at most 3 per verdict).
_SPARE_SLOTS = const(8)
_STATUS_AT = const(10)
_EVENT_AT = const(8)


class StoreError(Exception):
    pass


class Saved:
    # What load() found.
    def __init__(self) -> None:
        self.epoch = 0
        self.needs_time = True  # a new lock serves no request before the edge's first time set
        self.fault = 0  # the bolt's latched fault
        self.next_seq = 1
        self.last_hash = GENESIS
        self.last_time_s = 0
        self.entries: list = []
        self.dropped = 0  # entries that failed their checks (none, unless flash rots)


class LockStore:
    def __init__(self, audit_key: bytes, lock_id: int, capacity: int) -> None:
        self._audit_key = audit_key
        self._lock_id = lock_id
        self.capacity = capacity
        self.slots = capacity + _SPARE_SLOTS
        self._saved_next = 1  # entries from this seq on are not in the ring yet
        self.saves = 0

    def load(self) -> Saved:
        saved = Saved()
        files.ensure_dir(DIR)
        raw = files.read(STATE_PATH)
        if raw is None:
            self._new_ring()
            return saved
        # The ring made at the first boot fixes the capacity (a changed
        # audit_capacity setting would map seqs to other slots).
        self.slots = os.stat(RING_PATH)[6] // ENTRY_BYTES
        self.capacity = self.slots - _SPARE_SLOTS
        if len(raw) != _STATE_BYTES + 4 or struct.unpack(">I", raw[_STATE_BYTES:])[0] != (
            binascii.crc32(raw[:_STATE_BYTES]) & 0xFFFFFFFF
        ):
            raise StoreError("state file corrupt")
        magic, flags, epoch, first, nxt, last_time_s, last_hash = struct.unpack_from(_HEAD, raw)
        if magic != _MAGIC:
            raise StoreError("state file format")
        saved.epoch = epoch
        saved.needs_time = bool(flags & _FLAG_NEEDS_TIME)
        if flags & _FLAG_JAM_UNLOCKING:
            saved.fault = _FAULT_JAM_UNLOCKING
        elif flags & _FLAG_JAM_LOCKING:
            saved.fault = _FAULT_JAM_LOCKING
        saved.next_seq = nxt
        saved.last_hash = last_hash
        saved.last_time_s = last_time_s
        entries = saved.entries
        seq = first
        if flags & _FLAG_MARKER:
            entries.append(raw[_HEAD_BYTES:_STATE_BYTES])
            seq += 1
        if seq < nxt:
            with open(RING_PATH, "rb") as f:
                while seq < nxt:
                    f.seek(((seq - 1) % self.slots) * ENTRY_BYTES)
                    entries.append(f.read(ENTRY_BYTES))
                    seq += 1
        saved.dropped = self._check(entries, last_hash)
        if saved.dropped:
            del entries[: saved.dropped]
        self._saved_next = nxt
        return saved

    def _check(self, entries: list, last_hash: bytes) -> int:
        # How many leading entries to drop: keep the longest run that ends at
        # last_hash, chains, and whose MACs and seqs are right.
        key = SealKey(self._audit_key).mac
        want = last_hash
        i = len(entries)
        while i > 0:
            e = entries[i - 1]
            # A lost marker stands in for the last entry it replaced: the entry
            # after it links to that entry's hash, which is the marker's prev_hash.
            link = e[23:39] if e[_EVENT_AT] == EVENT_LOST else entry_hash(e)
            if (
                len(e) != ENTRY_BYTES
                or not equal(link, want)
                or not equal(e[39:], entry_mac(key, self._lock_id, e[:39]))
            ):
                break
            if i > 1 and seq_of(entries[i - 2]) != seq_of(e) - 1:
                break
            want = e[23:39]  # its prev_hash: the hash of the entry before
            i -= 1
        return i

    def _new_ring(self) -> None:
        # All slots zero (no entry has seq 0), written a slot at a time: the
        # heap may hold no 4 KB block.
        tmp = RING_PATH + ".tmp"
        empty = bytes(ENTRY_BYTES)
        with open(tmp, "wb") as f:
            for _ in range(self.slots):
                f.write(empty)
        os.rename(tmp, RING_PATH)

    def load_deny(self) -> "tuple[int, int, bytes] | None":
        # (epoch, version, body) for LockVerifier.load_deny, or None if the
        # lock never got a deny-list. A damaged file is a StoreError: the
        # lock then serves no one rather than forget whom it must refuse.
        raw = files.read(DENY_PATH)
        if raw is None:
            return None
        end = len(raw) - 4
        if (
            end < _DENY_HEAD_BYTES
            or raw[:4] != _DENY_MAGIC
            or struct.unpack(">I", raw[end:])[0] != (binascii.crc32(raw[:end]) & 0xFFFFFFFF)
        ):
            raise StoreError("deny-list file corrupt")
        _, epoch, version = struct.unpack_from(_DENY_HEAD, raw)
        return epoch, version, raw[_DENY_HEAD_BYTES:end]

    def save_deny(self, epoch: int, version: int, body: bytes) -> None:
        buf = bytearray(_DENY_HEAD_BYTES + len(body) + 4)
        struct.pack_into(_DENY_HEAD, buf, 0, _DENY_MAGIC, epoch, version)
        end = _DENY_HEAD_BYTES + len(body)
        buf[_DENY_HEAD_BYTES:end] = body
        struct.pack_into(">I", buf, end, binascii.crc32(buf[:end]) & 0xFFFFFFFF)
        files.write_atomic(DENY_PATH, buf)

    def save(self, log: AuditLog, epoch: int, needs_time: bool, fault: int = 0) -> None:
        # Commit the verifier's state and the log: new entries into free
        # slots, then the header. Raises OSError if the flash fails; the
        # caller must then not reply (the firmware resets).
        entries = log.entries
        saved_next = self._saved_next
        new = [e for e in entries if seq_of(e) >= saved_next and e[_EVENT_AT] != EVENT_LOST]
        if new:
            with open(RING_PATH, "r+b") as f:
                for e in new:
                    f.seek(((seq_of(e) - 1) % self.slots) * ENTRY_BYTES)
                    f.write(e)
        buf = bytearray(_STATE_BYTES + 4)
        flags = _FLAG_NEEDS_TIME if needs_time else 0
        if fault == _FAULT_JAM_UNLOCKING:
            flags |= _FLAG_JAM_UNLOCKING
        elif fault:
            flags |= _FLAG_JAM_LOCKING
        first = log.next_seq
        if entries:
            first = seq_of(entries[0])
            if entries[0][_EVENT_AT] == EVENT_LOST:
                flags |= _FLAG_MARKER
                buf[_HEAD_BYTES:_STATE_BYTES] = entries[0]
        struct.pack_into(
            _HEAD, buf, 0, _MAGIC, flags, epoch, first, log.next_seq, log.last_time_s, log.last_hash
        )
        struct.pack_into(">I", buf, _STATE_BYTES, binascii.crc32(buf[:_STATE_BYTES]) & 0xFFFFFFFF)
        files.write_atomic(STATE_PATH, buf)
        self._saved_next = log.next_seq
        self.saves += 1
