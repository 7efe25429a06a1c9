"""What the outbox may keep: at the disk budget telemetry is evicted oldest-first, then
occupancy, audit never (its producers are pushed back with OutboxFull); per-class
quotas and retention; evictions counted and logged once per burst, never silently."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from outbox_producer import T0_MS, event, stored_rows

from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import Outbox, OutboxError, OutboxFull, Quota

BUDGET = 1 << 20  # 1 MiB: a few thousand events
TXN_ROWS = 100
PAD = "x" * 60  # makes each event ~200 bytes on disk


def padded(stream: str, source_seq: int) -> Event:
    return event(stream, source_seq, f"{source_seq}:{PAD}")


class Clock:
    def __init__(self) -> None:
        self.now_ms = T0_MS

    def __call__(self) -> int:
        return self.now_ms


async def open_outbox(path: Path, **settings: object) -> Outbox:
    return await Outbox.open(
        path,
        agent="edge-1",
        budget_bytes=BUDGET,
        max_txn_rows=TXN_ROWS,
        **settings,  # type: ignore[arg-type]
    )


def per_stream(path: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for _, stream, source_seq, _ in stored_rows(path):
        found.setdefault(stream, []).append(source_seq)
    return found


def eviction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "evict" in r.getMessage()]


async def fill(outbox: Outbox, stream: str, first: int, count: int, per_append: int = 50) -> int:
    """Append `count` padded events of `stream` in appends of `per_append`, checking the
    files on disk after each; returns the next source_seq."""
    seq = first
    while seq < first + count:
        await outbox.append([padded(stream, s) for s in range(seq, seq + per_append)])
        seq += per_append
        assert outbox.depth().disk_bytes <= BUDGET
    return seq


async def test_at_the_budget_telemetry_goes_oldest_first_and_the_files_stay_within_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kommune.edge.outbox")
    path = tmp_path / "o.db"
    async with await open_outbox(path) as outbox:
        end = await fill(outbox, "lamp-1/energy", 1, 15_000)  # ~3 MB of events into 1 MiB
        kept = per_stream(path)["lamp-1/energy"]
        # What is left is the newest, without a gap: oldest-first, nothing else lost.
        assert kept == list(range(kept[0], end))
        assert 1_000 < len(kept) < 15_000
        evicted = outbox.stats.evicted
        assert evicted == {(Priority.TELEMETRY, "budget"): 15_000 - len(kept)}
        # One burst: one warning when it began, however many commits evicted.
        assert len(eviction_lines(caplog)) == 1
        assert "evicting telemetry rows oldest-first (budget" in eviction_lines(caplog)[0]
    # Closing ends the burst: its totals are logged.
    lines = eviction_lines(caplog)
    assert len(lines) == 2
    assert f"evicted {15_000 - len(kept)} rows" in lines[1]


async def test_audit_is_never_evicted_and_is_pushed_back_when_nothing_else_can_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path) as outbox:
        await fill(outbox, "lamp-1/energy", 1, 1_000)
        await fill(outbox, "bay-1/occupancy", 1, 1_000)
        audit_end = 1
        with pytest.raises(OutboxFull) as full:
            while True:  # until the audit no longer fits
                await outbox.append(
                    [padded("lock-1/audit", s) for s in range(audit_end, audit_end + 20)]
                )
                audit_end += 20
                assert outbox.depth().disk_bytes <= BUDGET
        assert isinstance(full.value, OutboxError)
        assert (full.value.priority, full.value.reason) == (Priority.AUDIT, "budget")
        found = per_stream(path)
        # Telemetry went first, then occupancy; every acknowledged audit entry is there,
        # and nothing of the refused append.
        assert "lamp-1/energy" not in found
        assert "bay-1/occupancy" not in found
        assert found["lock-1/audit"] == list(range(1, audit_end))
        assert outbox.stats.evicted == {
            (Priority.TELEMETRY, "budget"): 1_000,
            (Priority.OCCUPANCY, "budget"): 1_000,
        }
        assert outbox.stats.refused == 20
        # Entry by entry, until not even one more fits.
        with pytest.raises(OutboxFull):
            while True:
                await outbox.append([padded("lock-1/audit", audit_end)])
                audit_end += 1
        # Neither telemetry nor occupancy may push audit out to get in.
        with pytest.raises(OutboxFull):
            await outbox.append([padded("lamp-1/energy", 5_000)])
        with pytest.raises(OutboxFull):
            await outbox.append([padded("bay-1/occupancy", 5_000)])
        assert per_stream(path) == {"lock-1/audit": list(range(1, audit_end))}
        # Once the uplink has delivered some, the producer's retry gets in.
        await outbox.acknowledge(await outbox.next_batch(Priority.AUDIT, 200))
        assert await outbox.append([padded("lock-1/audit", audit_end)]) == [audit_end]


async def test_an_audit_append_that_cannot_fit_evicts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path) as outbox:
        await fill(outbox, "lamp-1/energy", 1, 500)
        await fill(outbox, "lock-1/audit", 1, 2_000)
        before = per_stream(path)
        huge = [padded("lock-2/audit", s) for s in range(1, 5_001)]  # more than the budget
        with pytest.raises(OutboxFull):
            await outbox.append(huge)
        assert per_stream(path) == before  # the telemetry it could have evicted is still there
        assert outbox.stats.evicted == {}


async def test_telemetry_never_makes_room_by_evicting_occupancy(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with await open_outbox(path) as outbox:
        end = await fill(outbox, "bay-1/occupancy", 1, 6_000)  # occupancy evicts itself
        kept = per_stream(path)["bay-1/occupancy"]
        assert kept == list(range(kept[0], end))
        # Telemetry gets the room left, then makes room by evicting older telemetry only.
        telemetry_end = await fill(outbox, "lamp-1/energy", 1, 3_000)
        found = per_stream(path)
        assert found["bay-1/occupancy"] == kept
        assert found["lamp-1/energy"] == list(range(found["lamp-1/energy"][0], telemetry_end))
        # An append larger than all telemetry could free is refused whole.
        with pytest.raises(OutboxFull) as full:
            await outbox.append([padded("lamp-2/energy", s) for s in range(1, 1_001)])
        assert full.value.priority is Priority.TELEMETRY
        assert per_stream(path) == found


async def test_a_class_quota_keeps_the_newest_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    quotas = {Priority.TELEMETRY: Quota(max_rows=100), Priority.AUDIT: Quota(max_rows=30)}
    async with await open_outbox(path, quotas=quotas) as outbox:
        for first in range(1, 251, 25):
            await outbox.append([event("lamp-1/energy", s) for s in range(first, first + 25)])
        assert per_stream(path)["lamp-1/energy"] == list(range(151, 251))
        assert outbox.stats.evicted == {(Priority.TELEMETRY, "quota"): 150}
        # Audit is not evicted for its quota: the append that would exceed it is refused.
        await outbox.append([event("lock-1/audit", s) for s in range(1, 31)])
        with pytest.raises(OutboxFull) as full:
            await outbox.append([event("lock-1/audit", 31)])
        assert full.value.reason == "quota"
        assert per_stream(path)["lock-1/audit"] == list(range(1, 31))


async def test_retention_drops_rows_older_than_their_class_allows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kommune.edge.outbox")
    path = tmp_path / "o.db"
    clock = Clock()
    quotas = {Priority.TELEMETRY: Quota(max_age_s=60)}
    async with await open_outbox(path, quotas=quotas, clock_ms=clock) as outbox:
        await outbox.append([event("lamp-1/energy", s) for s in range(1, 11)])
        await outbox.append([event("lock-1/audit", 1), event("bay-1/occupancy", 1)])
        clock.now_ms += 30_000
        await outbox.append([event("lamp-1/energy", s) for s in range(11, 21)])
        clock.now_ms += 31_000  # the first ten are 61 s old, the next ten 31 s
        await outbox.maintain()
        found = per_stream(path)
        assert found["lamp-1/energy"] == list(range(11, 21))
        assert found["lock-1/audit"] == [1]
        assert found["bay-1/occupancy"] == [1]
        assert outbox.stats.evicted == {(Priority.TELEMETRY, "age"): 10}
        assert "(age: older than 60 s)" in eviction_lines(caplog)[0]
        clock.now_ms += 60_000
        await outbox.append([event("lamp-1/energy", 21)])  # expiry also runs with commits
        assert per_stream(path)["lamp-1/energy"] == [21]


async def test_rows_evicted_while_in_flight_are_harmless_to_acknowledge_or_release(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    quotas = {Priority.TELEMETRY: Quota(max_rows=10)}
    async with await open_outbox(path, quotas=quotas) as outbox:
        await outbox.append([event("lamp-1/energy", s) for s in range(1, 11)])
        held = await outbox.next_batch(Priority.TELEMETRY, 4)  # 1-4
        returned = await outbox.next_batch(Priority.TELEMETRY, 2)  # 5-6
        await outbox.release(returned)
        await outbox.append([event("lamp-1/energy", s) for s in range(11, 17)])  # evicts 1-6
        assert outbox.depth().in_flight[Priority.TELEMETRY] == 0
        await outbox.release(held)  # gone: not handed out again
        await outbox.acknowledge(held)
        rows = await outbox.next_batch(Priority.TELEMETRY, 100)
        assert [q.event.source_seq for q in rows] == list(range(7, 17))
        assert outbox.stats.acknowledged == 0


@pytest.mark.parametrize(
    "quotas",
    [
        {Priority.AUDIT: Quota(max_age_s=3600)},
        {Priority.TELEMETRY: Quota(max_rows=0)},
        {Priority.OCCUPANCY: Quota(max_age_s=-1)},
    ],
)
async def test_impossible_quotas_are_refused(tmp_path: Path, quotas: dict[Priority, Quota]) -> None:
    with pytest.raises(ValueError):
        await open_outbox(tmp_path / "o.db", quotas=quotas)


async def test_evictions_and_refusals_are_counted_per_class_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    quotas = {Priority.OCCUPANCY: Quota(max_rows=5), Priority.TELEMETRY: Quota(max_rows=3)}
    async with await open_outbox(path, quotas=quotas) as outbox:
        await outbox.append([event("bay-1/occupancy", s) for s in range(1, 9)])
        await outbox.append([event("lamp-1/energy", s) for s in range(1, 5)])
        await outbox.append([event("lamp-2/energy", s) for s in range(1, 3)])
        assert Counter(outbox.stats.evicted) == Counter(
            {(Priority.OCCUPANCY, "quota"): 3, (Priority.TELEMETRY, "quota"): 3}
        )
        assert outbox.depth().rows == {
            Priority.AUDIT: 0,
            Priority.OCCUPANCY: 5,
            Priority.TELEMETRY: 3,
        }
