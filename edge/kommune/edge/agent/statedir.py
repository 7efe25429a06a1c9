"""The agent's state directory (outbox.dir), and the lock that keeps it to one agent.

The directory is made (mode 0700) if it is missing. `agent.lock` in it is held for the
agent's life (`kommune.edge.pidlock`): a second agent on the same directory is refused
with the holder's pid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from kommune.edge import pidlock

LOCK_NAME: Final = "agent.lock"


class StateDirError(Exception):
    """The state directory cannot be used: one line."""


class StateLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def lock(path: Path) -> StateLock:
    """Make `path` if needed and take its lock; StateDirError if another agent has it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateDirError(f"{path} (outbox.dir): {e.strerror or e}") from e
    try:
        pidlock.claim(fd)
    except pidlock.LockHeld as e:
        os.close(fd)
        raise StateDirError(f"another agent (pid {e.holder}) runs on {path} (outbox.dir)") from None
    except OSError as e:
        os.close(fd)
        raise StateDirError(f"{path / LOCK_NAME}: {e.strerror or e}") from e
    return StateLock(path, fd)
