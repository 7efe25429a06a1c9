"""An in-memory `BatchSource` that checks how it is used (test support, not shipped).

It keeps the contract of `kommune.edge.northbound.BatchSource` and is strict about
it: acknowledging or releasing a row that is not handed out, or handing a row out
twice, raises `ContractError` (and is remembered in `violations`, in case the caller
swallowed it). Every call is logged in order, with the time, so a test can say when a
row was acknowledged relative to anything else it observed.

    outbox = FakeOutbox()
    outbox.add("bay-17/occupancy", Priority.OCCUPANCY, "occupied", True)
    async with Uplink(config, outbox): ...
    await outbox.wait_empty()           # every row acknowledged
    outbox.acked_keys()                 # [(stream, seq), ...] in acknowledgement order
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kommune.edge.northbound import Event, Priority, Queued, Value


class ContractError(AssertionError):
    """The uplink used the outbox in a way the contract does not allow."""


@dataclass(frozen=True, slots=True)
class Call:
    """One call to the outbox: what, which rows, when (time.monotonic())."""

    op: str
    row_ids: tuple[int, ...]
    at: float


@dataclass
class FakeOutbox:
    """Rows in memory; `available` are those no batch holds, oldest first per class."""

    rows: dict[int, Queued] = field(default_factory=dict)
    available: set[int] = field(default_factory=set)
    handed_out: set[int] = field(default_factory=set)
    acknowledged: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Called at the start of every acknowledge (e.g. to check the broker has the rows).
    on_acknowledge: Callable[[Sequence[Queued]], None] | None = None

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._seqs: dict[str, itertools.count[int]] = {}
        self._changed = asyncio.Event()

    # -- producers -----------------------------------------------------------------------

    def add(
        self,
        stream: str,
        priority: Priority,
        name: str,
        value: Value,
        unit: str | None = None,
        *,
        time_ms: int | None = None,
    ) -> Queued:
        """Commit one event; it gets the next row id and the next seq of its stream."""
        seqs = self._seqs.setdefault(stream, itertools.count(1))
        when = time.time_ns() // 1_000_000 if time_ms is None else time_ms
        seq = next(seqs)
        event = Event(stream, priority, seq, when, name, value, unit)
        row = Queued(next(self._ids), seq, event)
        self.rows[row.row_id] = row
        self.available.add(row.row_id)
        self._signal()
        return row

    def add_row(self, row: Queued) -> Queued:
        """Commit a row made by the test (any row id and seq)."""
        self.rows[row.row_id] = row
        self.available.add(row.row_id)
        self._signal()
        return row

    # -- BatchSource ---------------------------------------------------------------------

    async def next_batch(self, priority: Priority, max_rows: int) -> list[Queued]:
        if max_rows < 1:
            self._violate(f"next_batch asked for {max_rows} rows")
        ids = sorted(i for i in self.available if self.rows[i].event.priority == priority)
        batch = [self.rows[i] for i in ids[:max_rows]]
        for row in batch:
            self.available.discard(row.row_id)
            self.handed_out.add(row.row_id)
        self._log("next_batch", batch)
        if batch:
            self._signal()  # for tests waiting to see rows handed out
        return batch

    async def wait_for_rows(self) -> None:
        while not self.available:
            self._changed.clear()
            await self._changed.wait()

    async def acknowledge(self, rows: Sequence[Queued]) -> None:
        if self.on_acknowledge is not None:
            self.on_acknowledge(rows)
        self._log("acknowledge", rows)
        for row in rows:
            if row.row_id not in self.handed_out:
                self._violate(f"acknowledge of row {row.row_id}, which is not handed out")
            self.handed_out.discard(row.row_id)
            del self.rows[row.row_id]
            self.acknowledged.append(row.row_id)
        self._signal()

    async def release(self, rows: Sequence[Queued]) -> None:
        self._log("release", rows)
        ids = [r.row_id for r in rows]
        if ids != sorted(ids):
            self._violate(f"release out of row order: {ids}")
        for row in rows:
            if row.row_id not in self.handed_out:
                self._violate(f"release of row {row.row_id}, which is not handed out")
            self.handed_out.discard(row.row_id)
            self.available.add(row.row_id)
        self._signal()

    # -- for tests -----------------------------------------------------------------------

    def pending(self) -> int:
        """Rows not acknowledged yet (available or handed out)."""
        return len(self.rows)

    async def wait_empty(self) -> None:
        """Return once every row added so far has been acknowledged."""
        while self.rows:
            self._changed.clear()
            await self._changed.wait()

    async def wait_for(self, predicate: Callable[[FakeOutbox], bool]) -> None:
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()

    def ops(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]

    def acked_row_ids(self) -> set[int]:
        return set(self.acknowledged)

    def released_row_ids(self) -> set[int]:
        return {i for c in self.ops("release") for i in c.row_ids}

    def _log(self, op: str, rows: Sequence[Queued]) -> None:
        self.calls.append(Call(op, tuple(r.row_id for r in rows), time.monotonic()))

    def _violate(self, message: str) -> None:
        self.violations.append(message)
        raise ContractError(message)

    def _signal(self) -> None:
        self._changed.set()
