"""Power cuts and the lock: the flash state (epoch, needs_time, audit log) is valid after a
cut at any flash page write of a commit, no committed entry is ever lost; a cut at any
step of a BLE handshake leaves the door locked after the reboot, the audit chain valid,
and every opening a phone was told about in the log."""

from __future__ import annotations

import asyncio
import re

import pytest
from bleak.exc import BleakError
from lock_rig import (
    HANDSHAKE,
    LOCK_ID,
    LinkLost,
    Lock,
    firmware_files,
    identity_file,
    read_flash_state,
    start_lock,
)

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.waiting import wait_until
from kommune.edge import keys
from kommune.edge.ble import BumbleDisconnectedError
from kommune.hil.harness import Board
from kommune.hil.radio import Air
from kommune.protocols.audit import EVENT_ACCESS, EVENT_BOOT, EVENT_LOST
from kommune.protocols.lock_client import HolderSession
from kommune.protocols.lock_wire import OK, RIGHT_UNLOCK

pytestmark = pytest.mark.micropython

STEP = 8  # flash page writes between two cut points in a visit
CAPACITY = 8  # a small log: the commits below overflow it (lost markers) within a few saves

# Runs instead of the lock's main.py: the lock's own store commits one audit entry after
# another (successes: the log overflows into lost markers), saying each commit on the
# console. The epoch goes up with each commit, needs_time flips.
STORE_PROGRAM = """
import identity
from kommune.protocols.audit import AuditLog
from store import LockStore
ident, why = identity.load()
st = LockStore(ident.audit_key, ident.lock_id, %(capacity)d)
saved = st.load()
log = AuditLog(ident.audit_key, ident.lock_id, capacity=%(capacity)d, next_seq=saved.next_seq,
               last_hash=saved.last_hash, last_time_s=saved.last_time_s)
log.restore(saved.entries)
print("loaded", saved.next_seq, saved.epoch, saved.dropped)
for i in range(%(commits)d):
    log.append(1800000000 + saved.next_seq + i, 5, 0, "ok", arg=i)
    st.save(log, saved.epoch + i + 1, bool(i %% 2))
    print("saved", log.next_seq - 1, saved.epoch + i + 1)
print("done")
"""


def _this_boot(board: Board) -> str:
    return board.console_output().rsplit("rst:", 1)[-1]


def test_a_cut_at_any_flash_write_of_a_commit_leaves_a_valid_state(make_board: MakeBoard) -> None:
    lock_keys = keys.derive_lock_keys(keys.new_site_key(), LOCK_ID)
    files = dict(firmware_files())
    files["/main.py"] = (STORE_PROGRAM % {"capacity": CAPACITY, "commits": 3}).encode()
    files["/lock/identity.json"] = identity_file(LOCK_ID, lock_keys)
    board = make_board("store", "esp32", files=files)
    wait_until(lambda: "done" in _this_boot(board), 10.0, what="the first run")
    committed = read_flash_state(board, lock_keys.audit_key, LOCK_ID, CAPACITY)
    assert committed.next_seq == 4

    # Cut at the 1st, 2nd, 3rd, ... page write of a boot that loads and makes 3 commits,
    # until a boot gets through them all: every write of every commit is a cut point.
    cuts = 0
    for write in range(1, 400):
        board.power_cut(None)
        board.wait_state("off")
        board.arm_power_cut(write)
        board.power_on()
        wait_until(
            lambda: board.state == "off" or "done" in _this_boot(board),
            10.0,
            what="the armed cut, or the end of the program",
        )
        out = _this_boot(board)
        loaded = re.search(r"loaded (\d+) (\d+) (\d+)", out)
        assert loaded is not None, out  # every boot loads the state the last cut left
        assert loaded.group(3) == "0", out  # no entry failed its checks
        said = [(int(s), int(e)) for s, e in re.findall(r"saved (\d+) (\d+)", out)]
        state = read_flash_state(board, lock_keys.audit_key, LOCK_ID, CAPACITY)
        # Nothing committed is lost; at most the commit in flight is missing.
        last_said = said[-1][0] if said else int(loaded.group(1)) - 1
        assert state.next_seq - 1 in (last_said, last_said + 1), (write, said, state.next_seq)
        if said and state.next_seq - 1 == last_said:
            assert state.epoch == said[-1][1]
        # The log holds CAPACITY entries at most, the oldest a lost marker once it overflowed.
        assert len(state.entries) <= CAPACITY
        if state.next_seq - 1 > CAPACITY:
            assert state.entries[0].event == EVENT_LOST
        if "done" in out:
            break
        cuts += 1
    print(f"\n{cuts} cut points, each left a valid state")
    assert 20 <= cuts < 399


