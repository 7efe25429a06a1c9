"""The dedup table as runs (`keys.RecentKeys`) against a plain dict of keys: any mix of
writes (in order, out of order, reused numbers, gaps, keys already there), removals,
pruning and lookups finds what the dict finds, and runs of a stream never overlap."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox.held import Digests
from kommune.edge.outbox.keys import MAX_SLOTS, RECENT_DDL, RecentKeys, decode, stream_runs
from kommune.edge.outbox.schema import content_digest, value_kind

Model = dict[tuple[int, int], tuple[int, int]]

keys = st.tuples(
    st.integers(1, 3),  # stream_id
    st.integers(0, 40),  # source_seq: few, so writes overlap and repeat
    st.integers(0, 2**32 - 1),  # digest
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(keys, max_size=30), st.integers(0, 50)),
        st.tuples(st.just("remove"), st.lists(keys, max_size=10), st.integers(0, 0)),
        st.tuples(st.just("prune"), st.just([]), st.integers(0, 60)),
    ),
    max_size=12,
)


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(RECENT_DDL)
    yield db
    db.close()


def table(conn: sqlite3.Connection) -> Model:
    found: Model = {}
    spans: dict[int, list[tuple[int, int]]] = {}
    for stream_id, first, slots, live, base_ms, blob in conn.execute(
        "SELECT stream_id, first_seq, slots, live, base_ms, keys FROM recent"
    ):
        held = decode(first, base_ms, blob)
        assert len(held) == live
        assert len(blob) == 8 * slots
        spans.setdefault(stream_id, []).append((first, first + slots - 1))
        for seq, key in held.items():
            assert (stream_id, seq) not in found, "a key in two runs"
            found[(stream_id, seq)] = key
    for mine in spans.values():
        mine.sort()
        assert all(a[1] < b[0] for a, b in pairwise(mine)), "runs overlap"
    return found


@settings(max_examples=300, deadline=None)
@given(ops=operations)
def test_runs_hold_what_a_dict_of_keys_holds(
    ops: list[tuple[str, list[tuple[int, int, int]], int]],
) -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute(RECENT_DDL)
    recent = RecentKeys(db)
    model: Model = {}
    now = 0
    for op, some, number in ops:
        if op == "add":
            now += number
            batch: dict[int, list[tuple[int, int, int]]] = {}
            for stream_id, seq, digest in some:
                batch.setdefault(stream_id, []).append((seq, now, digest))
                model[(stream_id, seq)] = (now, digest)
            recent.add(batch)
        elif op == "remove":
            gone = [(s, q, model[(s, q)][0] if (s, q) in model else now) for s, q, _ in some]
            for stream_id, seq, seen in gone:
                if model.get((stream_id, seq), (None,))[0] == seen:
                    del model[(stream_id, seq)]
            recent.remove(gone)
        else:
            cutoff = now - number
            recent.prune(cutoff)
            model = {k: v for k, v in model.items() if v[0] >= cutoff}
        assert table(db) == model
        assert recent.live_keys() == len(model)
        for stream_id in (1, 2, 3):
            for seq in range(-1, 43):
                assert recent.lookup(stream_id, seq) == model.get((stream_id, seq))
    db.close()


def test_a_long_run_of_one_stream_is_split_into_bounded_rows(conn: sqlite3.Connection) -> None:
    recent = RecentKeys(conn)
    recent.add({7: [(seq, 1_000 + seq, seq * 3) for seq in range(1, 2_001)]})
    rows = conn.execute("SELECT slots FROM recent ORDER BY first_seq").fetchall()
    assert len(rows) == -(-2_000 // MAX_SLOTS)
    assert all(slots <= MAX_SLOTS for (slots,) in rows)
    assert recent.lookup(7, 1_500) == (2_500, 4_500)


def test_small_gaps_share_a_run_and_large_ones_do_not() -> None:
    runs = stream_runs(1, [(1, 10, 0), (2, 10, 0), (5, 11, 0), (50, 12, 0)])
    assert [(first, slots, live) for _, first, slots, live, *_ in runs] == [(1, 5, 3), (50, 1, 1)]


@pytest.mark.parametrize(
    "value", [0, -(2**63), 2**63 - 1, 1.5, -0.0, math.nan, math.inf, True, False, "é", "", b"\x00"]
)
def test_a_rows_digest_is_its_events_content_digest(value: float | int | str | bytes) -> None:
    event = Event("lamp-1/energy", Priority.TELEMETRY, 4, 1_000, "energy", value, "Wh")
    kind = value_kind(value)
    stored = int(value) if isinstance(value, bool) else value
    row = (1, 9, 1, 4, 1_000, 2_000, "energy", kind, stored, "Wh")
    loaded = (*row[:8], None if isinstance(value, float) and math.isnan(value) else stored, "Wh")
    expected = content_digest(event, kind)
    for as_held in (row, loaded):  # as appended, and as read back from the file
        assert Digests().keys([(Priority.TELEMETRY, [as_held])]) == {9: [(4, 2_000, expected)]}
