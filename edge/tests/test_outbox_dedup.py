"""Retransmissions: a node resends an event until it is acknowledged, so the outbox must
recognise one it already committed (queued or already delivered, within the dedup
window, also across a restart) and acknowledge it without storing it twice. Node
sequence numbers wrap and restart after a reboot, so it is a window, not a high-water
mark, and a reused number with different content is a new event."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from outbox_producer import T0_MS, event, stored_rows

from kommune.edge.northbound import Priority
from kommune.edge.outbox import Outbox
from kommune.edge.outbox.keys import decode
from kommune.edge.outbox.schema import SCHEMA_VERSION

BUDGET = 64 << 20
WINDOW_S = 600


class Clock:
    """A settable Unix clock in ms for the outbox."""

    def __init__(self) -> None:
        self.now_ms = T0_MS

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


async def open_outbox(path: Path, clock: Clock) -> Outbox:
    return await Outbox.open(
        path, agent="edge-1", budget_bytes=BUDGET, dedup_window_s=WINDOW_S, clock_ms=clock
    )


def keys(path: Path) -> list[tuple[str, int]]:
    return [(stream, source_seq) for _, stream, source_seq, _ in stored_rows(path)]


def recent_keys(path: Path) -> int:
    """Keys in the dedup table (it holds them as runs, each counting its live keys)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT coalesce(sum(live), 0) FROM recent").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_a_retransmission_of_a_queued_event_is_acknowledged_not_stored(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        assert await outbox.append([event("bay-1/occupancy", 5)]) == [1]
        clock.advance(WINDOW_S - 1)
        assert await outbox.append([event("bay-1/occupancy", 5), event("bay-1/occupancy", 6)]) == [
            None,
            2,
        ]
        assert keys(path) == [("bay-1/occupancy", 5), ("bay-1/occupancy", 6)]
        assert (outbox.stats.appended, outbox.stats.duplicates) == (2, 1)


async def test_a_retransmission_after_the_uplink_delivered_it_is_recognised(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("lock-1/audit", 1), event("lock-1/audit", 2)])
        await outbox.acknowledge(await outbox.next_batch(Priority.AUDIT, 10))
        assert keys(path) == []
        clock.advance(60)
        assert await outbox.append([event("lock-1/audit", 2), event("lock-1/audit", 3)]) == [
            None,
            3,
        ]
        assert keys(path) == [("lock-1/audit", 3)]


async def test_duplicates_within_one_append_and_across_concurrent_ones(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        same = [event("lamp-1/energy", 1), event("lamp-1/energy", 1), event("lamp-1/energy", 2)]
        results = await asyncio.gather(
            outbox.append(same), outbox.append(same[1:]), outbox.append(same[:1])
        )
        # One commit holds all three; the first occurrence is the one stored.
        assert list(results) == [[1, None, 2], [None, None], [None]]
        assert keys(path) == [("lamp-1/energy", 1), ("lamp-1/energy", 2)]


async def test_a_retransmission_is_recognised_after_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("bay-2/occupancy", s) for s in range(100, 110)])
    clock.advance(120)
    async with await open_outbox(path, clock) as outbox:
        # The agent died after committing, before the node heard its ack: it resends.
        assert await outbox.append([event("bay-2/occupancy", s) for s in range(105, 112)]) == [
            None
        ] * 5 + [11, 12]
    assert len(keys(path)) == 12


async def test_after_the_window_the_same_key_is_a_new_event(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("lamp-1/energy", 1)])
        clock.advance(WINDOW_S + 1)
        # The node's counter came round again: same source_seq, a new event.
        assert await outbox.append([event("lamp-1/energy", 1)]) == [2]
        # And the new one is remembered from now on.
        clock.advance(WINDOW_S - 1)
        assert await outbox.append([event("lamp-1/energy", 1)]) == [None]


async def test_a_reused_number_with_new_content_is_a_new_event(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("bay-1/occupancy", 1, 1), event("bay-1/occupancy", 2, 0)])
        clock.advance(30)
        # The node rebooted and counts from 1 again; its first event says something else.
        assert await outbox.append([event("bay-1/occupancy", 1, 0)]) == [3]
        # A retransmission of that new event is recognised as one.
        assert await outbox.append([event("bay-1/occupancy", 1, 0)]) == [None]
        assert len(keys(path)) == 3


