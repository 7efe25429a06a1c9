"""What the outbox may keep: per-class quotas, the disk budget, and who gives way.

Audit entries are evidence (who opened which door): they are never dropped, so when
they do not fit the producer is pushed back (`OutboxFull`). Occupancy is worth more than
telemetry, so at the disk budget telemetry goes first (oldest first), occupancy next,
and a class never makes room by evicting a more important one.

The disk budget counts the database's pages that hold data plus an allowance for the
write-ahead log: the WAL is checkpointed when it reaches `wal_pages` pages and cut back
(`PRAGMA journal_size_limit`, and a truncating checkpoint when it has grown past the
allowance), so database file + WAL stay within `budget_bytes` (give or take the size
estimate of one append).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from kommune.edge.northbound import Event, Priority

#: Classes that may be evicted to make room for an append whose most important event is
#: of the key's class, in eviction order. Audit is in none of them.
EVICTABLE_FOR: Final[Mapping[Priority, tuple[Priority, ...]]] = {
    Priority.AUDIT: (Priority.TELEMETRY, Priority.OCCUPANCY),
    Priority.OCCUPANCY: (Priority.TELEMETRY, Priority.OCCUPANCY),
    Priority.TELEMETRY: (Priority.TELEMETRY,),
}

#: A budget below this leaves no room for data once the WAL has its share.
MIN_BUDGET_BYTES: Final = 256 * 1024

#: Bytes one event adds beyond its text and bytes: its row (ids, seqs, times, kind and
#: the b-tree's cell overhead) and its key in the dedup table. Measured ~80 on a full
#: page; rounded up so the check before an append errs on the side of the budget.
ROW_OVERHEAD_BYTES: Final = 112

#: The WAL's shared-memory index beside it (32 KiB per 4,096 WAL pages; ours stay fewer).
SHM_BYTES: Final = 32 * 1024

# A WAL file is a header, then one frame per page written: a frame header and the page.
_WAL_HEADER_BYTES: Final = 32
_FRAME_HEADER_BYTES: Final = 24

#: Reasons an event leaves without being acknowledged by the uplink.
BUDGET: Final = "budget"
QUOTA: Final = "quota"
AGE: Final = "age"


@dataclass(frozen=True)
class Quota:
    """Limits of one priority class: at most `max_rows` rows queued (the oldest are
    evicted beyond it; audit appends are refused instead), none older than `max_age_s`
    (measured from when the outbox committed it; not allowed for audit)."""

    max_rows: int | None = None
    max_age_s: float | None = None


def check_quotas(quotas: Mapping[Priority, Quota] | None) -> dict[Priority, Quota]:
    """Validated quotas for every class (no limit where none is given)."""
    checked = {priority: Quota() for priority in Priority}
    for priority, quota in (quotas or {}).items():
        if not isinstance(priority, Priority) or not isinstance(quota, Quota):
            raise TypeError(f"quotas map a Priority to a Quota, not {priority!r}: {quota!r}")
        if quota.max_rows is not None and quota.max_rows < 1:
            raise ValueError(f"{priority.name.lower()}: max_rows must be at least 1")
        if quota.max_age_s is not None:
            if priority is Priority.AUDIT:
                raise ValueError("audit entries are never dropped: give audit no max_age_s")
            if not math.isfinite(quota.max_age_s) or quota.max_age_s <= 0:
                raise ValueError(f"{priority.name.lower()}: max_age_s must be positive")
        checked[priority] = quota
    return checked


@dataclass(frozen=True)
class DiskBudget:
    """How `budget_bytes` is split between data pages and the WAL."""

    budget_bytes: int
    page_size: int
    #: Checkpoint threshold of the WAL, in pages (PRAGMA wal_autocheckpoint).
    wal_pages: int
    #: The most the WAL may hold after a commit: the threshold plus the largest group
    #: commit; beyond it the outbox truncates the WAL at once.
    wal_limit_bytes: int

    @classmethod
    def plan(cls, budget_bytes: int, *, page_size: int, max_txn_rows: int) -> DiskBudget:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise TypeError(f"budget_bytes must be an int, not {budget_bytes!r}")
        if budget_bytes < MIN_BUDGET_BYTES:
            raise ValueError(f"budget_bytes must be at least {MIN_BUDGET_BYTES}")
        wal_pages = min(1000, max(8, budget_bytes // page_size // 16))
        # A group commit writes its rows' pages plus a few it only touches (b-tree
        # interiors, the freelist, the streams and meta tables).
        txn_pages = -(-max_txn_rows * ROW_OVERHEAD_BYTES * 2 // page_size) + 16
        wal_limit = _WAL_HEADER_BYTES + (wal_pages + txn_pages) * (page_size + _FRAME_HEADER_BYTES)
        budget = cls(budget_bytes, page_size, wal_pages, wal_limit)
        if budget.wal_allowance_bytes > budget_bytes // 2:
            raise ValueError(
                f"budget_bytes {budget_bytes} is too small for group commits of "
                f"{max_txn_rows} rows (give at least {2 * budget.wal_allowance_bytes})"
            )
        return budget

    @property
    def wal_allowance_bytes(self) -> int:
        """The share of the WAL and its shared-memory index."""
        return self.wal_limit_bytes + SHM_BYTES

    @property
    def data_budget_bytes(self) -> int:
        """What the database's pages in use may take."""
        return self.budget_bytes - self.wal_allowance_bytes


