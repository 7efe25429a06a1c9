"""The board radio goes down cleanly, whatever it was doing: every close step runs, no
task is left pending, no error is left unseen, and the model's record of what the
controller does (advertising) stays true when an operation is cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from ble_support import ConsoleWatch, loop_errors

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.radio import Air, AirDevice, running_air
from kommune.hil.radio.board_ble import BoardBle

ADV = bytes([2, 0x01, 0x06, 5, 0x09]) + b"lock"


@pytest.fixture
async def radio() -> AsyncIterator[tuple[Air, AirDevice]]:
    async with running_air(seed=3) as air:
        yield air, await air.add_device("board")


async def test_an_advertise_cut_short_anywhere_leaves_a_true_record(
    radio: tuple[Air, AirDevice],
) -> None:
    _, device = radio
    async with loop_errors() as errors:
        ble = BoardBle(device.transport, device.address)
        await ble.active(True)
        cuts = 0
        for steps in range(10_000):
            call = asyncio.ensure_future(ble.gap_advertise(20_000, ADV))
            for _ in range(steps):  # let it get this far, then cancel it
                await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            if not call.cancelled():
                break  # it finished before the cut: every point in it was tried
            cuts += 1
            # The record is the controller's: stopping finds whatever is there.
            await ble.gap_advertise(None)
            assert not ble.advertising
        assert 5 < cuts < 10_000  # the cuts fell inside the operation, and it got through
        await ble.gap_advertise(20_000, ADV)
        assert ble.advertising
        await ble.close()
        assert not ble.is_active
    assert errors == []


async def test_the_radio_closes_after_its_transport_is_gone(
    radio: tuple[Air, AirDevice],
) -> None:
    air, device = radio
    async with loop_errors() as errors:
        ble = BoardBle(device.transport, device.address)
        await ble.active(True)
        await ble.gap_advertise(20_000, ADV)
        await air.remove_device("board")  # the air forgets it: its HCI link drops
        async with asyncio.timeout(5):  # nothing waits for a controller that is gone
            await ble.close()
        assert not ble.is_active
    assert errors == []


FIRMWARE = b"""
import bluetooth
ble = bluetooth.BLE()
ble.active(True)
n = 0
while True:
    try:
        ble.gap_advertise(20_000, b"\\x02\\x01\\x06")
        ble.gap_advertise(None)
    except OSError as e:
        print("refused", e.errno, n > 0)
        break
    n += 1
    if n == 1:
        print("advertising")
"""


@pytest.mark.micropython
async def test_the_bridge_closes_while_the_firmware_keeps_calling(
    air: Air, make_board: MakeBoard
) -> None:
    radio = await air.add_device("busy")
    board = await asyncio.to_thread(make_board, "busy", files={"main.py": FIRMWARE}, radio=radio)
    bridge = board.ble
    assert bridge is not None
    rig_loop = board.emulated.loop
    async with ConsoleWatch(board) as console, loop_errors(rig_loop) as errors:
        await console.expect("advertising")
        # Close the radio under the running firmware, on the rig's loop (as the rig does).
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(bridge.aclose(), rig_loop))
        # The VM is told the radio is going away (ENODEV), not left waiting.
        await console.expect("refused 19 True")
    assert errors == []
