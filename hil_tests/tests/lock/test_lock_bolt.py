"""The lock and its mechanism: the door shuts and the bolt is thrown again; a door held
open keeps it back; a jammed bolt is a refusal that says so, the door stays locked,
and openings are refused until an admin request finds the mechanism working; the
battery level is in the status."""

from __future__ import annotations

import asyncio

import pytest
from lock_rig import Lock, start_lock

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_DOOR
from kommune.protocols.errors import MECHANISM_FAULT
from kommune.protocols.lock_wire import OK, RIGHT_ADMIN, RIGHT_UNLOCK

pytestmark = pytest.mark.micropython

UNLOCKED, LOCKED, DOOR_OPENED, DOOR_CLOSED, FAULT_CLEARED = 1, 2, 3, 4, 5
JAM_UNLOCKING = 16


@pytest.fixture
async def lock(air: Air, make_board: MakeBoard) -> Lock:
    # A long relock time: here the door, not the timer, throws the bolt.
    return await start_lock(air, make_board, config={"relock_ms": 60_000})


async def wait_bolt(lock: Lock, state: str, what: str) -> None:
    await asyncio.to_thread(wait_until, lambda: lock.bolt_state() == state, 5.0, what=what)


def door_events(lock: Lock) -> list[int]:
    return [e.arg for e in lock.flash_state().entries if e.event == EVENT_DOOR]


async def test_relocks_when_the_door_shuts_and_not_while_it_is_open(lock: Lock) -> None:
    bolt = lock.bolt
    async with lock.connect() as link:
        assert (await link.set_time()).ok
        assert (await link.request(lock.issue(), RIGHT_UNLOCK)).ok
        assert lock.board.call(bolt.open_door)
        lock.board.call(bolt.hold_door_open)
        assert lock.board.call(bolt.close_door) is False  # wedged
        status = await link.status_until(lambda s: s["door"] == "open", "the door seen open")
        assert status["bolt"] == "unlocked", status["text"]
        lock.board.call(bolt.hold_door_open, False)
        assert lock.board.call(bolt.close_door)
        await wait_bolt(lock, "locked", "relock after the door shut")
    await asyncio.to_thread(
        wait_until,
        lambda: door_events(lock) == [UNLOCKED, DOOR_OPENED, DOOR_CLOSED, LOCKED],
        5.0,
        what="the door's events in the audit log",
    )
    # The bolt was never thrown while the door stood open.
    door_shut_at = next(
        t for t, s in lock.board.call(lambda: list(bolt.history)) if s == "door closed"
    )
    thrown = [t for t, s in lock.board.call(lambda: list(bolt.history)) if s == "between"]
    assert thrown[-1] > door_shut_at


async def test_a_jammed_bolt_is_refused_and_the_door_stays_locked(lock: Lock) -> None:
    bolt = lock.bolt
    lock.board.call(bolt.jam)
    holder = lock.issue()
    admin = lock.issue(rights=RIGHT_ADMIN)
    async with lock.connect() as link:
        assert (await link.set_time()).ok
        # The verifier said yes, the unlocked end never came: an authentic refusal.
        reply = await link.request(holder, RIGHT_UNLOCK)
        assert (reply.status, reply.authenticated) == (MECHANISM_FAULT, True)
        assert lock.bolt_state() == "locked"
        status = await link.status()
        assert status["fault"] == "jam_unlocking", status["text"]
    assert lock.flash_state().fault == JAM_UNLOCKING
    # The fault outlives a power cut (a stalled motor may brown the board out).
    boots = lock.board.boots
    lock.board.power_cut(0.05)
    await asyncio.to_thread(lock.board.wait_booted, after=boots)
    await asyncio.to_thread(wait_until, lock.ready, 10.0, what="the lock up again")
    async with lock.connect() as link:
        assert (await link.status())["fault"] == "jam_unlocking"
        assert (await link.set_time()).ok  # the RTC died with the power
        # While the fault stands, openings are refused before the motor runs.
        runs = lock.board.call(lambda: bolt.motor_runs)
        assert (await link.request(holder, RIGHT_UNLOCK)).status == MECHANISM_FAULT
        assert lock.board.call(lambda: bolt.motor_runs) == runs
        # Fixed; an admin request tries the mechanism and clears the fault.
        lock.board.call(bolt.clear_jam)
        assert (await link.request(admin, RIGHT_ADMIN)).ok
    async with lock.connect() as link:
        assert (await link.request(holder, RIGHT_UNLOCK)).ok
        assert lock.bolt_state() == "unlocked"
    entries = lock.flash_state().entries
    access = [e.status for e in entries if e.event == EVENT_ACCESS]
    assert access == [OK, MECHANISM_FAULT, OK, OK]  # open (jammed), refused, admin, open
    assert door_events(lock) == [JAM_UNLOCKING, FAULT_CLEARED, UNLOCKED]


async def test_battery_level_in_the_status(lock: Lock) -> None:
    async with lock.connect() as link:
        status = await link.status()
        assert status["battery"].startswith(("59", "60")), status["text"]  # 6.0 V, fresh
        lock.board.call(lock.bolt.set_battery, 4.6)
        # The battery is measured every 2 s, and at every handshake.
        assert (await link.set_time()).ok
        status = await link.status()
    mv, _, percent = status["battery"].partition(",")
    assert 4500 <= int(mv.removesuffix("mV")) <= 4700 and percent == "12%", status["text"]
