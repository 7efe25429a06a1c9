"""The append path of a group commit: each append stored whole or refused whole.

Per event, the usual case is a few attribute loads and a tuple: an event above its
stream's highest source_seq cannot be a duplicate, so it gets its seq and row at once;
its dedup key is its row (see `held`). Only an event at or below that bound is looked up
(held rows, then `recent`). The room an append needs is checked once, against an
estimate of the pages in use; only near the budget are the rows written and measured,
and what the append's class may evict is evicted (`_make_room`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Final

from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox.budget import (
    BUDGET,
    EVICTABLE_FOR,
    QUOTA,
    ROW_OVERHEAD_BYTES,
    DiskBudget,
    Quota,
)
from kommune.edge.outbox.errors import OutboxFull
from kommune.edge.outbox.held import Digests, HeldRows
from kommune.edge.outbox.keys import RecentKeys
from kommune.edge.outbox.schema import (
    INSERT_COLUMNS,
    INT64_MAX,
    INT64_MIN,
    KIND_BOOL,
    KIND_BYTES,
    KIND_FLOAT,
    KIND_INT,
    KIND_STR,
    TABLES,
    check_event,
    value_digest,
    value_kind,
)
from kommune.edge.outbox.txn import CommitResult, Eviction, Row, State, Stream, Txn, Undo

#: The fewest rows one eviction step removes (then the pages in use are measured again).
MIN_EVICTION_ROWS: Final = 16
#: A row's share of the pages its eviction frees, for sizing one eviction step.
ROW_GUESS_BYTES: Final = 48
#: What a held-back key will take in `recent` (for the budget estimate).
KEY_GUESS_BYTES: Final = 40


#: Rows per multi-row INSERT statement, largest first (10 parameters a row; SQLite
#: allows 32,766); fewer rows than the smallest go one by one.
INSERT_ROWS: Final = (100, 25, 5)
_ROW_PARAMETERS: Final = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_MANY_SQL: Final = {
    priority: [
        (
            size,
            f"INSERT INTO {table} {INSERT_COLUMNS} VALUES " + ", ".join([_ROW_PARAMETERS] * size),
        )
        for size in INSERT_ROWS
    ]
    for priority, table in TABLES.items()
}
_chain: Final = chain.from_iterable
_INSERT_SQL: Final = {
    priority: f"INSERT INTO {table} {INSERT_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for priority, table in TABLES.items()
}


#: (name, unit) pairs known to be valid text (`schema.check_event`), at most this many.
MAX_CHECKED_TEXTS: Final = 4096


class AppendPath:
    """The append half of `store.Store` (which provides these attributes and the
    methods below that raise NotImplementedError)."""

    path: Path
    quotas: Mapping[Priority, Quota]
    budget: DiskBudget
    dedup_window_ms: int
    _conn: sqlite3.Connection
    _state: State
    _txn: Txn
    _undo: Undo
    _held: HeldRows
    _recent: RecentKeys
    _digests: Digests
    _names: dict[int, str]
    _checked_texts: set[tuple[str, str | None]]
    #: quotas[AUDIT].max_rows, budget.data_budget_bytes, and the classes with a max_rows.
    _audit_max: int | None
    _data_budget_bytes: int
    _quota_classes: frozenset[Priority]

    def used_bytes(self) -> int:
        raise NotImplementedError

    def _flush_keys(self) -> None:
        raise NotImplementedError

    def _evict_oldest(self, priority: Priority, count: int) -> tuple[int, int]:
        raise NotImplementedError

    # -------------------------------------------------------------------------------

    def _append_all(
        self, appends: Sequence[Sequence[Event]], now_ms: int, result: CommitResult
    ) -> None:
        txn = self._txn
        txn.used_bytes = self.used_bytes() + self._held.count * KEY_GUESS_BYTES
        appended = result.appended
        for events in appends:
            appended.append(self._append_one(events, now_ms, txn, result))
        self._flush(txn)

    def _flush(self, txn: Txn) -> None:
        """Insert the rows buffered so far: one statement per table for the whole group
        commit (and before anything that reads or deletes rows)."""
        conn = self._conn
        for priority, rows in txn.rows.items():
            done = txn.inserted[priority]
            if done == len(rows):
                continue
            # INSERT ... VALUES (...), (...), ...: one statement (one sqlite3_step, the GIL
            # let go once) for many rows costs about 2/3 of a statement per row.
            for size, insert in _INSERT_MANY_SQL[priority]:
                while len(rows) - done >= size:
                    conn.execute(insert, list(_chain(rows[done : done + size])))
                    done += size
            if done < len(rows):
                conn.executemany(_INSERT_SQL[priority], rows[done:])
            txn.inserted[priority] = len(rows)

    def _stream(self, name: str) -> Stream:
        stream = self._state.streams.get(name)
        if stream is None:
            stream_id = self._conn.execute(
                "INSERT INTO streams (name, last_seq) VALUES (?, 0)", (name,)
            ).lastrowid
            assert stream_id is not None
            stream = Stream(stream_id, 0)
            self._undo.streams[name] = None
            self._state.streams[name] = stream
            self._names[stream_id] = name
        return stream

    def _append_one(
        self, events: Sequence[Event], now_ms: int, txn: Txn, result: CommitResult
    ) -> list[int | None] | OutboxFull | ValueError | TypeError:
        """Store one append whole (or refuse it whole): one pass that checks each event
        (`schema.check_event`, unrolled) and gives each new one its seq and row, then
        the check that it fits. A malformed event refuses the append (its error is
        the outcome) and nothing else."""
        txn_rows = txn.rows
        marks = dict(zip(txn_rows, map(len, txn_rows.values()), strict=True))
        # Each stream's (last_seq, low, high) before this append, to refuse it whole.
        before: list[tuple[Stream, int, int | None, int | None]] = []
        state = self._state
        try:
            seqs, text_bytes, last_row_id, only = self._take(events, now_ms, txn, before)
        except (ValueError, TypeError) as error:
            self._put_back(txn, marks, before)
            return _first_malformed(events, error)
        added = last_row_id - state.last_row_id
        if not added:
            result.duplicates += len(seqs)
            return seqs
        need = ROW_OVERHEAD_BYTES * added + text_bytes
        if self._audit_max is not None or txn.used_bytes > self._data_budget_bytes - need:
            # Near a limit: the append's rows leave the buffer while room is made.
            mine = {p: rows[marks[p] :] for p, rows in txn_rows.items()}
            for p, rows in txn_rows.items():
                del rows[marks[p] :]
            refused = self._make_room(mine, txn, need, result)
            if refused is not None:
                self._put_back(txn, marks, before)
                return refused
            for p, rows in mine.items():
                marks[p] = len(txn_rows[p])
                txn_rows[p] += rows
        state.last_row_id = last_row_id
        txn.used_bytes += need
        result.stored += added
        result.duplicates += len(seqs) - added
        counts = state.rows
        touched: Sequence[Priority]
        if only is not None:
            counts[only] += added
            touched = (only,)
        else:
            touched = [p for p, rows in txn_rows.items() if len(rows) > marks[p]]
            for p in touched:
                counts[p] += len(txn_rows[p]) - marks[p]
        if self._quota_classes:
            for p in touched:  # (which may write the rows and take them out of the buffer)
                self._trim_to_quota(p, txn, result)
        return seqs

    def _put_back(
        self,
        txn: Txn,
        marks: Mapping[Priority, int],
        before: Sequence[tuple[Stream, int, int | None, int | None]],
    ) -> None:
        """Undo what `_take` did for an append that is refused."""
        for p, rows in txn.rows.items():
            del rows[marks[p] :]
        for stream, last_seq, low, high in reversed(before):
            stream.last_seq, stream.low, stream.high = last_seq, low, high
        self._held.forget_index()

    def _take(
        self,
        events: Sequence[Event],
        now_ms: int,
        txn: Txn,
        before: list[tuple[Stream, int, int | None, int | None]],
    ) -> tuple[list[int | None], int, int, Priority | None]:
        """The hot loop: each event checked, and either recognised as a duplicate or given
        its seq and row (buffered in `txn`; row ids from `last_row_id` on). Returns the
        seqs, the bytes of text the new rows hold, the last row id given, and the class
        of them all (None: more than one). Raises ValueError or TypeError for a malformed
        event (the caller undoes the rest)."""
        streams = self._state.streams
        undo_streams = self._undo.streams
        txn_rows = txn.rows
        checked = self._checked_texts
        seqs: list[int | None] = []
        row_id = self._state.last_row_id
        text_bytes = 0
        stream_name = ""
        stream = Stream(0, 0)
        stream_id = 0
        # The current stream's last_seq and high, in locals until the stream changes.
        last_seq = 0
        high: int | None = None
        priority: object = None
        classes = 0
        rows: list[Row] = []
        name_ok: object = None
        unit_ok: object = None
        head_bytes = 0
        low_bound = INT64_MIN
        high_bound = INT64_MAX
        for event in events:
            if type(event) is not Event:
                check_event(event)  # raises, or it is a subclass of Event: fine
            if event.stream != stream_name:
                stream.last_seq = last_seq
                stream.high = high
                stream_name = event.stream
                found = streams.get(stream_name)
                if found is None:
                    check_event(event)  # a new stream: is its name one
                    found = self._stream(stream_name)
                stream = found
                stream_id = stream.stream_id
                last_seq = stream.last_seq
                high = stream.high
                before.append((stream, last_seq, stream.low, high))
                if stream_name not in undo_streams:
                    undo_streams[stream_name] = (last_seq, stream.low, high)
            if event.priority is not priority:
                priority = event.priority
                if type(priority) is not Priority:
                    check_event(event)
                rows = txn_rows[priority]
                classes += 1
            source_seq = event.source_seq
            time_ms = event.time_ms
            if (
                type(source_seq) is not int
                or type(time_ms) is not int
                or not low_bound <= source_seq <= high_bound
                or not low_bound <= time_ms <= high_bound
            ):
                check_event(event)
            name = event.name
            unit = event.unit
            if name is not name_ok or unit is not unit_ok:
                if (name, unit) not in checked:
                    check_event(event)
                    if len(checked) >= MAX_CHECKED_TEXTS:
                        checked.clear()
                    checked.add((name, unit))
                name_ok, unit_ok = name, unit
                head_bytes = len(name) + (len(unit) if unit else 0)
            value = event.value
            value_type = type(value)
            if value_type is int:
                kind = KIND_INT
                if not low_bound <= value <= high_bound:  # type: ignore[operator]
                    check_event(event)
            elif value_type is float:
                kind = KIND_FLOAT
            elif value_type is bool:
                kind = KIND_BOOL
                value = int(value)
            elif value_type is str:
                kind = KIND_STR
                if not _is_text(value):
                    check_event(event)
            elif value_type is bytes:
                kind = KIND_BYTES
            else:
                check_event(event)  # raises, or a subclass of one of them
                kind = value_kind(value)
                if kind == KIND_BOOL:
                    value = int(value)
            if high is None or source_seq > high:
                if high is None:
                    stream.low = source_seq
                high = source_seq
            else:
                stream.last_seq = last_seq
                stream.high = high
                if self._seen(event, kind, stream, now_ms, txn_rows):
                    seqs.append(None)
                    continue
                if stream.low is None or source_seq < stream.low:
                    stream.low = source_seq
            text_bytes += head_bytes
            if kind >= KIND_STR:
                text_bytes += len(value)  # type: ignore[arg-type]
            row_id += 1
            last_seq += 1
            seqs.append(last_seq)
            rows.append(
                (row_id, stream_id, last_seq, source_seq, time_ms, now_ms, name, kind, value, unit)
            )
        stream.last_seq = last_seq
        stream.high = high
        return seqs, text_bytes, row_id, priority if classes == 1 else None  # type: ignore[return-value]

    def _seen(
        self,
        event: Event,
        kind: int,
        stream: Stream,
        now_ms: int,
        txn_rows: dict[Priority, list[Row]],
    ) -> bool:
        """Whether `event` repeats one committed within the window (or earlier in this
        group commit) with the same content: its key is held back, or in `recent`."""
        if stream.low is not None and event.source_seq < stream.low:
            return False
        digests = self._digests
        digest = value_digest(
            event.value, digests.head(event.priority, event.name, event.unit, kind)
        )
        held = self._held.find(stream.stream_id, event.source_seq, txn_rows)
        if held is not None:
            priority, row = held
            if now_ms - row[5] > self.dedup_window_ms:
                return False
            return digests.of_row(priority, row) == digest
        seen = self._recent.lookup(stream.stream_id, event.source_seq)
        return seen is not None and now_ms - seen[0] <= self.dedup_window_ms and seen[1] == digest

    def _trim_to_quota(self, priority: Priority, txn: Txn, result: CommitResult) -> None:
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
        mine: Mapping[Priority, Sequence[Row]],
        txn: Txn,
        need: int,
        result: CommitResult,
    ) -> OutboxFull | None:
        """Make room for the rows `mine` within the audit quota and the disk budget,
        evicting what the append's most important class may evict; or refuse it
        (nothing evicted).

        Within a group commit the pages in use are estimated (measured at its start, plus
        each accepted append's estimate, which errs on the large side); only when the
        estimate reaches the budget are the buffered rows written and the pages measured.
        """
        audit_max = self.quotas[Priority.AUDIT].max_rows
        if audit_max is not None:
            audits = len(mine[Priority.AUDIT])
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
        top = min(p for p, rows in mine.items() if rows)
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


def _is_text(value: object) -> bool:
    """Whether a str value is valid UTF-8 text (no lone surrogates)."""
    try:
        str.encode(value)  # type: ignore[arg-type]
    except UnicodeEncodeError:
        return False
    return True


def _first_malformed(events: Sequence[Event], error: Exception) -> ValueError | TypeError:
    """The error of the append's first malformed event (as `check_event` words it)."""
    for event in events:
        try:
            check_event(event)
        except (ValueError, TypeError) as found:
            return found
    raise error  # no event is malformed: this is not the append's fault


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
