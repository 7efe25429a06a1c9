"""Pairing and bonding between boards, over the model's SMP: firmware written only
against MicroPython's documented `bluetooth` API (`ble_firmware/bond_*.py`) keeps its
bonds in its own flash through _IRQ_GET_SECRET / _IRQ_SET_SECRET, as aioble does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from ble_support import ConsoleWatch
from bleak import BleakClient
from bleak.exc import BleakGATTProtocolError, BleakGATTProtocolErrorCode

from hil_tests.testing.fixtures import MakeBoard
from kommune.edge.ble import BleakClientBumble, forget_cached_services
from kommune.hil.harness import Board
from kommune.hil.radio import Air

pytestmark = pytest.mark.micropython

FIRMWARE = Path(__file__).parent / "ble_firmware"
PERIPHERAL_ADDRESS = "F0:4B:00:00:00:61"
SERVICE = "4b4d6000-6b6f-6d6d-756e-652d65646765"
SECRET = "4b4d6001-6b6f-6d6d-756e-652d65646765"
PASSKEY = 246810
DISPLAY_ONLY, DISPLAY_YESNO, KEYBOARD_ONLY, NO_INPUT_OUTPUT = 0, 1, 2, 3


def firmware(program: str, *, io: int, mitm: bool, le_secure: bool) -> dict[str, bytes]:
    params = (
        f"NAME = b'lock-61'\n"
        f"PERIPHERAL = {bytes.fromhex(PERIPHERAL_ADDRESS.replace(':', ''))!r}\n"
        f"SERVICE = {SERVICE!r}\nSECRET = {SECRET!r}\n"
        f"IO = {io}\nMITM = {mitm}\nLE_SECURE = {le_secure}\nPASSKEY = {PASSKEY}\n"
    )
    return {
        "main.py": (FIRMWARE / program).read_bytes(),
        "bond_store.py": (FIRMWARE / "bond_store.py").read_bytes(),
        "params.py": params.encode(),
    }


async def boards(
    air: Air, make_board: MakeBoard, *, io: tuple[int, int], mitm: bool, le_secure: bool
) -> tuple[Board, Board]:
    """(peripheral, central), the central to be started by the caller."""
    peripheral = await asyncio.to_thread(
        make_board,
        "peripheral",
        files=firmware("bond_peripheral.py", io=io[0], mitm=mitm, le_secure=le_secure),
        radio=await air.add_device("peripheral", PERIPHERAL_ADDRESS),
    )
    central = await asyncio.to_thread(
        make_board,
        "central",
        files=firmware("bond_central.py", io=io[1], mitm=mitm, le_secure=le_secure),
        radio=await air.add_device("central"),
        power_on=False,
    )
    return peripheral, central


async def power_cycle(*boards: Board) -> None:
    """Cut both boards' power; they stay off until power_on()."""
    for board in boards:
        await asyncio.to_thread(board.power_cut, None)
        await asyncio.to_thread(board.wait_state, "off")


def bonds(board: Board) -> dict[str, str]:
    """What the firmware keeps in its flash (read from the image, the board off)."""
    stored: dict[str, str] = json.loads(board.read_file("secrets.json"))
    return stored


