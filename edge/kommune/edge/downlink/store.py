"""What the agent has applied, per kind of document, durably: one small SQLite file
(WAL, synchronous=FULL) in the agent's state directory.

Per kind it keeps the document applied last: its seq, digest, target, times, body and
the whole envelope (so it can be shown and checked again). `apply` decides and commits
in one transaction, and its decision is idempotent:

    no document of the kind yet, or a higher seq    -> APPLIED (stored, replaces the old)
    the applied seq and the same digest             -> ALREADY_APPLIED (nothing changes)
    the applied seq, another digest                 -> refused CONFLICT
    a lower seq                                     -> refused REPLAYED
    issued before the store was last reset          -> refused STALE (see below)

A document replaces the one before it whole (no patches), so "the current document of
a kind" is all a consumer needs, and a redelivered message is harmless.

A file SQLite cannot read is kept aside (renamed ``*.corrupt-<time>``, never deleted)
and a fresh store starts. A fresh store would accept an old document again (a replay
the lost seq would have caught), so a reset store refuses anything issued before the
reset: the backend issues its current documents again, with new seqs. A store made on a
first start has no such floor.

Blocking: the agent runs these calls on a worker thread, one at a time.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2

from .envelope import Downlink, Refusal

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_DDL: Final = """
CREATE TABLE IF NOT EXISTS applied (
    kind TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    digest BLOB NOT NULL,
    agent TEXT NOT NULL,
    issued_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    applied_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StoreError(Exception):
    """The store cannot be used (a newer schema, a folder we cannot write): one line."""


class Result(enum.StrEnum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already-applied"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Applied:
    """The current document of one kind, as consumers get it."""

    kind: str
    seq: int
    digest: bytes
    #: The agent it was addressed to: ours, or "*" (the whole site).
    agent: str
    issued_ms: int
    expires_ms: int
    applied_ms: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    """What became of one downlink: `result`, and for a refusal its `reason` and why."""

    result: Result
    kind: str | None = None
    seq: int | None = None
    digest: bytes | None = None
    reason: Refusal | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        """The metric label: the result, or for a refusal its reason."""
        return self.reason.value if self.reason is not None else self.result.value


class DownlinkStore:
    """See the module docstring. `open` it, `apply` envelopes, `close` it."""

    def __init__(self, path: Path, conn: sqlite3.Connection, kept_aside: Path | None) -> None:
        self.path = path
        self._conn = conn
        #: Where an unreadable file went when this store opened, if one did.
        self.kept_aside = kept_aside
        self._current: dict[str, Applied] = {}
        for row in conn.execute(
            "SELECT kind, seq, digest, agent, issued_ms, expires_ms, applied_ms, body FROM applied"
        ):
            kind, seq, digest, agent, issued_ms, expires_ms, applied_ms, body = row
            self._current[kind] = Applied(
                kind, seq, digest, agent, issued_ms, expires_ms, applied_ms, cbor2.loads(body)
            )
        floor = conn.execute("SELECT value FROM meta WHERE key = 'reset_ms'").fetchone()
        #: Documents issued before this (Unix ms) are refused: the store was reset then.
        self.reset_ms: int | None = None if floor is None else int(floor[0])

    @classmethod
    def open(cls, path: Path, *, now_ms: int | None = None) -> DownlinkStore:
        """Open (or make) the store at `path`; an unreadable file is kept aside."""
        try:
            conn = _connect(path)
        except sqlite3.OperationalError as exc:
            if not path.exists():  # the folder, not the file: nothing to keep aside
                raise StoreError(f"{path}: {exc}") from None
            cause = str(exc)
        except sqlite3.DatabaseError as exc:
            cause = str(exc)
        else:
            try:
                return cls(path, conn, None)
            except (sqlite3.DatabaseError, cbor2.CBORError, ValueError, TypeError) as exc:
                conn.close()
                cause = f"a stored document cannot be read: {exc}"
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                source.rename(aside.with_name(aside.name + suffix))
        log.error(
            "the downlink store %s could not be read (%s): kept aside as %s", path, cause, aside
        )
        conn = _connect(path)
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        with conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('reset_ms', ?)", (now,))
        return cls(path, conn, aside)

    def current(self, kind: str) -> Applied | None:
        return self._current.get(kind)

    def documents(self) -> dict[str, Applied]:
        return dict(self._current)

    def apply(self, dl: Downlink, envelope: bytes, now_ms: int) -> Decision:
        """Decide about a verified downlink and commit it if it is new (see the module
        docstring); returns once the decision is on disk."""
        cur = self._current.get(dl.kind)
        if self.reset_ms is not None and dl.issued_ms < self.reset_ms:
            return Decision(
                Result.REFUSED,
                dl.kind,
                dl.seq,
                dl.digest,
                Refusal.STALE,
                f"issued before the store was reset at {self.reset_ms} ms",
            )
        if cur is not None and dl.seq < cur.seq:
            return Decision(
                Result.REFUSED,
                dl.kind,
                dl.seq,
                dl.digest,
                Refusal.REPLAYED,
                f"seq {dl.seq} is older than seq {cur.seq}, applied",
            )
        if cur is not None and dl.seq == cur.seq:
            if dl.digest == cur.digest:
                return Decision(Result.ALREADY_APPLIED, dl.kind, dl.seq, dl.digest)
            return Decision(
                Result.REFUSED,
                dl.kind,
                dl.seq,
                dl.digest,
                Refusal.CONFLICT,
                f"seq {dl.seq} was applied with another document (digest {cur.digest.hex()[:16]})",
            )
        body = cbor2.dumps(dict(dl.body), canonical=True)
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO applied (kind, seq, digest, agent, issued_ms,"
                " expires_ms, applied_ms, body, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    dl.kind,
                    dl.seq,
                    dl.digest,
                    dl.agent,
                    dl.issued_ms,
                    dl.expires_ms,
                    now_ms,
                    body,
                    envelope,
                ),
            )
        self._current[dl.kind] = Applied(
            dl.kind, dl.seq, dl.digest, dl.agent, dl.issued_ms, dl.expires_ms, now_ms, dl.body
        )
        return Decision(Result.APPLIED, dl.kind, dl.seq, dl.digest)

    def close(self) -> None:
        self._conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.isolation_level = "DEFERRED"
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = FULL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version} is newer than this agent's "
                f"({SCHEMA_VERSION}); run a newer agent or move the file away"
            )
        if version == 0:
            conn.executescript(_DDL)  # commits
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"applied", "meta"} <= tables:
            raise sqlite3.DatabaseError("the applied or meta table is missing")
        conn.execute("SELECT count(*) FROM applied").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn
