"""The outbox as the agent's tasks see it: `append` for producers, `BatchSource` for the
uplink, `depth` and `stats` for metrics.

SQLite calls block, so every one of them runs on one thread of the outbox's own (the
connection never leaves it), and the event loop only waits. Appends and
acknowledgements queue up for one writer task, which takes whatever is pending (up to
`max_txn_rows` rows; an append is never split) into one transaction: a group commit.
While the thread commits one group the next one gathers, so the fsync per commit is
shared by every producer waiting on it; each `append` returns once its COMMIT has.

What is handed to the uplink is known only here, in memory: rows in flight are not
handed out again until released, and after a restart nothing is in flight, so every
row not acknowledged is handed out again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, ParamSpec, TypeVar

from kommune.edge.northbound import Event, Priority, Queued
from kommune.edge.outbox.budget import DiskBudget, EvictionLog, Quota, check_quotas
from kommune.edge.outbox.errors import OutboxClosed, OutboxError, OutboxFull
from kommune.edge.outbox.recovery import KeptAside, sidecars
from kommune.edge.outbox.store import CommitResult, Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_DEDUP_WINDOW_S: Final = 600.0
DEFAULT_MAX_TXN_ROWS: Final = 1_000
#: An idle writer looks for due maintenance (expiry, dedup pruning) this often.
IDLE_TICK_S: Final = 1.0
#: SQLite's page size for a new database (to check a budget before the file is open).
DEFAULT_PAGE_SIZE: Final = 4096


def wall_clock_ms() -> int:
    """Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Depth:
    """How much is queued, for metrics and the demo's view."""

    #: Rows committed and not acknowledged by the uplink, per class (in flight included).
    rows: Mapping[Priority, int]
    #: Of those, rows handed out and neither acknowledged nor released yet.
    in_flight: Mapping[Priority, int]
    #: Bytes of the database's pages that hold data (what the budget counts, with the
    #: WAL's allowance).
    used_bytes: int
    #: Size of the files on disk now: database, WAL and shared-memory index.
    disk_bytes: int
    budget_bytes: int


@dataclass
class OutboxStats:
    """Counters since the outbox opened, for metrics."""

    #: Events stored (each got a seq).
    appended: int = 0
    #: Events recognised as retransmissions and acknowledged without storing them again.
    duplicates: int = 0
    #: Events refused with OutboxFull (their producers were pushed back).
    refused: int = 0
    #: Rows removed by the uplink's acknowledgements.
    acknowledged: int = 0
    #: Rows that left without reaching the uplink, per (class, reason): "budget", "quota"
    #: or "age".
    evicted: dict[tuple[Priority, str], int] = field(default_factory=dict)
    #: Transactions committed (group commits and maintenance).
    commits: int = 0


class _Job:
    """An append (events) or an acknowledgement (acks) waiting for the writer."""

    __slots__ = ("acks", "events", "future", "rows")

    def __init__(
        self,
        future: asyncio.Future[list[int | None]],
        events: Sequence[Event] = (),
        acks: Sequence[Queued] = (),
    ) -> None:
        self.future = future
        self.events = events
        self.acks = acks
        self.rows = len(events) + len(acks)


