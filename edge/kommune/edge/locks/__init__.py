"""The lock manager: the edge agent's part that visits the site's BLE door locks.

Runs in the edge agent (CPython, asyncio), built when the site file has `[[locks]]`.

    visit.py    one visit over one connection: status, clock, epoch, deny-list, audit
    ledger.py   the key store's side (keys, epoch, deny-list, the audit anchor) and the
                order of commits: outbox, then anchor, then AUDIT_ACK
    part.py     `LockManagerPart`: schedule, on-demand visits, back-off, lock-epoch downlinks
    health.py   per-lock health (/healthz) and metrics

The lock protocol is protocols/LOCK.md; the agent's side is docs/edge-agent.md ("Locks").
"""

from kommune.edge.locks.health import LockHealth
from kommune.edge.locks.part import LockManagerPart
from kommune.edge.locks.visit import EDGE_HOLDER_ID, VisitError, VisitReport, visit

__all__ = [
    "EDGE_HOLDER_ID",
    "LockHealth",
    "LockManagerPart",
    "VisitError",
    "VisitReport",
    "visit",
]
