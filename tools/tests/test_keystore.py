"""The site key store: owner-only, a key made on first use, atomic writes, one writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kommune.edge import keys
from kommune.edge.keystore import (
    KeyStore,
    KeyStoreError,
    default_path,
    write_atomic,
)
from kommune.protocols import audit
from kommune.protocols.audit import AuditLog


def test_default_paths() -> None:
    assert default_path({"KOMMUNE_KEYSTORE": "/k", "HOME": "/h"}, 1000) == Path("/k")
    assert default_path({"HOME": "/root"}, 0) == Path("/var/lib/kommune/keystore")
    assert default_path({"HOME": "/h"}, 1000) == Path("/h/.local/share/kommune/keystore")
    assert default_path({"HOME": "/h", "XDG_DATA_HOME": "/d"}, 1000) == Path("/d/kommune/keystore")


def test_site_key_made_on_first_use_owner_only_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "ks"
    with KeyStore.open(path) as store:
        assert not store.has_site_key()
        key = store.site_key()
        keys.check_site_key(key)  # random, not a published or typed key
    assert path.stat().st_mode & 0o777 == 0o700
    for name in ("site.key", "keystore.lock"):
        assert (path / name).stat().st_mode & 0o777 == 0o600, name
    with KeyStore.open(path) as store:
        assert store.site_key() == key
        assert store.lock_keys(1017) == keys.derive_lock_keys(key, 1017)
    with KeyStore.open(tmp_path / "other") as other:
        assert other.site_key() != key  # never a default key


@pytest.mark.parametrize("target", ["dir", "site.key", "authority.json"])
def test_readable_by_others_is_refused(tmp_path: Path, target: str) -> None:
    path = tmp_path / "ks"
    with KeyStore.open(path) as store:
        store.site_key()
        store.revoke_all(7)
    victim = path if target == "dir" else path / target
    os.chmod(victim, 0o750 if target == "dir" else 0o640)
    refused = pytest.raises(KeyStoreError, match="lets group or others in; refused")
    with refused as err, KeyStore.open(path) as store:
        store.site_key()
        store.epochs()
    assert "\n" not in str(err.value)


def test_a_published_or_typed_key_in_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ks"
    KeyStore.open(path).close()
    write_atomic(path / "site.key", (b"changeme" * 4).hex().encode())
    with KeyStore.open(path) as store, pytest.raises(KeyStoreError, match="pattern"):
        store.site_key()


def test_epochs_and_deny_lists_persist(tmp_path: Path) -> None:
    path = tmp_path / "ks"
    with KeyStore.open(path) as store:
        authority = store.authority()
        issued = authority.issue(
            holder_id=5, lock_id=9, not_before_s=1_800_000_000, not_after_s=1_800_003_600, rights=1
        )
        store.record_issued(issued, issued_at_s=1_799_999_000)
        assert store.revoke_token(9, issued.token_id) == issued.not_after_s
        assert store.revoke_token(9, 77) is None  # not ours: deny-listed anyway
    with KeyStore.open(path) as store:
        assert store.deny_list(9) == {"tokens": sorted([issued.token_id, 77]), "holders": []}
        version = store.deny_version(9)
        assert store.revoke_all(9) == 1
        assert store.deny_list(9)["tokens"] == []  # the old epoch's tokens are all revoked
        assert store.deny_version(9) > version
    with KeyStore.open(path) as store:
        assert store.epochs() == {9: 1}
        assert store.authority().epoch(9) == 1
        assert (
            store.authority()
            .issue(holder_id=5, lock_id=9, not_before_s=1, not_after_s=2, rights=1)
            .epoch
            == 1
        )


def test_atomic_write_leaves_old_or_new(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")

    class Boom(Exception):
        pass

    original = os.write

    def failing_write(fd: int, data: memoryview) -> int:
        raise Boom

    os.write = failing_write  # type: ignore[assignment]
    try:
        with pytest.raises(Boom):
            write_atomic(target, b"new")
    finally:
        os.write = original
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary file left
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from kommune.edge.keystore import KeyStore
    path, lock = Path(sys.argv[1]), int(sys.argv[2])
    for token in range(25):
        with KeyStore.open(path) as store:
            store.revoke_token(lock, 1000 * lock + token + 1)
    """
)


def test_two_writers_lose_nothing(tmp_path: Path) -> None:
    """Two processes revoking at once: every revocation of both is in the file."""
    path = tmp_path / "ks"
    with KeyStore.open(path) as store:
        store.site_key()
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(lock)]) for lock in (1, 2)
    ]
    try:
        for w in writers:
            assert w.wait(timeout=60) == 0
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    with KeyStore.open(path) as store:
        for lock in (1, 2):
            assert store.deny_list(lock)["tokens"] == [1000 * lock + t + 1 for t in range(25)]
    doc = json.loads((path / "authority.json").read_text())
    assert set(doc["locks"]) == {"1", "2"}


def test_a_second_writer_waits_then_gives_up_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ks"
    refused = pytest.raises(KeyStoreError, match=r"another process \(pid \d+\)")
    with KeyStore.open(path), refused:
        KeyStore.open(path, wait_s=0.2)


def test_audit_anchor_survives_and_answers_lookup(tmp_path: Path) -> None:
    """The checker's anchor and its durable lookup live in the key store's SQLite."""
    lock_keys = keys.derive_lock_keys(keys.new_site_key(), 1017)
    log = AuditLog(lock_keys.audit_key, 1017, capacity=8)
    for t in range(5):
        log.append(1_800_000_000 + t, audit.EVENT_DOOR, 0, "ok", arg=t + 1)
    batch = log.batch(8, mem_free=1 << 20)
    with KeyStore.open(tmp_path / "ks") as store:
        db = store.audit_store()
        checker = db.checker(lock_keys.audit_key, 1017)
        accepted = checker.accept_batch(batch)
        db.commit(1017, accepted)
        checker.commit(accepted)
        db.close()
    assert (tmp_path / "ks" / "audit.sqlite").stat().st_mode & 0o777 == 0o600
    with KeyStore.open(tmp_path / "ks") as store:
        db = store.audit_store()
        again = db.checker(lock_keys.audit_key, 1017)
        assert (again.next_seq, again.last_hash) == (checker.next_seq, checker.last_hash)
        assert db.lookup(1017)(1) == checker.recent[1]
        assert db.lookup(1017)(99) is None
        db.close()
