"""The outbox's database, one transaction at a time (blocking: it runs on one thread).

`Store.commit` is one group commit: maintenance that is due (expiry by age, pruning the
dedup table), the acknowledgements, then each append in turn — duplicates recognised,
quotas and the disk budget enforced (evicting what may be evicted, or refusing the
append whole), sequence numbers assigned — and one COMMIT, which with WAL and
synchronous=FULL returns only once the log is on disk. What the caller learns (sequence
numbers, evictions, row counts) is only true once that COMMIT has returned; if anything
fails the transaction is rolled back and the store's own bookkeeping with it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kommune.edge.northbound import Event, Priority, Queued
from kommune.edge.outbox.budget import (
    AGE,
    BUDGET,
    EVICTABLE_FOR,
    QUOTA,
    ROW_OVERHEAD_BYTES,
    DiskBudget,
    Quota,
)
from kommune.edge.outbox.errors import OutboxError, OutboxFull
from kommune.edge.outbox.recovery import FileLock, KeptAside, open_database, sidecars
from kommune.edge.outbox.schema import (
    INSERT_COLUMNS,
    KIND_BOOL,
    KIND_BYTES,
    KIND_STR,
    KINDS,
    SELECT_COLUMNS,
    TABLES,
    head_digest,
    loaded_value,
    value_digest,
    value_kind,
)

log = logging.getLogger(__name__)

#: Expiry by age runs at most this often (outbox clock).
EXPIRY_INTERVAL_MS: Final = 1_000
#: The fewest rows one eviction step removes (then the pages in use are measured again).
MIN_EVICTION_ROWS: Final = 16
#: A row's share of the pages its eviction frees, for sizing one eviction step.
ROW_GUESS_BYTES: Final = 48
#: Digest heads kept (one per class, name, unit and kind in use; a few dozen in practice).
MAX_CACHED_HEADS: Final = 4096
#: Dedup keys held back from `recent` before a group commit writes them (see `Store`).
FLUSH_KEYS: Final = 32_768
#: What a held-back key will take in `recent` (for the budget estimate; ~25 measured).
KEY_GUESS_BYTES: Final = 40


@dataclass(frozen=True)
class Eviction:
    """Rows that left without reaching the uplink: every row of `priority` with a row id
    up to `through_row_id` is gone (eviction and expiry always take the oldest)."""

    priority: Priority
    reason: str
    rows: int
    through_row_id: int
    #: For the log: how full the outbox was, or how old the rows were.
    detail: str


@dataclass
class CommitResult:
    """What one group commit did; true once it has returned."""

    #: Per append, in order: the seq given to each event (None: a duplicate), or the
    #: OutboxFull that refused the whole append.
    appended: list[list[int | None] | OutboxFull] = field(default_factory=list)
    #: Rows deleted by acknowledgements.
    acknowledged: int = 0
    evictions: list[Eviction] = field(default_factory=list)
    #: Rows queued per class, and the database's pages in use (bytes), after the commit.
    rows: dict[Priority, int] = field(default_factory=dict)
    used_bytes: int = 0
    #: Whether a transaction was written at all (an idle maintenance pass may not).
    wrote: bool = False


@dataclass
class _Stream:
    stream_id: int
    last_seq: int
    #: Bounds of the source_seqs this stream has in `recent` (None: it has none). An event
    #: outside them cannot be a duplicate, so most appends never look `recent` up.
    low: int | None = None
    high: int | None = None


@dataclass
class _State:
    """The store's bookkeeping that a transaction changes."""

    last_row_id: int
    last_added_ms: int
    rows: dict[Priority, int]
    streams: dict[str, _Stream]


@dataclass
class _Undo:
    """What a transaction changed in `_State`, to put back if it rolls back."""

    last_row_id: int
    rows: dict[Priority, int]
    #: A stream's (last_seq, low, high) before its first change; None: created in it.
    streams: dict[str, tuple[int, int | None, int | None] | None] = field(default_factory=dict)


_INSERT_SQL: Final = {
    priority: f"INSERT INTO {table} {INSERT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for priority, table in TABLES.items()
}
_RECENT_SQL: Final = (
    "INSERT OR REPLACE INTO recent (stream_id, source_seq, seen_ms, digest) VALUES (?, ?, ?, ?)"
)


