"""One process per file: an exclusive flock(2) on an open lock file that names its holder.

The holder writes its pid into the file; a second process is told that pid. The kernel
drops the lock when the holder's process ends, however it ends (SIGKILL, a power cut),
so a stale file never blocks the next start. Used for the agent's state directory and
for the outbox's database.
"""

from __future__ import annotations

import fcntl
import os


class LockHeld(Exception):
    """Another process holds the lock; `holder` is the pid it wrote ("?" if none)."""

    def __init__(self, holder: str) -> None:
        super().__init__(f"held by process {holder}")
        self.holder = holder


def claim(fd: int) -> None:
    """Lock the open file `fd` without waiting and write our pid into it; `LockHeld` if
    another process has it, OSError if locking fails otherwise. The caller owns `fd` and
    closes it (which drops the lock), also when this raises."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockHeld(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
