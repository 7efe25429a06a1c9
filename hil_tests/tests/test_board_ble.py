"""End to end: firmware on an emulated board serves GATT over `bluetooth.BLE`; a
phone (bleak, through the edge's Bumble backend) finds it on the air and uses it.

The firmware below is written as for an ESP32: an IRQ handler that only copies
the event and sets a flag (aioble's style), an asyncio task that does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from string import Template
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec
from kommune.edge.ble import (
    BleakClientBumble,
    BleakScannerBumble,
    NotificationQueue,
    forget_cached_services,
)
from kommune.hil.harness import Board
from kommune.hil.radio import Air

pytestmark = pytest.mark.micropython

LOCK_ADDRESS = "F0:4B:00:00:00:21"
NAME = "lock-21"
SERVICE = "4b4d2000-6b6f-6d6d-756e-652d65646765"
COMMAND = "4b4d2001-6b6f-6d6d-756e-652d65646765"
STATUS = "4b4d2002-6b6f-6d6d-756e-652d65646765"
AUDIT = "4b4d2003-6b6f-6d6d-756e-652d65646765"

FIRMWARE = Template("""
import asyncio
import bluetooth
import machine
from micropython import const

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_INDICATE_DONE = const(20)
_IRQ_MTU_EXCHANGED = const(21)
_FLAG_READ = const(0x0002)
_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_FLAG_INDICATE = const(0x0020)

_SERVICE = bluetooth.UUID("$service")
_COMMAND = (bluetooth.UUID("$command"), _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE)
_STATUS = (bluetooth.UUID("$status"), _FLAG_READ | _FLAG_NOTIFY)
_AUDIT = (bluetooth.UUID("$audit"), _FLAG_INDICATE)


def _adv_payload(name, service):
    # flags, complete local name, complete list of 128-bit service UUIDs
    return b"\\x02\\x01\\x06" + bytes((len(name) + 1, 0x09)) + name + b"\\x11\\x07" + bytes(service)


class Lock:
    def __init__(self, ble):
        self._ble = ble
        self._flag = asyncio.ThreadSafeFlag()
        self._events = []
        ble.active(True)
        ble.config(gap_name="$name")
        ((self._command, self._status, self._audit),) = ble.gatts_register_services(
            ((_SERVICE, (_COMMAND, _STATUS, _AUDIT)),)
        )
        ble.gatts_set_buffer(self._command, 64)
        ble.gatts_write(self._status, b"closed")
        ble.irq(self._irq)

    def _irq(self, event, data):
        # Copy what is needed, flag the task, return.
        if event == _IRQ_GATTS_WRITE:
            self._events.append((event, data[0], self._ble.gatts_read(data[1])))
        elif event in (_IRQ_CENTRAL_CONNECT, _IRQ_CENTRAL_DISCONNECT):
            self._events.append((event, data[0], bytes(data[2])))
        else:
            self._events.append((event, data[0], data[-1]))
        self._flag.set()

    def advertise(self):
        self._ble.gap_advertise(20_000, _adv_payload(b"$name", _SERVICE))

    async def run(self):
        self.advertise()
        while True:
            await self._flag.wait()
            while self._events:
                event, conn, value = self._events.pop(0)
                if event == _IRQ_CENTRAL_CONNECT:
                    print("connect", conn, len(value))
                elif event == _IRQ_CENTRAL_DISCONNECT:
                    print("disconnect", conn)
                    self.advertise()
                elif event == _IRQ_MTU_EXCHANGED:
                    print("mtu", value)
                elif event == _IRQ_GATTS_INDICATE_DONE:
                    self._ble.gatts_notify(conn, self._status, b"indicated %d" % value)
                elif event == _IRQ_GATTS_WRITE:
                    print("command", value)
                    if value == b"reboot":
                        machine.soft_reset()
                    if value == b"audit":
                        self._ble.gatts_indicate(conn, self._audit, b"entry " + value)
                    else:
                        self._ble.gatts_write(self._status, b"ok:" + value.upper())
                        self._ble.gatts_notify(conn, self._status)


