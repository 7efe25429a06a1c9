"""Dedup keys held back from `recent`: the rows committed since the last flush are their
own record (the row has the stream, source_seq, time added and content), so an append
costs no key bookkeeping at all. Only a lookup (an event at or below its stream's
highest source_seq: a possible retransmission, rare) needs an index, built then and
extended from where it stopped."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

from kommune.edge.northbound import Priority
from kommune.edge.outbox.keys import StreamKey
from kommune.edge.outbox.schema import KIND_INT, head_digest, loaded_value, value_digest
from kommune.edge.outbox.txn import Row

#: Digest heads kept (one per class, name, unit and kind in use; a few dozen in practice).
MAX_CACHED_HEADS: Final = 4096

_crc32: Final = zlib.crc32


class Digests:
    """`schema.content_digest` of rows and events, with the head part of it cached."""

    def __init__(self) -> None:
        self._heads: dict[tuple[Priority, str, str | None, int], int] = {}

    def head(self, priority: Priority, name: str, unit: str | None, kind: int) -> int:
        key = (priority, name, unit, kind)
        digest = self._heads.get(key)
        if digest is None:
            if len(self._heads) >= MAX_CACHED_HEADS:
                self._heads.clear()
            digest = self._heads[key] = head_digest(priority, name, unit, kind)
        return digest

    def keys(self, chunks: Iterable[tuple[Priority, list[Row]]]) -> dict[int, list[StreamKey]]:
        """The keys of the rows in `chunks` (in row order), per stream: (source_seq,
        seen_ms, digest). `of_row` for each, unrolled: a flush takes tens of thousands."""
        keys: dict[int, list[StreamKey]] = {}
        crc32 = _crc32
        last_name: str | None = None
        last_unit: str | None = None
        last_kind = -1
        head = 0
        for priority, rows in chunks:
            last_kind = -1
            for row in rows:
                kind = row[7]
                name = row[6]
                unit = row[9]
                if kind != last_kind or name is not last_name or unit is not last_unit:
                    head = self.head(priority, name, unit, kind)
                    last_kind, last_name, last_unit = kind, name, unit
                value = row[8]
                if kind == KIND_INT and type(value) is int:
                    digest = crc32(b"%d" % value, head)
                else:
                    found = self.of_row(priority, row)
                    if found is None:
                        continue
                    digest = found
                stream_id = row[1]
                mine = keys.get(stream_id)
                if mine is None:
                    mine = keys[stream_id] = []
                mine.append((row[3], row[5], digest))
        return keys

    def of_row(self, priority: Priority, row: Row) -> int | None:
        """The digest of a stored row's event (None: its value cannot be read back)."""
        kind = row[7]
        try:
            value = loaded_value(kind, row[8])
        except ValueError:  # a row that cannot be read back is not a duplicate either
            return None
        return value_digest(value, self.head(priority, row[6], row[9], kind))


class HeldRows:
    """Rows whose keys are not in `recent` yet, in chunks (one per class and commit), and
    a lazy index over them and the open transaction's rows: (stream_id, source_seq) ->
    the newest such row, with its class."""

    def __init__(self) -> None:
        self.chunks: list[tuple[Priority, list[Row]]] = []
        self.count = 0
        self._index: dict[tuple[int, int], tuple[Priority, Row]] | None = None
        self._indexed: list[int] = []
        self._txn_indexed: dict[Priority, int] = dict.fromkeys(Priority, 0)

    def add(self, priority: Priority, rows: list[Row]) -> None:
        """Rows just committed (the open transaction's, which the index may cover)."""
        if rows:
            self.chunks.append((priority, rows))
            self.count += len(rows)
            self._indexed.append(self._txn_indexed[priority])

    def take(self) -> list[tuple[Priority, list[Row]]]:
        """Every chunk, which the caller writes to `recent`; none are held after that."""
        chunks, self.chunks, self.count = self.chunks, [], 0
        self.forget_index()
        return chunks

    def put_back(self, chunks: list[tuple[Priority, list[Row]]]) -> None:
        """Chunks `take` gave whose writing was rolled back."""
        self.chunks = chunks + self.chunks
        self.count = sum(len(rows) for _, rows in self.chunks)
        self.forget_index()

    def forget_index(self) -> None:
        """The index may cover rows that are gone (rolled back): build it afresh."""
        self._index = None
        self._indexed = [0] * len(self.chunks)
        self._txn_indexed = dict.fromkeys(Priority, 0)

    def new_txn(self) -> None:
        """The open transaction's rows start again from none."""
        self._txn_indexed = dict.fromkeys(Priority, 0)

    def find(
        self, stream_id: int, source_seq: int, txn_rows: dict[Priority, list[Row]]
    ) -> tuple[Priority, Row] | None:
        """The newest held or open-transaction row with this key."""
        index = self._index
        if index is None:
            index = self._index = {}
        indexed = self._indexed
        for at, (priority, rows) in enumerate(self.chunks):
            if indexed[at] < len(rows):
                _index_rows(index, priority, rows, indexed[at])
                indexed[at] = len(rows)
        for priority, rows in txn_rows.items():
            done = self._txn_indexed[priority]
            if done < len(rows):
                _index_rows(index, priority, rows, done)
                self._txn_indexed[priority] = len(rows)
        return index.get((stream_id, source_seq))


def _index_rows(
    index: dict[tuple[int, int], tuple[Priority, Row]],
    priority: Priority,
    rows: list[Row],
    start: int,
) -> None:
    for at in range(start, len(rows)):
        row = rows[at]
        key = (row[1], row[3])
        known = index.get(key)
        if known is None or known[1][0] < row[0]:
            index[key] = (priority, row)
