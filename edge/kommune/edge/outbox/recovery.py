"""Opening the outbox's file safely: one owner at a time, a newer schema left alone, and a
corrupt or unreadable file kept aside (never deleted) so a fresh outbox can start.

Everything here is blocking; the outbox runs it on its SQLite thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from kommune.edge import pidlock
from kommune.edge.outbox.errors import OutboxError, OutboxInUse, OutboxSchemaError
from kommune.edge.outbox.keys import upgrade_recent
from kommune.edge.outbox.schema import (
    DDL,
    EXPECTED_TABLES,
    SCHEMA_VERSION,
    UPGRADABLE_VERSIONS,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_HEADER: Final = b"SQLite format 3\x00"
#: Where an SQLite file keeps PRAGMA user_version (big-endian u32).
_USER_VERSION_OFFSET: Final = 60

#: SQLite result codes that mean "another connection has it": never a reason to move a file.
_BUSY_CODES: Final = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


class Unreadable(Exception):
    """The file at the outbox's path cannot be used as an outbox; the message says why."""


@dataclass(frozen=True)
class KeptAside:
    """A database found unreadable when the outbox opened, renamed out of the way. Its
    events were not dropped: they are still in `moved_to` for a person to look at."""

    #: The outbox's path (where the file was).
    path: Path
    #: The files as they are named now: the database, then its -wal and -shm if any.
    moved_to: tuple[Path, ...]
    #: Why it could not be used (SQLite's message, or what was wrong with it).
    cause: str


