"""The dedup table `recent`: which (stream, source_seq) were committed within the window,
and a digest of their content, stored as runs of consecutive source_seqs.

A node numbers its events 1, 2, 3, ... so the keys of a stream come in runs: one row
per run (stream, first source_seq) holds a slot per source_seq, each the key's seen time
(ms after the row's `base_ms`) and its content digest (CRC-32, `schema.content_digest`),
packed little-endian as two u32. A slot whose seen offset is `NO_KEY` holds no key (pruned,
evicted, or never there). Runs of one stream never overlap, so a lookup reads one row.
Writing a few hundred keys of one stream is one row, not a few hundred b-tree cells.

Everything here is blocking and runs inside the store's transaction.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Final

#: The table (schema version 3; `upgrade_recent` converts version 2's key per row).
RECENT_DDL: Final = (
    "CREATE TABLE recent ("
    " stream_id INTEGER NOT NULL, first_seq INTEGER NOT NULL, slots INTEGER NOT NULL,"
    " live INTEGER NOT NULL, base_ms INTEGER NOT NULL,"
    " oldest_ms INTEGER NOT NULL, newest_ms INTEGER NOT NULL, keys BLOB NOT NULL,"
    " PRIMARY KEY (stream_id, first_seq)) WITHOUT ROWID"
)

#: The seen offset of an empty slot.
NO_KEY: Final = 0xFFFF_FFFF
#: A run ends where the next key is this many source_seqs on (a gap of empty slots is
#: cheaper than a new row up to about here).
MAX_GAP: Final = 4
#: ... or where it would hold more slots than this (rows stay a few KiB at most).
MAX_SLOTS: Final = 512

_INSERT: Final = (
    "INSERT INTO recent (stream_id, first_seq, slots, live, base_ms, oldest_ms, newest_ms, keys)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_BIG_ENDIAN: Final = sys.byteorder == "big"
_EMPTY: Final = (NO_KEY, 0)
_SEQ: Final = itemgetter(0)

#: One stream's key as this module takes it: (source_seq, seen_ms, digest).
StreamKey = tuple[int, int, int]
#: A run as a row of `recent`.
Run = tuple[int, int, int, int, int, int, int, bytes]
#: What `_rewrite` does to a stream's keys (source_seq -> (seen_ms, digest)).
_Edit = Callable[[dict[int, tuple[int, int]]], dict[int, tuple[int, int]]]


def _slots(blob: bytes) -> array[int]:
    slots = array("I", blob)
    if _BIG_ENDIAN:
        slots.byteswap()
    return slots


def stream_runs(stream_id: int, keys: Sequence[StreamKey]) -> list[Run]:
    """One stream's keys, sorted by source_seq (of equal ones the last counts), as rows
    of `recent`. One pass: a run goes on while the keys are consecutive (or nearly:
    MAX_GAP) and none was seen before the run's first."""
    out: list[Run] = []
    slots: list[int] = []
    first = last = base = newest = live = 0
    for seq, seen, digest in keys:
        if slots:
            offset = seen - base
            gap = seq - last
            if gap == 0:  # the same key again (seen no earlier: the keys come in order)
                if offset >= 0:
                    slots[-2] = offset
                    slots[-1] = digest
                    newest = max(newest, seen)
                continue
            if 0 < gap <= MAX_GAP and 0 <= offset < NO_KEY and seq - first < MAX_SLOTS:
                if gap > 1:
                    slots += _EMPTY * (gap - 1)
                slots.append(offset)
                slots.append(digest)
                last = seq
                live += 1
                newest = max(newest, seen)
                continue
            out.append(
                _run(stream_id, first, last, live=live, base=base, newest=newest, slots=slots)
            )
        first = last = seq
        base = newest = seen
        live = 1
        slots = [0, digest]
    if slots:
        out.append(_run(stream_id, first, last, live=live, base=base, newest=newest, slots=slots))
    return out


def _run(
    stream_id: int, first: int, last: int, *, live: int, base: int, newest: int, slots: list[int]
) -> Run:
    packed = array("I", slots)
    if _BIG_ENDIAN:
        packed.byteswap()
    return (stream_id, first, last - first + 1, live, base, base, newest, packed.tobytes())


def decode(first_seq: int, base_ms: int, blob: bytes) -> dict[int, tuple[int, int]]:
    """A run's keys: source_seq -> (seen_ms, digest)."""
    slots = _slots(blob)
    return {
        first_seq + at // 2: (base_ms + slots[at], slots[at + 1])
        for at in range(0, len(slots), 2)
        if slots[at] != NO_KEY
    }


