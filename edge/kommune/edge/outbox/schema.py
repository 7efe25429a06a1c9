"""The outbox's tables, and how an `Event` becomes a row and back.

One table per priority class (`audit`, `occupancy`, `telemetry`), each ordered by its
`row_id` alone: oldest-first hand-out, eviction and expiry all walk the table's own
b-tree, so no secondary index costs a write per event. Row ids come from one counter
(`meta.last_row_id`) over all three tables and are never reused, so an acknowledgement
that arrives late can never hit a newer row.

`streams` gives each stream a small integer and keeps its last assigned `seq` (the
per-stream sequence of the idempotency key (agent, stream, seq)). `recent` remembers
the (stream, source_seq) of events committed within the dedup window, with a digest of
their content, so a retransmission is recognised after its row has left. Since version 2
the keys of the newest rows (above `meta.keys_through`) are written to it in bulk, after
their rows; until then the rows themselves hold them (`store.Store` says when). Since
version 3 it holds runs of consecutive source_seqs, one row per run (`keys`), and
`streams.last_seq` is written with the keys too: the rows above `keys_through` may have
higher seqs, and opening the file takes them into account.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Final

from kommune.edge.northbound import STREAM_PATTERN, Event, Priority, Value
from kommune.edge.outbox.keys import RECENT_DDL

#: PRAGMA user_version of the layout below. Version 0 is an empty (new) file. Version 2
#: has the tables of version 1; `recent` may lag behind the event tables, and
#: `meta.keys_through` says how far it has every key (see `store.Store`): an agent that
#: knows only version 1 would miss the keys held back, so it must not open a version 2
#: file. Version 3 stores `recent` as runs (`keys.RECENT_DDL`), which an agent of
#: version 2 could not read. Files of versions 1 and 2 are upgraded in place (version
#: 1's `recent` has every key; both hold one key per row, converted to runs).
SCHEMA_VERSION: Final = 3
#: Versions this code opens and upgrades to SCHEMA_VERSION.
UPGRADABLE_VERSIONS: Final = frozenset({1, 2})

#: The table that holds each class's rows.
TABLES: Final = {
    Priority.AUDIT: "audit",
    Priority.OCCUPANCY: "occupancy",
    Priority.TELEMETRY: "telemetry",
}

#: The columns of each class's table (the bench's raw SQLite reference uses them too).
EVENT_COLUMNS: Final = """(
    row_id INTEGER PRIMARY KEY,
    stream_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    source_seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    added_ms INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    value,
    unit TEXT
)"""

#: Statements that create the schema in an empty database.
DDL: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE streams ("
    " stream_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, last_seq INTEGER NOT NULL)",
    *(f"CREATE TABLE {table} {EVENT_COLUMNS}" for table in TABLES.values()),
    RECENT_DDL,
)

#: Every table versions 1 to 3 have; an outbox file without them is not ours.
EXPECTED_TABLES: Final = frozenset({"meta", "streams", "recent", *TABLES.values()})

INSERT_COLUMNS: Final = (
    "(row_id, stream_id, seq, source_seq, time_ms, added_ms, name, kind, value, unit)"
)
SELECT_COLUMNS: Final = "row_id, stream_id, seq, source_seq, time_ms, name, kind, value, unit"

# How a value is stored: SQLite keeps int, float, str and bytes as they are in a column
# without a declared type; `kind` tells a bool from an int (and a NaN from a NULL).
KIND_INT: Final = 0
KIND_FLOAT: Final = 1
KIND_BOOL: Final = 2
KIND_STR: Final = 3
KIND_BYTES: Final = 4

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_STREAM_RE: Final = re.compile(STREAM_PATTERN.pattern)


#: `kind` by the value's exact type (the fast path; `value_kind` for subclasses).
KINDS: Final[dict[type, int]] = {
    bool: KIND_BOOL,
    int: KIND_INT,
    float: KIND_FLOAT,
    str: KIND_STR,
    bytes: KIND_BYTES,
}


def value_kind(value: Value) -> int:
    """The `kind` column for `value` (bool before int: a bool is an int in Python)."""
    if isinstance(value, bool):
        return KIND_BOOL
    if isinstance(value, int):
        return KIND_INT
    if isinstance(value, float):
        return KIND_FLOAT
    if isinstance(value, str):
        return KIND_STR
    if isinstance(value, bytes):
        return KIND_BYTES
    raise TypeError(f"an event's value is a number, bool, str or bytes, not {type(value)!r}")


def stored_value(value: Value) -> int | float | str | bytes:
    """What goes in the `value` column (a bool as 0 or 1; `kind` remembers it was one)."""
    return int(value) if isinstance(value, bool) else value


def loaded_value(kind: int, stored: object) -> Value:
    """The `Value` back from a row (SQLite stores a NaN as NULL)."""
    if kind == KIND_BOOL and isinstance(stored, int):
        return bool(stored)
    if kind == KIND_FLOAT:
        if stored is None:
            return math.nan
        if isinstance(stored, int | float):
            return float(stored)
    if kind == KIND_INT and isinstance(stored, int):
        return stored
    if kind == KIND_STR and isinstance(stored, str):
        return stored
    if kind == KIND_BYTES and isinstance(stored, bytes):
        return stored
    raise ValueError(f"a stored value of kind {kind} is a {type(stored).__name__}")


def head_digest(priority: Priority, name: str, unit: str | None, kind: int) -> int:
    """CRC-32 of the part of an event's content most events of a stream share."""
    return zlib.crc32(f"{int(priority)}\0{name}\0{unit or ''}\0{kind}\0".encode())


def value_digest(value: Value, head: int) -> int:
    """CRC-32 of an event's content, continued from its `head_digest`."""
    if isinstance(value, bytes):
        return zlib.crc32(value, head)
    if isinstance(value, str):
        return zlib.crc32(value.encode(), head)
    return zlib.crc32(repr(value).encode(), head)


def content_digest(event: Event, kind: int) -> int:
    """What a retransmission repeats, as a CRC-32: class, name, unit and value.

    Not the time: a producer may stamp a retransmitted frame with the time it arrived.
    Two events with one (stream, source_seq) but different content are two events (a node
    that rebooted and counts from the start again), not a retransmission.
    """
    return value_digest(event.value, head_digest(event.priority, event.name, event.unit, kind))


def _check_text(stream: str, field: str, text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{stream}: {field} {text!r} is not a str")
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(f"{stream}: {field} {text!r} is not valid UTF-8 text") from error


def check_event(event: Event) -> None:
    """Refuse an event the outbox could not store or a backend could not key (ValueError or
    TypeError, before anything is queued)."""
    if not isinstance(event, Event):
        raise TypeError(f"the outbox takes Event objects, not {type(event)!r}")
    if not isinstance(event.stream, str) or not _STREAM_RE.fullmatch(event.stream):
        raise ValueError(f"stream {event.stream!r} does not match {STREAM_PATTERN.pattern}")
    if not isinstance(event.priority, Priority):
        raise TypeError(f"{event.stream}: priority {event.priority!r} is not a Priority")
    for field, number in (("source_seq", event.source_seq), ("time_ms", event.time_ms)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"{event.stream}: {field} {number!r} is not an int")
        if not INT64_MIN <= number <= INT64_MAX:
            raise ValueError(f"{event.stream}: {field} {number} does not fit 64 bits")
    _check_text(event.stream, "name", event.name)
    if event.unit is not None:
        _check_text(event.stream, "unit", event.unit)
    value = event.value
    kind = value_kind(value)
    if kind == KIND_STR:
        _check_text(event.stream, "value", value)
    elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{event.stream}: value {value} does not fit 64 bits")
