"""The agent's state directory (outbox.dir), and the lock that keeps it to one agent.

The directory is made (mode 0700) if it is missing. `agent.lock` in it is held with
flock(2) for the agent's life and holds its pid: a second agent on the same directory
is refused with the holder's pid. The kernel drops the lock when the process ends, how
ever it ends (SIGKILL, a power cut), so a stale file never blocks the next start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

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
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateDirError(f"another agent (pid {holder}) runs on {path} (outbox.dir)") from None
    except OSError as e:
        os.close(fd)
        raise StateDirError(f"{path / LOCK_NAME}: {e.strerror or e}") from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)
