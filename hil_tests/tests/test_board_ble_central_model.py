"""The board BLE model's observer, central and GATT client roles, driven from CPython:
two `BoardBle`s on one air play two boards' firmware (the VM end to end is in
test_board_ble_central.py). What is checked here is what MicroPython on NimBLE does
at the edges: IRQ tuples, statuses, errnos, and the order of events when a link drops.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kommune.hil.radio import Air, running_air
from kommune.hil.radio.board_ble import BoardBle
from kommune.hil.radio.board_ble_events import (
    IRQ_CENTRAL_CONNECT,
    IRQ_GATTC_CHARACTERISTIC_DONE,
    IRQ_GATTC_CHARACTERISTIC_RESULT,
    IRQ_GATTC_READ_DONE,
    IRQ_GATTC_SERVICE_DONE,
    IRQ_GATTC_SERVICE_RESULT,
    IRQ_MTU_EXCHANGED,
    IRQ_PERIPHERAL_CONNECT,
    IRQ_PERIPHERAL_DISCONNECT,
    IRQ_SCAN_DONE,
    IRQ_SCAN_RESULT,
    STATUS_NOT_CONNECTED,
    BleEvent,
)
from kommune.hil.radio.board_ble_gatt import FLAG_NOTIFY, FLAG_READ, FLAG_WRITE

PERIPHERAL = "F0:4B:00:00:00:51"
PERIPHERAL_ADDR = bytes.fromhex(PERIPHERAL.replace(":", ""))
SERVICE = "4b4d5000-6b6f-6d6d-756e-652d65646765"
STATUS = "4b4d5001-6b6f-6d6d-756e-652d65646765"
COMMAND = "4b4d5002-6b6f-6d6d-756e-652d65646765"
ADV = b"\x02\x01\x06\x06\x09lock5"
RESPONSE = b"\x03\xffKM"
ATT_READ_REQUEST = 0x0A


class Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[BleEvent] = asyncio.Queue()

    def __call__(self, event: BleEvent) -> None:
        self.queue.put_nowait(event)

    async def next(self, *codes: int, skip: tuple[int, ...] = ()) -> BleEvent:
        """The next event not in `skip`; it must be one of `codes`."""
        async with asyncio.timeout(5):
            while (event := await self.queue.get()).code in skip:
                pass
        assert event.code in codes, event
        return event

    async def until(self, code: int) -> list[BleEvent]:
        """Every event up to and including the next `code`."""
        seen = []
        async with asyncio.timeout(5):
            while True:
                seen.append(await self.queue.get())
                if seen[-1].code == code:
                    return seen


@dataclass
class Pair:
    air: Air
    peripheral: BoardBle
    central: BoardBle
    p_events: Events
    c_events: Events
    status: int = 0

    async def serve(self, *, connectable: bool = True, resp: bytes = RESPONSE) -> None:
        ((self.status, _command),) = self.peripheral.gatts_register_services(
            [(SERVICE, [(STATUS, FLAG_READ | FLAG_NOTIFY), (COMMAND, FLAG_WRITE)])]
        )
        self.peripheral.gatts_write(self.status, b"closed")
        await self.peripheral.gap_advertise(20_000, ADV, resp, connectable)

    async def connect(self) -> int:
        await self.central.gap_connect(0, PERIPHERAL_ADDR)
        event = await self.c_events.next(IRQ_PERIPHERAL_CONNECT)
        assert event.data[1:] == (0, PERIPHERAL_ADDR)
        await self.p_events.next(IRQ_CENTRAL_CONNECT)
        conn = event.data[0]
        assert isinstance(conn, int)
        return conn


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with running_air(seed=9) as air:
        p_radio = await air.add_device("peripheral", PERIPHERAL)
        c_radio = await air.add_device("central")
        p_events, c_events = Events(), Events()
        async with (
            BoardBle(p_radio.transport, p_radio.address, on_event=p_events) as peripheral,
            BoardBle(c_radio.transport, c_radio.address, on_event=c_events) as central,
        ):
            await peripheral.active(True)
            await central.active(True)
            yield Pair(air, peripheral, central, p_events, c_events)


async def test_scan_results_carry_the_pdu_type_and_an_active_scan_gets_responses(
    pair: Pair,
) -> None:
    await pair.serve()
    await pair.central.gap_scan(0, 30_000, 30_000, active=False)
    with pytest.raises(OSError) as e:
        await pair.central.gap_scan(0)  # one scan at a time
    assert e.value.errno == errno.EALREADY
    first = await pair.c_events.next(IRQ_SCAN_RESULT)
    assert first.data == (0, PERIPHERAL_ADDR, 0, -50, ADV)  # ADV_IND, the air's RSSI
    await pair.central.gap_scan(None)
    seen = await pair.c_events.until(IRQ_SCAN_DONE)
    assert all(e.data[2] == 0 for e in seen[:-1])  # passive: no scan response
    await pair.central.gap_scan(None)  # not scanning: nothing, no second SCAN_DONE

    # Active, for a duration: responses come as their own results (adv_type 4).
    await pair.central.gap_scan(200, 30_000, 30_000, active=True)
    seen = await pair.c_events.until(IRQ_SCAN_DONE)
    responses = [e for e in seen if e.code == IRQ_SCAN_RESULT and e.data[2] == 4]
    assert responses and responses[0].data == (0, PERIPHERAL_ADDR, 4, -50, RESPONSE)

    # Non-connectable: ADV_SCAN_IND with a scan response, ADV_NONCONN_IND without.
    for resp, adv_type in ((RESPONSE, 2), (b"", 3)):
        await pair.peripheral.gap_advertise(20_000, ADV, resp, connectable=False)
        await pair.central.gap_scan(0, 30_000, 30_000, active=True)
        while (await pair.c_events.next(IRQ_SCAN_RESULT)).data[2] not in (adv_type,):
            pass
        await pair.central.gap_scan(None)
        await pair.c_events.until(IRQ_SCAN_DONE)

    with pytest.raises(OSError) as e:
        await pair.central.gap_scan(0, 10_000, 20_000)  # window longer than interval
    assert e.value.errno == errno.EINVAL


async def test_a_connect_that_finds_no_connectable_peer_ends_as_nimble_reports_it(
    pair: Pair,
) -> None:
    await pair.serve(connectable=False)
    with pytest.raises(OSError) as e:
        await pair.central.gap_connect(None)  # nothing to cancel
    assert e.value.errno == errno.EALREADY
    await pair.central.gap_connect(0, PERIPHERAL_ADDR, 200)
    with pytest.raises(OSError) as e:
        await pair.central.gap_connect(0, PERIPHERAL_ADDR)  # one attempt at a time
    assert e.value.errno == errno.EALREADY
    # It advertises, but not connectably: the attempt times out.
    failed = await pair.c_events.next(IRQ_PERIPHERAL_DISCONNECT)
    assert failed.data == (0xFFFF, 0xFF, bytes(6))

    await pair.peripheral.gap_advertise(None)
    await pair.central.gap_connect(0, PERIPHERAL_ADDR, 0)  # 0: NimBLE's 30 s
    await pair.central.gap_connect(None)  # cancelled
    assert (await pair.c_events.next(IRQ_PERIPHERAL_DISCONNECT)).data == (0xFFFF, 0xFF, bytes(6))


async def test_connect_stops_a_scan_and_the_client_discovers_by_uuid(pair: Pair) -> None:
    await pair.serve()
    await pair.central.gap_scan(0, active=True)
    await pair.central.gap_connect(0, PERIPHERAL_ADDR)
    await pair.c_events.next(IRQ_SCAN_DONE, skip=(IRQ_SCAN_RESULT,))
    conn = (await pair.c_events.next(IRQ_PERIPHERAL_CONNECT, skip=(IRQ_SCAN_RESULT,))).data[0]
    assert isinstance(conn, int)

    service = bytes.fromhex(SERVICE.replace("-", ""))[::-1]  # bytes(bluetooth.UUID(...))
    pair.central.gattc_discover_services(conn, service)
    result = await pair.c_events.next(IRQ_GATTC_SERVICE_RESULT)
    assert result.data[3] == SERVICE
    assert (await pair.c_events.next(IRQ_GATTC_SERVICE_DONE)).data == (conn, 0)
    start, end = result.data[1:3]
    assert isinstance(start, int) and isinstance(end, int)

    command = bytes.fromhex(COMMAND.replace("-", ""))[::-1]
    pair.central.gattc_discover_characteristics(conn, start, end, command)
    with pytest.raises(OSError) as e:  # MicroPython keeps one characteristic discovery
        pair.central.gattc_discover_characteristics(conn, start, end)
    assert e.value.errno == errno.EBUSY
    found = await pair.c_events.next(IRQ_GATTC_CHARACTERISTIC_RESULT)
    # Its end handle is the service's end: it is the last characteristic.
    assert found.data == (conn, end, pair.status + 3, FLAG_WRITE, COMMAND)
    assert (await pair.c_events.next(IRQ_GATTC_CHARACTERISTIC_DONE)).data == (conn, 0)

    for call in (
        lambda: pair.central.gattc_read(99, 1),
        lambda: pair.central.gattc_exchange_mtu(99),
        lambda: pair.central.gattc_discover_services(99),
    ):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.ENOTCONN


async def test_the_peripheral_starts_the_mtu_exchange_once(pair: Pair) -> None:
    await pair.serve()
    conn = await pair.connect()
    p_conn = 1  # the peripheral's handle for the same link
    pair.peripheral.config_set(mtu=185)
    pair.peripheral.gattc_exchange_mtu(p_conn)
    assert (await pair.p_events.next(IRQ_MTU_EXCHANGED)).data == (p_conn, 185)
    assert (await pair.c_events.next(IRQ_MTU_EXCHANGED)).data == (conn, 185)
    for board, handle in ((pair.peripheral, p_conn), (pair.central, conn)):
        with pytest.raises(OSError) as e:
            board.gattc_exchange_mtu(handle)
        assert e.value.errno == errno.EALREADY


async def test_a_read_cut_off_by_the_link_fails_before_the_disconnect(pair: Pair) -> None:
    await pair.serve()
    conn = await pair.connect()
    await pair.air.arm_cut("central", "peripheral", att_opcode=ATT_READ_REQUEST)
    pair.central.gattc_read(conn, pair.status)
    done = await pair.c_events.next(IRQ_GATTC_READ_DONE)
    assert done.data == (conn, pair.status, STATUS_NOT_CONNECTED)
    dropped = await pair.c_events.next(IRQ_PERIPHERAL_DISCONNECT)
    assert dropped.data == (conn, 0, PERIPHERAL_ADDR)
