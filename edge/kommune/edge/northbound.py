"""What goes north, and the contract between the outbox and the uplink.

Producers inside the edge agent (the lock manager, the parking scanner, the lamp
control loop, node health) hand `Event`s to the outbox; the outbox commits them and
only then acknowledges, so a producer (and the node behind it) retransmits until its
event is safe. The uplink takes `Queued` rows out in batches per priority class and
gives them back as acknowledged (the broker has them: PUBACK) or released (not sent:
hand them out again). (agent, stream, seq) is each event's idempotency key: a backend
that sees it twice drops the second.

    outbox ──next_batch(priority)──► batcher ──SenML/CBOR──► MQTT publish (QoS 1)
           ◄──acknowledge(rows)──── after PUBACK
           ◄──release(rows)──────── connection lost before PUBACK
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

#: A stream names its producer and what it reports: "lock-3/audit", "bay-17/occupancy".
STREAM_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}")

Value = float | int | bool | str | bytes


class Priority(IntEnum):
    """Classes leave in this order; at the disk budget telemetry is evicted oldest-first,
    occupancy next, and audit never (its producers are pushed back instead)."""

    AUDIT = 0
    OCCUPANCY = 1
    TELEMETRY = 2


@dataclass(frozen=True, slots=True)
class Event:
    """One event a producer hands to the outbox."""

    #: Its producer and kind, matching STREAM_PATTERN.
    stream: str
    priority: Priority
    #: The producer's own sequence number (a node frame's seq, an audit entry's index):
    #: a retransmission repeats it, and the outbox recognises the duplicate.
    source_seq: int
    #: When it happened, Unix time in milliseconds.
    time_ms: int
    #: The SenML record name under the stream ("state", "energy_wh", "entry").
    name: str
    #: SenML value: a number (v), a boolean (vb), a string (vs) or bytes (vd).
    value: Value
    #: SenML unit ("W", "Wh", "%"), if any.
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """An event as the outbox holds it."""

    #: The outbox's own row id (what `acknowledge`/`release` refer to).
    row_id: int
    #: Per-stream sequence assigned at commit: 1, 2, 3, ... never reused, so
    #: (agent, stream, seq) identifies the event for ever.
    seq: int
    event: Event


class BatchSource(Protocol):
    """What the uplink needs of the outbox."""

    async def next_batch(self, priority: Priority, max_rows: int) -> list[Queued]:
        """Up to `max_rows` committed rows of `priority`, oldest first, not handed out
        since (until acknowledged or released); [] when there are none."""
        ...

    async def wait_for_rows(self) -> None:
        """Return once rows are committed that no batch holds (at once if there are)."""
        ...

    async def acknowledge(self, rows: Sequence[Queued]) -> None:
        """The broker has these rows: remove them for good."""
        ...

    async def release(self, rows: Sequence[Queued]) -> None:
        """These rows were not delivered: hand them out again, in their order."""
        ...
