"""Board to board: a central board finds a peripheral board by an active scan, connects,
discovers, reads, writes, subscribes and is notified and indicated -- both boards run
firmware written only against MicroPython's documented `bluetooth` API
(`ble_firmware/`), as it would run on two ESP32s.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ble_support import ConsoleWatch

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.radio import Air
from kommune.hil.radio.board_ble import BoardBle

pytestmark = pytest.mark.micropython

FIRMWARE = Path(__file__).parent / "ble_firmware"
PERIPHERAL_ADDRESS = "F0:4B:00:00:00:41"
PARAMS = b"""
NAME = b"lock-41"
SERVICE = "4b4d4000-6b6f-6d6d-756e-652d65646765"
COMMAND = "4b4d4001-6b6f-6d6d-756e-652d65646765"
STATUS = "4b4d4002-6b6f-6d6d-756e-652d65646765"
AUDIT = "4b4d4003-6b6f-6d6d-756e-652d65646765"
SECRET = "4b4d4004-6b6f-6d6d-756e-652d65646765"
SECURE = 0x0200  # FLAG_READ_ENCRYPTED
"""


def files(program: str) -> dict[str, bytes]:
    return {"main.py": (FIRMWARE / program).read_bytes(), "params.py": PARAMS}


async def test_a_central_board_uses_a_peripheral_board(air: Air, make_board: MakeBoard) -> None:
    peripheral_radio = await air.add_device("peripheral", PERIPHERAL_ADDRESS)
    central_radio = await air.add_device("central")
    peripheral = await asyncio.to_thread(
        make_board, "peripheral", files=files("peripheral.py"), radio=peripheral_radio
    )
    async with ConsoleWatch(peripheral) as p_console:
        await p_console.expect("advertising")
        central = await asyncio.to_thread(
            make_board, "central", files=files("central.py"), radio=central_radio
        )
        async with ConsoleWatch(central) as c_console:
            # Found by name in the advertisement, with the scan response of an active scan.
            await c_console.expect("found 0 b'\\xf0K\\x00\\x00\\x00A' -50 response True\n")
            await c_console.expect("connected 1 True\n")
            await p_console.expect("central connected 1\n")
            # Both ends see the exchanged MTU: min(256, 256).
            await c_console.expect("mtu 256\n")
            await p_console.expect("mtu 256\n")
            # GAP, GATT and the lock's service; the lock's 4 characteristics (status:
            # READ | NOTIFY), then the status's CCCD (value + 1) and user description.
            await c_console.expect("services 3 0\n")
            await c_console.expect("characteristics 4 0 status props 18\n")
            timing = await c_console.expect(" ms\n")
            await c_console.expect("descriptors [1, 2] 0\n")
            await c_console.expect("label b'lock state'\n")
            await c_console.expect("read b'closed' 0\n")
            await c_console.expect("subscribed 0\n")
            await c_console.expect("written 0\n")
            await p_console.expect("command b'open'\n")
            await c_console.expect("notified True b'ok:OPEN'\n")
            await c_console.expect("indicated True b'entry 1'\n")
            await p_console.expect("indicated 0\n")  # the central's stack confirmed it
            # Statuses as NimBLE gives them: ATT errors as 0x100 + the error code.
            await c_console.expect("refused read 258\n")  # Read Not Permitted
            await c_console.expect("secret read 261\n")  # Insufficient Authentication
            # An address kept past its IRQ is not the address any more.
            await c_console.expect("kept addr wiped True\n")
            await c_console.expect("disconnect True\ndisconnected True\nagain False\ndone\n")
            await p_console.expect("central disconnected 1\n")
    discovered_ms = int(timing.rsplit(" ", 1)[-1])
    assert 0 < discovered_ms < 5000, timing
    print(f"scan -> connect -> discover: {discovered_ms} ms")


SCANNER = b"""
import bluetooth, time
calls = []
def irq(event, data):
    calls.append(event)
    if event == 5:  # _IRQ_SCAN_RESULT
        raise ValueError("firmware bug")
ble = bluetooth.BLE()
ble.irq(irq)
ble.active(True)
ble.gap_scan(300, 30_000, 30_000)
time.sleep_ms(600)
print("handler calls", calls)
"""


async def test_an_irq_handler_that_raises_is_reported_and_unregistered(
    air: Air, make_board: MakeBoard
) -> None:
    advertiser_radio = await air.add_device("advertiser")
    async with BoardBle(advertiser_radio.transport, advertiser_radio.address) as advertiser:
        await advertiser.active(True)
        await advertiser.gap_advertise(20_000, b"\x02\x01\x06")
        scanner = await asyncio.to_thread(
            make_board, "scanner", files={"main.py": SCANNER}, radio=await air.add_device("scanner")
        )
        async with ConsoleWatch(scanner) as console:
            # active(True) asks for the IRK (29) and, finding none, has a new one
            # stored (30), then asks for the peers' keys (29). Then, as on an ESP32,
            # the exception is printed and the handler is gone: no second scan
            # result, no _IRQ_SCAN_DONE, though the advertiser is heard all along.
            reported = await console.expect("handler calls [29, 30, 29, 5]\n")
    assert "Unhandled exception in IRQ callback handler" in reported
    assert "ValueError: firmware bug" in reported
