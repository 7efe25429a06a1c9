"""The outbox's errors: one base, `OutboxError`, so the agent catches the family at once."""

from __future__ import annotations

from pathlib import Path

from kommune.edge.northbound import Priority


class OutboxError(Exception):
    """Something the outbox cannot do; the message is one readable line."""


class OutboxFull(OutboxError):
    """An append that does not fit (the disk budget, or its class's row quota) and could
    not be made to fit by evicting what may be evicted. Nothing of it was stored: the
    producer must not acknowledge its node, which retransmits later (push-back)."""

    def __init__(self, message: str, *, priority: Priority, reason: str) -> None:
        super().__init__(message)
        #: The most important class in the refused append.
        self.priority = priority
        #: "budget" (disk) or "quota" (the class's max_rows).
        self.reason = reason


class OutboxClosed(OutboxError):
    """The outbox is closed (or closing): nothing more is taken in or handed out."""


class OutboxInUse(OutboxError):
    """Another process (or another Outbox in this one) has the database open."""


class OutboxSchemaError(OutboxError):
    """The database was written by a newer schema than this code knows; left untouched."""

    def __init__(self, path: Path, found: int, known: int) -> None:
        super().__init__(
            f"{path}: outbox schema version {found} is newer than this agent's ({known}); "
            "refusing to open it (upgrade the agent, or move the file away)"
        )
        self.path = path
        self.found = found
        self.known = known