def estimate_bytes(event: Event) -> int:
    """Roughly what storing `event` (row and dedup key) adds to the database."""
    value = event.value
    size = ROW_OVERHEAD_BYTES + len(event.name) + len(event.unit or "")
    if isinstance(value, str | bytes):
        size += len(value)
    return size


class EvictionLog:
    """Counts rows that left without reaching the uplink, and says so in the log: one
    warning when a burst of evictions starts, one summary when it is over (`quiet_s`
    without another eviction, or the outbox closes). Never silent, never per row."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        quiet_s: float = 10.0,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.quiet_s = quiet_s
        self._clock_s = clock_s
        #: Every eviction since the outbox opened, per (class, reason): for metrics.
        self.totals: dict[tuple[Priority, str], int] = {}
        self._burst: dict[tuple[Priority, str], int] = {}
        self._burst_start_s = 0.0
        self._last_s = 0.0

    @property
    def in_burst(self) -> bool:
        return bool(self._burst)

    def seconds_left(self) -> float:
        """Until the current burst counts as over (≤ 0: it is)."""
        return self._last_s + self.quiet_s - self._clock_s()

    def record(self, priority: Priority, reason: str, rows: int, *, detail: str) -> None:
        """`rows` of `priority` left for `reason`; `detail` says why (for the first line)."""
        if rows <= 0:
            return
        key = (priority, reason)
        self.totals[key] = self.totals.get(key, 0) + rows
        now = self._clock_s()
        if not self._burst:
            self._burst_start_s = now
            self._log.warning(
                "outbox: evicting %s rows oldest-first (%s: %s); "
                "a summary follows when no more are evicted for %g s",
                priority.name.lower(),
                reason,
                detail,
                self.quiet_s,
                extra={"fields": {"class": priority.name.lower(), "reason": reason}},
            )
        self._burst[key] = self._burst.get(key, 0) + rows
        self._last_s = now

    def end_burst(self) -> None:
        """Log the burst's totals (if there was one) and start counting afresh."""
        if not self._burst:
            return
        parts = ", ".join(
            f"{rows} {priority.name.lower()} ({reason})"
            for (priority, reason), rows in sorted(self._burst.items())
        )
        self._log.warning(
            "outbox: evicted %s rows in %.1f s: %s",
            sum(self._burst.values()),
            self._last_s - self._burst_start_s,
            parts,
            extra={
                "fields": {
                    f"{priority.name.lower()}_{reason}": rows
                    for (priority, reason), rows in self._burst.items()
                }
            },
        )
        self._burst = {}