def sidecars(path: Path) -> tuple[Path, Path]:
    """The WAL and shared-memory files SQLite keeps beside `path`."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


class FileLock:
    """An exclusive lock on PATH.lock for the outbox's life: a second agent on the same
    file is refused (instead of, say, taking a live database for corrupt). The kernel
    drops it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise OutboxError(
                f"cannot open the outbox {path}: {error.strerror or error}"
            ) from error
        try:
            pidlock.claim(self._fd)
        except pidlock.LockHeld as e:
            self.release()
            raise OutboxInUse(f"{path} is in use by another outbox (process {e.holder})") from None
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _sync_dir(path: Path) -> None:
    """Make renames and new files in `path`'s directory survive a power cut."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def header_version(path: Path) -> int | None:
    """PRAGMA user_version as the file's header has it, read without SQLite (so a newer
    agent's file is refused before anything writes to it); None for a missing or empty
    file. Raises Unreadable if the header is not a sound SQLite header: SQLite given such
    a file may discard the WAL beside it, and that is to be kept aside with it."""
    try:
        with path.open("rb") as file:
            head = file.read(100)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise Unreadable(f"cannot read it: {error.strerror or error}") from error
    if not head:
        return None
    if len(head) < 100 or not head.startswith(_HEADER):
        raise Unreadable("not an SQLite database (its header is wrong)")
    page_size = int.from_bytes(head[16:18], "big")
    if page_size == 1:
        page_size = 65536
    if (
        not 512 <= page_size <= 65536
        or page_size & (page_size - 1)
        or head[18] not in (1, 2)
        or head[19] not in (1, 2)
        or head[21:24] != b"\x40\x20\x20"
    ):
        raise Unreadable("not an SQLite database (its header is damaged)")
    return int.from_bytes(head[_USER_VERSION_OFFSET : _USER_VERSION_OFFSET + 4], "big")


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def _sqlite_failure(path: Path, error: sqlite3.Error) -> Exception:
    """What an SQLite error while opening means: busy elsewhere, or an unusable file."""
    if getattr(error, "sqlite_errorname", "") in _BUSY_CODES:
        return OutboxError(f"{path}: {error}")
    return Unreadable(_one_line(str(error)))


def inspect(path: Path) -> None:
    """Look at an existing database through a read-only connection, which cannot change
    it (a read-write one would switch its journal mode, and checkpoint its WAL into it on
    closing): a newer schema, tables that are not ours, SQLite's quick_check."""
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise _sqlite_failure(path, error) from error
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:  # only in the WAL, not yet in the file's header
            raise OutboxSchemaError(path, version, SCHEMA_VERSION)
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        }
        if version == 0:
            if tables:
                raise Unreadable(f"not an outbox: it has tables ({', '.join(sorted(tables))})")
            return
        if version != SCHEMA_VERSION and version not in UPGRADABLE_VERSIONS:
            raise Unreadable(f"outbox schema version {version} is not one this agent knows")
        missing = EXPECTED_TABLES - tables
        if missing:
            raise Unreadable(f"outbox tables missing: {', '.join(sorted(missing))}")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise Unreadable(f"SQLite's quick_check: {_one_line('; '.join(problems))}")
    except sqlite3.Error as error:
        raise _sqlite_failure(path, error) from error
    finally:
        conn.close()


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the outbox database, checked: our schema and SQLite's quick_check,
    then WAL mode with synchronous=FULL. Raises OutboxSchemaError for a newer schema (the
    file left as it was), Unreadable when it cannot be used, OutboxError when it is busy."""
    found = header_version(path)
    if found is not None:
        if found > SCHEMA_VERSION:
            raise OutboxSchemaError(path, found, SCHEMA_VERSION)
        inspect(path)
    created = not path.exists()
    try:
        # Used from one thread at a time (the outbox's); check_same_thread=False only so that
        # a store whose opener was cancelled can be closed from wherever that is noticed.
        conn = sqlite3.connect(
            path, isolation_level=None, cached_statements=64, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise _sqlite_failure(path, error) from error
    try:
        _prepare(conn)
    except sqlite3.Error as error:
        conn.close()
        raise _sqlite_failure(path, error) from error
    except BaseException:
        conn.close()
        raise
    if created:
        _sync_dir(path)
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA busy_timeout = 0")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise Unreadable(f"SQLite would not put it in WAL mode (it stays {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in DDL:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version in UPGRADABLE_VERSIONS:
            # 1 -> 2: the same tables; no meta.keys_through means every key is in `recent`.
            # 2 -> 3: `recent` as runs of keys.
            upgrade_recent(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def keep_aside(path: Path, cause: str) -> KeptAside:
    """Rename the database (and its -wal/-shm, so they stay a pair) to
    NAME.corrupt-<UTC time>[-N] and log one line naming the file and the cause."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while any(p.exists() for p in (target, *sidecars(target))):
        number += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    moved: list[Path] = []
    for source, dest in zip((path, *sidecars(path)), (target, *sidecars(target)), strict=True):
        try:
            source.rename(dest)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise OutboxError(
                f"{path} is unreadable ({cause}) and could not be kept aside: {error}"
            ) from error
        moved.append(dest)
    _sync_dir(path)
    log.error(
        "outbox: %s is unreadable (%s); kept aside as %s, starting a fresh outbox",
        path,
        cause,
        target,
        extra={"fields": {"path": str(path), "kept_as": str(target), "cause": cause}},
    )
    return KeptAside(path, tuple(moved), cause)


def _checked_load(path: Path, load: Callable[[sqlite3.Connection], T]) -> T:
    """`connect`, then `load` (reading the rows may find corruption quick_check did not)."""
    conn = connect(path)
    try:
        return load(conn)
    except sqlite3.DatabaseError as error:
        conn.close()
        raise _sqlite_failure(path, error) from error
    except BaseException:
        conn.close()
        raise


def open_database(
    path: Path, load: Callable[[sqlite3.Connection], T]
) -> tuple[T, KeptAside | None]:
    """Connect to the outbox at `path` and `load` it; when the file is unreadable, keep
    it aside and start afresh. `load` owns the connection once it returns."""
    try:
        return _checked_load(path, load), None
    except Unreadable as bad:
        cause = str(bad)
    if not any(p.exists() for p in (path, *sidecars(path))):
        raise OutboxError(f"cannot create the outbox {path}: {cause}")
    kept = keep_aside(path, cause)
    try:
        return _checked_load(path, load), kept
    except Unreadable as again:
        raise OutboxError(
            f"cannot create a fresh outbox {path} (the old one is kept as "
            f"{kept.moved_to[0] if kept.moved_to else '?'}): {again}"
        ) from again