async def test_the_time_stamp_is_not_part_of_what_a_retransmission_repeats(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        first = event("lamp-1/energy", 9)
        await outbox.append([first])
        # The producer stamped the retransmitted frame with the time it arrived.
        resent = dataclasses.replace(first, time_ms=first.time_ms + 2_000)
        assert await outbox.append([resent]) == [None]


async def test_old_keys_are_pruned_so_the_dedup_table_stays_small(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("lamp-1/energy", s) for s in range(1, 501)])
        await outbox.maintain()  # keys reach `recent` in bulk: at latest at maintenance
        assert recent_keys(path) == 500
        clock.advance(WINDOW_S / 2)
        await outbox.append([event("lamp-1/energy", s) for s in range(501, 511)])
        await outbox.maintain()
        assert recent_keys(path) == 510
        clock.advance(WINDOW_S / 2 + 1)
        await outbox.maintain()
        assert recent_keys(path) == 10
        # Pruned keys are forgotten; kept ones still count.
        assert await outbox.append([event("lamp-1/energy", 1), event("lamp-1/energy", 505)]) == [
            511,
            None,
        ]


async def test_keys_held_back_from_the_dedup_table_still_count_after_a_restart(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("bay-3/occupancy", s) for s in range(1, 6)])
        await outbox.maintain()
        await outbox.append([event("bay-3/occupancy", s) for s in range(6, 11)])
        assert recent_keys(path) == 5  # the second append's keys are held back
        # An acknowledged row's key outlives the row: it is written before the row goes.
        await outbox.acknowledge(await outbox.next_batch(Priority.OCCUPANCY, 7))
        assert recent_keys(path) == 10
        await outbox.append([event("bay-3/occupancy", s) for s in range(11, 14)])
        assert recent_keys(path) == 10
        # Gone as if killed: a clean close would write the held-back keys first.
        outbox._store._held.take()
    assert recent_keys(path) == 10
    # They are read back from their rows.
    clock.advance(60)
    async with await open_outbox(path, clock) as outbox:
        resent = [event("bay-3/occupancy", s) for s in (2, 7, 12, 13, 14)]
        assert await outbox.append(resent) == [None, None, None, None, 14]
    assert recent_keys(path) == 14  # a clean close writes them


def as_old_version(path: Path, version: int, *, keep_keys_through: bool) -> None:
    """Rewrite a closed outbox file as an older agent left it: `recent` with one key per
    row (versions 1 and 2), and for version 1 no `meta.keys_through`."""
    conn = sqlite3.connect(path)
    runs = conn.execute("SELECT stream_id, first_seq, base_ms, keys FROM recent").fetchall()
    conn.execute("DROP TABLE recent")
    conn.execute(
        "CREATE TABLE recent (stream_id INTEGER NOT NULL, source_seq INTEGER NOT NULL,"
        " seen_ms INTEGER NOT NULL, digest INTEGER NOT NULL,"
        " PRIMARY KEY (stream_id, source_seq)) WITHOUT ROWID"
    )
    for stream_id, first_seq, base_ms, blob in runs:
        conn.executemany(
            "INSERT INTO recent VALUES (?, ?, ?, ?)",
            [
                (stream_id, seq, seen, digest)
                for seq, (seen, digest) in decode(first_seq, base_ms, blob).items()
            ],
        )
    if not keep_keys_through:
        conn.execute("DELETE FROM meta WHERE key = 'keys_through'")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_a_version_1_outbox_is_upgraded_in_place(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("bay-4/occupancy", s) for s in range(1, 4)])
        await outbox.maintain()
    as_old_version(path, 1, keep_keys_through=False)
    async with await open_outbox(path, clock) as outbox:
        assert outbox.kept_aside is None
        assert await outbox.append([event("bay-4/occupancy", s) for s in (3, 4)]) == [None, 4]
    assert user_version(path) == SCHEMA_VERSION


async def test_a_version_2_outbox_is_upgraded_in_place_keys_held_back_included(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path, clock) as outbox:
        await outbox.append([event("bay-5/occupancy", s) for s in range(1, 6)])
        await outbox.append([event("lamp-5/energy", s) for s in (1, 2, 4, 5, 9)])
        await outbox.maintain()
        await outbox.append([event("bay-5/occupancy", s) for s in range(6, 9)])
        # Killed: the last append's keys are only in its rows (above keys_through).
        outbox._store._held.take()
    as_old_version(path, 2, keep_keys_through=True)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM recent").fetchone()[0] == 10
    conn.close()
    clock.advance(60)
    async with await open_outbox(path, clock) as outbox:
        assert outbox.kept_aside is None
        assert await outbox.append([event("bay-5/occupancy", s) for s in (2, 7, 9)]) == [
            None,
            None,
            9,
        ]
        assert await outbox.append([event("lamp-5/energy", s) for s in (3, 4, 9)]) == [
            6,
            None,
            None,
        ]
        # A reused number with other content is still a new event after the upgrade.
        assert await outbox.append([event("bay-5/occupancy", 3, 999)]) == [10]
    assert user_version(path) == SCHEMA_VERSION
    # A clean close writes them all: 10 + bay 6-8 + bay 9 + lamp 3 (bay 3 replaced).
    assert recent_keys(path) == 15
