"""The lock firmware on an emulated esp32-lock board, opened by a phone over the virtual
radio: the edge sets the lock's clock, a care worker's token opens the door inside its
window, the bolt model reaches its unlocked end, and the lock throws the bolt again."""

from __future__ import annotations

import asyncio

import pytest
from lock_rig import Lock, start_lock

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_BOOT, EVENT_COMMAND, EVENT_DOOR
from kommune.protocols.lock_wire import OK, RIGHT_UNLOCK

pytestmark = pytest.mark.micropython


@pytest.fixture
async def lock(air: Air, make_board: MakeBoard) -> Lock:
    return await start_lock(air, make_board)


async def test_opens_inside_the_window_and_relocks(lock: Lock) -> None:
    async with lock.connect() as link:
        # Subscribing asked for the first challenge in the same round trip.
        assert (await link.set_time()).ok
        assert link.round_trips == 2  # subscription (+ CHALLENGE_REQUEST), time set
        status = await link.status()
        assert status["time"] == "ok" and status["bolt"] == "locked", status["text"]
        issued = lock.issue()
        reply = await link.request(issued, RIGHT_UNLOCK)
        assert reply.ok, reply
        assert link.round_trips == 3  # the next challenge came with the last answer
        # The RESULT came after the unlocked end switch closed.
        assert lock.bolt_state() == "unlocked"
    # Nobody opens the door: the bolt is thrown again after relock_ms.
    await asyncio.to_thread(
        wait_until, lambda: lock.bolt_state() == "locked", 5.0, what="relock after the time"
    )
    # The firmware commits the bolt's arrival right after its end switch closed.
    await asyncio.to_thread(
        wait_until,
        lambda: lock.flash_state().entries[-1].arg == 2,
        5.0,
        what="the relock in the audit log",
    )
    entries = lock.flash_state().entries
    events = [(e.event, e.status, e.arg) for e in entries]
    assert events[0] == (EVENT_BOOT, OK, 1)  # power on
    assert (EVENT_COMMAND, OK, entries[1].arg) == events[1]
    access = entries[2]
    assert (access.event, access.status, access.holder_id, access.token_id) == (
        EVENT_ACCESS,
        OK,
        issued.holder_id,
        issued.token_id,
    )
    assert events[3:] == [(EVENT_DOOR, OK, 1), (EVENT_DOOR, OK, 2)]  # unlocked, locked
