"""The outbox's database, one transaction at a time (blocking: it runs on one thread).

`Store.commit` is one group commit: maintenance that is due (expiry by age, pruning the
dedup table), the acknowledgements, then each append in turn (`append.AppendPath`:
duplicates recognised, quotas and the disk budget enforced, sequence numbers assigned)
and one COMMIT, which with WAL and synchronous=FULL returns only once the log is on disk.
What the caller learns (sequence numbers, evictions, row counts) is only true once that
COMMIT has returned; if anything fails the transaction is rolled back and the store's
own bookkeeping with it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from kommune.edge.northbound import Event, Priority, Queued
from kommune.edge.outbox.append import AppendPath
from kommune.edge.outbox.budget import AGE, DiskBudget, Quota
from kommune.edge.outbox.errors import OutboxError
from kommune.edge.outbox.held import Digests, HeldRows
from kommune.edge.outbox.keys import RecentKeys
from kommune.edge.outbox.recovery import FileLock, KeptAside, open_database, sidecars
from kommune.edge.outbox.schema import SELECT_COLUMNS, TABLES, loaded_value
from kommune.edge.outbox.txn import CommitResult, Eviction, Row, State, Stream, Txn, Undo

__all__ = ["CommitResult", "Eviction", "Store"]

log = logging.getLogger(__name__)

#: Expiry by age runs at most this often (outbox clock).
EXPIRY_INTERVAL_MS: Final = 1_000
#: Dedup keys held back from `recent` before a group commit writes them (see `Store`).
FLUSH_KEYS: Final = 32_768

_ROW_COLUMNS: Final = (
    "row_id, stream_id, seq, source_seq, time_ms, added_ms, name, kind, value, unit"
)


class Store(AppendPath):
    """One outbox database and the connection to it. Not thread-safe: every call must come
    from the thread that called `open` (the outbox's SQLite thread).

    Dedup keys reach `recent` in bulk, not with their rows: `recent` is ordered by
    (stream, source_seq), so a group commit of a few hundred streams would dirty a page
    per stream for its keys, several times what its rows cost (append-only, by row id).
    The rows above `meta.keys_through` are their own keys, held in memory (`_held`), and
    written together as runs (`keys`) once FLUSH_KEYS of them gather, when the writer
    is idle, and before anything deletes rows (acknowledgements, eviction, expiry,
    pruning). They are as durable as their rows: those rows are in the event tables,
    committed, and `open` reads them back from there.
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
        #: The rows above `_keys_through`: committed, their keys not yet in `recent`.
        self._held = HeldRows()
        #: Streams whose `last_seq` in the database may be behind (see `_flush_keys`).
        self._dirty: set[str] = set()
        self._keys_through = 0
        self._txn = Txn(0)
        self._digests = Digests()
        self._checked_texts: set[tuple[str, str | None]] = set()
        self._audit_max = quotas[Priority.AUDIT].max_rows
        self._data_budget_bytes = self.budget.data_budget_bytes
        self._quota_classes = frozenset(
            p for p, quota in quotas.items() if p is not Priority.AUDIT and quota.max_rows
        )
        self._recent = RecentKeys(conn)
        self._state = self._load()
        #: Pages in use (bytes) after the last commit.
        self.last_used_bytes = self.used_bytes()
        self._last_expiry_ms = -(2**62)
        self._last_prune_ms = self._state.last_added_ms
        self._undo = Undo(0, {})
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

    def _load(self) -> State:
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
        streams: dict[str, Stream] = {}
        by_id: dict[int, Stream] = {}
        for stream_id, name, last_seq in conn.execute(
            "SELECT stream_id, name, last_seq FROM streams"
        ):
            streams[name] = by_id[stream_id] = Stream(stream_id, last_seq)
            self._names[stream_id] = name
        for stream in streams.values():
            self._measure_range(stream)
        # Version 1 wrote every key with its row: all of them are in `recent`.
        self._keys_through = int(meta.get("keys_through", last_row_id))
        self._load_pending(by_id)
        return State(last_row_id, last_added_ms, rows, streams)

    def _load_pending(self, streams: Mapping[int, Stream]) -> None:
        """The rows committed after the last flush of keys: held, as they were."""
        for priority, table in TABLES.items():
            rows: list[Row] = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM {table} WHERE row_id > ? ORDER BY row_id",
                (self._keys_through,),
            ).fetchall()
            self._held.add(priority, rows)
            for row in rows:
                stream = streams[row[1]]
                # `streams.last_seq` is written with the keys (`_flush_keys`).
                stream.last_seq = max(stream.last_seq, row[2])
                source_seq = row[3]
                if stream.low is None or source_seq < stream.low:
                    stream.low = source_seq
                if stream.high is None or source_seq > stream.high:
                    stream.high = source_seq

    def _measure_range(self, stream: Stream) -> None:
        stream.low, stream.high = self._recent.bounds(stream.stream_id)

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
        if idle and not expiry_due and not prune_due and not self._held.count:
            result.rows = self.rows
            result.used_bytes = self.last_used_bytes
            return result
        self._undo = Undo(self._state.last_row_id, dict(self._state.rows))
        txn = self._txn = Txn(0)
        self._held.new_txn()
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
                if self._held.count + sum(map(len, txn.rows.values())) >= FLUSH_KEYS:
                    self._flush_keys()
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
        held = self._held
        if txn.flushed:
            self._keys_through = txn.keys_through
            self._dirty = set(self._undo.streams)  # some may have changed after the flush
        else:
            self._dirty.update(self._undo.streams)
        for priority, new_rows in txn.rows.items():
            held.add(priority, new_rows)
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
            if self._held.count:
                self.commit([], [])
        except sqlite3.Error as error:  # they are read back from their rows at open
            log.warning("outbox: %s: writing the dedup keys at close: %s", self.path, error)
        self._closed = True
        try:
            self._conn.close()
        finally:
            self._lock.release()

    # -- inside a transaction -------------------------------------------------------

    def _touch(self, name: str, stream: Stream) -> None:
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
            if self._txn.taken is not None:
                self._held.put_back(self._txn.taken)
            self._held.forget_index()
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
        self._recent.remove(
            self._conn.execute(
                f"SELECT stream_id, source_seq, added_ms FROM {table} WHERE row_id <= ?",
                (through,),
            ).fetchall()
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
        pruned = self._recent.prune(now_ms - self.dedup_window_ms)
        if pruned:
            for name, stream in self._state.streams.items():
                if stream.low is not None:
                    self._touch(name, stream)
                    self._measure_range(stream)

    def _flush_keys(self) -> None:
        """Write every held-back key (and this transaction's so far) to `recent`."""
        txn = self._txn
        self._flush(txn)
        chunks: list[tuple[Priority, list[Row]]] = []
        if not txn.flushed:
            chunks = txn.taken = self._held.take()
        self._recent.add(self._digests.keys([*chunks, *txn.rows.items()]))
        # The streams' last seqs too: up to keys_through, rows may be deleted from now
        # on, and `streams.last_seq` must cover their seqs; above it `_load_pending`
        # finds them in the rows. (So a group commit writes no `streams` row at all.)
        streams = self._state.streams
        self._conn.executemany(
            "UPDATE streams SET last_seq = ? WHERE stream_id = ?",
            [
                (streams[name].last_seq, streams[name].stream_id)
                for name in self._dirty | self._undo.streams.keys()
                if name in streams
            ],
        )
        for priority, rows in txn.rows.items():
            rows.clear()  # in place: the append under way holds these lists
            txn.inserted[priority] = 0
        self._held.forget_index()
        txn.flushed = True
        txn.keys_through = self._state.last_row_id
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('keys_through', ?)",
            (txn.keys_through,),
        )