class Outbox:
    """The durable outbox: SQLite in WAL mode with synchronous=FULL, group commit on one
    thread. Open it with `await Outbox.open(...)`; close it with `aclose()` (or `async
    with`). Implements `kommune.edge.northbound.BatchSource` for the uplink."""

    def __init__(self, store: Store, executor: ThreadPoolExecutor, max_txn_rows: int) -> None:
        self._store = store
        self._executor = executor
        self._max_txn_rows = max_txn_rows
        self.path: Path = store.path
        self.agent: str = store.agent
        #: The unreadable database found at open and kept aside (None: there was none).
        self.kept_aside: KeptAside | None = store.kept_aside
        self.stats = OutboxStats()
        self._evictions = EvictionLog(log)
        self._burst_timer: asyncio.TimerHandle | None = None
        self._rows: dict[Priority, int] = store.rows
        self._used_bytes = store.last_used_bytes
        self._jobs: deque[_Job] = deque()
        self._taken: list[_Job] = []  # the jobs of the commit under way
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # The uplink's side: handed out and not yet acknowledged or released (row ids),
        # given back (oldest first), and how far each class has been read from the file.
        self._in_flight: dict[Priority, set[int]] = {p: set() for p in Priority}
        self._returned: dict[Priority, list[Queued]] = {p: [] for p in Priority}
        self._cursor: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._gone_through: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._hand_out = asyncio.Lock()
        self._ready = asyncio.Event()
        self._closing = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._refresh_ready()
        self._writer = asyncio.create_task(self._write_loop(), name=f"outbox-writer {self.path}")

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        agent: str,
        budget_bytes: int,
        quotas: Mapping[Priority, Quota] | None = None,
        dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S,
        max_txn_rows: int = DEFAULT_MAX_TXN_ROWS,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> Outbox:
        """Open the outbox at `path` (created if missing). An unreadable file is kept aside
        and a fresh outbox started (`kept_aside` says so); a file from a newer schema is
        refused (OutboxSchemaError), and so is one another outbox has open (OutboxInUse).

        `budget_bytes` bounds the database and its WAL on disk; `quotas` limit each class;
        an event whose (stream, source_seq) was committed within `dedup_window_s` with the
        same content is a retransmission; `clock_ms` (Unix ms) is for tests.
        """
        if not isinstance(agent, str) or not agent.strip():
            raise ValueError("agent must be a non-empty name")
        if not dedup_window_s > 0:
            raise ValueError("dedup_window_s must be positive")
        if max_txn_rows < 1:
            raise ValueError("max_txn_rows must be at least 1")
        checked = check_quotas(quotas)
        DiskBudget.plan(budget_bytes, page_size=DEFAULT_PAGE_SIZE, max_txn_rows=max_txn_rows)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-sqlite")
        opening = executor.submit(
            Store.open,
            Path(path),
            agent=agent,
            budget_bytes=budget_bytes,
            max_txn_rows=max_txn_rows,
            quotas=checked,
            dedup_window_ms=int(dedup_window_s * 1000),
            clock_ms=clock_ms,
        )
        try:
            store = await asyncio.wrap_future(opening)
        except BaseException:
            # Cancelled while the thread opens it: close what it opens, then the thread.
            opening.add_done_callback(_close_opened)
            executor.shutdown(wait=False)
            raise
        return cls(store, executor, max_txn_rows)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- producers ------------------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> list[int | None]:
        """Store `events` durably; return once they are committed (fsync'd), with the seq
        each got in its stream, or None for one recognised as a retransmission of an
        event already committed (within the dedup window, same content).

        All or nothing: raises OutboxFull (nothing stored) when the append does not fit
        even after evicting what its class may evict; the producer must then not
        acknowledge its node. ValueError/TypeError for a malformed event.
        """
        # Checked by the writer, in the same pass that stores them (a malformed event
        # refuses its append with ValueError or TypeError, and nothing of it is stored).
        events = tuple(events)
        if self._closing:
            raise OutboxClosed(f"{self.path}: the outbox is closed")
        if not events:
            return []
        future: asyncio.Future[list[int | None]] = self._loop.create_future()
        self._jobs.append(_Job(future, events))
        if not self._wake.is_set():
            self._wake.set()
        return await future

    # -- the uplink (BatchSource) -----------------------------------------------------

    async def next_batch(self, priority: Priority, max_rows: int) -> list[Queued]:
        """Up to `max_rows` committed rows of `priority`, oldest first, none of them in
        flight; they are in flight until acknowledged or released. [] when there are none."""
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._check_open()
        async with self._hand_out:
            self._check_open()
            returned = self._returned[priority]
            from_returned = min(len(returned), max_rows)
            unread = self._rows[priority] - len(self._in_flight[priority]) - len(returned)
            read: list[Queued] = []
            if from_returned < max_rows and unread > 0:
                read = await self._in_thread(
                    self._store.read_batch,
                    priority,
                    self._cursor[priority],
                    max_rows - from_returned,
                )
                gone = self._gone_through[priority]
                if read:
                    self._cursor[priority] = max(self._cursor[priority], read[-1].row_id)
                read = [row for row in read if row.row_id > gone]
            batch = returned[:from_returned] + read
            del returned[:from_returned]
            self._in_flight[priority].update(row.row_id for row in batch)
            self._refresh_ready()
            return batch

    async def wait_for_rows(self) -> None:
        """Return once committed rows exist that are not in flight (at once if they do)."""
        while True:
            self._check_open()
            if self._ready.is_set():
                return
            await self._ready.wait()

    async def acknowledge(self, rows: Sequence[Queued]) -> None:
        """The broker has these rows: delete them (returns once that is committed). Rows
        already gone (evicted, or acknowledged before) are skipped."""
        rows = tuple(rows)
        self._check_open()
        if not rows:
            return
        job = _Job(asyncio.get_running_loop().create_future(), acks=rows)
        self._jobs.append(job)
        self._wake.set()
        await job.future

    async def release(self, rows: Sequence[Queued]) -> None:
        """These rows were not delivered: hand them out again, oldest first. Rows not in
        flight (gone, acknowledged, or released already) are skipped."""
        touched: set[Priority] = set()
        for row in rows:
            priority = row.event.priority
            in_flight = self._in_flight[priority]
            if row.row_id in in_flight:
                in_flight.discard(row.row_id)
                bisect.insort(self._returned[priority], row, key=_row_id)
                touched.add(priority)
        if touched:
            self._refresh_ready()

    # -- metrics ----------------------------------------------------------------------

    def depth(self) -> Depth:
        """Rows per class and bytes, as of the last commit (disk_bytes: now)."""
        disk = 0
        for file in (self.path, *sidecars(self.path)):
            with contextlib.suppress(OSError):
                disk += file.stat().st_size
        return Depth(
            rows=dict(self._rows),
            in_flight={p: len(ids) for p, ids in self._in_flight.items()},
            used_bytes=self._used_bytes,
            disk_bytes=disk,
            budget_bytes=self._store.budget.budget_bytes,
        )

    async def maintain(self) -> None:
        """Expire rows past their class's max age and prune the dedup table now, instead
        of when it is next due (the writer does both on its own; tests call this)."""
        self._check_open()
        job = _Job(asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake.set()
        await job.future

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Commit what producers appended before the call, then close the database and
        its thread. Waiters on `wait_for_rows` get OutboxClosed. Every step runs even if
        one before it failed; failures are raised together at the end."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name=f"outbox-close {self.path}")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closing = True
        self._wake.set()
        self._ready.set()  # waiters wake up and find the outbox closing
        errors: list[BaseException] = []
        try:
            await asyncio.wait([self._writer])  # it drains what is queued, then returns
        finally:
            writer = self._writer
            if not writer.done():  # this close was cancelled: stop draining
                writer.cancel()
            elif not writer.cancelled() and (broke := writer.exception()) is not None:
                errors.append(broke)
            self._fail_jobs(OutboxClosed(f"{self.path}: the outbox is closed"))
            if self._burst_timer is not None:
                self._burst_timer.cancel()
            self._evictions.end_burst()
            try:
                # After whatever the thread is still doing (a commit the writer left).
                await self._in_thread(self._store.close)
            except BaseException as error:
                errors.append(error)
            self._executor.shutdown(wait=True)
            self._closed = True
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise BaseExceptionGroup(f"closing the outbox {self.path}", errors)

    # -- inside -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise OutboxClosed(f"{self.path}: the outbox is closed")

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        future: ThreadFuture[T] = self._executor.submit(fn, *args, **kwargs)
        return await asyncio.wrap_future(future)

    def _take_jobs(self) -> list[_Job]:
        """What the next group commit takes: pending jobs up to `max_txn_rows` rows (at
        least one; an append is never split). Jobs whose caller gave up are dropped."""
        taken: list[_Job] = []
        rows = 0
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # cancelled before it was taken: nobody waits for it
                self._jobs.popleft()
                continue
            if taken and rows + job.rows > self._max_txn_rows:
                break
            taken.append(self._jobs.popleft())
            rows += job.rows
        return taken

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._jobs:
                    if self._closing:
                        return
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(IDLE_TICK_S):
                            await self._wake.wait()
                    except TimeoutError:
                        await self._commit([], maintain=False)
                    continue
                self._taken = self._take_jobs()
                if self._taken:
                    await self._commit(self._taken, maintain=any(not j.rows for j in self._taken))
                self._taken = []
        except BaseException as error:
            # Cancelled from outside, or a bug: nothing more is taken in.
            self._closing = True
            self._ready.set()
            self._jobs.extendleft(reversed(self._taken))
            self._taken = []
            self._fail_jobs(OutboxClosed(f"{self.path}: the outbox's writer stopped ({error!r})"))
            raise

    async def _commit(self, jobs: list[_Job], *, maintain: bool) -> None:
        appends = [job for job in jobs if job.events]
        acks = [job for job in jobs if job.acks] if len(appends) < len(jobs) else []
        try:
            result = await self._in_thread(
                self._store.commit,
                [job.events for job in appends],
                [job.acks for job in acks],
                maintain=maintain,
            )
        except Exception as error:
            log.error("outbox: a commit failed (%d jobs): %s", len(jobs), error)
            for job in jobs:
                failure = _as_outbox_error(self.path, job, error)
                if isinstance(failure, OutboxFull):
                    self.stats.refused += len(job.events)
                if not job.future.done():
                    job.future.set_exception(failure)
            return
        self._apply(result)
        self.stats.appended += result.stored
        self.stats.duplicates += result.duplicates
        for job, outcome in zip(appends, result.appended, strict=True):
            future = job.future
            if isinstance(outcome, Exception):
                if isinstance(outcome, OutboxFull):
                    self.stats.refused += len(job.events)
                if not future.done():
                    future.set_exception(outcome)
            elif not future.done():
                future.set_result(outcome)
        for job in jobs:
            if job.acks:
                for row in job.acks:
                    self._forget(row.event.priority, row.row_id)
                if not job.future.done():
                    job.future.set_result([])
            elif not job.events and not job.future.done():
                job.future.set_result([])
        self._refresh_ready()

    def _apply(self, result: CommitResult) -> None:
        """Bring the in-memory view up to a commit that has returned."""
        if result.wrote:
            self.stats.commits += 1
        self.stats.acknowledged += result.acknowledged
        self._rows = result.rows
        self._used_bytes = result.used_bytes
        for ev in result.evictions:
            key = (ev.priority, ev.reason)
            self.stats.evicted[key] = self.stats.evicted.get(key, 0) + ev.rows
            self._evictions.record(ev.priority, ev.reason, ev.rows, detail=ev.detail)
            self._gone_through[ev.priority] = max(
                self._gone_through[ev.priority], ev.through_row_id
            )
            in_flight = self._in_flight[ev.priority]
            in_flight.difference_update([r for r in in_flight if r <= ev.through_row_id])
            returned = self._returned[ev.priority]
            del returned[: bisect.bisect_right(returned, ev.through_row_id, key=_row_id)]
        if self._evictions.in_burst and self._burst_timer is None:
            self._schedule_burst_check()

    def _forget(self, priority: Priority, row_id: int) -> None:
        """An acknowledged row is gone: neither in flight nor waiting to be handed out."""
        self._in_flight[priority].discard(row_id)
        returned = self._returned[priority]
        at = bisect.bisect_left(returned, row_id, key=_row_id)
        if at < len(returned) and returned[at].row_id == row_id:
            del returned[at]

    def _schedule_burst_check(self) -> None:
        delay = max(self._evictions.seconds_left(), 0.0)
        self._burst_timer = asyncio.get_running_loop().call_later(delay, self._burst_check)

    def _burst_check(self) -> None:
        self._burst_timer = None
        if self._evictions.seconds_left() <= 0:
            self._evictions.end_burst()
        else:
            self._schedule_burst_check()

    def _refresh_ready(self) -> None:
        if self._closing or any(self._rows[p] > len(self._in_flight[p]) for p in Priority):
            self._ready.set()
        else:
            self._ready.clear()

    def _fail_jobs(self, error: OutboxError) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(error)


def _row_id(row: Queued) -> int:
    return row.row_id


def _as_outbox_error(path: Path, job: _Job, error: Exception) -> OutboxError:
    """A failed commit as the outbox's error for one job (a full disk pushes back)."""
    if isinstance(error, OutboxError):
        return error
    failure: OutboxError
    if job.events and getattr(error, "sqlite_errorname", "") == "SQLITE_FULL":
        failure = OutboxFull(
            f"{path}: the disk is full ({error}); not stored, retry later",
            priority=min(event.priority for event in job.events),
            reason="disk",
        )
    else:
        failure = OutboxError(f"{path}: {type(error).__name__}: {error}")
    failure.__cause__ = error
    return failure


def _close_opened(opening: ThreadFuture[Store]) -> None:
    """Close a store whose opener gave up waiting (runs on the store's own thread)."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
