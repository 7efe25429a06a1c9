"""What the lock refuses, and how it says so: a stale clock, a token outside its window,
a deny-listed holder (the edge's sealed deny-list, kept in flash across a power cut), a
revoked epoch, another lock's token -- each answered with the right status and logged
with the right reason in the audit log on flash; an unprovisioned lock (no identity, or
keys that are not keys) opens for no one and says so."""

from __future__ import annotations

import asyncio
import json

import pytest
from bleak.exc import BleakError
from lock_rig import HANDSHAKE, LOCK_ID, LinkLost, Lock, start_lock

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.edge.ble import BumbleDisconnectedError
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_COMMAND, EVENT_EPOCH_RAISED
from kommune.protocols.errors import (
    BAD_TAG,
    CLOCK_STALE,
    EXPIRED,
    NOT_YET_VALID,
    REVOKED,
    UNPROVISIONED,
)
from kommune.protocols.handshake import Notice
from kommune.protocols.lock_client import CHALLENGE_REQUEST
from kommune.protocols.lock_wire import (
    CMD_DENY_SET,
    MSG_CHALLENGE_REQUEST,
    OK,
    RIGHT_LOCK,
    RIGHT_UNLOCK,
)

pytestmark = pytest.mark.micropython

DENIED_HOLDER = 666


async def test_refusals_are_answered_and_logged_with_their_reason(
    air: Air, make_board: MakeBoard
) -> None:
    lock = await start_lock(air, make_board)
    stale = lock.issue()
    expired = lock.issue(start_s=-7200, end_s=-3600)
    early = lock.issue(start_s=3600, end_s=7200)
    denied = lock.issue(holder_id=DENIED_HOLDER)
    old_epoch = lock.issue(rights=RIGHT_LOCK)
    lock.authority.revoke_all(lock.lock_id)
    new_epoch = lock.issue(rights=RIGHT_LOCK)
    neighbour = lock.issue(lock_id=lock.lock_id + 1)

    async with lock.connect() as link:
        # A new lock has no time yet: nothing is served until the edge sets it.
        assert (await link.request(stale)).status == CLOCK_STALE
        assert (await link.set_time()).ok
        assert (await link.request(expired)).status == EXPIRED
        # The edge's deny-list: genuine tokens of this holder are refused from now on.
        assert (await link.deny(0, 1, [], [DENIED_HOLDER])).status == OK
    async with lock.connect() as link:
        assert (await link.request(early)).status == NOT_YET_VALID
        assert (await link.request(denied)).status == REVOKED
    async with lock.connect() as link:
        # The first token of the new epoch raises the lock's epoch; the old one is revoked.
        assert (await link.request(new_epoch, RIGHT_LOCK)).ok
        refused = await link.request(old_epoch, RIGHT_LOCK)
        assert (refused.status, refused.authenticated) == (REVOKED, True)
    async with lock.connect() as link:
        # Sealed under the neighbour's key: unauthenticated, and the link is dropped.
        reply = await link.request(neighbour, lock_id=lock.lock_id)
        assert (reply.status, reply.authenticated) == (BAD_TAG, False)
    assert lock.bolt_state() == "locked"

    state = lock.flash_state()
    assert state.epoch == 1
    access = [(e.status, e.holder_id, e.token_id) for e in state.entries if e.event == EVENT_ACCESS]
    assert access == [
        (CLOCK_STALE, stale.holder_id, stale.token_id),
        (EXPIRED, expired.holder_id, expired.token_id),
        (NOT_YET_VALID, early.holder_id, early.token_id),
        (REVOKED, DENIED_HOLDER, denied.token_id),
        (OK, new_epoch.holder_id, new_epoch.token_id),
        (REVOKED, old_epoch.holder_id, old_epoch.token_id),
        (BAD_TAG, 0, 0),  # not authentic: nobody is named
    ]
    raised = [e for e in state.entries if e.event == EVENT_EPOCH_RAISED]
    assert [(e.arg, e.token_id) for e in raised] == [(1, new_epoch.token_id)]
    deny_set = [e for e in state.entries if e.event == EVENT_COMMAND and e.op == CMD_DENY_SET]
    assert [(e.status, e.arg) for e in deny_set] == [(OK, 1)]  # version 1

    # The deny-list is in flash: after a power cut the holder is still refused.
    boots = lock.board.boots
    lock.board.power_cut(0.05)
    await asyncio.to_thread(lock.board.wait_booted, after=boots)
    await asyncio.to_thread(wait_until, lock.ready, 10.0, what="the lock up again")
    async with lock.connect() as link:
        assert (await link.set_time()).ok  # the RTC died with the power
        assert (await link.request(denied)).status == REVOKED


async def _refused_unread(lock: Lock) -> None:
    async with lock.connect(ask=False) as link:
        status = await link.status()
        assert status["text"].startswith("unprovisioned"), status["text"]
        # Not even a challenge: a NOTICE saying why, and the lock hangs up.
        await link.client.write_gatt_char(HANDSHAKE, CHALLENGE_REQUEST, response=True)
        assert await link.queue.next() == Notice(MSG_CHALLENGE_REQUEST, UNPROVISIONED).encode()
        with pytest.raises((BleakError, BumbleDisconnectedError, LinkLost)):
            await link.request(lock.issue(lock_id=LOCK_ID), RIGHT_UNLOCK)
    assert lock.bolt_state() == "locked"


async def test_an_unprovisioned_lock_opens_for_no_one(air: Air, make_board: MakeBoard) -> None:
    lock = await start_lock(air, make_board, provisioned=False, lock_id=0)
    async with lock.connect(ask=False) as link:
        status = await link.status()
    assert "unprovisioned (no identity)" in status["text"], status["text"]
    await _refused_unread(lock)


async def test_all_zero_keys_are_not_keys(air: Air, make_board: MakeBoard) -> None:
    zeros = "00" * 32
    doc = {"version": 1, "lock_id": 1017, "site_id": "x"}
    doc.update(token_key=zeros, edge_key=zeros, audit_key=zeros)
    lock = await start_lock(
        air,
        make_board,
        provisioned=False,
        lock_id=0,
        extra_files={"/lock/identity.json": json.dumps(doc).encode()},
    )
    async with lock.connect(ask=False) as link:
        status = await link.status()
    assert "unprovisioned (bad keys: bad_value)" in status["text"], status["text"]
    await _refused_unread(lock)