asyncio.run(Lock(bluetooth.BLE()).run())
""").substitute(service=SERVICE, command=COMMAND, status=STATUS, audit=AUDIT, name=NAME)


@dataclass
class Lock:
    board: Board
    air: Air
    edge: str  # the phone's HCI transport

    def client(self, target: Any, **kwargs: Any) -> BleakClient:
        return BleakClient(
            target, backend=BleakClientBumble, transport=self.edge, timeout=5.0, **kwargs
        )

    async def find(self) -> Any:
        device = await BleakScanner.find_device_by_filter(
            lambda d, adv: adv.local_name == NAME and SERVICE in adv.service_uuids,
            timeout=10.0,
            backend=BleakScannerBumble,
            transport=self.edge,
        )
        assert device is not None, self.board.console_output()
        return device

    async def console_shows(self, text: str, timeout_s: float = 5.0) -> None:
        """Wait until the firmware has printed `text` (the console has no events: poll)."""
        for _ in range(int(timeout_s / 0.02)):
            if text in self.board.console_output():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{text!r} not printed; console:\n{self.board.console_output()}")


@pytest.fixture
def firmware() -> dict[str, bytes]:
    return {"main.py": FIRMWARE.encode()}


@pytest.fixture
async def lock(air: Air, make_board: MakeBoard, firmware: dict[str, bytes]) -> AsyncIterator[Lock]:
    """The board "lock" (with a radio, on the air) running `firmware`, and a phone."""
    forget_cached_services(LOCK_ADDRESS)
    device = await air.add_device("lock", LOCK_ADDRESS)
    edge = await air.add_device("edge")
    board = await asyncio.to_thread(make_board, "lock", files=firmware, radio=device)
    assert board.ble is not None
    try:
        yield Lock(board, air, edge.transport)
    finally:
        forget_cached_services(LOCK_ADDRESS)


async def session(lock: Lock, *, status_before: bytes = b"closed", lossy: bool = False) -> None:
    """A phone's visit: find, connect, read, command, get notified and indicated, leave."""
    device = await lock.find()
    async with lock.client(device) as c:
        assert c.mtu_size == 256
        assert await c.read_gatt_char(STATUS) == status_before
        status, audit = NotificationQueue(), NotificationQueue()
        await c.start_notify(STATUS, status)
        await c.start_notify(AUDIT, audit)

        await c.write_gatt_char(COMMAND, b"open", response=True)
        assert await status.next() == b"ok:OPEN"
        assert await c.read_gatt_char(STATUS) == b"ok:OPEN"
        await c.write_gatt_char(
            COMMAND, b"a longer command, still in the 64-byte buffer", response=False
        )
        assert await status.next() == b"ok:A LONGER COMMAND, STILL IN THE 64-BYTE BUFFER"

        await c.write_gatt_char(COMMAND, b"audit", response=True)
        assert await audit.next() == b"entry audit"
        assert await status.next() == b"indicated 0"  # the phone confirmed it
        if lossy:
            # Every PDU got through by retransmission, and the link held.
            stats = await lock.air.stats("edge", "lock")
            assert stats.connected and stats.stats.retransmissions > 0
            assert stats.stats.disconnects == 0


async def test_firmware_serves_gatt_to_a_phone(lock: Lock) -> None:
    await session(lock)
    await lock.console_shows("disconnect 1")
    out = lock.board.console_output()
    assert "connect 1 6\nmtu 256\ncommand b'open'\n" in out  # conn_handle, a 6-byte address
    # The firmware advertises again after the disconnection: a second visit works.
    # (The value is the last one written: gatts_notify(data=...) leaves it alone.)
    await session(lock, status_before=b"ok:A LONGER COMMAND, STILL IN THE 64-BYTE BUFFER")


async def test_firmware_serves_gatt_over_a_slow_lossy_link(lock: Lock) -> None:
    await lock.air.set_link("edge", "lock", interval_ms=15, loss=0.25)
    await session(lock, lossy=True)


