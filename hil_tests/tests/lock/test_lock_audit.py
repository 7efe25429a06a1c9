"""The audit trail leaves the lock over BLE: a read-audit request gets a sealed batch
sized to the link's MTU, the edge's checker verifies the chain and the MACs, and its ack
lets the lock prune exactly what the edge holds -- in flash too."""

from __future__ import annotations

import pytest
from lock_rig import start_lock

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_BOOT, EVENT_COMMAND
from kommune.protocols.audit_check import AuditChecker
from kommune.protocols.lock_wire import OK, RIGHT_LOCK, RIGHT_READ_AUDIT

pytestmark = pytest.mark.micropython


async def test_audit_batches_reach_the_edge_and_acks_prune(air: Air, make_board: MakeBoard) -> None:
    lock = await start_lock(air, make_board)
    keys = lock.lock_keys
    collector = lock.issue(rights=RIGHT_READ_AUDIT | RIGHT_LOCK)
    checker = AuditChecker(keys.audit_key, lock.lock_id)
    async with lock.connect() as link:
        assert link.client.mtu_size >= 256
        assert (await link.set_time()).ok
        for _ in range(3):
            assert (await link.request(collector, RIGHT_LOCK)).ok
        seen = []
        for _ in range(3):  # each read-audit request logs an entry itself
            reply = await link.request(collector, RIGHT_READ_AUDIT, batch=True)
            assert reply.ok
            accepted = checker.accept_batch(link.batch)
            assert 1 <= len(accepted.entries) <= (link.client.mtu_size - 3 - 18) // 55
            seen += accepted.entries
            checker.commit(accepted)  # (stored durably first, in the edge)
            reply_bytes, _ = await link.exchange(checker.ack(keys.edge_key))
            assert reply_bytes == bytes((0x04, 0x06, 0x00))  # NOTICE: ack ok
            await link.after_reply()
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    events = [(e.event, e.status) for e in seen]
    # boot, time set, three lock requests, then the read-audit requests themselves
    assert events[:5] == [(EVENT_BOOT, OK), (EVENT_COMMAND, OK)] + [(EVENT_ACCESS, OK)] * 3
    assert all(e == (EVENT_ACCESS, OK) for e in events[5:])
    state = lock.flash_state()
    # Everything the edge acked is gone from the lock's flash; the chain goes on from it.
    assert state.entries == [] or state.entries[0].seq == checker.next_seq
    assert state.next_seq == checker.next_seq + len(state.entries)
