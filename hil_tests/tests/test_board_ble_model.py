"""The board BLE model (MicroPython's `bluetooth.BLE` on Bumble), driven from CPython.

No VM here: the test plays the firmware, calling the model as firmware calls
`bluetooth.BLE`, while bleak (through the edge's Bumble backend) plays the
staff phone on the same air.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakGATTProtocolError, BleakGATTProtocolErrorCode
from bumble import hci

from kommune.edge.ble import (
    BleakClientBumble,
    BleakScannerBumble,
    NotificationQueue,
    forget_cached_services,
    hold_host,
)
from kommune.hil.radio import Air, running_air
from kommune.hil.radio.board_ble import BoardBle
from kommune.hil.radio.board_ble_events import (
    IRQ_CENTRAL_CONNECT,
    IRQ_CENTRAL_DISCONNECT,
    IRQ_CONNECTION_UPDATE,
    IRQ_GATTS_INDICATE_DONE,
    IRQ_GATTS_WRITE,
    IRQ_MTU_EXCHANGED,
    STATUS_NOT_CONNECTED,
    BleEvent,
)
from kommune.hil.radio.board_ble_gatt import (
    FLAG_INDICATE,
    FLAG_NOTIFY,
    FLAG_READ,
    FLAG_WRITE,
    FLAG_WRITE_NO_RESPONSE,
)

BOARD_ADDRESS = "F0:4B:00:00:00:07"
NAME = b"lock-7"
LOCK_SERVICE = "4b4d1000-6b6f-6d6d-756e-652d65646765"
COMMAND = "4b4d1001-6b6f-6d6d-756e-652d65646765"  # write (+ a user description)
STATUS = "4b4d1002-6b6f-6d6d-756e-652d65646765"  # read | notify
AUDIT = "4b4d1003-6b6f-6d6d-756e-652d65646765"  # indicate
SECRET = "4b4d1004-6b6f-6d6d-756e-652d65646765"  # write without response only
BATTERY_SERVICE = 0x180F
BATTERY_LEVEL = 0x2A19
USER_DESCRIPTION = 0x2901
SERVICES = (
    (
        LOCK_SERVICE,
        (
            (COMMAND, FLAG_WRITE | FLAG_WRITE_NO_RESPONSE, ((USER_DESCRIPTION, FLAG_READ),)),
            (STATUS, FLAG_READ | FLAG_NOTIFY),
            (AUDIT, FLAG_INDICATE),
            (SECRET, FLAG_WRITE_NO_RESPONSE, ((0x2904, FLAG_READ | FLAG_WRITE),)),
        ),
    ),
    (BATTERY_SERVICE, ((BATTERY_LEVEL, FLAG_READ),)),
)
ATT_HANDLE_VALUE_INDICATION = 0x1D


def advertising_payload(name: bytes, service: str) -> bytes:
    """What firmware builds (as MicroPython's ble_advertising.py): flags, name, service."""
    uuid = bytes.fromhex(service.replace("-", ""))[::-1]
    return bytes([2, 0x01, 0x06, len(name) + 1, 0x09]) + name + bytes([17, 0x07]) + uuid


def char(client: BleakClient, uuid: str) -> BleakGATTCharacteristic:
    characteristic = client.services.get_characteristic(uuid)
    assert characteristic is not None, uuid
    return characteristic


class Events:
    """The model's IRQs, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[BleEvent] = asyncio.Queue()

    def __call__(self, event: BleEvent) -> None:
        self.queue.put_nowait(event)

    async def next(self, code: int) -> BleEvent:
        async with asyncio.timeout(5):
            event = await self.queue.get()
        assert event.code == code, event
        return event

    async def assert_quiet(self) -> None:
        await asyncio.sleep(0.05)
        assert self.queue.empty(), self.queue.get_nowait()


@dataclass
class Rig:
    air: Air
    ble: BoardBle
    events: Events
    edge: str  # the edge's HCI transport
    command: int = 0
    description: int = 0
    status: int = 0
    audit: int = 0
    secret: int = 0
    format_descriptor: int = 0
    battery: int = 0

    async def boot(self, *, interval_us: int = 20_000) -> None:
        """What a lock's main() does: activate, register, advertise."""
        await self.ble.active(True)
        self.ble.config_set(gap_name=NAME)
        (lock, (self.battery,)) = self.ble.gatts_register_services(SERVICES)
        (self.command, self.description, self.status, self.audit, self.secret) = lock[:5]
        self.format_descriptor = lock[5]
        await self.advertise(interval_us)

    async def advertise(self, interval_us: int = 20_000) -> None:
        await self.ble.gap_advertise(interval_us, advertising_payload(NAME, LOCK_SERVICE))

    def client(self, address: BLEDevice | str = BOARD_ADDRESS, **kwargs: Any) -> BleakClient:
        return BleakClient(
            address, backend=BleakClientBumble, transport=self.edge, timeout=5.0, **kwargs
        )

    async def connected(self) -> int:
        """The conn_handle, after the connect and MTU events."""
        (conn, addr_type, addr) = (await self.events.next(IRQ_CENTRAL_CONNECT)).data
        assert addr_type == 1  # the edge's host uses a random static address
        assert isinstance(addr, bytes) and len(addr) == 6
        assert (await self.events.next(IRQ_MTU_EXCHANGED)).data == (conn, 256)
        assert isinstance(conn, int)
        return conn


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    forget_cached_services(BOARD_ADDRESS)
    async with running_air(seed=5) as air:
        board = await air.add_device("board", BOARD_ADDRESS)
        edge = await air.add_device("edge")
        events = Events()
        async with BoardBle(board.transport, board.address, on_event=events) as ble:
            yield Rig(air, ble, events, edge.transport)
    forget_cached_services(BOARD_ADDRESS)


async def test_registration_returns_micropython_handles_that_the_central_discovers(
    rig: Rig,
) -> None:
    await rig.boot()
    handles = [rig.command, rig.description, rig.status, rig.audit, rig.secret]
    assert handles == sorted(handles) and len(set(handles)) == 5
    async with rig.client() as c:
        assert char(c, COMMAND).handle == rig.command
        assert char(c, STATUS).handle == rig.status
        assert char(c, AUDIT).handle == rig.audit
        assert set(char(c, AUDIT).properties) == {"indicate"}
        (description,) = char(c, COMMAND).descriptors
        assert description.handle == rig.description
        battery = c.services.get_characteristic(
            f"0000{BATTERY_LEVEL:04x}-0000-1000-8000-00805f9b34fb"
        )
        assert battery is not None and battery.handle == rig.battery
        # The GAP service shows the configured name; an ESP32 has no Database Hash.
        assert await c.read_gatt_char("00002a00-0000-1000-8000-00805f9b34fb") == NAME
        assert await c.read_gatt_char("00002a01-0000-1000-8000-00805f9b34fb") == bytes(2)
        assert c.services.get_characteristic("00002b2a-0000-1000-8000-00805f9b34fb") is None
    for handle in handles:
        assert rig.ble.gatts_read(handle) == b""


async def test_the_phone_finds_the_board_by_name_and_service_and_negotiates_the_mtu(
    rig: Rig,
) -> None:
    await rig.boot()
    found = await BleakScanner.discover(
        timeout=0.3,
        return_adv=True,
        service_uuids=[LOCK_SERVICE],
        backend=BleakScannerBumble,
        transport=rig.edge,
    )
    device, adv = found[BOARD_ADDRESS]
    assert adv.local_name == NAME.decode()
    assert rig.ble.config_get("mac") == (0, bytes.fromhex(BOARD_ADDRESS.replace(":", "")))
    async with rig.client(device) as c:
        assert c.mtu_size == 256  # min(phone's 517, NimBLE's preferred 256)
        conn = await rig.connected()
    assert (await rig.events.next(IRQ_CENTRAL_DISCONNECT)).data[0] == conn

    # A random static address (addr_mode=1), and a smaller preferred MTU.
    rig.ble.config_set(addr_mode=1, mtu=185)
    mac = rig.ble.config_get("mac")
    assert isinstance(mac, tuple)
    addr_type, addr = mac
    assert addr_type == 1 and addr[0] >> 6 == 0b11
    await rig.advertise()
    random_address = hci.Address(bytes(addr[::-1]), hci.Address.RANDOM_DEVICE_ADDRESS)
    async with rig.client(random_address.to_string(False)) as c:
        assert c.mtu_size == 185
        (await rig.events.next(IRQ_CENTRAL_CONNECT))
        assert (await rig.events.next(IRQ_MTU_EXCHANGED)).data[1] == 185


async def test_writes_are_stored_with_micropython_buffer_rules(rig: Rig) -> None:
    await rig.boot()
    async with rig.client() as c:
        conn = await rig.connected()
        await c.write_gatt_char(COMMAND, b"unlock", response=True)
        assert (await rig.events.next(IRQ_GATTS_WRITE)).data == (conn, rig.command)
        assert rig.ble.gatts_read(rig.command) == b"unlock"
        await c.write_gatt_char(COMMAND, b"lock", response=False)
        event = await rig.events.next(IRQ_GATTS_WRITE)
        assert event.data == (conn, rig.command) and event.written == b"lock"
        assert rig.ble.gatts_read(rig.command) == b"lock"

        # 20 bytes by default: longer writes are cut, as on the ESP32.
        await c.write_gatt_char(COMMAND, bytes(range(30)), response=True)
        assert (await rig.events.next(IRQ_GATTS_WRITE)).written == bytes(range(30))
        assert rig.ble.gatts_read(rig.command) == bytes(range(20))
        rig.ble.gatts_set_buffer(rig.command, 100)
        await c.write_gatt_char(COMMAND, bytes(range(30)), response=True)
        await rig.events.next(IRQ_GATTS_WRITE)
        assert rig.ble.gatts_read(rig.command) == bytes(range(30))

        # Append mode (a UART): writes accumulate until the firmware reads them.
        rig.ble.gatts_set_buffer(rig.secret, 8, append=True)
        for chunk in (b"abc", b"def", b"ghi"):
            await c.write_gatt_char(SECRET, chunk, response=False)
            await rig.events.next(IRQ_GATTS_WRITE)
        assert rig.ble.gatts_read(rig.secret) == b"abcdefgh"
        assert rig.ble.gatts_read(rig.secret) == b""

        # The firmware's own writes are what the central reads; they grow the buffer.
        rig.ble.gatts_write(rig.status, b"closed, battery 87 %, all good")
        assert await c.read_gatt_char(STATUS) == b"closed, battery 87 %, all good"
        rig.ble.gatts_write(rig.description, b"command")
        (description,) = char(c, COMMAND).descriptors
        assert await c.read_gatt_descriptor(description) == b"command"
        (fmt,) = char(c, SECRET).descriptors
        await c.write_gatt_descriptor(fmt, b"\x04\x00")
        assert (await rig.events.next(IRQ_GATTS_WRITE)).data == (conn, rig.format_descriptor)
        assert rig.ble.gatts_read(rig.format_descriptor) == b"\x04\x00"

        # Flags are permissions: no FLAG_READ, no read; no write flag, no write.
        with pytest.raises(BleakGATTProtocolError) as denied:
            await c.read_gatt_char(COMMAND)
        assert denied.value.code == BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
        with pytest.raises(BleakGATTProtocolError) as denied:
            await c.write_gatt_char(STATUS, b"x", response=True)
        assert denied.value.code == BleakGATTProtocolErrorCode.WRITE_NOT_PERMITTED
        with pytest.raises(BleakGATTProtocolError):
            await c.write_gatt_descriptor(description, b"x")
        await rig.events.assert_quiet()


async def test_notifications_and_indications(rig: Rig) -> None:
    await rig.boot()
    async with rig.client() as c:
        conn = await rig.connected()
        status, audit = NotificationQueue(), NotificationQueue()
        await c.start_notify(STATUS, status)
        await c.start_notify(AUDIT, audit)

        rig.ble.gatts_write(rig.status, b"closed")
        rig.ble.gatts_notify(conn, rig.status)
        assert await status.next() == b"closed"
        rig.ble.gatts_notify(conn, rig.status, b"opening")
        assert await status.next() == b"opening"
        assert rig.ble.gatts_read(rig.status) == b"closed"  # data= leaves the value alone
        rig.ble.gatts_write(rig.status, b"open", send_update=True)
        assert await status.next() == b"open"

        rig.ble.gatts_indicate(conn, rig.audit, b"entry 1")
        assert await audit.next() == b"entry 1"
        assert (await rig.events.next(IRQ_GATTS_INDICATE_DONE)).data == (conn, rig.audit, 0)
        rig.ble.gatts_write(rig.audit, b"entry 2", send_update=True)
        assert await audit.next() == b"entry 2"
        assert (await rig.events.next(IRQ_GATTS_INDICATE_DONE)).data == (conn, rig.audit, 0)

        # Unsubscribed: send_update sends nothing (gatts_notify would, regardless).
        await c.stop_notify(STATUS)
        rig.ble.gatts_write(rig.status, b"closed", send_update=True)
        await rig.events.assert_quiet()


async def test_disconnection_from_either_side(rig: Rig) -> None:
    await rig.boot()
    async with rig.client():
        conn = await rig.connected()
    assert (await rig.events.next(IRQ_CENTRAL_DISCONNECT)).data[0] == conn
    assert not rig.ble.gap_disconnect(conn)

    await rig.advertise()
    lost = asyncio.Event()
    async with rig.client(disconnected_callback=lambda _c: lost.set()):
        conn = await rig.connected()
        assert rig.ble.gap_disconnect(conn)
        async with asyncio.timeout(5):
            await lost.wait()
        assert (await rig.events.next(IRQ_CENTRAL_DISCONNECT)).data[0] == conn


async def test_an_indication_cut_off_by_the_link_fails_before_the_disconnect(rig: Rig) -> None:
    await rig.boot()
    async with rig.client() as c:
        conn = await rig.connected()
        await c.start_notify(AUDIT, NotificationQueue())
        await rig.air.arm_cut("edge", "board", att_opcode=ATT_HANDLE_VALUE_INDICATION)
        rig.ble.gatts_indicate(conn, rig.audit, b"lost")
        done = await rig.events.next(IRQ_GATTS_INDICATE_DONE)
        assert done.data == (conn, rig.audit, STATUS_NOT_CONNECTED)
        assert (await rig.events.next(IRQ_CENTRAL_DISCONNECT)).data[0] == conn


async def test_a_connection_update_by_the_central_is_reported(rig: Rig) -> None:
    await rig.boot()
    async with hold_host(rig.edge) as host, rig.client():
        conn = await rig.connected()
        connection = host.device.find_connection_by_bd_addr(
            hci.Address(BOARD_ADDRESS, hci.Address.PUBLIC_DEVICE_ADDRESS)
        )
        assert connection is not None
        await connection.update_parameters(45.0, 45.0, 2, 4000.0)
        event = await rig.events.next(IRQ_CONNECTION_UPDATE)
        assert event.data == (conn, 36, 2, 400, 0)  # 1.25 ms and 10 ms units


async def test_a_gatt_session_over_a_slow_lossy_link(rig: Rig) -> None:
    await rig.air.set_link("edge", "board", interval_ms=15, loss=0.25)
    await rig.boot(interval_us=30_000)
    device = await BleakScanner.find_device_by_name(
        NAME.decode(), timeout=5.0, backend=BleakScannerBumble, transport=rig.edge
    )
    assert device is not None
    async with rig.client(device) as c:
        conn = await rig.connected()
        status, audit = NotificationQueue(), NotificationQueue()
        await c.start_notify(STATUS, status)
        await c.start_notify(AUDIT, audit)
        for i in range(8):
            await c.write_gatt_char(COMMAND, b"cmd %d" % i, response=i % 2 == 0)
            assert (await rig.events.next(IRQ_GATTS_WRITE)).written == b"cmd %d" % i
            assert rig.ble.gatts_read(rig.command) == b"cmd %d" % i
            rig.ble.gatts_notify(conn, rig.status, b"ack %d" % i)
            assert await status.next() == b"ack %d" % i
        rig.ble.gatts_indicate(conn, rig.audit, b"audit")
        assert await audit.next() == b"audit"
        assert (await rig.events.next(IRQ_GATTS_INDICATE_DONE)).data == (conn, rig.audit, 0)
        stats = await rig.air.stats("edge", "board")
        assert stats.connected and stats.stats.retransmissions > 0
    assert (await rig.events.next(IRQ_CENTRAL_DISCONNECT)).data[0] == conn


async def test_calls_fail_as_micropython_fails_them(rig: Rig) -> None:
    with pytest.raises(OSError) as e:
        await rig.ble.gap_advertise(100_000, b"")
    assert e.value.errno == errno.ENODEV
    with pytest.raises(OSError) as e:
        rig.ble.config_get("mac")
    assert e.value.errno == errno.ENODEV
    await rig.boot()
    with pytest.raises(OSError) as e:
        rig.ble.gatts_register_services(SERVICES)  # while advertising
    assert e.value.errno == errno.EBUSY
    with pytest.raises(OSError) as e:
        rig.ble.gatts_notify(99, rig.status, b"x")
    assert e.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as e:
        rig.ble.gatts_read(999)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        await rig.ble.gap_advertise(100_000, bytes(32))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="unknown config param"):
        rig.ble.config_get("addr_mode")  # settable, not readable, as in MicroPython
    with pytest.raises(ValueError, match="unknown config param"):
        rig.ble.config_set(rxbuf=512)  # the ESP32 port runs IRQs synchronously: no ring buffer
    with pytest.raises(ValueError, match="unknown config param"):
        rig.ble.config_set(appearance=0x0340)  # MicroPython has no such setting
    with pytest.raises(OSError) as e:
        rig.ble.config_set(gap_name=b"x" * 32)
    assert e.value.errno == errno.EINVAL
    await rig.ble.gap_advertise(None)
    bad: list[Any]
    for bad in (
        [(LOCK_SERVICE, [(COMMAND, FLAG_READ, [(0x2902, FLAG_READ)])])],  # the CCCD
        [(LOCK_SERVICE, [(COMMAND,)])],
        [("not-a-uuid", [])],
    ):
        with pytest.raises(ValueError):
            rig.ble.gatts_register_services(bad)
    assert rig.ble.gatts_read(rig.status) == b""  # a refused definition changes nothing


async def test_deactivation_drops_centrals_silently_and_forgets_services(rig: Rig) -> None:
    await rig.boot()
    lost = asyncio.Event()
    async with rig.client(disconnected_callback=lambda _c: lost.set()):
        await rig.connected()
        assert await rig.ble.active(False) is False
        async with asyncio.timeout(5):
            await lost.wait()
    await rig.events.assert_quiet()  # MicroPython raises no IRQ while deactivating
    assert await rig.ble.active(True) is True
    assert rig.ble.config_get("gap_name") == b"MPY ESP32"
    with pytest.raises(OSError):
        rig.ble.gatts_read(rig.status)
    # active(True) on an active radio restarts the stack too (mp_bluetooth_init).
    await rig.boot()
    assert await rig.ble.active(True) is True
    assert not rig.ble.advertising
    with pytest.raises(OSError):
        rig.ble.gatts_read(rig.status)
