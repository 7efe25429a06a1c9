"""The edge agent's durable outbox: everything that goes north is committed here first.

SQLite in WAL mode with synchronous=FULL, one writer thread doing group commit: a
producer's `append` returns only once its events are on disk, so the node behind it may
stop retransmitting. Per-stream sequence numbers (the idempotency key is (agent,
stream, seq)), duplicates from retransmission recognised, priority classes with quotas
and a disk budget (telemetry evicted first, audit never: its producers are pushed back
with OutboxFull), a corrupt file kept aside. The uplink reads it through
`kommune.edge.northbound.BatchSource`.

    outbox = await Outbox.open("outbox.db", agent="edge-1", budget_bytes=512 << 20)
    seqs = await outbox.append(events)        # durable when this returns
    batch = await outbox.next_batch(Priority.AUDIT, 100)
    await outbox.acknowledge(batch)           # after PUBACK
    await outbox.aclose()

Where things are: `outbox` (the asyncio side: producers, the uplink's batches, group
commit), `store` (one transaction on the SQLite thread: maintenance, acknowledgements,
closing), `append` (the append path: checks, duplicates, seqs, rows, room), `held` and
`keys` (dedup keys: held back in their rows, then runs in `recent`), `txn` (the
bookkeeping a transaction changes), `schema`, `budget`, `recovery` (opening safely).
"""

from kommune.edge.outbox.budget import Quota
from kommune.edge.outbox.errors import (
    OutboxClosed,
    OutboxError,
    OutboxFull,
    OutboxInUse,
    OutboxSchemaError,
)
from kommune.edge.outbox.outbox import Depth, Outbox, OutboxStats
from kommune.edge.outbox.recovery import KeptAside

__all__ = [
    "Depth",
    "KeptAside",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxFull",
    "OutboxInUse",
    "OutboxSchemaError",
    "OutboxStats",
    "Quota",
]
