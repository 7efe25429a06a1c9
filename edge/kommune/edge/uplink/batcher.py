"""Rows into batches, one open batch per priority class, closed by count, bytes or age.

The batcher holds no I/O and no clock of its own: the uplink hands it rows it took
from the outbox, with the time, and takes back closed batches (their SenML-CBOR pack
already encoded). A class's policy says when its open batch closes:

* **count**: it holds `max_events` rows;
* **bytes**: its pack would exceed `max_bytes` (the SenML-CBOR size before deflate);
  rows that do not fit stay open for the next batch (a single row larger than the
  limit leaves alone);
* **age**: `max_age_s` has passed since its oldest row happened (`Event.time_ms`, wall
  clock), but never later than `max_age_s` after the batcher got that row (monotonic
  clock), so a wrong node clock delays nothing by more than the policy says. A row
  that is already old when it arrives (after an outage) leaves at once.

Defaults: audit leaves at once; occupancy within 1 s; telemetry within 30 s or at 500
events; every class at most 32 KiB of pack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from kommune.edge.northbound import Priority, Queued

Encoder = Callable[[Sequence[Queued]], bytes]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """When an open batch of one class closes."""

    max_events: int = 500
    max_bytes: int = 32 * 1024
    max_age_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError(f"max_events {self.max_events} < 1")
        if self.max_bytes < 64:
            raise ValueError(f"max_bytes {self.max_bytes} < 64")
        if not self.max_age_s >= 0:
            raise ValueError(f"max_age_s {self.max_age_s} < 0")


DEFAULT_POLICIES: Mapping[Priority, BatchPolicy] = MappingProxyType(
    {
        Priority.AUDIT: BatchPolicy(max_events=100, max_age_s=0.0),
        Priority.OCCUPANCY: BatchPolicy(max_events=500, max_age_s=1.0),
        Priority.TELEMETRY: BatchPolicy(max_events=500, max_age_s=30.0),
    }
)


@dataclass(frozen=True, slots=True)
class Batch:
    """A closed batch: its rows, in the order the outbox gave them, and their pack."""

    priority: Priority
    rows: tuple[Queued, ...]
    pack: bytes


@dataclass(slots=True)
class _Open:
    rows: list[Queued] = field(default_factory=list)
    deadline: float = 0.0
    #: The exact pack size of the rows when last measured, and a guess for those since.
    size: int = 0
    guess: int = 0


def _guess(row: Queued) -> int:
    """A rough size of one more record: map, t, value; names and bases are shared."""
    value = row.event.value
    extra = len(value) if isinstance(value, str | bytes) else 0
    return 6 + extra


class Batcher:
    """Open batches per priority class; see the module docstring for the rules."""

    def __init__(
        self, encode: Encoder, policies: Mapping[Priority, BatchPolicy] = DEFAULT_POLICIES
    ) -> None:
        self._encode = encode
        self._policies = {p: policies.get(p, DEFAULT_POLICIES[p]) for p in Priority}
        self._open = {p: _Open() for p in Priority}

    def policy(self, priority: Priority) -> BatchPolicy:
        return self._policies[priority]

    def room(self, priority: Priority) -> int:
        """How many more rows the open batch of `priority` takes before it closes."""
        return self._policies[priority].max_events - len(self._open[priority].rows)

    def held(self) -> int:
        """Rows in open batches."""
        return sum(len(o.rows) for o in self._open.values())

    def add(
        self, priority: Priority, rows: Sequence[Queued], *, now: float, wall_ms: int
    ) -> list[Batch]:
        """Add rows of `priority` (oldest first) at monotonic time `now`, wall clock
        `wall_ms`; returns the batches this closed (by count, bytes or an age of 0)."""
        policy = self._policies[priority]
        closed: list[Batch] = []
        for row in rows:
            o = self._open[priority]  # a new one after each close
            if not o.rows:
                age_s = max(0.0, (wall_ms - row.event.time_ms) / 1000.0)
                o.deadline = now + max(0.0, policy.max_age_s - age_s)
            o.rows.append(row)
            o.guess += _guess(row)
            if len(o.rows) >= policy.max_events:
                closed += self._close(priority, policy.max_bytes)
            elif o.size + o.guess > policy.max_bytes:
                closed += self._close_by_bytes(priority, policy.max_bytes)
        closed += self.due(now)
        return closed

    def due(self, now: float) -> list[Batch]:
        """Close and return the open batches whose age deadline has come."""
        closed: list[Batch] = []
        for priority in Priority:
            while self._open[priority].rows and self._open[priority].deadline <= now:
                closed += self._close(priority, self._policies[priority].max_bytes)
        return closed

    def next_deadline(self) -> float | None:
        """The monotonic time the next open batch closes by age (None: none is open)."""
        deadlines = [o.deadline for o in self._open.values() if o.rows]
        return min(deadlines) if deadlines else None

    def flush(self) -> list[Batch]:
        """Close every open batch now (when the uplink drains before it stops)."""
        closed: list[Batch] = []
        for priority in Priority:
            while self._open[priority].rows:
                closed += self._close(priority, self._policies[priority].max_bytes)
        return closed

    def take_open(self) -> list[Queued]:
        """Empty the open batches and return their rows (to release them)."""
        rows = [r for o in self._open.values() for r in o.rows]
        self._open = {p: _Open() for p in Priority}
        return rows

    # -- closing -----------------------------------------------------------------------

    def _close_by_bytes(self, priority: Priority, max_bytes: int) -> list[Batch]:
        """The guess says the pack may be too large: measure, close if it is."""
        o = self._open[priority]
        pack = self._encode(o.rows)
        if len(pack) <= max_bytes:
            o.size, o.guess = len(pack), 0
            return []
        return self._close(priority, max_bytes)

    def _close(self, priority: Priority, max_bytes: int) -> list[Batch]:
        """Close the longest prefix of the open batch whose pack fits `max_bytes` (at
        least one row); rows after it stay open."""
        o = self._open[priority]
        pack = self._encode(o.rows)
        n = len(o.rows)
        if len(pack) > max_bytes and n > 1:
            n, pack = 1, self._encode(o.rows[:1])
            lo, hi = 2, len(o.rows) - 1
            while lo <= hi:
                mid = (lo + hi) // 2
                trial = self._encode(o.rows[:mid])
                if len(trial) <= max_bytes:
                    n, pack, lo = mid, trial, mid + 1
                else:
                    hi = mid - 1
        batch = Batch(priority, tuple(o.rows[:n]), pack)
        rest = o.rows[n:]
        deadline = o.deadline
        self._open[priority] = _Open()
        if rest:
            nxt = self._open[priority]
            nxt.rows = rest
            nxt.deadline = deadline  # the rows are as old as they were
            nxt.guess = sum(_guess(r) for r in rest)
        return [batch]
