"""A database that cannot be used is kept aside, never deleted, and a fresh outbox
starts (with one clear log line and the caller told); one from a newer schema is
refused and left exactly as it was."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import pytest
from outbox_producer import event, stored_rows

from kommune.edge.northbound import Priority
from kommune.edge.outbox import KeptAside, Outbox, OutboxError, OutboxSchemaError
from kommune.edge.outbox.schema import SCHEMA_VERSION

BUDGET = 64 << 20


def contents(folder: Path) -> dict[str, bytes]:
    """Every file in `folder` but the lock file, by name."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix != ".lock"}


async def open_outbox(path: Path) -> Outbox:
    return await Outbox.open(path, agent="edge-1", budget_bytes=BUDGET)


async def make_real_outbox(path: Path, events: int = 3_000) -> None:
    """An outbox file with a few hundred KB of committed rows, closed cleanly."""
    async with await open_outbox(path) as outbox:
        for first in range(1, events + 1, 500):
            await outbox.append(
                [event("lamp-1/energy", s, "y" * 80) for s in range(first, first + 500)]
            )


async def assert_kept_aside_and_fresh(
    path: Path, original: bytes, caplog: pytest.LogCaptureFixture, cause: str
) -> KeptAside:
    caplog.set_level(logging.ERROR, logger="kommune.edge.outbox")
    async with await open_outbox(path) as outbox:
        kept = outbox.kept_aside
        assert kept is not None
        assert kept.path == path
        assert cause in kept.cause
        # The file is where it says, byte for byte; nothing was deleted.
        assert kept.moved_to[0].name.startswith("outbox.db.corrupt-")
        assert kept.moved_to[0].name.endswith("Z")
        assert kept.moved_to[0].read_bytes() == original
        # A fresh outbox works.
        assert await outbox.append([event("lock-1/audit", 1)]) == [1]
        assert [q.event.source_seq for q in await outbox.next_batch(Priority.AUDIT, 5)] == [1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = errors[0].getMessage()
    assert "\n" not in line
    assert str(path) in line
    assert kept.cause in line
    assert str(kept.moved_to[0]) in line
    # Opened again: it is an ordinary outbox now, nothing more is kept aside.
    async with await open_outbox(path) as outbox:
        assert outbox.kept_aside is None
        assert outbox.depth().rows[Priority.AUDIT] == 1
    return kept


@pytest.mark.parametrize("size", [100, 4096, 65536])
async def test_random_bytes_are_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    path = tmp_path / "outbox.db"
    garbage = random.Random(size).randbytes(size)
    path.write_bytes(garbage)
    await assert_kept_aside_and_fresh(path, garbage, caplog, "not an SQLite database")


async def test_a_real_database_with_random_pages_is_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    await make_real_outbox(path)
    data = bytearray(path.read_bytes())
    rng = random.Random(5)
    page = 4096
    for number in rng.sample(range(1, len(data) // page), 5):  # never page 1 (the header)
        data[number * page : (number + 1) * page] = rng.randbytes(page)
    path.write_bytes(bytes(data))
    await assert_kept_aside_and_fresh(path, bytes(data), caplog, "")


async def test_a_truncated_database_is_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    await make_real_outbox(path)
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[: len(data) // 2])
    await assert_kept_aside_and_fresh(path, data[: len(data) // 2], caplog, "malformed")


async def test_a_database_that_is_not_an_outbox_is_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE readings (t INTEGER, v REAL)")
    conn.commit()
    conn.close()
    original = path.read_bytes()
    await assert_kept_aside_and_fresh(path, original, caplog, "not an outbox")


async def test_the_wal_is_kept_aside_with_its_database(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    wal = tmp_path / "outbox.db-wal"
    path.write_bytes(b"SQLite format 3\x00" + bytes(84) + bytes(4000))  # a bad header
    wal.write_bytes(b"events only the WAL had")
    async with await open_outbox(path) as outbox:
        assert outbox.kept_aside is not None
        moved = outbox.kept_aside.moved_to
        assert [p.name[-4:] for p in moved] == [moved[0].name[-4:], "-wal"]
        assert moved[1].read_bytes() == b"events only the WAL had"


async def test_a_second_corrupt_file_in_the_same_second_gets_its_own_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    names = set()
    for round_ in range(3):
        path.write_bytes(random.Random(round_).randbytes(1000))
        async with await open_outbox(path) as outbox:
            assert outbox.kept_aside is not None
            names.add(outbox.kept_aside.moved_to[0])
    assert len(names) == 3
    assert all(name.exists() for name in names)


async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    await make_real_outbox(path, events=500)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = contents(tmp_path)
    with pytest.raises(OutboxSchemaError) as refused:
        await open_outbox(path)
    assert isinstance(refused.value, OutboxError)
    assert str(path) in str(refused.value)
    assert f"version {SCHEMA_VERSION + 1}" in str(refused.value)
    assert contents(tmp_path) == before
    # It can be opened (by a newer agent) once this one has let go of it.
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.close()
    async with await open_outbox(path) as outbox:
        assert outbox.kept_aside is None
        assert outbox.depth().rows[Priority.TELEMETRY] == 500


async def test_an_empty_file_becomes_a_fresh_outbox(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"")
    async with await open_outbox(path) as outbox:
        assert outbox.kept_aside is None
        await outbox.append([event("lamp-1/energy", 1)])
    assert len(stored_rows(path)) == 1


async def test_a_missing_directory_is_an_outbox_error(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="no-such-dir"):
        await open_outbox(tmp_path / "no-such-dir" / "outbox.db")