async def _cut_and_reboot(lock: Lock) -> None:
    boots = lock.board.boots
    lock.board.power_cut(0.05)
    await asyncio.to_thread(lock.board.wait_booted, after=boots)
    await asyncio.to_thread(wait_until, lock.ready, 10.0, what="the lock's firmware up")


async def test_a_cut_at_each_step_of_a_handshake_leaves_the_door_locked(
    air: Air, make_board: MakeBoard
) -> None:
    lock = await start_lock(air, make_board, config={"relock_ms": 60_000})
    told_ok: list[int] = []  # token ids the phone was told opened the door
    for step in ("after challenge", "after request", "after result", "door open"):
        issued = lock.issue()
        try:
            async with lock.connect() as link:
                assert (await link.set_time()).ok  # the RTC died with the last cut
                if step == "after challenge":
                    await link.challenge()
                    await _cut_and_reboot(lock)
                elif step == "after request":
                    holder = HolderSession(issued.token, issued.session_key, LOCK_ID)
                    message = holder.request(await link.challenge(), RIGHT_UNLOCK, b"\x11" * 16)
                    await link.client.write_gatt_char(HANDSHAKE, message, response=True)
                    await _cut_and_reboot(lock)  # while the lock decides and commits
                else:
                    reply = await link.request(issued, RIGHT_UNLOCK)
                    assert reply.ok
                    told_ok.append(issued.token_id)
                    if step == "door open":
                        assert lock.board.call(lock.bolt.open_door)
                    await _cut_and_reboot(lock)
        except (BleakError, BumbleDisconnectedError, LinkLost):
            pass  # the lock went away mid-connection, as it should
        if step == "door open":
            # The bolt is not thrown into an open door; it is once the door shuts.
            assert lock.bolt_state() == "unlocked"
            assert lock.board.call(lock.bolt.close_door)
        await asyncio.to_thread(
            wait_until, lambda: lock.bolt_state() == "locked", 5.0, what=f"locked ({step})"
        )
        state = lock.flash_state()  # valid: CRC, MACs, chain
        opened = [e.token_id for e in state.entries if e.event == EVENT_ACCESS and e.status == OK]
        assert set(told_ok) <= set(opened), (step, told_ok, opened)
        assert state.entries[-1].event in (EVENT_BOOT, 5)  # booted (and maybe a door event)


async def test_a_cut_at_flash_writes_all_through_a_visit(air: Air, make_board: MakeBoard) -> None:
    """The power fails at the n-th flash page write after a boot, for n = STEP, 2 STEP, ...:
    in the boot's commit, the edge's time set, the opening's commit, the bolt's event --
    until a whole visit gets through. After each cut: door locked, log valid, and every
    opening the phone was told of is in it."""
    lock = await start_lock(air, make_board, config={"relock_ms": 60_000})
    told_ok: list[int] = []
    cut_in: list[str] = []
    for write in range(STEP, 2000, STEP):
        boots = lock.board.boots
        lock.board.arm_power_cut(write, 0.05)  # for the next boot; on again after 50 ms
        lock.board.power_cut(0.05)
        await asyncio.to_thread(lock.board.wait_booted, after=boots)
        await asyncio.to_thread(wait_until, lock.ready, 10.0, what="the lock up")
        if lock.board.boots > boots + 1:
            cut_in.append("boot")
        else:
            phase = "time set"
            issued = lock.issue()
            cut = lock.board.boots
            try:
                async with lock.connect() as link:
                    assert (await link.set_time()).ok
                    phase = "opening"
                    reply = await link.request(issued, RIGHT_UNLOCK)
                    assert reply.ok
                    told_ok.append(issued.token_id)
            except (BleakError, BumbleDisconnectedError, LinkLost):
                pass
            if lock.board.boots == cut:
                break  # the whole visit got through: every phase was cut once
            cut_in.append(phase)
            await asyncio.to_thread(wait_until, lock.ready, 10.0, what="the lock up again")
        await asyncio.to_thread(
            wait_until, lambda: lock.bolt_state() == "locked", 5.0, what=f"locked ({write})"
        )
        state = lock.flash_state()
        opened = [e.token_id for e in state.entries if e.event == EVENT_ACCESS and e.status == OK]
        assert set(told_ok) <= set(opened), (write, told_ok, opened)
    print(f"\ncuts at every {STEP}th write, landing in:", cut_in)
    assert {"boot", "time set", "opening"} <= set(cut_in)
