"""The lock manager as a part of the agent (`[[locks]]` in the site file): it visits each
lock on a schedule and on demand (`request_visit`), one at a time (one BLE controller),
and keeps each lock's health for /healthz and /metrics.

With downlinks on, a "lock-epoch" document from the backend (body `{"locks": {"<lock id>":
<epoch>, ...}}`) raises those locks' epochs in the key store (never lowers them) and
visits them at once, so the revocation reaches the doors.

A visit (visit.py) is bounded by `lock_manager.visit_timeout_s`; whatever goes wrong in
it (not in range, the link drops, a refusal, the key store busy, the outbox full) is
counted, logged and tried again sooner: RETRY_FIRST_S after the first failure, doubling
up to the visit interval. Nothing a lock does can hold up the rest of the agent: the key
store and the audit store run on the part's own worker thread, BLE is asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from bleak.exc import BleakError

from kommune.edge import keystore
from kommune.edge.agent.logs import fields
from kommune.edge.agent.metrics import Metric
from kommune.edge.agent.outbox_part import OutboxPart
from kommune.edge.agent.process import PartError
from kommune.edge.agent.site import Site
from kommune.edge.keys import KeyMaterialError
from kommune.edge.keystore import KeyStore, KeyStoreError
from kommune.edge.lock.errors import LockError
from kommune.edge.locks.health import LockHealth, lock_metrics
from kommune.edge.locks.ledger import StoreLedger, prepare
from kommune.edge.locks.visit import Link, VisitError, VisitReport, visit
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import OutboxError
from kommune.edge.token_authority import TokenAuthorityError
from kommune.protocols.errors import ProtocolError

log = logging.getLogger("kommune.edge.locks")

#: A failed visit is tried again after this, doubling up to the visit interval.
RETRY_FIRST_S = 2.0
#: What a visit may fail with: counted, logged, retried (anything else is a bug: the
#: part crashes and the host restarts it).
EXPECTED = (
    VisitError,
    LockError,
    KeyStoreError,
    KeyMaterialError,
    TokenAuthorityError,
    OutboxError,
    ProtocolError,
    BleakError,
    OSError,
    TimeoutError,
    sqlite3.Error,
)


class Downlinks(Protocol):
    """What the manager needs of the downlink part (`DownlinkPart.subscribe`)."""

    def subscribe(self, kind: str, callback: Callable[[Any], None]) -> Callable[[], None]: ...


class Connect(Protocol):
    """How a visit reaches a lock (`kommune.edge.lock.session.open_link`)."""

    def __call__(
        self, lock_id: int, *, address: str | None, transport: str | None, timeout_s: float
    ) -> AbstractAsyncContextManager[Link]: ...


def _open_link(
    lock_id: int, *, address: str | None, transport: str | None, timeout_s: float
) -> AbstractAsyncContextManager[Link]:
    from kommune.edge.lock.session import open_link

    return open_link(lock_id, address=address, transport=transport, timeout_s=timeout_s)


class LockManagerPart:
    name = "locks"

    def __init__(
        self,
        site: Site,
        outbox: OutboxPart,
        *,
        downlinks: Downlinks | None = None,
        connect: Connect = _open_link,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.site = site
        self._downlinks = downlinks
        self._unsubscribe: Callable[[], None] | None = None
        # lock id -> epoch from the backend's "lock-epoch" document, not yet in the store
        self._epochs_wanted: dict[int, int] = {}
        self._epochs_retry_at = 0.0  # loop time: after a key store error
        self.config = site.lock_manager
        self._outbox = outbox
        self._connect = connect
        self._clock = clock
        self.keystore_path = keystore_path_of(site)
        self.locks = {lock.id: LockHealth(lock) for lock in site.locks}
        self._executor: ThreadPoolExecutor | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._visiting: asyncio.Task[VisitReport] | None = None
        self._visiting_lock: int | None = None
        # Per lock: set when its current or next visit ends (then replaced).
        self._visit_ended = {lock.id: asyncio.Event() for lock in site.locks}
        self._alert_seq = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lock-keystore")
        try:
            await asyncio.wrap_future(executor.submit(self._check_keystore))
        except KeyStoreError as e:
            executor.shutdown(wait=False)
            raise PartError(f"lock_manager.keystore: {e}") from None
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        now = asyncio.get_running_loop().time()
        for health in self.locks.values():
            health.due = now  # every lock is visited once at start
        if self._downlinks is not None:
            self._unsubscribe = self._downlinks.subscribe("lock-epoch", self._on_epochs)
        log.info(
            "managing %d locks, visiting each every %g s",
            len(self.locks),
            self.config.visit_interval_s,
            extra=fields(keystore=str(self.keystore_path), locks=sorted(self.locks)),
        )

    def _check_keystore(self) -> None:
        with KeyStore.open(self.keystore_path, create=False) as store:
            store.site_key(generate=False)  # KeyStoreError if there is none (or it is unsafe)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            now = loop.time()
            if self._epochs_wanted and now >= self._epochs_retry_at:
                await self._raise_epochs()
                continue
            health = min(self.locks.values(), key=lambda h: h.due)
            wake_at = health.due
            if self._epochs_wanted:
                wake_at = min(wake_at, self._epochs_retry_at)
            delay = wake_at - now
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            await self._visit(health)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task = self._visiting
        if task is not None and not task.done():
            task.cancel()  # what was committed stays; the rest is re-read next time
            await asyncio.wait({task})
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)  # a store call under way finishes, then closes

    def request_visit(self, lock_id: int | None = None) -> None:
        """Visit `lock_id` (None: every lock) as soon as the current visit is over."""
        if lock_id is not None and lock_id not in self.locks:
            raise KeyError(f"no lock {lock_id} in the site's [[locks]]")
        now = asyncio.get_running_loop().time()
        for health in self.locks.values():
            if lock_id is None or health.config.id == lock_id:
                health.due = min(health.due, now)
        self._wake.set()

    def next_visit(self, lock_id: int) -> Coroutine[Any, Any, LockHealth]:
        """Await it: the end (good or failed) of the next visit of `lock_id` that begins
        after this call; the lock's health then."""
        ended = self._visit_ended[lock_id]
        busy = self._visiting_lock == lock_id  # that one began before the call

        async def wait() -> LockHealth:
            await ended.wait()
            if busy:
                await self._visit_ended[lock_id].wait()
            return self.locks[lock_id]

        return wait()

    async def visit_now(self, lock_id: int) -> LockHealth:
        """Visit `lock_id` as soon as the current visit is over, and wait for it to end."""
        ended = self.next_visit(lock_id)
        self.request_visit(lock_id)
        return await ended

    # -- epochs from the backend ----------------------------------------------------------

    def _on_epochs(self, document: Any) -> None:
        """A "lock-epoch" downlink applied (called on the loop; quick, never raises)."""
        body = document.body
        locks = body.get("locks") if isinstance(body, Mapping) else None
        if not isinstance(locks, Mapping):
            log.warning("lock-epoch seq %s: no 'locks' map in its body", document.seq)
            return
        for key, epoch in locks.items():
            lock_id = int(key) if isinstance(key, str) and key.isdigit() else None
            if lock_id not in self.locks:
                continue  # another agent's lock
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**32:
                log.warning(
                    "lock-epoch seq %s: lock %s: epoch %r is not a u32", document.seq, key, epoch
                )
                continue
            assert lock_id is not None
            self._epochs_wanted[lock_id] = max(epoch, self._epochs_wanted.get(lock_id, 0))
        self._wake.set()

    async def _raise_epochs(self) -> None:
        """Write the backend's epochs to the key store; visit the locks they raised."""
        executor = self._executor
        assert executor is not None
        wanted = dict(self._epochs_wanted)

        def write() -> list[int]:
            with KeyStore.open(self.keystore_path, create=False) as store:
                return [i for i, epoch in wanted.items() if store.raise_epoch(i, epoch)]

        try:
            raised = await asyncio.shield(asyncio.wrap_future(executor.submit(write)))
        except (KeyStoreError, OSError) as e:
            log.error("could not raise lock epochs from the backend: %s; trying again", e)
            self._epochs_retry_at = asyncio.get_running_loop().time() + RETRY_FIRST_S
            return
        for lock_id, epoch in wanted.items():
            if self._epochs_wanted.get(lock_id) == epoch:
                del self._epochs_wanted[lock_id]
        for lock_id in raised:
            log.info(
                "lock %d: epoch raised to %d by the backend",
                lock_id,
                wanted[lock_id],
                extra=fields(lock=lock_id, epoch=wanted[lock_id]),
            )
            self.request_visit(lock_id)

    # -- one visit ----------------------------------------------------------------------

    async def _visit(self, health: LockHealth) -> None:
        try:
            await self._visit_and_record(health)
        finally:
            lock_id = health.config.id
            ended, self._visit_ended[lock_id] = self._visit_ended[lock_id], asyncio.Event()
            ended.set()

    async def _visit_and_record(self, health: LockHealth) -> None:
        loop = asyncio.get_running_loop()
        lock = health.config
        began = loop.time()
        health.visits += 1
        self._visiting = asyncio.ensure_future(self._visit_once(health))
        self._visiting_lock = lock.id
        try:
            report = await self._visiting
        except EXPECTED as e:
            health.failures += 1
            health.failing += 1
            health.last_error = str(e) or type(e).__name__
            retry_s = min(self.config.visit_interval_s, RETRY_FIRST_S * 2 ** (health.failing - 1))
            health.due = loop.time() + retry_s
            log.warning(
                "lock %d: visit failed: %s; again in %.0f s",
                lock.id,
                health.last_error,
                retry_s,
                extra=fields(lock=lock.id, failing=health.failing, retry_s=retry_s),
            )
            return
        except asyncio.CancelledError:
            if self._stopping:
                return  # stop() cancelled the visit
            raise
        finally:
            self._visiting = self._visiting_lock = None
        health.due = began + self.config.visit_interval_s
        self._record(health, report)

    async def _visit_once(self, health: LockHealth) -> VisitReport:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the lock manager is not started")
        lock, config = health.config, self.config
        async with asyncio.timeout(config.visit_timeout_s):
            plan, audit, checker = await asyncio.shield(
                asyncio.wrap_future(
                    executor.submit(prepare, self.keystore_path, lock.id, int(self._clock()))
                )
            )
            ledger = StoreLedger(lock.id, audit, checker, self._outbox.outbox, executor)
            began = time.monotonic()
            try:
                async with self._connect(
                    lock.id,
                    address=lock.ble,
                    transport=config.transport,
                    timeout_s=config.connect_timeout_s,
                ) as link:
                    connected = time.monotonic()
                    report = await visit(
                        link,
                        plan,
                        ledger,
                        max_drift_s=config.max_clock_drift_s,
                        deny_known=health.deny_known,
                        clock=self._clock,
                    )
            finally:
                health.duplicates += ledger.duplicates
                executor.submit(audit.close)  # after any store call still under way
            # scan, connect, subscribe; then everything, the disconnect included
            report.timings_ms["connect_ms"] = round((connected - began) * 1000, 1)
            report.timings_ms["total_ms"] = round((time.monotonic() - began) * 1000, 1)
            if report.audit_problem is not None:
                await self._alert(lock.id, report)
        return report

    async def _alert(self, lock_id: int, report: VisitReport) -> None:
        """Report a refused audit chain north (once per distinct problem and run)."""
        assert report.audit_problem is not None
        reason, detail = report.audit_problem
        health = self.locks[lock_id]
        if health.audit_problem == detail:
            return
        self._alert_seq = max(self._alert_seq + 1, time.time_ns() // 1000)
        event = Event(
            f"lock-{lock_id}/audit-alert",
            Priority.AUDIT,
            self._alert_seq,
            int(self._clock() * 1000),
            reason,
            json.dumps({"detail": detail}, separators=(",", ":")),
        )
        await self._outbox.outbox.append([event])
        health.audit_problem = detail
        health.audit_problems[reason] = health.audit_problems.get(reason, 0) + 1
        log.error(
            "lock %d: audit chain refused (%s): %s; nothing acked until it is resolved",
            lock_id,
            reason,
            detail,
            extra=fields(lock=lock_id, reason=reason),
        )

    def _record(self, health: LockHealth, report: VisitReport) -> None:
        health.failing = 0
        health.last_error = None
        health.last_seen_ms = int(self._clock() * 1000)
        health.last_visit_ms = report.timings_ms.get("visit_ms")
        if (battery := report.battery) is not None:
            health.battery_mv, health.battery_percent = battery
        health.drift_s = report.drift_s
        health.epoch = report.epoch_set if report.epoch_set is not None else report.epoch_before
        health.backlog = report.backlog
        health.entries += len(report.entries)
        health.time_sets += report.time_set
        health.epoch_sets += report.epoch_set is not None
        if report.deny_pushed is not None:
            health.deny_pushes += 1
            health.deny_known = report.deny_pushed
        if report.audit_problem is None:
            health.audit_problem = None
        if report.deny_problem is not None:
            log.error(
                "lock %d: the deny-list was not sent: %s",
                health.config.id,
                report.deny_problem,
                extra=fields(lock=health.config.id),
            )
        log.info(
            "lock %d visited: %d entries in %d batches%s%s",
            health.config.id,
            len(report.entries),
            report.batches,
            ", clock set" if report.time_set else "",
            f", epoch {report.epoch_set}" if report.epoch_set is not None else "",
            extra=fields(
                lock=health.config.id,
                entries=len(report.entries),
                batches=report.batches,
                drift_s=report.drift_s,
                time_set=report.time_set,
                epoch_set=report.epoch_set,
                deny=report.deny_pushed,
                backlog=report.backlog,
                acked_seq=report.acked_seq,
                timings_ms=report.timings_ms,
            ),
        )

    # -- health and metrics -------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "keystore": str(self.keystore_path),
            "visit_interval_s": self.config.visit_interval_s,
            "locks": {str(i): h.to_json() for i, h in sorted(self.locks.items())},
        }

    def metrics(self) -> list[Metric]:
        return lock_metrics(self.locks)


def keystore_path_of(site: Site) -> Path:
    """Where the lock manager finds the key store (`lock_manager.keystore`, else
    KOMMUNE_KEYSTORE, else the default)."""
    return site.lock_manager.keystore or keystore.default_path()
