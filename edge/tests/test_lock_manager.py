"""The lock manager against a lock made of the protocol's own `LockVerifier` and
`AuditLog` (what the firmware runs), a real key store and a real outbox: audit entries
reach the outbox exactly once and in order, are acked only after their commit, survive a
lost ack and a crash between the two commits; the clock, epoch and deny-list reach the
lock; failures back off; the site keys read with readable errors."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from agent_support import MINIMAL_SITE

from kommune.edge.agent import site as S
from kommune.edge.agent.process import PartError
from kommune.edge.downlink.store import Applied
from kommune.edge.keys import LockKeys
from kommune.edge.keystore import KeyStore
from kommune.edge.keystore.audit import AuditStore
from kommune.edge.lock.errors import NotReached
from kommune.edge.lock.session import LinkLost
from kommune.edge.locks import part as part_module
from kommune.edge.locks.health import LockHealth
from kommune.edge.locks.part import LockManagerPart
from kommune.edge.northbound import Priority
from kommune.edge.outbox import Outbox
from kommune.protocols.audit import EVENT_ACCESS, AuditLog
from kommune.protocols.lock_client import CHALLENGE_REQUEST
from kommune.protocols.lock_verifier import (
    ACT_DROP,
    ACT_SEND_AUDIT,
    ACT_SET_TIME,
    LockVerifier,
)
from kommune.protocols.lock_wire import MSG_AUDIT_ACK, OK, RIGHT_UNLOCK

LOCK_ID = 1017
ADDRESS = "C0:FF:EE:00:10:17"


def _ms() -> int:
    return time.monotonic_ns() // 1_000_000 & 0x3FFFFFFF


class FakeLock:
    """A lock as the firmware runs it, minus the radio: the verifier decides, the log
    keeps entries until acked, a time set moves its clock."""

    def __init__(self, lock_keys: LockKeys, *, clock_offset_s: int = -86_400) -> None:
        self.keys = lock_keys
        self.log = AuditLog(lock_keys.audit_key, LOCK_ID, capacity=64)
        self.verifier = LockVerifier(
            LOCK_ID, lock_keys.token_key, lock_keys.edge_key, 0, self.log, needs_time=True
        )
        self.clock_offset_s = clock_offset_s
        self.batch_entries = 4  # what an ATT MTU of 256 carries
        self.connects = 0
        self.unreachable = False
        self.lose_acks = 0  # the next N acks are lost with the link (never reach the lock)
        self.written: list[bytes] = []

    def now_s(self) -> int:
        return int(time.time()) + self.clock_offset_s

    def opening(self, holder_id: int, token_id: int) -> None:
        """Someone opened the door (the firmware logs the access before the bolt moves)."""
        self.log.append(
            self.now_s(), EVENT_ACCESS, RIGHT_UNLOCK, OK, holder_id=holder_id, token_id=token_id
        )

    @asynccontextmanager
    async def connect(
        self, lock_id: int, *, address: str | None, transport: str | None, timeout_s: float
    ) -> AsyncIterator[FakeLink]:
        assert (lock_id, address) == (LOCK_ID, ADDRESS)
        self.connects += 1
        if self.unreachable:
            raise NotReached(f"lock {lock_id} not in range")
        link = FakeLink(self)
        try:
            yield link
        finally:
            self.verifier.disconnect(link.conn)


class FakeLink:
    def __init__(self, lock: FakeLock) -> None:
        self.lock = lock
        self.conn = lock.verifier.connect(_ms())
        self.queue: deque[bytes] = deque()
        self.dropped = False

    def _write(self, data: bytes) -> None:
        if self.dropped:
            raise LinkLost("the link dropped")
        lock = self.lock
        lock.written.append(data)
        if data[:1] == bytes((MSG_AUDIT_ACK,)) and lock.lose_acks:
            lock.lose_acks -= 1
            self.dropped = True
            raise LinkLost("the link dropped while sending the ack")
        v = lock.verifier.respond(self.conn, data, _ms(), lock.now_s())
        if v.action == ACT_SET_TIME:
            lock.clock_offset_s = v.value - int(time.time())
        if v.reply:
            self.queue.append(v.reply)
        if v.action == ACT_SEND_AUDIT:
            self.queue.append(bytes(lock.log.batch(lock.batch_entries)))
        if v.action == ACT_DROP:
            self.dropped = True
            return
        self.queue.append(lock.verifier.challenge(self.conn, os.urandom(16), _ms(), lock.now_s()))

    async def read_status(self) -> str:
        v = self.lock.verifier
        return (
            f"lock={LOCK_ID} time={'needed' if v.needs_time else 'ok'} epoch={v.epoch} "
            f"seq={self.lock.log.next_seq} bolt=locked battery=5990mV,99%"
        )

    async def challenge(self) -> bytes:
        self.queue.clear()
        self._write(CHALLENGE_REQUEST)
        return await self.receive()

    async def exchange(self, message: bytes) -> bytes:
        self._write(message)
        return await self.receive()

    async def receive(self, what: str = "") -> bytes:
        if not self.queue:
            raise LinkLost(f"nothing came: {what}")
        return self.queue.popleft()


class Setup:
    def __init__(self, tmp: Path, outbox: Outbox, extra: str = "") -> None:
        self.keystore = tmp / "keystore"
        with KeyStore.open(self.keystore) as store:
            store.site_key()
            self.lock_keys = store.lock_keys(LOCK_ID)
        text = (
            MINIMAL_SITE
            + f'[[locks]]\nid = {LOCK_ID}\nble = "{ADDRESS}"\n'
            + f'[lock_manager]\nkeystore = "{self.keystore}"\nvisit_interval_s = 60\n'
            + extra
        )
        self.site = S.parse(text.encode(), source=tmp / "site.toml", environ={"HOME": str(tmp)})
        self.lock = FakeLock(self.lock_keys)
        holder = type("OutboxHolder", (), {"outbox": outbox})()
        self.part = LockManagerPart(self.site, holder, connect=self.lock.connect)  # type: ignore[arg-type]
        self.outbox = outbox

    @property
    def health(self) -> LockHealth:
        return self.part.locks[LOCK_ID]

    async def visit(self) -> None:
        await self.part._visit(self.health)

    def anchor(self) -> int:
        store = AuditStore(self.keystore / "audit.sqlite")
        try:
            return store.anchor(LOCK_ID)[0]
        finally:
            store.close()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.sqlite3", agent="test-agent", budget_bytes=64 << 20)
    try:
        yield box
    finally:
        await box.aclose()


@pytest.fixture
async def setup(tmp_path: Path, outbox: Outbox) -> AsyncIterator[Setup]:
    s = Setup(tmp_path, outbox)
    await s.part.start()
    try:
        yield s
    finally:
        await s.part.stop()


async def audit_rows(outbox: Outbox, stream: str = f"lock-{LOCK_ID}/audit") -> list[Any]:
    rows = await outbox.next_batch(Priority.AUDIT, 10_000)
    await outbox.release(rows)
    return [r.event for r in rows if r.event.stream == stream]


def seqs(events: list[Any]) -> list[int]:
    return [e.source_seq for e in events]


async def test_a_visit_sets_the_clock_and_collects_every_entry_once_then_acks(
    setup: Setup,
) -> None:
    lock = setup.lock
    for i in range(9):  # more than one batch
        lock.opening(holder_id=4242, token_id=100 + i)
    await setup.visit()
    health = setup.health
    assert health.failing == 0, health.last_error
    assert health.time_sets == 1 and not lock.verifier.needs_time
    assert abs(lock.now_s() - time.time()) <= 1
    assert health.drift_s is not None and health.drift_s <= -86_000
    events = await audit_rows(setup.outbox)
    assert seqs(events) == list(range(1, len(events) + 1))
    opened = [e for e in events if '"token_id":1' in e.value and '"op":1' in e.value]
    assert len(opened) == 9  # the nine openings, between the time set and our reads
    # Acked after the commit: the lock kept nothing the outbox does not hold.
    assert lock.log.entries == [] or lock.log.next_seq - 1 == seqs(events)[-1] + 0
    assert setup.anchor() == seqs(events)[-1] + 1
    assert health.backlog == 0
    assert (health.battery_mv, health.battery_percent) == (5990, 99)

    # A second visit: no time set (the clock is right), only its own read entry is new.
    lock.opening(holder_id=4243, token_id=200)
    await setup.visit()
    again = await audit_rows(setup.outbox)
    assert seqs(again) == list(range(1, len(again) + 1))
    assert health.time_sets == 1
    assert lock.log.entries == []


async def test_a_lost_ack_and_a_crash_between_the_commits_duplicate_nothing(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = setup.lock
    for i in range(3):
        lock.opening(holder_id=1, token_id=10 + i)
    lock.lose_acks = 1  # committed, but the ack never reaches the lock
    await setup.visit()
    assert setup.health.failing == 1
    first = await audit_rows(setup.outbox)
    assert first and len(lock.log.entries) >= len(first)  # nothing pruned

    # The next visit: the lock sends them again; they are recognised, not re-queued.
    await setup.visit()
    assert setup.health.failing == 0, setup.health.last_error
    after = await audit_rows(setup.outbox)
    assert seqs(after) == list(range(1, len(after) + 1))
    assert lock.log.entries == []

    # Outbox committed, then the audit store fails before its anchor moves.
    lock.opening(holder_id=2, token_id=20)
    real = AuditStore.commit
    calls = 0

    def fail_once(self: AuditStore, lock_id: int, accepted: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk went away")
        real(self, lock_id, accepted)

    monkeypatch.setattr(AuditStore, "commit", fail_once)
    await setup.visit()
    assert setup.health.failing == 1 and "disk went away" in (setup.health.last_error or "")
    await setup.visit()
    assert setup.health.failing == 0, setup.health.last_error
    final = await audit_rows(setup.outbox)
    assert seqs(final) == list(range(1, len(final) + 1))  # each once, in order
    assert setup.health.duplicates >= 1  # the outbox recognised the re-read
    assert lock.log.entries == []


async def test_revocations_reach_the_lock(setup: Setup) -> None:
    with KeyStore.open(setup.keystore) as store:
        store.revoke_holder(LOCK_ID, 4242)
        store.revoke_token(LOCK_ID, 99)
    await setup.visit()
    assert setup.lock.verifier.deny[:2] == (0, 2)
    assert setup.health.deny_known == (0, 2)
    with KeyStore.open(setup.keystore) as store:
        epoch = store.revoke_all(LOCK_ID)
    await setup.visit()
    assert setup.lock.verifier.epoch == epoch == 1
    assert setup.health.epoch_sets == 1 and setup.health.epoch == 1
    assert setup.lock.verifier.deny[:2] == (1, 3)
    # Nothing new: nothing pushed again.
    pushes = setup.health.deny_pushes
    await setup.visit()
    assert setup.health.deny_pushes == pushes and setup.health.epoch_sets == 1


async def test_a_forked_chain_is_reported_and_never_acked(setup: Setup) -> None:
    await setup.visit()
    acked = setup.anchor()
    # The lock is wiped and starts a new chain at seq 1 (a new provisioning, say).
    lock = setup.lock
    lock.log = AuditLog(setup.lock_keys.audit_key, LOCK_ID, capacity=64)
    lock.verifier.audit = lock.log
    lock.opening(holder_id=5, token_id=50)
    await setup.visit()
    health = setup.health
    assert health.audit_problem is not None and health.audit_problems == {"restarted": 1}
    assert setup.anchor() == acked
    assert lock.log.entries  # kept on the lock: nothing acked
    alerts = await audit_rows(setup.outbox, f"lock-{LOCK_ID}/audit-alert")
    assert [e.name for e in alerts] == ["restarted"]
    await setup.visit()  # the same problem is not reported twice
    assert len(await audit_rows(setup.outbox, f"lock-{LOCK_ID}/audit-alert")) == 1
    assert setup.part.health()["locks"][str(LOCK_ID)]["ok"] is False


async def test_failures_back_off_and_an_on_demand_visit_comes_at_once(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(part_module, "RETRY_FIRST_S", 0.01)
    part, lock = setup.part, setup.lock
    lock.unreachable = True
    loop = asyncio.get_running_loop()
    ends: list[float] = []
    runner = asyncio.create_task(part.run())
    try:
        while len(ends) < 5:
            await part.next_visit(LOCK_ID)
            ends.append(loop.time())
        health = setup.health
        assert health.failing == 5 and "not in range" in (health.last_error or "")
        gaps = [b - a for a, b in itertools.pairwise(ends)]
        # Each retry waits twice as long as the one before: 0.01, 0.02, 0.04, 0.08 s.
        assert [round(g, 2) >= 0.01 * 2**i for i, g in enumerate(gaps)] == [True] * 4
        lock.unreachable = False
        health = await part.next_visit(LOCK_ID)
        assert health.failing == 0, health.last_error
        # The next visit is a minute away; one on demand comes at once.
        began = loop.time()
        health = await part.visit_now(LOCK_ID)
        assert health.failing == 0 and loop.time() - began < 10
        assert health.visits == 7
    finally:
        await part.stop()
        await asyncio.wait_for(runner, 5)
    metrics = {m.name: m for m in part.metrics()}
    visits = metrics["lock_visits_total"].samples
    assert visits[(("lock", str(LOCK_ID)), ("result", "failed"))] == 5
    assert visits[(("lock", str(LOCK_ID)), ("result", "ok"))] == 2
    assert metrics["lock_battery_percent"].samples == {(("lock", str(LOCK_ID)),): 99.0}


async def test_a_missing_key_store_stops_the_start_with_one_line(
    tmp_path: Path, outbox: Outbox
) -> None:
    s = Setup(tmp_path, outbox)
    s.part.keystore_path = tmp_path / "nowhere"
    with pytest.raises(PartError, match=r"lock_manager\.keystore: .*nowhere: no key store there"):
        await s.part.start()


def test_site_keys_and_their_problems(tmp_path: Path) -> None:
    def parse(extra: str) -> S.Site:
        return S.parse(
            (MINIMAL_SITE + extra).encode(), source=tmp_path / "site.toml", environ={"HOME": "/h"}
        )

    default = parse("").lock_manager
    assert default == S.LockManagerConfig()
    assert (default.visit_interval_s, default.max_clock_drift_s) == (900.0, 5)
    cfg = parse(
        '[lock_manager]\nkeystore = "ks"\nvisit_interval_s = 30\nmax_clock_drift_s = 2\n'
        'transport = "usb:0"\nconnect_timeout_s = 5\nvisit_timeout_s = 20\n'
    ).lock_manager
    assert cfg == S.LockManagerConfig(tmp_path / "ks", 30.0, 2, 5.0, 20.0, "usb:0")
    for text, words in (
        ("visit_interval_s = 0", "lock_manager.visit_interval_s: expected a number 1-604800"),
        ("max_clock_drift_s = 0", "lock_manager.max_clock_drift_s: expected an integer 1-3600"),
        ("visit_timeout_s = 6\nconnect_timeout_s = 10", "lock_manager.visit_timeout_s: must be"),
        ("intervall = 3", "lock_manager.intervall: unknown key"),
    ):
        with pytest.raises(S.SiteError) as caught:
            parse("[lock_manager]\n" + text + "\n")
        assert str(caught.value).startswith(words), caught.value.problems


async def test_entries_lost_to_overflow_are_reported_and_the_rest_collected(
    setup: Setup,
) -> None:
    lock = setup.lock
    lock.log = AuditLog(setup.lock_keys.audit_key, LOCK_ID, capacity=8)
    lock.verifier.audit = lock.log
    for i in range(20):  # the edge was away: the oldest openings give way to a marker
        lock.opening(holder_id=7, token_id=300 + i)
    await setup.visit()
    assert setup.health.failing == 0, setup.health.last_error
    [lost] = await audit_rows(setup.outbox, f"lock-{LOCK_ID}/audit-lost")
    first, last = lost.source_seq, json.loads(str(lost.value))["last"]
    assert first == 1 and last >= 12
    events = await audit_rows(setup.outbox)
    assert seqs(events) == list(range(last, last + len(events)))  # the marker, then the rest
    assert lock.log.entries == []


async def test_a_deny_list_too_long_for_a_lock_does_not_stop_the_audit(setup: Setup) -> None:
    with KeyStore.open(setup.keystore) as store:
        for holder in range(1, 34):
            store.revoke_holder(LOCK_ID, holder)
    setup.lock.opening(holder_id=1, token_id=1)
    await setup.visit()
    assert setup.health.failing == 0, setup.health.last_error
    assert setup.health.deny_pushes == 0
    assert len(await audit_rows(setup.outbox)) >= 3


class FakeDownlinks:
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Any]] = {}

    def subscribe(self, kind: str, callback: Any) -> Any:
        self.callbacks.setdefault(kind, []).append(callback)
        return lambda: self.callbacks[kind].remove(callback)

    def apply(self, kind: str, seq: int, body: dict[str, Any]) -> None:
        doc = Applied(kind, seq, b"\0" * 32, "*", 0, 1, 0, body)
        for callback in list(self.callbacks.get(kind, [])):
            callback(doc)


async def test_a_lock_epoch_downlink_raises_the_epoch_and_reaches_the_lock(
    tmp_path: Path, outbox: Outbox
) -> None:
    s = Setup(tmp_path, outbox)
    downlinks = FakeDownlinks()
    s.part = LockManagerPart(s.site, s.part._outbox, downlinks=downlinks, connect=s.lock.connect)
    await s.part.start()
    runner = asyncio.create_task(s.part.run())
    try:
        await s.part.next_visit(LOCK_ID)  # the visit at start
        assert s.lock.verifier.epoch == 0
        visited = s.part.next_visit(LOCK_ID)
        # Another agent's lock, a malformed epoch and a lower one change nothing.
        downlinks.apply("lock-epoch", 1, {"locks": {str(LOCK_ID): 4, "9": 7, "x": 1}})
        health = await visited
        assert health.failing == 0, health.last_error
        assert s.lock.verifier.epoch == 4 and health.epoch_sets == 1
        with KeyStore.open(s.keystore) as store:
            assert store.epoch(LOCK_ID) == 4 and store.epochs() == {LOCK_ID: 4}
        downlinks.apply("lock-epoch", 2, {"locks": {str(LOCK_ID): 2}})  # never lowered
        downlinks.apply("lock-epoch", 3, {"locks": {str(LOCK_ID): True}})
        downlinks.apply("lock-epoch", 4, {"epochs": {}})
        health = await s.part.visit_now(LOCK_ID)
        assert s.lock.verifier.epoch == 4 and health.epoch_sets == 1
    finally:
        await s.part.stop()
        await asyncio.wait_for(runner, 5)
    assert downlinks.callbacks["lock-epoch"] == []