class RecentKeys:
    """The `recent` table of one connection, and what the store keeps in memory of it:
    the highest source_seq each stream may have there (an overestimate is harmless:
    it only sends a write down the slower path that merges runs)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._high: dict[int, int] = dict(
            conn.execute(
                "SELECT stream_id, max(first_seq + slots - 1) FROM recent GROUP BY stream_id"
            ).fetchall()
        )

    def bounds(self, stream_id: int) -> tuple[int | None, int | None]:
        """The lowest and highest source_seq this stream may have here (None: it has none)."""
        low, high = self._conn.execute(
            "SELECT min(first_seq), max(first_seq + slots - 1) FROM recent WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()
        return low, high

    def lookup(self, stream_id: int, source_seq: int) -> tuple[int, int] | None:
        """(seen_ms, digest) of the key, if it is here."""
        row = self._conn.execute(
            "SELECT first_seq, slots, base_ms, keys FROM recent"
            " WHERE stream_id = ? AND first_seq <= ? ORDER BY first_seq DESC LIMIT 1",
            (stream_id, source_seq),
        ).fetchone()
        if row is None:
            return None
        first, slot_count, base_ms, blob = row
        offset = source_seq - first
        if offset >= slot_count:
            return None
        slots = _slots(blob)
        seen = slots[2 * offset]
        if seen == NO_KEY:
            return None
        return base_ms + seen, slots[2 * offset + 1]

    def add(self, keys: Mapping[int, list[StreamKey]]) -> None:
        """Store the keys of each stream (oldest first; of one source_seq the last one
        counts), replacing what this table had for them."""
        high = self._high
        new_runs: list[Run] = []
        for stream_id, mine in keys.items():
            if not mine:
                continue
            mine.sort(key=_SEQ)  # stable; and in order already, unless a node went back
            known = high.get(stream_id)
            if known is not None and mine[0][0] <= known:
                # It has keys here that these may overlap: merge them (rare).
                over = {seq: (seen, digest) for seq, seen, digest in mine}

                def overlay(
                    old: dict[int, tuple[int, int]], over: dict[int, tuple[int, int]] = over
                ) -> dict[int, tuple[int, int]]:
                    return old | over

                self._rewrite(stream_id, mine[0][0], mine[-1][0], overlay)
                continue
            new_runs += stream_runs(stream_id, mine)
            high[stream_id] = mine[-1][0]
        if new_runs:
            self._conn.executemany(_INSERT, new_runs)

    def remove(self, keys: Iterable[tuple[int, int, int]]) -> int:
        """Forget the keys (stream_id, source_seq, seen_ms) given, where their seen time is
        still that (a key stored again since is another event's); the number forgotten."""
        by_stream: dict[int, dict[int, int]] = {}
        for stream_id, source_seq, seen_ms in keys:
            by_stream.setdefault(stream_id, {})[source_seq] = seen_ms
        forgotten = 0
        for stream_id, gone in by_stream.items():

            def drop(
                old: dict[int, tuple[int, int]], gone: dict[int, int] = gone
            ) -> dict[int, tuple[int, int]]:
                nonlocal forgotten
                kept = {seq: held for seq, held in old.items() if gone.get(seq, -1) != held[0]}
                forgotten += len(old) - len(kept)
                return kept

            self._rewrite(stream_id, min(gone), max(gone), drop)
        return forgotten

    def prune(self, cutoff_ms: int) -> int:
        """Forget keys seen before `cutoff_ms`; the number of rows changed or deleted."""
        conn = self._conn
        changed: int = conn.execute("DELETE FROM recent WHERE newest_ms < ?", (cutoff_ms,)).rowcount
        partly = conn.execute(
            "SELECT stream_id, first_seq, slots FROM recent WHERE oldest_ms < ?", (cutoff_ms,)
        ).fetchall()
        for stream_id, first, slot_count in partly:
            self._rewrite(
                stream_id,
                first,
                first + slot_count - 1,
                lambda old: {seq: held for seq, held in old.items() if held[0] >= cutoff_ms},
            )
        return changed + len(partly)

    def live_keys(self) -> int:
        return int(self._conn.execute("SELECT coalesce(sum(live), 0) FROM recent").fetchone()[0])

    def _rewrite(self, stream_id: int, low: int, high: int, edit: _Edit) -> None:
        """Replace the runs of `stream_id` that reach into [low, high] by runs of
        `edit(their keys)` (the slow path: overlaps, pruning, eviction)."""
        conn = self._conn
        rows = conn.execute(
            "SELECT first_seq, base_ms, keys FROM recent"
            " WHERE stream_id = ? AND first_seq <= ? AND first_seq + slots > ?",
            (stream_id, high, low),
        ).fetchall()
        old: dict[int, tuple[int, int]] = {}
        for first, base_ms, blob in rows:
            old |= decode(first, base_ms, blob)
        conn.executemany(
            "DELETE FROM recent WHERE stream_id = ? AND first_seq = ?",
            [(stream_id, first) for first, _, _ in rows],
        )
        new = edit(old)
        new_runs = stream_runs(
            stream_id, [(seq, seen, digest) for seq, (seen, digest) in sorted(new.items())]
        )
        if new_runs:
            conn.executemany(_INSERT, new_runs)
            top = max(first + slots - 1 for _, first, slots, *_ in new_runs)
            if top > self._high.get(stream_id, top - 1):
                self._high[stream_id] = top


def upgrade_recent(conn: sqlite3.Connection) -> None:
    """Version 2 (one key per row) to version 3 (runs), in the caller's transaction."""
    keys: dict[int, list[StreamKey]] = {}
    for stream_id, source_seq, seen_ms, digest in conn.execute(
        "SELECT stream_id, source_seq, seen_ms, digest & 4294967295 FROM recent"
        " ORDER BY stream_id, source_seq"
    ):
        keys.setdefault(stream_id, []).append((source_seq, seen_ms, digest))
    conn.execute("DROP TABLE recent")
    conn.execute(RECENT_DDL)
    for stream_id, mine in keys.items():
        conn.executemany(_INSERT, stream_runs(stream_id, mine))
