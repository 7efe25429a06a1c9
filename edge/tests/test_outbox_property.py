"""Any interleaving of appends (one by one and concurrent), hand-outs, acknowledgements,
releases and restarts keeps the outbox's invariant: every event whose append was
acknowledged is either queued or acknowledged by the uplink, never both, never lost,
never stored twice; a row is never in two batches at once; seqs only grow per stream."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from outbox_producer import event, priority_of, stored_rows

from kommune.edge.northbound import Priority, Queued
from kommune.edge.outbox import Outbox

T = TypeVar("T")

#: The model checks logic, not durability (the kill test does that): in memory (tmpfs)
#: where there is one, fsync costs nothing and many more interleavings fit in the time.
MEMORY_DIR = "/dev/shm" if Path("/dev/shm").is_dir() else None
Key = tuple[str, int]

STREAMS = ("lock-1/audit", "bay-1/occupancy", "lamp-1/energy", "lamp-2/energy")
keys = st.tuples(st.sampled_from(STREAMS), st.integers(1, 12))  # few: many retransmissions
appends = st.lists(keys, min_size=1, max_size=5)


class OutboxModel(RuleBasedStateMachine):
    """The real outbox (a file in a temporary folder) against a model of what it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="outbox-property-", dir=MEMORY_DIR))
        self.path = self.folder / "outbox.db"
        self.loop = asyncio.new_event_loop()
        self.outbox = self.run(self.open())
        #: Acknowledged to the producer and not yet by the uplink: key -> seq.
        self.queued: dict[Key, int] = {}
        #: Acknowledged by the uplink (the broker has them): key -> seq.
        self.delivered: dict[Key, int] = {}
        #: Handed out and not yet acknowledged or released: row_id -> row.
        self.in_flight: dict[int, Queued] = {}
        self.last_seq: dict[str, int] = {}

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    async def open(self) -> Outbox:
        return await Outbox.open(self.path, agent="model", budget_bytes=16 << 20)

    def teardown(self) -> None:
        try:
            self.run(self.outbox.aclose())
        finally:
            self.loop.close()
            shutil.rmtree(self.folder)

    def record(self, sent: list[Key], seqs: list[int | None]) -> None:
        for key, seq in zip(sent, seqs, strict=True):
            if seq is None:  # a retransmission: the model must know the event already
                assert key in self.queued or key in self.delivered, key
                continue
            assert key not in self.queued and key not in self.delivered, f"{key} stored twice"
            assert seq == self.last_seq.get(key[0], 0) + 1, (key, seq)
            self.last_seq[key[0]] = seq
            self.queued[key] = seq

    @rule(sent=appends)
    def append(self, sent: list[Key]) -> None:
        self.record(sent, self.run(self.outbox.append([event(*key) for key in sent])))

    @rule(batch=st.lists(appends, min_size=2, max_size=4))
    def append_concurrently(self, batch: list[list[Key]]) -> None:
        async def together() -> list[list[int | None]]:
            return await asyncio.gather(
                *(self.outbox.append([event(*key) for key in sent]) for sent in batch)
            )

        # Group commit takes them in the order they were queued: so does the model.
        for sent, seqs in zip(batch, self.run(together()), strict=True):
            self.record(sent, seqs)

    @rule(priority=st.sampled_from(Priority), max_rows=st.integers(1, 6))
    def next_batch(self, priority: Priority, max_rows: int) -> None:
        rows = self.run(self.outbox.next_batch(priority, max_rows))
        assert len(rows) <= max_rows
        assert [r.row_id for r in rows] == sorted(r.row_id for r in rows)
        for row in rows:
            key = (row.event.stream, row.event.source_seq)
            assert row.row_id not in self.in_flight, "handed out twice"
            assert self.queued.get(key) == row.seq, (key, row.seq)
            assert row.event == event(*key)
            assert priority_of(key[0]) is priority
            self.in_flight[row.row_id] = row
        if not rows:  # then every queued row of that class is in flight
            waiting = {k for k in self.queued if priority_of(k[0]) is priority}
            flying = {(r.event.stream, r.event.source_seq) for r in self.in_flight.values()}
            assert waiting <= flying

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        rows = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), unique=True))
        self.run(self.outbox.acknowledge([self.in_flight[r] for r in rows]))
        for row_id in rows:
            row = self.in_flight.pop(row_id)
            key = (row.event.stream, row.event.source_seq)
            self.delivered[key] = self.queued.pop(key)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rows = data.draw(st.lists(st.sampled_from(sorted(self.in_flight)), unique=True))
        self.run(self.outbox.release([self.in_flight.pop(r) for r in rows]))

    @rule()
    def restart(self) -> None:
        self.run(self.outbox.aclose())
        self.outbox = self.run(self.open())
        self.in_flight.clear()  # nothing is in flight after a restart

    @invariant()
    def the_file_holds_exactly_what_is_queued(self) -> None:
        rows = stored_rows(self.path)
        in_file = {(stream, source_seq): seq for _, stream, source_seq, seq in rows}
        assert len(in_file) == len(rows), "an event stored twice"
        assert in_file == self.queued
        assert not in_file.keys() & self.delivered.keys()
        depth = self.outbox.depth()
        assert sum(depth.rows.values()) == len(self.queued)
        assert sum(depth.in_flight.values()) == len(self.in_flight)


OutboxModel.TestCase.settings = settings(OutboxModel.TestCase.settings, stateful_step_count=25)
test_any_interleaving_keeps_every_acknowledged_event_exactly_once = OutboxModel.TestCase
