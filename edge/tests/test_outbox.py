"""The outbox's core promises: an append is on disk when it returns, sequence numbers per
stream are never reused, and the uplink's batches follow the BatchSource contract
(nothing handed out twice, released rows first again, nothing in flight after a restart)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from outbox_producer import event, stored_rows

from kommune.edge.northbound import BatchSource, Event, Priority, Queued
from kommune.edge.outbox import Outbox, OutboxClosed, OutboxError, OutboxFull, OutboxInUse

BUDGET = 64 << 20


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
async def outbox(path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET)
    try:
        yield box
    finally:
        await box.aclose()


async def test_an_appended_event_is_in_the_file_when_append_returns(
    outbox: Outbox, path: Path
) -> None:
    seqs = await outbox.append([event("lamp-1/energy", 41), event("lock-1/audit", 9)])
    assert seqs == [1, 1]
    # A fresh connection (another process could be this one) sees the committed rows.
    assert [row[1:] for row in stored_rows(path)] == [
        ("lamp-1/energy", 41, 1),
        ("lock-1/audit", 9, 1),
    ]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()


async def test_outbox_is_a_batch_source(outbox: Outbox) -> None:
    source: BatchSource = outbox  # type-checked: the uplink can take it as it is
    assert await source.next_batch(Priority.AUDIT, 10) == []


async def test_seqs_count_per_stream_and_are_never_reused(path: Path) -> None:
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        assert await outbox.append([event("lamp-1/energy", s) for s in (1, 2, 3)]) == [1, 2, 3]
        assert await outbox.append([event("lamp-2/energy", 1), event("lamp-1/energy", 4)]) == [
            1,
            4,
        ]
        # The uplink takes everything away: the next seqs still go on.
        for priority in Priority:
            await outbox.acknowledge(await outbox.next_batch(priority, 100))
        assert await outbox.append([event("lamp-1/energy", 5)]) == [5]
        await outbox.acknowledge(await outbox.next_batch(Priority.TELEMETRY, 100))
        assert outbox.depth().rows[Priority.TELEMETRY] == 0
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        assert await outbox.append([event("lamp-1/energy", 6), event("lamp-2/energy", 2)]) == [
            6,
            2,
        ]
        batch = await outbox.next_batch(Priority.TELEMETRY, 10)
        assert [(q.event.stream, q.seq) for q in batch] == [
            ("lamp-1/energy", 6),
            ("lamp-2/energy", 2),
        ]
        # Row ids are never reused either, so a late acknowledgement cannot hit a new row.
        assert batch[0].row_id > 6


@pytest.mark.parametrize(
    ("value", "unit"),
    [
        (0, None),
        (-(2**63), "W"),
        (2**63 - 1, None),
        (1.5, "Wh"),
        (3.0, None),
        (-0.0, None),
        (math.inf, None),
        (True, None),
        (False, None),
        ("occupied", None),
        ("", None),
        (b"\x00\xff audit entry", None),
        (b"", None),
    ],
)
async def test_values_come_back_as_they_went_in(
    outbox: Outbox, value: float | int | str | bytes, unit: str | None
) -> None:
    sent = Event(
        "lamp-1/energy", Priority.TELEMETRY, 7, 1_767_225_600_123, "energy_wh", value, unit
    )
    await outbox.append([sent])
    [row] = await outbox.next_batch(Priority.TELEMETRY, 10)
    assert row.event == sent
    assert type(row.event.value) is type(value)


async def test_nan_comes_back_as_nan(outbox: Outbox) -> None:
    await outbox.append([event("lamp-1/energy", 1, math.nan)])
    [row] = await outbox.next_batch(Priority.TELEMETRY, 1)
    assert isinstance(row.event.value, float)
    assert math.isnan(row.event.value)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Event("Lamp/energy", Priority.TELEMETRY, 1, 0, "v", 1), ValueError),
        (Event("lamp-1", Priority.TELEMETRY, 1, 0, "v", 1), ValueError),
        (Event("lamp-1/energy", 2, 1, 0, "v", 1), TypeError),  # type: ignore[arg-type]
        (Event("lamp-1/energy", Priority.TELEMETRY, 2**63, 0, "v", 1), ValueError),
        (Event("lamp-1/energy", Priority.TELEMETRY, 1, 0, "v", 2**64), ValueError),
        (Event("lamp-1/energy", Priority.TELEMETRY, 1, 0, "v", None), TypeError),  # type: ignore[arg-type]
        (Event("lamp-1/energy", Priority.TELEMETRY, 1, 0, "v", "\ud800"), ValueError),
    ],
)
async def test_a_malformed_event_is_refused_before_anything_is_stored(
    outbox: Outbox, path: Path, bad: Event, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await outbox.append([event("lamp-1/energy", 1), bad])
    assert stored_rows(path) == []


async def test_next_batch_is_oldest_first_and_never_hands_a_row_out_twice(outbox: Outbox) -> None:
    await outbox.append([event("lamp-1/energy", s) for s in range(1, 8)])
    await outbox.append([event("lock-1/audit", 1)])
    first = await outbox.next_batch(Priority.TELEMETRY, 3)
    second = await outbox.next_batch(Priority.TELEMETRY, 3)
    third = await outbox.next_batch(Priority.TELEMETRY, 3)
    assert [q.event.source_seq for q in first + second + third] == list(range(1, 8))
    assert await outbox.next_batch(Priority.TELEMETRY, 3) == []
    # Other classes are separate queues.
    assert [q.event.stream for q in await outbox.next_batch(Priority.AUDIT, 10)] == ["lock-1/audit"]
    assert outbox.depth().in_flight == {
        Priority.AUDIT: 1,
        Priority.OCCUPANCY: 0,
        Priority.TELEMETRY: 7,
    }


async def test_concurrent_next_batch_calls_share_nothing(outbox: Outbox) -> None:
    await outbox.append([event("lamp-1/energy", s) for s in range(1, 101)])
    batches = await asyncio.gather(*(outbox.next_batch(Priority.TELEMETRY, 7) for _ in range(20)))
    seen = [q.row_id for batch in batches for q in batch]
    assert len(seen) == len(set(seen)) == 100


async def test_released_rows_are_handed_out_again_first_and_in_order(outbox: Outbox) -> None:
    await outbox.append([event("lamp-1/energy", s) for s in range(1, 11)])
    a = await outbox.next_batch(Priority.TELEMETRY, 4)  # 1-4
    b = await outbox.next_batch(Priority.TELEMETRY, 4)  # 5-8
    await outbox.release(b)
    await outbox.release(a[2:])  # 3, 4
    await outbox.release(a[2:])  # twice: no effect
    again = await outbox.next_batch(Priority.TELEMETRY, 5)
    assert [q.event.source_seq for q in again] == [3, 4, 5, 6, 7]
    rest = await outbox.next_batch(Priority.TELEMETRY, 10)
    assert [q.event.source_seq for q in rest] == [8, 9, 10]
    assert again[0] == a[2]  # the same row: same row id and seq


async def test_acknowledged_rows_are_gone_for_good_also_after_a_restart(path: Path) -> None:
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        await outbox.append([event("bay-1/occupancy", s) for s in range(1, 6)])
        batch = await outbox.next_batch(Priority.OCCUPANCY, 3)
        await outbox.acknowledge(batch)
        assert [r[2] for r in stored_rows(path)] == [4, 5]  # committed when it returned
        await outbox.acknowledge(batch)  # again (a late PUBACK): no effect
        assert outbox.depth().rows[Priority.OCCUPANCY] == 2
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        rows = await outbox.next_batch(Priority.OCCUPANCY, 10)
        assert [q.event.source_seq for q in rows] == [4, 5]


async def test_after_a_restart_nothing_is_in_flight(path: Path) -> None:
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        await outbox.append([event("lock-1/audit", s) for s in range(1, 5)])
        held = await outbox.next_batch(Priority.AUDIT, 2)
        await outbox.acknowledge(held[:1])
        assert await outbox.next_batch(Priority.AUDIT, 1)
        # Closed with rows in flight (the uplink never said): they are not lost.
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        assert outbox.depth().in_flight[Priority.AUDIT] == 0
        rows = await outbox.next_batch(Priority.AUDIT, 10)
        assert [(q.event.source_seq, q.seq) for q in rows] == [(2, 2), (3, 3), (4, 4)]


async def test_acknowledging_a_released_row_removes_it_from_the_hand_out(outbox: Outbox) -> None:
    await outbox.append([event("lamp-1/energy", s) for s in range(1, 4)])
    batch = await outbox.next_batch(Priority.TELEMETRY, 3)
    await outbox.release(batch)
    await outbox.acknowledge(batch[1:2])  # the PUBACK came after all
    rows = await outbox.next_batch(Priority.TELEMETRY, 10)
    assert [q.event.source_seq for q in rows] == [1, 3]


async def test_wait_for_rows_returns_once_rows_no_batch_holds_exist(outbox: Outbox) -> None:
    waiter = asyncio.create_task(outbox.wait_for_rows())
    await asyncio.sleep(0)
    assert not waiter.done()
    await outbox.append([event("lamp-1/energy", 1)])
    await asyncio.wait_for(waiter, 5)
    await outbox.wait_for_rows()  # at once: there are rows
    batch = await outbox.next_batch(Priority.TELEMETRY, 10)
    waiter = asyncio.create_task(outbox.wait_for_rows())
    await asyncio.sleep(0)
    assert not waiter.done()  # the only row is in flight
    await outbox.release(batch)
    await asyncio.wait_for(waiter, 5)


async def test_wait_for_rows_ends_with_outbox_closed(path: Path) -> None:
    outbox = await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET)
    waiter = asyncio.create_task(outbox.wait_for_rows())
    await asyncio.sleep(0)
    await outbox.aclose()
    with pytest.raises(OutboxClosed):
        await waiter


async def test_concurrent_appends_share_a_commit(outbox: Outbox, path: Path) -> None:
    before = outbox.stats.commits
    results = await asyncio.gather(
        *(outbox.append([event(f"lamp-{n}/energy", 1)]) for n in range(1, 201))
    )
    assert results == [[1]] * 200
    # All 200 were queued before the writer ran: group commits of up to 1,000 rows.
    assert outbox.stats.commits - before == 1
    assert len(stored_rows(path)) == 200


async def test_depth_counts_rows_and_bytes(outbox: Outbox) -> None:
    await outbox.append([event("lock-1/audit", 1), event("bay-1/occupancy", 1)])
    await outbox.append([event("lamp-1/energy", s) for s in range(1, 4)])
    depth = outbox.depth()
    assert depth.rows == {Priority.AUDIT: 1, Priority.OCCUPANCY: 1, Priority.TELEMETRY: 3}
    assert 0 < depth.used_bytes <= depth.disk_bytes
    assert depth.budget_bytes == BUDGET
    assert outbox.stats.appended == 5


async def test_close_commits_what_was_appended_before_it(path: Path) -> None:
    outbox = await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET)
    appends = [
        asyncio.create_task(outbox.append([event("lamp-1/energy", s)])) for s in range(1, 51)
    ]
    await asyncio.sleep(0)  # the appends are queued
    await outbox.aclose()
    assert [task.result() for task in appends] == [[s] for s in range(1, 51)]
    assert len(stored_rows(path)) == 50
    with pytest.raises(OutboxClosed):
        await outbox.append([event("lamp-1/energy", 51)])
    with pytest.raises(OutboxClosed):
        await outbox.next_batch(Priority.TELEMETRY, 1)
    await outbox.aclose()  # twice: nothing more happens


async def test_a_cancelled_append_does_not_stop_the_others(outbox: Outbox, path: Path) -> None:
    gone = asyncio.create_task(outbox.append([event("lamp-1/energy", 1)]))
    kept = asyncio.create_task(outbox.append([event("lamp-2/energy", 1)]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == [1]
    with pytest.raises(asyncio.CancelledError):
        await gone
    # Stored or not, the cancelled producer got no acknowledgement; the next append works.
    assert await outbox.append([event("lamp-3/energy", 1)]) == [1]
    assert {row[1] for row in stored_rows(path)} >= {"lamp-2/energy", "lamp-3/energy"}


async def test_a_second_outbox_on_the_same_file_is_refused(outbox: Outbox, path: Path) -> None:
    with pytest.raises(OutboxInUse, match="in use by another outbox"):
        await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET)
    assert await outbox.append([event("lamp-1/energy", 1)]) == [1]  # the first one goes on


@pytest.mark.parametrize(
    "arguments",
    [
        {"agent": "", "budget_bytes": BUDGET},
        {"agent": "edge-1", "budget_bytes": 1000},
        {"agent": "edge-1", "budget_bytes": BUDGET, "dedup_window_s": 0},
        {"agent": "edge-1", "budget_bytes": BUDGET, "max_txn_rows": 0},
    ],
)
async def test_bad_settings_are_refused_before_the_file_is_touched(
    path: Path, arguments: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        await Outbox.open(path, **arguments)  # type: ignore[arg-type]
    assert list(path.parent.iterdir()) == []


def test_outbox_errors_are_one_family() -> None:
    from kommune.edge import outbox as package

    for name in package.__all__:
        member = getattr(package, name)
        if isinstance(member, type) and issubclass(member, Exception):
            assert issubclass(member, OutboxError), name


async def test_queued_rows_keep_their_event(outbox: Outbox) -> None:
    sent = [event("lock-1/audit", 3, b"entry-3"), event("lock-1/audit", 4, b"entry-4")]
    await outbox.append(sent)
    rows = await outbox.next_batch(Priority.AUDIT, 10)
    assert rows == [Queued(rows[0].row_id, 1, sent[0]), Queued(rows[1].row_id, 2, sent[1])]


class FailingConnection:
    """The store's connection, but the next executemany whose SQL contains `fail_on`
    raises `error` (once): a disk error in the middle of a group commit."""

    def __init__(self, conn: sqlite3.Connection, fail_on: str, error: sqlite3.Error) -> None:
        self._conn = conn
        self.fail_on: str | None = fail_on
        self.error = error

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        if self.fail_on is not None and self.fail_on in sql:
            self.fail_on = None
            raise self.error
        return self._conn.executemany(sql, rows)  # type: ignore[arg-type]


async def test_a_failed_commit_fails_its_appends_and_takes_nothing_with_it(
    outbox: Outbox, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await outbox.append([event("lamp-1/energy", 1)]) == [1]
    store = outbox._store
    # The last statement of the append's part of the commit (its dedup keys are held back).
    failing = FailingConnection(
        store._conn, "INTO telemetry", sqlite3.OperationalError("disk I/O error")
    )
    monkeypatch.setattr(store, "_conn", failing)
    with pytest.raises(OutboxError, match="disk I/O error"):
        await outbox.append([event("lamp-1/energy", 2), event("lamp-9/energy", 1)])
    # Rolled back, bookkeeping too: no seq, stream or row was used up by the failed commit.
    assert [row[1:] for row in stored_rows(path)] == [("lamp-1/energy", 1, 1)]
    assert await outbox.append([event("lamp-1/energy", 2), event("lamp-9/energy", 1)]) == [2, 1]
    assert outbox.depth().rows[Priority.TELEMETRY] == 3
    rows = await outbox.next_batch(Priority.TELEMETRY, 10)
    assert [q.row_id for q in rows] == [1, 2, 3]


async def test_a_full_disk_pushes_back_like_a_full_budget(
    outbox: Outbox, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
    monkeypatch.setattr(
        outbox._store, "_conn", FailingConnection(outbox._store._conn, "INSERT INTO", full)
    )
    with pytest.raises(OutboxFull) as refused:
        await outbox.append([event("lock-1/audit", 1)])
    assert (refused.value.priority, refused.value.reason) == (Priority.AUDIT, "disk")
    assert stored_rows(path) == []
    assert await outbox.append([event("lock-1/audit", 1)]) == [1]  # once there is room


async def test_a_new_agent_name_is_logged_and_kept(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET) as outbox:
        await outbox.append([event("lamp-1/energy", 1)])
    async with await Outbox.open(path, agent="edge-2", budget_bytes=BUDGET) as outbox:
        assert outbox.agent == "edge-2"
    assert "written by agent 'edge-1' and is now opened by 'edge-2'" in caplog.text
