"""Work directories (kommune-rig-*, kommune-vm-*) that do not outlive their process.

`make_workdir(prefix)` makes a fresh directory in the temp folder with a lock
file in it that this process holds flock()ed for its life. The kernel drops
the lock when the process ends however it ends (SIGKILL, OOM killer), so a
directory whose lock nobody holds was left by a dead process: `clean_stale()`
removes those, and the first `make_workdir` of a process runs it.

A directory without the lock file is never touched: it is not ours, or its
owner is between making it and locking it (see `make_workdir`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "kommune-"
LOCK_NAME = ".owner.lock"

_held: dict[Path, int] = {}  # workdir -> fd of its locked lock file


def make_workdir(prefix: str) -> Path:
    """A new directory `<temp>/<prefix>XXXXXXXX`, locked by this process for its life."""
    if not prefix.startswith(PREFIX):
        raise ValueError(f"a work directory's prefix starts with {PREFIX!r}: {prefix!r}")
    _clean_once()
    _forget_removed()
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        lock = path / LOCK_NAME
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # A cleaner that opened the lock file before this flock() may win it and
        # remove the directory; then the locked file is no longer the one at
        # `lock`, and we start over.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.write(fd, f"{os.getpid()}\n".encode())
            _held[path] = fd
            return path
        os.close(fd)


def clean_stale(root: Path | None = None) -> list[Path]:
    """Remove kommune-* directories in `root` (default: the temp folder) whose lock file
    no process holds; returns what was removed."""
    base = Path(tempfile.gettempdir()) if root is None else root
    removed = []
    for path in sorted(base.glob(PREFIX + "*")):
        if path in _held:
            continue
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # no lock file: not made here, or not locked yet
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@functools.cache
def _clean_once() -> None:
    clean_stale()


def _forget_removed() -> None:
    """Close the locks of our own directories that their owner has removed meanwhile."""
    for path, fd in list(_held.items()):
        if not (path / LOCK_NAME).exists():
            del _held[path]
            with contextlib.suppress(OSError):
                os.close(fd)
