"""The downlink store: applies each document once, refuses replays and conflicts, keeps
what it applied across a reopen, and keeps an unreadable file aside."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kommune.edge.downlink.envelope import Downlink, Refusal, decode, sign
from kommune.edge.downlink.store import DownlinkStore, Result, StoreError

NOW = 1_790_000_000_000
KEY = Ed25519PrivateKey.generate()


def signed(seq: int, kind: str = "config", **changes: Any) -> tuple[Downlink, bytes]:
    fields: dict[str, Any] = {
        "kind": kind,
        "site": "lab",
        "agent": "*",
        "seq": seq,
        "issued_ms": NOW,
        "expires_ms": NOW + 60_000,
        "body": {"level": seq},
    }
    fields.update(changes)
    data = sign(KEY, **fields)
    return decode(data).downlink, data


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "downlinks.sqlite3"


def test_a_document_is_applied_once_and_replays_and_conflicts_are_refused(path: Path) -> None:
    store = DownlinkStore.open(path)
    first = store.apply(*signed(5), NOW)
    assert first.result is Result.APPLIED and first.seq == 5
    assert store.apply(*signed(5), NOW + 1).result is Result.ALREADY_APPLIED
    replay = store.apply(*signed(4), NOW)
    assert (replay.result, replay.reason) == (Result.REFUSED, Refusal.REPLAYED)
    assert replay.detail == "seq 4 is older than seq 5, applied"
    conflict = store.apply(*signed(5, body={"level": 99}), NOW)
    assert (conflict.result, conflict.reason) == (Result.REFUSED, Refusal.CONFLICT)
    current = store.current("config")
    assert current is not None
    assert (current.seq, current.body, current.applied_ms) == (5, {"level": 5}, NOW)
    newer = store.apply(*signed(9), NOW + 5)
    assert newer.result is Result.APPLIED
    assert store.current("config").body == {"level": 9}  # type: ignore[union-attr]
    store.close()


def test_each_kind_has_its_own_sequence(path: Path) -> None:
    store = DownlinkStore.open(path)
    assert store.apply(*signed(10, "config"), NOW).result is Result.APPLIED
    assert store.apply(*signed(1, "lock-epoch"), NOW).result is Result.APPLIED
    assert store.apply(*signed(2, "config"), NOW).reason is Refusal.REPLAYED
    assert sorted(store.documents()) == ["config", "lock-epoch"]
    store.close()


def test_what_was_applied_survives_a_reopen(path: Path) -> None:
    store = DownlinkStore.open(path)
    store.apply(*signed(3, "deny-list", agent="edge-1"), NOW)
    store.close()
    again = DownlinkStore.open(path)
    current = again.current("deny-list")
    assert current is not None
    assert (current.seq, current.agent, current.body) == (3, "edge-1", {"level": 3})
    assert again.apply(*signed(3, "deny-list", agent="edge-1"), NOW).result is (
        Result.ALREADY_APPLIED
    )
    assert again.apply(*signed(2, "deny-list"), NOW).reason is Refusal.REPLAYED
    assert again.kept_aside is None and again.reset_ms is None
    again.close()


def test_the_file_is_wal_with_full_sync(path: Path) -> None:
    store = DownlinkStore.open(path)
    store.apply(*signed(1), NOW)
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_an_unreadable_file_is_kept_aside_and_older_documents_are_refused(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)
    store = DownlinkStore.open(path, now_ms=NOW)
    assert store.kept_aside is not None and store.kept_aside.exists()
    assert store.kept_aside.read_bytes().startswith(b"this is not a database")
    assert store.reset_ms == NOW
    old = store.apply(*signed(1, issued_ms=NOW - 1), NOW)
    assert (old.result, old.reason) == (Result.REFUSED, Refusal.STALE)
    assert "before the store was reset" in old.detail
    assert store.apply(*signed(2, issued_ms=NOW), NOW).result is Result.APPLIED
    store.close()
    # The floor holds after a reopen, too.
    reopened = DownlinkStore.open(path)
    assert reopened.reset_ms == NOW
    reopened.close()


def test_a_newer_schema_is_left_alone(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        DownlinkStore.open(path)
    assert path.exists()


def test_a_folder_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open database file"):
        DownlinkStore.open(tmp_path / "missing" / "downlinks.sqlite3")
