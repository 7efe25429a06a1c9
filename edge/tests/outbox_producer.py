"""A producer for the outbox's kill test, and what the outbox tests share.

Run as a script it opens the outbox at DB and appends events from a few streams (one per
task, two per class) as fast as group commit takes them, printing "STREAM SOURCE_SEQ"
for each event once `append` has returned (flushed at once): a printed line is an
acknowledgement a node would have received. The test SIGKILLs it at random moments.

    python outbox_producer.py DB '{"lock-1/audit": 17, ...}'   # first source_seq per stream

An event's content depends only on its (stream, source_seq), so an event sent again
after a restart is a true retransmission (and must be recognised as one).
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
from pathlib import Path

from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import Outbox

#: 2026-01-01 00:00 UTC, in ms.
T0_MS = 1_767_225_600_000

STREAMS = (
    "lock-1/audit",
    "lock-2/audit",
    "bay-1/occupancy",
    "bay-2/occupancy",
    "lamp-1/energy",
    "lamp-2/energy",
)

_CLASSES = {"audit": Priority.AUDIT, "occupancy": Priority.OCCUPANCY}


def priority_of(stream: str) -> Priority:
    """The class a test stream belongs to, by its kind ("lock-1/audit" is audit)."""
    return _CLASSES.get(stream.split("/")[1], Priority.TELEMETRY)


def event(stream: str, source_seq: int, value: float | int | str | bytes | None = None) -> Event:
    """A test event whose content is fixed by (stream, source_seq) unless `value` is given."""
    if value is None:
        value = source_seq * 7 % 1000
    return Event(stream, priority_of(stream), source_seq, T0_MS + source_seq, "v", value, None)


def stored_rows(path: Path) -> list[tuple[int, str, int, int]]:
    """Every row in the outbox file at `path` as (row_id, stream, source_seq, seq), in row
    order, read by a fresh read-only connection (so not through the outbox's cache)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows: list[tuple[int, str, int, int]] = []
        for table in ("audit", "occupancy", "telemetry"):
            rows += conn.execute(
                f"SELECT row_id, streams.name, source_seq, seq FROM {table} "
                "JOIN streams USING (stream_id) ORDER BY row_id"
            ).fetchall()
        return sorted(rows)
    finally:
        conn.close()


async def _produce(path: Path, starts: dict[str, int]) -> None:
    outbox = await Outbox.open(path, agent="kill-test", budget_bytes=1 << 30)
    out = sys.stdout

    async def stream_task(stream: str, first: int) -> None:
        rng = random.Random(stream)
        seq = first
        while True:
            count = rng.randint(1, 8)
            await outbox.append([event(stream, s) for s in range(seq, seq + count)])
            out.write("".join(f"{stream} {s}\n" for s in range(seq, seq + count)))
            out.flush()
            seq += count

    try:
        await asyncio.gather(*(stream_task(s, starts.get(s, 1)) for s in STREAMS))
    finally:
        await outbox.aclose()


if __name__ == "__main__":
    asyncio.run(_produce(Path(sys.argv[1]), json.loads(sys.argv[2])))
