"""Batches close by count, bytes or age, per priority class; no row is lost, duplicated or
reordered on the way through the batcher."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kommune.edge.northbound import Event, Priority, Queued
from kommune.edge.uplink import senml
from kommune.edge.uplink.batcher import DEFAULT_POLICIES, Batch, Batcher, BatchPolicy

T0 = 1_795_971_819_000
encode = functools.partial(senml.encode, "edge-1")


def rows(
    priority: Priority, n: int, *, start: int = 1, time_ms: int = T0, text: str = ""
) -> list[Queued]:
    value: str | bool = text if text else True
    return [
        Queued(i, i, Event("bay-1/occupancy", priority, i, time_ms, "occupied", value))
        for i in range(start, start + n)
    ]


def policies(**by_class: BatchPolicy) -> dict[Priority, BatchPolicy]:
    return {Priority[k.upper()]: v for k, v in by_class.items()}


def test_defaults_audit_at_once_occupancy_in_a_second_telemetry_in_thirty() -> None:
    assert DEFAULT_POLICIES[Priority.AUDIT].max_age_s == 0
    assert DEFAULT_POLICIES[Priority.OCCUPANCY].max_age_s == 1.0
    assert DEFAULT_POLICIES[Priority.TELEMETRY].max_age_s == 30.0
    assert DEFAULT_POLICIES[Priority.TELEMETRY].max_events == 500


def test_audit_leaves_at_once() -> None:
    b = Batcher(encode)
    [batch] = b.add(Priority.AUDIT, rows(Priority.AUDIT, 3), now=0.0, wall_ms=T0)
    assert [r.seq for r in batch.rows] == [1, 2, 3]
    assert batch.pack == encode(batch.rows)
    assert b.held() == 0


def test_count_closes_a_batch_and_the_rest_stays_open() -> None:
    b = Batcher(encode, policies(telemetry=BatchPolicy(max_events=4, max_age_s=30)))
    closed = b.add(Priority.TELEMETRY, rows(Priority.TELEMETRY, 10), now=0.0, wall_ms=T0)
    assert [len(c.rows) for c in closed] == [4, 4]
    assert b.held() == 2 and b.room(Priority.TELEMETRY) == 2


def test_age_closes_a_batch_at_its_deadline() -> None:
    b = Batcher(encode, policies(occupancy=BatchPolicy(max_events=100, max_age_s=1.0)))
    assert b.add(Priority.OCCUPANCY, rows(Priority.OCCUPANCY, 2), now=10.0, wall_ms=T0) == []
    assert b.next_deadline() == 11.0
    assert b.due(10.999) == []
    assert (
        b.add(Priority.OCCUPANCY, rows(Priority.OCCUPANCY, 1, start=3), now=10.5, wall_ms=T0) == []
    )
    [batch] = b.due(11.0)
    assert [r.seq for r in batch.rows] == [1, 2, 3]
    assert b.next_deadline() is None


def test_rows_that_are_already_old_leave_at_once() -> None:
    b = Batcher(encode, policies(telemetry=BatchPolicy(max_events=100, max_age_s=30)))
    # Happened 45 s ago (queued through an outage): no reason to wait 30 s more.
    [batch] = b.add(Priority.TELEMETRY, rows(Priority.TELEMETRY, 2), now=5.0, wall_ms=T0 + 45_000)
    assert len(batch.rows) == 2


def test_a_node_clock_in_the_future_delays_no_more_than_the_policy() -> None:
    b = Batcher(encode, policies(occupancy=BatchPolicy(max_events=100, max_age_s=1.0)))
    b.add(
        Priority.OCCUPANCY, rows(Priority.OCCUPANCY, 1, time_ms=T0 + 3_600_000), now=0.0, wall_ms=T0
    )
    assert b.next_deadline() == 1.0


def test_bytes_close_a_batch_before_its_pack_exceeds_the_limit() -> None:
    limit = 300
    b = Batcher(
        encode, policies(telemetry=BatchPolicy(max_events=1000, max_bytes=limit, max_age_s=30))
    )
    closed = b.add(
        Priority.TELEMETRY, rows(Priority.TELEMETRY, 40, text="x" * 20), now=0.0, wall_ms=T0
    )
    assert closed, "40 records of ~25 bytes do not fit 300 bytes"
    for batch in closed:
        assert len(batch.pack) <= limit
        assert len(encode(batch.rows)) == len(batch.pack)
    # Each closed batch was as full as the limit allows: one more row would not fit.
    everything = [r for c in closed for r in c.rows] + b.take_open()
    assert [r.seq for r in everything] == list(range(1, 41))
    first = closed[0]
    assert len(encode(everything[: len(first.rows) + 1])) > limit


def test_a_single_row_larger_than_the_limit_leaves_alone() -> None:
    b = Batcher(encode, policies(audit=BatchPolicy(max_events=10, max_bytes=64, max_age_s=0)))
    big = rows(Priority.AUDIT, 1, text="y" * 500)
    [batch] = b.add(Priority.AUDIT, big, now=0.0, wall_ms=T0)
    assert batch.rows == tuple(big) and len(batch.pack) > 64


def test_flush_closes_everything_and_take_open_hands_rows_back() -> None:
    b = Batcher(encode)
    b.add(Priority.TELEMETRY, rows(Priority.TELEMETRY, 3), now=0.0, wall_ms=T0)
    b.add(Priority.OCCUPANCY, rows(Priority.OCCUPANCY, 2, start=10), now=0.0, wall_ms=T0)
    assert sorted(len(x.rows) for x in b.flush()) == [2, 3]
    assert b.held() == 0
    b.add(Priority.TELEMETRY, rows(Priority.TELEMETRY, 3), now=0.0, wall_ms=T0)
    assert [r.seq for r in b.take_open()] == [1, 2, 3]
    assert b.held() == 0 and b.next_deadline() is None


@pytest.mark.parametrize(
    "bad",
    [
        {"max_events": 0},
        {"max_bytes": 10},
        {"max_age_s": -1.0},
        {"max_age_s": float("nan")},
    ],
)
def test_nonsense_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchPolicy(**bad)  # type: ignore[arg-type]


steps = st.lists(
    st.tuples(
        st.sampled_from(list(Priority)),
        st.integers(min_value=0, max_value=30),  # rows to add
        st.floats(min_value=0, max_value=5),  # time passing before
        st.integers(min_value=0, max_value=40),  # text length of the values
    ),
    max_size=25,
)


@given(
    steps=steps,
    max_events=st.integers(1, 50),
    max_bytes=st.integers(64, 2000),
    max_age=st.floats(0, 3),
)
def test_every_row_leaves_once_in_order_and_within_limits(
    steps: list[tuple[Priority, int, float, int]], max_events: int, max_bytes: int, max_age: float
) -> None:
    policy = BatchPolicy(max_events=max_events, max_bytes=max_bytes, max_age_s=max_age)
    b = Batcher(encode, dict.fromkeys(Priority, policy))
    now, next_id = 0.0, 1
    added: dict[Priority, list[int]] = {p: [] for p in Priority}
    out: list[Batch] = []
    for priority, n, dt, text in steps:
        now += dt
        out += b.due(now)
        new = rows(priority, n, start=next_id, text="t" * text, time_ms=T0 + int(now * 1000))
        next_id += n
        added[priority] += [r.row_id for r in new]
        out += b.add(priority, new, now=now, wall_ms=T0 + int(now * 1000))
        deadline = b.next_deadline()
        assert deadline is None or deadline > now  # nothing overdue stays open
    leftover = b.take_open()
    for batch in out:
        assert 1 <= len(batch.rows) <= max_events
        assert len(batch.pack) <= max_bytes or len(batch.rows) == 1
        assert batch.pack == encode(batch.rows)
        assert {r.event.priority for r in batch.rows} == {batch.priority}
    for priority in Priority:
        leaving = [r.row_id for batch in out if batch.priority == priority for r in batch.rows]
        leaving += [r.row_id for r in leftover if r.event.priority == priority]
        assert leaving == added[priority]
