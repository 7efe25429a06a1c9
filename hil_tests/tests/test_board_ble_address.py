"""The board's own address: `config(addr_mode=)` 0..3 and `config("mac")`, as MicroPython
on an ESP32 (NimBLE) has them, seen from another board that scans and connects.
Model level (CPython plays the firmware; its bond store is `SecretStore`).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from ble_support import SecretStore
from bumble import hci, smp

from kommune.hil.radio import running_air
from kommune.hil.radio.board_ble import BoardBle
from kommune.hil.radio.board_ble_events import (
    IRQ_CENTRAL_CONNECT,
    IRQ_CENTRAL_DISCONNECT,
    IRQ_ENCRYPTION_UPDATE,
    IRQ_PERIPHERAL_CONNECT,
    IRQ_PERIPHERAL_DISCONNECT,
    IRQ_SCAN_DONE,
    IRQ_SCAN_RESULT,
    BleEvent,
)

PERIPHERAL = "F0:4B:00:00:00:71"
PUBLIC = bytes.fromhex(PERIPHERAL.replace(":", ""))
ADV = b"\x02\x01\x06\x06\x09lock7"
SEC_TYPE_OUR_IRK = 10


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[BleEvent] = asyncio.Queue()

    def __call__(self, event: BleEvent) -> None:
        self.queue.put_nowait(event)

    async def next(self, code: int) -> BleEvent:
        """The next event with this code (others are passed over)."""
        async with asyncio.timeout(5):
            while (event := await self.queue.get()).code != code:
                pass
        return event


@dataclass
class Boards:
    peripheral: BoardBle
    central: BoardBle
    p_events: Events
    c_events: Events
    p_store: SecretStore

    async def seen_as(self) -> tuple[int, bytes]:
        """(addr_type, addr) the peripheral's advertisements come from."""
        await self.peripheral.gap_advertise(20_000, ADV)
        await self.central.gap_scan(0)
        while (result := await self.c_events.next(IRQ_SCAN_RESULT)).data[4] != ADV:
            pass
        await self.central.gap_scan(None)
        await self.c_events.next(IRQ_SCAN_DONE)
        addr_type, addr = result.data[:2]
        assert isinstance(addr_type, int) and isinstance(addr, bytes)
        return addr_type, addr


@pytest.fixture
async def boards() -> AsyncIterator[Boards]:
    async with running_air(seed=11) as air:
        p_radio = await air.add_device("peripheral", PERIPHERAL)
        c_radio = await air.add_device("central")
        p_events, c_events, p_store = Events(), Events(), SecretStore()
        async with (
            BoardBle(p_radio.transport, p_radio.address, on_event=p_events, ask=p_store) as p,
            BoardBle(c_radio.transport, c_radio.address, on_event=c_events, ask=SecretStore()) as c,
        ):
            for ble in (p, c):
                await ble.active(True)
            yield Boards(p, c, p_events, c_events, p_store)


def kind(addr: bytes) -> int:
    """The two most significant bits: 0b11 static, 0b01 resolvable, 0b00 not resolvable."""
    return addr[0] >> 6


async def test_public_and_random_static(boards: Boards) -> None:
    assert boards.peripheral.config_get("mac") == (0, PUBLIC)  # an ESP32 starts public
    assert await boards.seen_as() == (0, PUBLIC)

    boards.peripheral.config_set(addr_mode=1)
    addr_type, static = boards.peripheral.config_get("mac")  # type: ignore[misc]
    assert addr_type == 1 and kind(static) == 0b11
    assert await boards.seen_as() == (1, static)
    # A central connects to it by that address.
    await boards.central.gap_connect(1, static)
    await boards.c_events.next(IRQ_PERIPHERAL_CONNECT)
    await boards.p_events.next(IRQ_CENTRAL_CONNECT)
    boards.central.gap_disconnect(1)
    await boards.c_events.next(IRQ_PERIPHERAL_DISCONNECT)
    await boards.p_events.next(IRQ_CENTRAL_DISCONNECT)

    boards.peripheral.config_set(addr_mode=1)  # NimBLE makes a new one each time
    assert boards.peripheral.config_get("mac") != (1, static)
    boards.peripheral.config_set(addr_mode=7)  # not a mode: ignored, as MicroPython does
    assert boards.peripheral.config_get("mac")[0] == 1  # type: ignore[index]

    await boards.peripheral.active(True)  # a restart of the stack: public again
    assert boards.peripheral.config_get("mac") == (0, PUBLIC)
    await boards.peripheral.active(False)
    with pytest.raises(OSError) as e:
        boards.peripheral.config_set(addr_mode=1)
    assert e.value.errno == errno.ENODEV


async def test_non_resolvable_private(boards: Boards) -> None:
    boards.peripheral.config_set(addr_mode=3)
    addr_type, nrpa = boards.peripheral.config_get("mac")  # type: ignore[misc]
    assert addr_type == 1 and kind(nrpa) == 0b00
    assert await boards.seen_as() == (1, nrpa)


async def test_resolvable_private_with_the_public_identity(boards: Boards) -> None:
    boards.peripheral.config_set(addr_mode=2)
    with pytest.raises(OSError) as e:
        boards.peripheral.config_get("mac")  # NimBLE cannot tell the RPA in use
    assert e.value.errno == errno.EINVAL
    addr_type, rpa = await boards.seen_as()
    assert addr_type == 1 and kind(rpa) == 0b01
    # It resolves with the IRK the firmware keeps for the board to its public address.
    irk = boards.p_store.secrets[(SEC_TYPE_OUR_IRK, b"irk")]
    identity = hci.Address(PUBLIC[::-1], hci.Address.PUBLIC_DEVICE_ADDRESS)
    resolved = smp.AddressResolver([(irk, identity)]).resolve(
        hci.Address(rpa[::-1], hci.Address.RANDOM_DEVICE_ADDRESS)
    )
    assert resolved is not None and bytes(resolved)[::-1] == PUBLIC

    # A central that bonds learns the identity; later it connects to the identity
    # address and finds the board behind its RPA.
    for ble in (boards.peripheral, boards.central):
        ble.config_set(bond=True, le_secure=True)
    await boards.central.gap_connect(1, rpa)
    conn = (await boards.c_events.next(IRQ_PERIPHERAL_CONNECT)).data[0]
    assert isinstance(conn, int)
    boards.central.gap_pair(conn)
    assert (await boards.c_events.next(IRQ_ENCRYPTION_UPDATE)).data[1:4] == (1, 0, 1)
    boards.central.gap_disconnect(conn)
    await boards.c_events.next(IRQ_PERIPHERAL_DISCONNECT)
    await boards.peripheral.gap_advertise(20_000, ADV)
    await boards.central.gap_connect(0, PUBLIC)
    connected = await boards.c_events.next(IRQ_PERIPHERAL_CONNECT)
    assert connected.data[1:] == (0, PUBLIC)  # NimBLE reports the peer's identity