async def test_the_radio_goes_down_with_the_vm_and_comes_back_with_the_firmware(
    lock: Lock,
) -> None:
    await lock.air.set_link("edge", "lock", supervision_timeout_ms=300)
    # A soft reset deinitialises BLE: the phone is told at once (no link timeout).
    lost = asyncio.Event()
    async with lock.client(await lock.find(), disconnected_callback=lambda _c: lost.set()) as c:
        boots = lock.board.boots
        await c.write_gatt_char(COMMAND, b"reboot", response=False)
        async with asyncio.timeout(5):
            await lost.wait()
    assert (await lock.air.stats("edge", "lock")).stats.disconnects == 0
    await asyncio.to_thread(lock.board.wait_booted, after=boots)
    assert lock.board.reset_kinds[-1] == "soft"

    # A power cut silences the controller: the phone's link times out.
    lost.clear()
    async with lock.client(await lock.find(), disconnected_callback=lambda _c: lost.set()) as c:
        assert await c.read_gatt_char(STATUS) == b"closed"  # RAM is gone: a fresh value
        boots = lock.board.boots
        lock.board.power_cut(off_s=0.1)
        async with asyncio.timeout(5):
            await lost.wait()
    assert (await lock.air.stats("edge", "lock")).stats.disconnects == 1
    await asyncio.to_thread(lock.board.wait_booted, after=boots)
    await session(lock)


REPL_CODE = Template("""
import bluetooth, time
ble = bluetooth.BLE()
try:
    ble.gatts_read(1)
except OSError as e:
    print("inactive", e.errno)
print(ble is bluetooth.BLE(), ble.active(), ble.active(True), ble.config("gap_name"))
print(ble.config("mac"), ble.config("mtu"))
print(repr(bluetooth.UUID(0x180F)), bytes(bluetooth.UUID(0x180F)))
print(repr(bluetooth.UUID("$service")) == "UUID('$service')")
((level,),) = ble.gatts_register_services(
    [(bluetooth.UUID(0x180F), [(bluetooth.UUID(0x2A19), bluetooth.FLAG_READ | 0x0200)])]
)
print("READ_ENCRYPTED taken", level > 0)
try:
    ble.gap_advertise(100_000, bytes(32))
except OSError as e:
    print("too long", e.errno)
((uart,),) = ble.gatts_register_services(
    [(bluetooth.UUID("$service"), [(bluetooth.UUID("$command"), bluetooth.FLAG_WRITE)])]
)
ble.gatts_set_buffer(uart, 8, True)
writes = []
ble.irq(lambda event, data: writes.append((event, data)) if event == 3 else None)
ble.gap_advertise(20_000, b"\x02\x01\x06" + bytes((len(b"$name") + 1, 0x09)) + b"$name")
deadline = time.ticks_add(time.ticks_ms(), 8000)
while len(writes) < 3 and time.ticks_diff(deadline, time.ticks_ms()) > 0:
    time.sleep_ms(5)
print("writes", len(writes), writes[0][1][1] == uart)
print("uart", ble.gatts_read(uart), ble.gatts_read(uart))
ble.active(False)
print("off", ble.active())
""").substitute(service=SERVICE, command=COMMAND, name=NAME)


@pytest.mark.parametrize("firmware", [{}])  # a blank board: the REPL drives the radio
async def test_the_bluetooth_api_from_the_repl(lock: Lock) -> None:
    repl = asyncio.create_task(asyncio.to_thread(repl_exec, lock.board, REPL_CODE))
    device = await BleakScanner.find_device_by_name(
        NAME, timeout=10.0, backend=BleakScannerBumble, transport=lock.edge
    )
    assert device is not None
    async with lock.client(device) as c:
        for chunk in (b"abc", b"def", b"ghi"):  # append mode, 8 bytes: "abcdefgh"
            await c.write_gatt_char(COMMAND, chunk, response=True)
    out = await asyncio.wait_for(repl, 20)
    assert out.splitlines() == [
        "inactive 19",
        "True False True b'MPY ESP32'",
        "(0, b'\\xf0K\\x00\\x00\\x00!') 256",
        "UUID(0x180f) b'\\x0f\\x18'",
        "True",
        "READ_ENCRYPTED taken True",
        "too long 22",
        "writes 3 True",
        "uart b'abcdefgh' b''",
        "off False",
    ]