@dataclass
class _Txn:
    """The appends of one group commit so far: rows and dedup keys not yet inserted, and
    the estimated pages in use (bytes) once they are."""

    used_bytes: int
    rows: dict[Priority, list[tuple[object, ...]]] = field(
        default_factory=lambda: {p: [] for p in Priority}
    )
    keys: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: Keys stored earlier in this transaction, with their digests.
    digests: dict[tuple[str, int], int] = field(default_factory=dict)
    #: Whether this transaction wrote the held-back keys to `recent`, and through which
    #: row id every key is there once it commits.
    flushed: bool = False
    keys_through: int = 0


class Store:
    """One outbox database and the connection to it. Not thread-safe: every call must come
    from the thread that called `open` (the outbox's SQLite thread).

    Dedup keys reach `recent` in bulk, not with their rows: `recent` is ordered by
    (stream, source_seq), so a group commit of a few hundred streams would dirty a page
    per stream for its keys, several times what its rows cost (append-only, by row id).
    The keys of rows above `meta.keys_through` are held in memory (`_pending`) and
    written together once FLUSH_KEYS of them gather, when the writer is idle, and
    before anything deletes rows (acknowledgements, eviction, expiry, pruning). They
    are as durable as their rows: those rows are in the event tables, committed, and
    `open` reads their keys back from there.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        lock: FileLock,
        *,
        agent: str,
        budget_bytes: int,
        max_txn_rows: int,
        quotas: Mapping[Priority, Quota],
        dedup_window_ms: int,
        clock_ms: Callable[[], int],
    ) -> None:
        self.path = path
        self._conn = conn
        self._lock = lock
        self.agent = agent
        self.quotas = quotas
        self.dedup_window_ms = dedup_window_ms
        self._clock_ms = clock_ms
        #: The unreadable database found at open and kept aside, if there was one.
        self.kept_aside: KeptAside | None = None
        self.page_size: int = conn.execute("PRAGMA page_size").fetchone()[0]
        self.budget = DiskBudget.plan(
            budget_bytes, page_size=self.page_size, max_txn_rows=max_txn_rows
        )
        conn.execute(f"PRAGMA wal_autocheckpoint = {self.budget.wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {self.budget.wal_pages * self.page_size}")
        self._wal_path = sidecars(path)[0]
        self._names: dict[int, str] = {}
        #: Keys committed and not yet in `recent`: (stream_id, source_seq) -> (seen_ms,
        #: digest), the keys of the rows with row ids above `_keys_through`.
        self._pending: dict[tuple[int, int], tuple[int, int]] = {}
        self._keys_through = 0
        self._txn = _Txn(0)
        self._state = self._load()
        #: Pages in use (bytes) after the last commit.
        self.last_used_bytes = self.used_bytes()
        self._last_expiry_ms = -(2**62)
        self._last_prune_ms = self._state.last_added_ms
        self._undo = _Undo(0, {})
        #: CRC-32 of (class, name, unit, kind), the part of a digest most events share.
        self._digests: dict[tuple[Priority, str, str | None, int], int] = {}
        self._closed = False

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        agent: str,
        budget_bytes: int,
        max_txn_rows: int,
        quotas: Mapping[Priority, Quota],
        dedup_window_ms: int,
        clock_ms: Callable[[], int],
    ) -> Store:
        """Lock, open (keeping an unreadable file aside) and load the outbox at `path`."""
        lock = FileLock(path)
        try:

            def load(conn: sqlite3.Connection) -> Store:
                return cls(
                    path,
                    conn,
                    lock,
                    agent=agent,
                    budget_bytes=budget_bytes,
                    max_txn_rows=max_txn_rows,
                    quotas=quotas,
                    dedup_window_ms=dedup_window_ms,
                    clock_ms=clock_ms,
                )

            store, kept = open_database(path, load)
            store.kept_aside = kept
            return store
        except BaseException:
            lock.release()
            raise

    def _load(self) -> _State:
        conn = self._conn
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        known_agent = meta.get("agent")
        if known_agent is not None and known_agent != self.agent:
            log.warning(
                "outbox: %s was written by agent %r and is now opened by %r; its queued "
                "events go north under the new name",
                self.path,
                known_agent,
                self.agent,
            )
        if known_agent != self.agent:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('agent', ?)", (self.agent,)
            )
        last_row_id = int(meta.get("last_row_id", 0))
        last_added_ms = 0
        rows: dict[Priority, int] = {}
        for priority, table in TABLES.items():
            rows[priority] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            newest = conn.execute(
                f"SELECT row_id, added_ms FROM {table} ORDER BY row_id DESC LIMIT 1"
            ).fetchone()
            if newest is not None:
                last_row_id = max(last_row_id, newest[0])
                last_added_ms = max(last_added_ms, newest[1])
        streams: dict[str, _Stream] = {}
        by_id: dict[int, _Stream] = {}
        for stream_id, name, last_seq in conn.execute(
            "SELECT stream_id, name, last_seq FROM streams"
        ):
            streams[name] = by_id[stream_id] = _Stream(stream_id, last_seq)
            self._names[stream_id] = name
        for stream in streams.values():
            self._measure_range(stream)
        # Version 1 wrote every key with its row: all of them are in `recent`.
        self._keys_through = int(meta.get("keys_through", last_row_id))
        self._load_pending(by_id)
        return _State(last_row_id, last_added_ms, rows, streams)

    def _load_pending(self, streams: Mapping[int, _Stream]) -> None:
        """The keys of the rows committed after the last flush, from the rows themselves."""
        found: list[tuple[int, int, int, int, int]] = []
        for priority, table in TABLES.items():
            for (
                row_id,
                stream_id,
                source_seq,
                added_ms,
                name,
                kind,
                value,
                unit,
            ) in self._conn.execute(
                f"SELECT row_id, stream_id, source_seq, added_ms, name, kind, value, unit "
                f"FROM {table} WHERE row_id > ?",
                (self._keys_through,),
            ):
                head = head_digest(priority, name, unit, kind)
                try:
                    digest = value_digest(loaded_value(kind, value), head)
                except ValueError:  # a row that cannot be read back is not a duplicate either
                    continue
                found.append((row_id, stream_id, source_seq, added_ms, digest))
        found.sort()
        for _, stream_id, source_seq, added_ms, digest in found:
            self._pending[(stream_id, source_seq)] = (added_ms, digest)
            stream = streams[stream_id]
            stream.low = source_seq if stream.low is None else min(stream.low, source_seq)
            stream.high = source_seq if stream.high is None else max(stream.high, source_seq)

    def _measure_range(self, stream: _Stream) -> None:
        stream.low, stream.high = self._conn.execute(
            "SELECT min(source_seq), max(source_seq) FROM recent WHERE stream_id = ?",
            (stream.stream_id,),
        ).fetchone()

    # -- what the outbox asks -------------------------------------------------------

    @property
    def rows(self) -> dict[Priority, int]:
        return dict(self._state.rows)

    def used_bytes(self) -> int:
        """Bytes in the database's pages that hold data (free pages are reused first)."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self.page_size

    def read_batch(self, priority: Priority, after_row_id: int, limit: int) -> list[Queued]:
        """Up to `limit` rows of `priority` with row ids above `after_row_id`, oldest first."""
        rows = self._conn.execute(
            f"SELECT {SELECT_COLUMNS} FROM {TABLES[priority]} "
            "WHERE row_id > ? ORDER BY row_id LIMIT ?",
            (after_row_id, limit),
        ).fetchall()
        names = self._names
        return [
            Queued(
                row_id,
                seq,
                Event(
                    names[stream_id],
                    priority,
                    source_seq,
                    time_ms,
                    name,
                    loaded_value(kind, value),
                    unit,
                ),
            )
            for row_id, stream_id, seq, source_seq, time_ms, name, kind, value, unit in rows
        ]

    def commit(
        self,
        appends: Sequence[Sequence[Event]],
        acks: Sequence[Sequence[Queued]],
        *,
        maintain: bool = False,
    ) -> CommitResult:
        """One transaction: due maintenance (all of it if `maintain`), `acks`, `appends`."""
        if self._closed:
            raise OutboxError(f"{self.path}: the store is closed")
        now_ms = max(self._clock_ms(), self._state.last_added_ms)
        result = CommitResult()
        expiry_due = maintain or now_ms - self._last_expiry_ms >= EXPIRY_INTERVAL_MS
        expiry_due = expiry_due and any(q.max_age_s is not None for q in self.quotas.values())
        prune_due = maintain or now_ms - self._last_prune_ms >= self.dedup_window_ms // 10
        idle = not appends and not acks
        if idle and not expiry_due and not prune_due and not self._pending:
            result.rows = self.rows
            result.used_bytes = self.last_used_bytes
            return result
        self._undo = _Undo(self._state.last_row_id, dict(self._state.rows))
        txn = self._txn = _Txn(0)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if idle or prune_due:
                self._flush_keys()
            if expiry_due:
                self._expire(now_ms, result)
            if prune_due:
                self._prune(now_ms)
            for rows in acks:
                result.acknowledged += self._delete(rows)
            if appends:
                self._append_all(appends, now_ms, result)
                if len(self._pending) + len(txn.keys) >= FLUSH_KEYS:
                    self._flush_keys()
            streams = self._state.streams
            conn.executemany(
                "UPDATE streams SET last_seq = ? WHERE stream_id = ?",
                [
                    (streams[name].last_seq, streams[name].stream_id)
                    for name, before in self._undo.streams.items()
                    if before is None or before[0] != streams[name].last_seq
                ],
            )
            if self._state.last_row_id != self._undo.last_row_id:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_row_id', ?)",
                    (self._state.last_row_id,),
                )
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        # Committed: from here on nothing may fail the commit (its appends are durable).
        pending = self._pending
        if txn.flushed:
            pending.clear()
            self._keys_through = txn.keys_through
        for stream_id, source_seq, seen_ms, digest in txn.keys:
            pending[(stream_id, source_seq)] = (seen_ms, digest)
        if expiry_due:
            self._last_expiry_ms = now_ms
        if prune_due:
            self._last_prune_ms = now_ms
        self._state.last_added_ms = now_ms
        result.wrote = True
        result.rows = self.rows
        try:
            self._bound_wal()
            self.last_used_bytes = self.used_bytes()
        except sqlite3.Error as error:
            log.warning("outbox: %s: after a commit: %s", self.path, error)
        result.used_bytes = self.last_used_bytes
        return result

    def close(self) -> None:
        """Write the held-back dedup keys (so the next open has none to read back), close
        the connection (SQLite checkpoints the WAL) and release the file lock."""
        if self._closed:
            return
        try:
            if self._pending:
                self.commit([], [])
        except sqlite3.Error as error:  # they are read back from their rows at open
            log.warning("outbox: %s: writing the dedup keys at close: %s", self.path, error)
        self._closed = True
        try:
            self._conn.close()
        finally:
            self._lock.release()

    # -- inside a transaction -------------------------------------------------------

    def _touch(self, name: str, stream: _Stream) -> None:
        """Note `stream`'s state before this transaction first changes it."""
        if name not in self._undo.streams:
            self._undo.streams[name] = (stream.last_seq, stream.low, stream.high)

    def _rollback(self) -> None:
        """ROLLBACK, and put the bookkeeping back as it was before the transaction."""
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            undo = self._undo
            state = self._state
            state.last_row_id = undo.last_row_id
            state.rows = undo.rows
            for name, before in undo.streams.items():
                if before is None:
                    del self._names[state.streams.pop(name).stream_id]
                else:
                    stream = state.streams[name]
                    stream.last_seq, stream.low, stream.high = before

    def _bound_wal(self) -> None:
        """Cut the WAL back if one large commit left it beyond its allowance."""
        try:
            wal_bytes = os.stat(self._wal_path).st_size
        except FileNotFoundError:
            return
        if wal_bytes > self.budget.wal_limit_bytes:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def _delete(self, rows: Iterable[Queued]) -> int:
        by_class: dict[Priority, list[tuple[int]]] = {}
        newest = 0
        for row in rows:
            by_class.setdefault(row.event.priority, []).append((row.row_id,))
            newest = max(newest, row.row_id)
        if newest > self._keys_through and not self._txn.flushed:
            self._flush_keys()  # the key outlives the row: it must be in `recent` first
        deleted = 0
        for priority, ids in by_class.items():
            cursor = self._conn.executemany(f"DELETE FROM {TABLES[priority]} WHERE row_id = ?", ids)
            self._state.rows[priority] -= cursor.rowcount
            deleted += cursor.rowcount
        return deleted

    def _evict_oldest(self, priority: Priority, count: int) -> tuple[int, int]:
        """Delete the `count` oldest rows of `priority`: (rows deleted, last row id)."""
        table = TABLES[priority]
        through = self._conn.execute(
            f"SELECT row_id FROM {table} ORDER BY row_id LIMIT 1 OFFSET ?", (count - 1,)
        ).fetchone()
        if through is None:
            through = self._conn.execute(f"SELECT max(row_id) FROM {table}").fetchone()
            if through[0] is None:
                return 0, 0
        return self._delete_prefix(priority, through[0]), through[0]

    def _delete_prefix(self, priority: Priority, through: int) -> int:
        """Delete the rows of `priority` up to row id `through`, and their dedup keys: an
        event that left unsent is no longer "seen" (were it sent again, it is stored
        again), and the keys would otherwise hold space eviction cannot free."""
        table = TABLES[priority]
        self._flush_keys()
        self._conn.execute(
            "DELETE FROM recent WHERE (stream_id, source_seq, seen_ms) IN "
            f"(SELECT stream_id, source_seq, added_ms FROM {table} WHERE row_id <= ?)",
            (through,),
        )
        deleted: int = self._conn.execute(
            f"DELETE FROM {table} WHERE row_id <= ?", (through,)
        ).rowcount
        self._state.rows[priority] -= deleted
        return deleted

    def _expire(self, now_ms: int, result: CommitResult) -> None:
        for priority, quota in self.quotas.items():
            if quota.max_age_s is None or not self._state.rows[priority]:
                continue
            table = TABLES[priority]
            cutoff_ms = now_ms - int(quota.max_age_s * 1000)
            # added_ms grows with row_id, so the expired rows are a prefix: walk from the
            # oldest to the first young one.
            young = self._conn.execute(
                f"SELECT row_id FROM {table} WHERE added_ms >= ? ORDER BY row_id LIMIT 1",
                (cutoff_ms,),
            ).fetchone()
            bound = "row_id < ?" if young is not None else "row_id <= ?"
            limit = young[0] if young is not None else self._state.last_row_id
            through = self._conn.execute(
                f"SELECT max(row_id) FROM {table} WHERE {bound}", (limit,)
            ).fetchone()[0]
            if through is None:
                continue
            deleted = self._delete_prefix(priority, through)
            result.evictions.append(
                Eviction(priority, AGE, deleted, through, f"older than {quota.max_age_s:g} s")
            )

    def _prune(self, now_ms: int) -> None:
        """Forget dedup keys older than the window, and re-measure the streams' ranges."""
        pruned = self._conn.execute(
            "DELETE FROM recent WHERE seen_ms < ?", (now_ms - self.dedup_window_ms,)
        ).rowcount
        if pruned:
            for name, stream in self._state.streams.items():
                if stream.low is not None:
                    self._touch(name, stream)
                    self._measure_range(stream)

    def _stream(self, name: str) -> _Stream:
        stream = self._state.streams.get(name)
        if stream is None:
            stream_id = self._conn.execute(
                "INSERT INTO streams (name, last_seq) VALUES (?, 0)", (name,)
            ).lastrowid
            assert stream_id is not None
            stream = _Stream(stream_id, 0)
            self._undo.streams[name] = None
            self._state.streams[name] = stream
            self._names[stream_id] = name
        return stream

    def _append_all(
        self, appends: Sequence[Sequence[Event]], now_ms: int, result: CommitResult
    ) -> None:
        txn = self._txn
        txn.used_bytes = self.used_bytes() + len(self._pending) * KEY_GUESS_BYTES
        for events in appends:
            result.appended.append(self._append_one(events, now_ms, txn, result))
        self._flush(txn)

    def _flush(self, txn: _Txn) -> None:
        """Insert the rows buffered so far: one statement per table for the whole group
        commit (and before anything that reads or deletes rows)."""
        conn = self._conn
        for priority, rows in txn.rows.items():
            if rows:
                conn.executemany(_INSERT_SQL[priority], rows)
                rows.clear()

    def _flush_keys(self) -> None:
        """Write every held-back key (and this transaction's so far) to `recent`."""
        txn = self._txn
        self._flush(txn)
        keys: list[tuple[int, int, int, int]] = []
        if not txn.flushed:
            keys = [(s, q, seen, d) for (s, q), (seen, d) in self._pending.items()]
        keys += txn.keys
        if keys:
            self._conn.executemany(_RECENT_SQL, keys)
        txn.keys.clear()
        txn.flushed = True
        txn.keys_through = self._state.last_row_id
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_through', ?)",
            (txn.keys_through,),
        )

    def _seen(self, stream: _Stream, source_seq: int, digest: int, now_ms: int) -> bool:
        """Whether this event was committed within the window (same content): its key is
        held back in memory (the newest) or in `recent`."""
        if not self._txn.flushed:
            held = self._pending.get((stream.stream_id, source_seq))
            if held is not None:
                return now_ms - held[0] <= self.dedup_window_ms and held[1] == digest
        seen = self._conn.execute(
            "SELECT seen_ms, digest FROM recent WHERE stream_id = ? AND source_seq = ?",
            (stream.stream_id, source_seq),
        ).fetchone()
        return seen is not None and now_ms - seen[0] <= self.dedup_window_ms and seen[1] == digest

    def _append_one(
        self, events: Sequence[Event], now_ms: int, txn: _Txn, result: CommitResult
    ) -> list[int | None] | OutboxFull:
        """Store one append whole (or refuse it whole): the hot path, kept to one pass to
        sort out duplicates and size it, and one to buffer its rows for `_flush`."""
        streams = self._state.streams
        digests = self._digests
        in_txn = txn.digests
        fresh: list[tuple[int, Event, int, int]] = []  # (index, event, kind, digest)
        mine: dict[tuple[str, int], int] = {}
        text_bytes = 0
        for index, event in enumerate(events):
            value = event.value
            kind = KINDS.get(type(value))
            if kind is None:
                kind = value_kind(value)
            head = (event.priority, event.name, event.unit, kind)
            digest = digests.get(head)
            if digest is None:
                if len(digests) >= MAX_CACHED_HEADS:
                    digests.clear()
                digest = digests[head] = head_digest(*head)
            digest = value_digest(value, digest)
            source_seq = event.source_seq
            key = (event.stream, source_seq)
            earlier = mine.get(key)
            if earlier is None:
                earlier = in_txn.get(key)
                if earlier is None:
                    stream = streams.get(event.stream)
                    if (
                        stream is not None
                        and stream.low is not None
                        and stream.high is not None
                        and stream.low <= source_seq <= stream.high
                        and self._seen(stream, source_seq, digest, now_ms)
                    ):
                        continue
            if earlier == digest:
                continue
            mine[key] = digest
            if kind in (KIND_STR, KIND_BYTES):
                text_bytes += len(value)  # type: ignore[arg-type]
            unit = event.unit
            text_bytes += len(event.name) + (len(unit) if unit else 0)
            fresh.append((index, event, kind, digest))
        seqs: list[int | None] = [None] * len(events)
        if not fresh:
            return seqs
        need = ROW_OVERHEAD_BYTES * len(fresh) + text_bytes
        refused = self._make_room(fresh, txn, need, result)
        if refused is not None:
            return refused
        state = self._state
        keys = txn.keys
        stream_name = ""
        stream = _Stream(0, 0)
        stream_id = 0
        rows: list[tuple[object, ...]] = []
        priority: Priority | None = None
        touched: set[Priority] = set()
        row_id = state.last_row_id
        for index, event, kind, digest in fresh:
            if event.stream != stream_name:
                stream_name = event.stream
                stream = self._stream(stream_name)
                stream_id = stream.stream_id
                self._touch(stream_name, stream)
            if event.priority is not priority:
                priority = event.priority
                rows = txn.rows[priority]
                touched.add(priority)
            source_seq = event.source_seq
            seq = stream.last_seq = stream.last_seq + 1
            row_id += 1
            seqs[index] = seq
            value = event.value
            rows.append(
                (
                    row_id,
                    stream_id,
                    seq,
                    source_seq,
                    event.time_ms,
                    now_ms,
                    event.name,
                    kind,
                    int(value) if kind == KIND_BOOL else value,
                    event.unit,
                )
            )
            state.rows[priority] += 1
            keys.append((stream_id, source_seq, now_ms, digest))
            high = stream.high
            if high is None or stream.low is None:
                stream.low = stream.high = source_seq
            elif source_seq > high:
                stream.high = source_seq
            elif source_seq < stream.low:
                stream.low = source_seq
        state.last_row_id = row_id
        txn.used_bytes += need
        in_txn.update(mine)
        for priority in touched:
            self._trim_to_quota(priority, txn, result)
        return seqs

    def _trim_to_quota(self, priority: Priority, txn: _Txn, result: CommitResult) -> None:
        max_rows = self.quotas[priority].max_rows
        if priority is Priority.AUDIT or max_rows is None:
            return
        excess = self._state.rows[priority] - max_rows
        if excess > 0:
            self._flush(txn)
            deleted, through = self._evict_oldest(priority, excess)
            result.evictions.append(
                Eviction(priority, QUOTA, deleted, through, f"more than {max_rows} rows")
            )
            txn.used_bytes = self.used_bytes()

    def _make_room(
        self,
        fresh: Sequence[tuple[int, Event, int, int]],
        txn: _Txn,
        need: int,
        result: CommitResult,
    ) -> OutboxFull | None:
        """Make room for `fresh` within the audit quota and the disk budget, evicting what
        the append's most important class may evict; or refuse it (nothing evicted).

        Within a group commit the pages in use are estimated (measured at its start, plus
        each accepted append's estimate, which errs on the large side); only when the
        estimate reaches the budget are the buffered rows written and the pages measured.
        """
        audit_max = self.quotas[Priority.AUDIT].max_rows
        if audit_max is not None:
            audits = sum(1 for _, event, _, _ in fresh if event.priority is Priority.AUDIT)
            if audits and self._state.rows[Priority.AUDIT] + audits > audit_max:
                return OutboxFull(
                    f"{self.path}: audit quota reached ({audit_max} rows queued); "
                    f"not stored, retry later",
                    priority=Priority.AUDIT,
                    reason=QUOTA,
                )
        limit = self.budget.data_budget_bytes - need
        if txn.used_bytes <= limit:
            return None
        self._flush_keys()
        used = txn.used_bytes = self.used_bytes()
        if used <= limit:
            return None
        top = min(event.priority for _, event, _, _ in fresh)
        # Evict a little more than needed, so one burst of evictions serves many appends.
        target = limit - self.budget.data_budget_bytes // 20
        saved_rows = dict(self._state.rows)
        evicted: list[Eviction] = []
        self._conn.execute("SAVEPOINT room")
        try:
            for victim in EVICTABLE_FOR[top]:
                while used > target and self._state.rows[victim]:
                    rows = max(MIN_EVICTION_ROWS, (used - target) // ROW_GUESS_BYTES)
                    deleted, through = self._evict_oldest(victim, rows)
                    detail = f"{used} of {self.budget.data_budget_bytes} data bytes in use"
                    evicted.append(Eviction(victim, BUDGET, deleted, through, detail))
                    used = self.used_bytes()
            if used <= limit:
                self._conn.execute("RELEASE room")
                result.evictions.extend(_merged(evicted))
                txn.used_bytes = used
                return None
            self._conn.execute("ROLLBACK TO room")
            self._conn.execute("RELEASE room")
        except BaseException:
            self._state.rows = saved_rows
            raise
        self._state.rows = saved_rows
        return OutboxFull(
            f"{self.path}: disk budget of {self.budget.budget_bytes} bytes reached and nothing "
            f"more may be evicted for {top.name.lower()}; not stored, retry later",
            priority=top,
            reason=BUDGET,
        )


def _merged(evictions: Sequence[Eviction]) -> list[Eviction]:
    """One Eviction per class for the steps of one make-room."""
    merged: dict[Priority, Eviction] = {}
    for ev in evictions:
        prior = merged.get(ev.priority)
        if prior is None:
            merged[ev.priority] = ev
        else:
            merged[ev.priority] = Eviction(
                ev.priority,
                ev.reason,
                prior.rows + ev.rows,
                max(prior.through_row_id, ev.through_row_id),
                prior.detail,
            )
    return list(merged.values())
