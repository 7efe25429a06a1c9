"""What a visit needs from the key store, and where its audit entries go.

`prepare` reads the key store for one lock (blocking: run it in the part's worker thread):
the lock's keys, the authority's epoch and deny-list, a read-audit token for the edge
itself, and the audit store with its checker at the committed anchor. The key store's
lock (flock) is held only while reading, so `kommune token revoke` never waits for a
visit; the audit store (SQLite, WAL) stays open for the visit.

`StoreLedger.commit` is the order that makes "exactly once" hold: the entries go to the
outbox first (stream `lock-<id>/audit`, source_seq = the entry's seq), then the anchor to
the audit store, then the checker moves; the visit sends AUDIT_ACK only after that. A
crash between the two writes leaves the anchor behind: the lock (not acked) sends the
entries again, the checker takes them as new, and the outbox recognises each as a
retransmission of the event it holds (same stream, source_seq and content).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

from kommune.edge.keystore import KeyStore
from kommune.edge.keystore.audit import AuditStore
from kommune.edge.locks.visit import (
    EDGE_HOLDER_ID,
    READ_TOKEN_WINDOW_S,
    DenyList,
    Plan,
    audit_event,
)
from kommune.edge.northbound import Event, Priority
from kommune.edge.outbox import Outbox
from kommune.protocols.audit_check import Accepted, AuditChecker
from kommune.protocols.lock_wire import RIGHT_READ_AUDIT

T = TypeVar("T")


def prepare(path: Path, lock_id: int, now_s: int) -> tuple[Plan, AuditStore, AuditChecker]:
    """The plan for visiting `lock_id`, its audit store (close it) and checker. Blocking."""
    with KeyStore.open(path, create=False) as store:
        store.site_key(generate=False)  # KeyStoreError if there is none (or it is unsafe)
        lock_keys = store.lock_keys(lock_id)
        version = store.deny_version(lock_id)
        listed = store.deny_list(lock_id)
        authority = store.authority()
        epoch = authority.epoch(lock_id)
        read_token = authority.issue(
            holder_id=EDGE_HOLDER_ID,
            lock_id=lock_id,
            not_before_s=now_s + READ_TOKEN_WINDOW_S[0],
            not_after_s=now_s + READ_TOKEN_WINDOW_S[1],
            rights=RIGHT_READ_AUDIT,
        )
        audit = store.audit_store()
    try:
        checker = audit.checker(lock_keys.audit_key, lock_id)
    except BaseException:
        audit.close()
        raise
    deny = None
    if version:
        deny = DenyList(epoch, version, tuple(listed["tokens"]), tuple(listed["holders"]))
    return Plan(lock_keys, epoch, deny, read_token), audit, checker


def lost_event(lock_id: int, first: int, last: int, time_ms: int) -> Event:
    """Entries first..last the lock lost (overflow) or a resync skipped: keyed by the
    first lost seq, so a re-read batch repeats it as a duplicate."""
    return Event(
        f"lock-{lock_id}/audit-lost",
        Priority.AUDIT,
        first,
        time_ms,
        "lost",
        json.dumps({"first": first, "last": last}, separators=(",", ":")),
    )


class StoreLedger:
    """The visit's `Ledger`: the outbox for the entries, the audit store for the anchor;
    the store's calls run on `executor` (its one thread owns the SQLite connection)."""

    def __init__(
        self,
        lock_id: int,
        audit: AuditStore,
        checker: AuditChecker,
        outbox: Outbox,
        executor: Executor,
    ) -> None:
        self.lock_id = lock_id
        self.audit = audit
        self.checker = checker
        self.outbox = outbox
        self.executor = executor
        self.duplicates = 0  # entries the outbox already held (re-read after a crash)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Shielded: a cancelled visit leaves the store's thread to finish the call.
        future = asyncio.wrap_future(self.executor.submit(fn, *args))
        return await asyncio.shield(future)

    async def accept(self, batch: bytes) -> Accepted:
        return await self._run(self.checker.accept_batch, batch)

    async def commit(self, accepted: Accepted) -> None:
        events = [audit_event(self.lock_id, e) for e in accepted.entries]
        # The lost marker heads its batch: its time dates the loss (the same on a re-read).
        when_ms = accepted.entries[0].time_s * 1000 if accepted.entries else 0
        events += [lost_event(self.lock_id, a, b, when_ms) for a, b in accepted.lost]
        if events:
            seqs = await self.outbox.append(events)
            self.duplicates += sum(1 for s in seqs if s is None)
        await self._run(self.audit.commit, self.lock_id, accepted)
        self.checker.commit(accepted)