async def test_a_just_works_bond_outlives_a_power_cut_of_both_boards(
    air: Air, make_board: MakeBoard
) -> None:
    peripheral, central = await boards(
        air, make_board, io=(NO_INPUT_OUTPUT, NO_INPUT_OUTPUT), mitm=False, le_secure=True
    )
    async with ConsoleWatch(peripheral) as p_console, ConsoleWatch(central) as c_console:
        # First boot: no secrets; the stack makes its IRK and has the firmware keep it.
        await p_console.expect("secrets 0\nstored 10\nadvertising\n")
        await asyncio.to_thread(central.power_on)
        await c_console.expect("secrets 0\nstored 10\nconnected 1\n")
        # Not encrypted and not bonded: Insufficient Authentication (0x100 + 0x05).
        await c_console.expect("read None 261\n")
        # Just Works over LE Secure Connections: both store the other's keys, then
        # report the link encrypted, not MITM-authenticated, bonded, 16-byte key.
        await c_console.expect("stored 2\nencryption 1 0 1 16\n")
        await p_console.expect("stored 2\nencryption 1 0 1 16\n")
        await c_console.expect("read b'the secret' 0\ndone\n")

        await power_cycle(peripheral, central)
        for board in (peripheral, central):
            stored = bonds(board)
            assert sorted(name.split(":")[0] for name in stored) == ["10", "2"]

        await asyncio.to_thread(peripheral.power_on)
        await p_console.expect("secrets 2\nadvertising\n")
        await asyncio.to_thread(central.power_on)
        await c_console.expect("secrets 2\nconnected 1\n")
        # Bonded but not encrypted yet: Insufficient Encryption (0x100 + 0x0f).
        await c_console.expect("read None 271\n")
        # gap_pair re-encrypts with the stored key: no pairing, nothing stored anew.
        again = await c_console.expect("encryption 1 0 1 16\n")
        await c_console.expect("read b'the secret' 0\ndone\n")
        peripheral_again = await p_console.expect("encryption 1 0 1 16\n")
    for text in (again, peripheral_again):
        assert "stored" not in text and "passkey" not in text, text


@pytest.mark.parametrize(
    ("io", "le_secure", "actions"),
    [
        # The peripheral shows the passkey, the central's user types it.
        ((DISPLAY_ONLY, KEYBOARD_ONLY), False, ("passkey 3 0\n", "passkey 2 0\n")),
        ((DISPLAY_ONLY, KEYBOARD_ONLY), True, ("passkey 3 0\n", "passkey 2 0\n")),
        # Both show a number and their users confirm it is the same.
        ((DISPLAY_YESNO, DISPLAY_YESNO), True, ("passkey 4 ", "passkey 4 ")),
    ],
    ids=["passkey-entry-legacy", "passkey-entry-le-secure", "numeric-comparison"],
)
async def test_mitm_pairing_asks_the_firmware_for_the_passkey(
    air: Air,
    make_board: MakeBoard,
    io: tuple[int, int],
    le_secure: bool,
    actions: tuple[str, str],
) -> None:
    peripheral, central = await boards(air, make_board, io=io, mitm=True, le_secure=le_secure)
    async with ConsoleWatch(peripheral) as p_console, ConsoleWatch(central) as c_console:
        await p_console.expect("advertising\n")
        await asyncio.to_thread(central.power_on)
        await c_console.expect("read None 261\n")
        await p_console.expect(actions[0])
        await c_console.expect(actions[1])
        if actions[0] == "passkey 4 ":  # the same 6-digit number on both
            shown = (await p_console.expect("\n"), await c_console.expect("\n"))
            assert shown[0] == shown[1] and 0 <= int(shown[0]) <= 999_999
        # Encrypted, authenticated (MITM-protected), bonded.
        await c_console.expect("encryption 1 1 1 16\n")
        await p_console.expect("encryption 1 1 1 16\n")
        await c_console.expect("read b'the secret' 0\ndone\n")


async def test_a_phone_cannot_read_an_encrypted_characteristic_without_pairing(
    air: Air, make_board: MakeBoard
) -> None:
    forget_cached_services(PERIPHERAL_ADDRESS)
    peripheral, _ = await boards(
        air, make_board, io=(NO_INPUT_OUTPUT, NO_INPUT_OUTPUT), mitm=False, le_secure=True
    )
    phone = await air.add_device("phone")
    async with ConsoleWatch(peripheral) as p_console:
        await p_console.expect("advertising\n")
        async with BleakClient(
            PERIPHERAL_ADDRESS, backend=BleakClientBumble, transport=phone.transport, timeout=5
        ) as client:
            with pytest.raises(BleakGATTProtocolError) as refused:
                await client.read_gatt_char(SECRET)
            assert refused.value.code == BleakGATTProtocolErrorCode.INSUFFICIENT_AUTHENTICATION
    forget_cached_services(PERIPHERAL_ADDRESS)
