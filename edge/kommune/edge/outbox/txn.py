"""What the store keeps in memory, and what one transaction changes in it (to put back
if it rolls back). Plain records: the logic is in `store` and `append`."""

from __future__ import annotations

from dataclasses import dataclass, field

from kommune.edge.northbound import Priority
from kommune.edge.outbox.errors import OutboxFull

#: A row of an event table, in `schema.INSERT_COLUMNS` order: (row_id, stream_id, seq,
#: source_seq, time_ms, added_ms, name, kind, value, unit).
Row = tuple[int, int, int, int, int, int, str, int, object, str | None]


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
    #: error that refused the whole append (OutboxFull; ValueError or TypeError for a
    #: malformed event).
    appended: list[list[int | None] | OutboxFull | ValueError | TypeError] = field(
        default_factory=list
    )
    #: Of the events appended: how many were stored, and how many were duplicates.
    stored: int = 0
    duplicates: int = 0
    #: Rows deleted by acknowledgements.
    acknowledged: int = 0
    evictions: list[Eviction] = field(default_factory=list)
    #: Rows queued per class, and the database's pages in use (bytes), after the commit.
    rows: dict[Priority, int] = field(default_factory=dict)
    used_bytes: int = 0
    #: Whether a transaction was written at all (an idle maintenance pass may not).
    wrote: bool = False


@dataclass(slots=True)
class Stream:
    stream_id: int
    last_seq: int
    #: Bounds of the source_seqs this stream may have in `recent`, held back or in this
    #: transaction (None: none). An event above `high` cannot be a duplicate, so most
    #: appends never look a key up.
    low: int | None = None
    high: int | None = None


@dataclass
class State:
    """The store's bookkeeping that a transaction changes."""

    last_row_id: int
    last_added_ms: int
    rows: dict[Priority, int]
    streams: dict[str, Stream]


@dataclass
class Undo:
    """What a transaction changed in `State`, to put back if it rolls back."""

    last_row_id: int
    rows: dict[Priority, int]
    #: A stream's (last_seq, low, high) before its first change; None: created in it.
    streams: dict[str, tuple[int, int | None, int | None] | None] = field(default_factory=dict)


@dataclass
class Txn:
    """The appends of one group commit so far: their rows (the first `inserted` of each
    class are in the database), and the estimated pages in use (bytes) once all are."""

    used_bytes: int
    rows: dict[Priority, list[Row]] = field(default_factory=lambda: {p: [] for p in Priority})
    inserted: dict[Priority, int] = field(default_factory=lambda: dict.fromkeys(Priority, 0))
    #: Whether this transaction wrote the held-back keys to `recent`, and through which
    #: row id every key is there once it commits.
    flushed: bool = False
    keys_through: int = 0
    #: The held rows that flush took (put back if the transaction rolls back).
    taken: list[tuple[Priority, list[Row]]] | None = None
