"""The audit checker's durable anchor, in the key store: `audit.sqlite`.

Per lock, every committed entry (its 55 bytes and its hash) and the checker's anchor
(next_seq, last_hash, the lost ranges, restarts). `lookup(lock_id)` is the `lookup=`
hook of `protocols.audit_check.AuditChecker`: a wiped-and-restarted chain whose anchor
hash has left the checker's 256-entry memory is still recognised.

    store = keystore.audit_store()
    checker = store.checker(lock_keys.audit_key, lock_id)   # at the stored anchor
    accepted = checker.accept_batch(batch)
    store.commit(lock_id, accepted)                          # durably, in one transaction
    checker.commit(accepted)                                 # then the anchor moves
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from kommune.protocols import audit
from kommune.protocols.audit_check import RECENT_HASHES, Accepted, AuditChecker

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    lock_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    entry BLOB NOT NULL,
    PRIMARY KEY (lock_id, seq)
);
CREATE TABLE IF NOT EXISTS anchors (
    lock_id INTEGER PRIMARY KEY,
    next_seq INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    lost TEXT NOT NULL,
    restarts INTEGER NOT NULL
);
"""


class AuditStore:
    def __init__(self, path: Path) -> None:
        new = not path.exists()
        if new:  # made owner-only before SQLite writes a byte into it
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def anchor(self, lock_id: int) -> tuple[int, bytes, list[tuple[int, int]], int]:
        """(next_seq, last_hash, lost ranges, restarts) committed for `lock_id`."""
        row = self._db.execute(
            "SELECT next_seq, last_hash, lost, restarts FROM anchors WHERE lock_id = ?",
            (lock_id,),
        ).fetchone()
        if row is None:
            return 1, audit.GENESIS, [], 0
        lost = [(int(a), int(b)) for a, b in json.loads(row[2])]
        return int(row[0]), bytes(row[1]), lost, int(row[3])

    def lookup(self, lock_id: int) -> Callable[[int], bytes | None]:
        """The checker's `lookup(seq) -> entry hash | None` for `lock_id`."""

        def entry_hash(seq: int) -> bytes | None:
            row = self._db.execute(
                "SELECT hash FROM entries WHERE lock_id = ? AND seq = ?", (lock_id, seq)
            ).fetchone()
            return None if row is None else bytes(row[0])

        return entry_hash

    def checker(self, audit_key: bytes, lock_id: int) -> AuditChecker:
        """An `AuditChecker` at the stored anchor, its recent hashes and lookup loaded."""
        next_seq, last_hash, lost, restarts = self.anchor(lock_id)
        rows = self._db.execute(
            "SELECT seq, hash FROM entries WHERE lock_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (lock_id, next_seq, RECENT_HASHES),
        ).fetchall()
        checker = AuditChecker(
            audit_key,
            lock_id,
            next_seq,
            last_hash,
            {int(s): bytes(h) for s, h in rows},
            lookup=self.lookup(lock_id),
        )
        checker.lost = lost
        checker.restarts = restarts
        return checker

    def commit(self, lock_id: int, accepted: Accepted) -> None:
        """Store `accepted`'s entries and the anchor after them, in one transaction."""
        _, _, lost, restarts = self.anchor(lock_id)
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if accepted.restarted:
                self._db.execute("DELETE FROM entries WHERE lock_id = ?", (lock_id,))
                restarts += 1
            for entry, (seq, h) in zip(accepted.entries, accepted.hashes, strict=True):
                self._db.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                    (lock_id, seq, h, entry.encode()),
                )
            self._db.execute(
                "INSERT OR REPLACE INTO anchors VALUES (?, ?, ?, ?, ?)",
                (
                    lock_id,
                    accepted.next_seq,
                    accepted.last_hash,
                    json.dumps(lost + list(accepted.lost)),
                    restarts,
                ),
            )
