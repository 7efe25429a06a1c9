"""The board BLE model on a board's rig channel: blewire frames to `BoardBle` and back.

    device = await air.add_device(board.name)
    bridge = BoardBleBridge(board, device)     # the board's `bluetooth.BLE` is live
    ...
    await bridge.aclose()

The bridge registers a handler for each bluetooth frame the VM sends (wire
format in `kommune/hil/board/blewire.py`) on the board's `HandlerTable`, and
sends the model's IRQs to the VM as BLE_IRQ events. `active()` and
`gap_advertise()` wait for the controller: they are taken as notes and
answered later with a REPLY/FAIL frame of their own (the VM is blocked in
that call meanwhile, as MicroPython is, so the answer cannot overtake
anything). The radio goes down with the VM that switched it on: a soft reset
deinitialises it (centrals see a disconnection), any other reset or a power
cut silences it (their links time out).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from kommune.hil.board import blewire, rigwire
from kommune.hil.radio.board_ble import BoardBle, ConfigValue
from kommune.hil.radio.board_ble_events import BleEvent
from kommune.hil.radio.client import AirDevice
from kommune.hil.rigchannel import HandlerTable, RigFault

if TYPE_CHECKING:
    from kommune.hil.emulated_board import EmulatedBoard

logger = logging.getLogger(__name__)

WATCH_S = 3600.0  # re-arm period of the wait for the VM to go away

# A deferred request: (pid of the asking VM, payload) -> REPLY payload.
Operation = Callable[[int | None, bytes], Awaitable[bytes]]


class RigBoard(Protocol):
    """What the bridge uses of an `EmulatedBoard`."""

    name: str
    handlers: HandlerTable
    resets: list[tuple[float, str]]

    @property
    def pid(self) -> int | None: ...

    def send_event(self, kind: int, payload: bytes) -> None: ...

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None: ...


if TYPE_CHECKING:  # the rig's boards are what the bridge expects

    def _conforms(board: EmulatedBoard) -> RigBoard:
        return board


def _fault(error: Exception) -> RigFault:
    """A model error as the VM should see it (OSError(errno) or ValueError)."""
    if isinstance(error, RigFault):
        return error
    if isinstance(error, OSError) and error.errno is not None:
        return RigFault.os_error(error.errno, error.strerror or "")
    if isinstance(error, ValueError | TypeError | KeyError | struct.error | IndexError):
        return RigFault.value_error(str(error))
    logger.error("BLE: unexpected %r", error)
    return RigFault.os_error(errno.EIO, repr(error))


def _sync(handler: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes | None]:
    def guarded(payload: bytes) -> bytes | None:
        try:
            return handler(payload)
        except Exception as e:
            raise _fault(e) from e

    return guarded


def encode_event(event: BleEvent) -> bytes:
    """A model IRQ as a BLE_IRQ payload."""
    fields = struct.pack(blewire.IRQ_FORMATS[event.code], *event.data)
    return bytes((event.code,)) + fields + event.written


def _config_json(value: ConfigValue) -> Any:
    if isinstance(value, tuple):
        return [value[0], value[1].hex()]
    if isinstance(value, bytes):
        return value.hex()
    return value


class BoardBleBridge:
    """One board's `bluetooth.BLE`: a `BoardBle` on the air, served to its VM."""

    def __init__(self, board: RigBoard, device: AirDevice, *, database_hash: bool = False) -> None:
        self.board = board
        self.model = BoardBle(
            device.transport, device.address, on_event=self._on_event, database_hash=database_hash
        )
        self._lock = asyncio.Lock()  # one controller operation at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self._owner: int | None = None  # pid of the VM that switched the radio on
        self._follower: asyncio.Task[None] | None = None
        self._register(board.handlers)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.model.close()

    def _register(self, table: HandlerTable) -> None:
        table.note(blewire.BLE_ACTIVE, self._deferred(self._active))
        table.note(blewire.BLE_ADVERTISE, self._deferred(self._advertise))
        table.request(blewire.BLE_CONFIG_GET, _sync(self._config_get))
        table.request(blewire.BLE_CONFIG_SET, _sync(self._config_set))
        table.request(blewire.BLE_REGISTER, _sync(self._register_services))
        table.request(blewire.BLE_NOTIFY, _sync(self._notify))
        table.request(blewire.BLE_INDICATE, _sync(self._indicate))
        table.request(blewire.BLE_DISCONNECT, _sync(self._disconnect))
        table.note(blewire.BLE_WRITE, self._logged(self._write))
        table.note(blewire.BLE_SET_BUFFER, self._logged(self._set_buffer))

    # -- plumbing -------------------------------------------------------------------

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _deferred(self, operation: Operation) -> Callable[[bytes], None]:
        """A request answered once `operation` is done (its REPLY sent by us)."""

        def start(payload: bytes) -> None:
            self._spawn(self._answer(self.board.pid, operation, payload))

        return start

    async def _answer(self, pid: int | None, operation: Operation, payload: bytes) -> None:
        try:
            async with self._lock:
                reply = rigwire.REPLY, await operation(pid, payload)
        except Exception as e:
            reply = rigwire.FAIL, _fault(e).payload()
        if self.board.pid == pid:  # else the VM that asked is gone
            self.board.send_event(*reply)

    def _logged(self, handler: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def run(payload: bytes) -> None:
            try:
                handler(payload)
            except Exception as e:  # a note has no answer: say it here
                logger.warning("board %s: BLE note refused: %r", self.board.name, e)

        return run

    def _on_event(self, event: BleEvent) -> None:
        self.board.send_event(blewire.BLE_IRQ, encode_event(event))

    async def _follow_vm(self, pid: int | None, resets: int) -> None:
        """Take the radio down when the VM `pid` (which switched it on) goes away."""
        while True:
            with contextlib.suppress(TimeoutError):
                await self.board.wait_for(lambda: self.board.pid != pid, WATCH_S)
                break
        async with self._lock:
            self._follower = None
            if self._owner != pid:
                return  # switched off by the VM itself
            self._owner = None
            later = self.board.resets[resets:]
            if later and later[0][1] == "soft":
                await self.model.active(False)  # soft reset: MicroPython deinitialises BLE
            else:
                await self.model.power_cut()

    # -- requests -------------------------------------------------------------------

    async def _active(self, pid: int | None, payload: bytes) -> bytes:
        state = payload[0]
        if state == blewire.ACTIVE_QUERY:
            return bytes((self.model.is_active,))
        resets = len(self.board.resets)
        on = await self.model.active(bool(state))
        if self._follower is not None:
            self._follower.cancel()
            self._follower = None
        self._owner = pid if on else None
        if on:
            self._follower = self._spawn(self._follow_vm(pid, resets))
        return bytes((on,))

    async def _advertise(self, _pid: int | None, payload: bytes) -> bytes:
        interval_us, connectable, adv_len, resp_len = struct.unpack_from("<iBhh", payload)
        data = payload[struct.calcsize("<iBhh") :]
        adv = None if adv_len == blewire.NO_DATA else data[:adv_len]
        resp = None if resp_len == blewire.NO_DATA else data[max(adv_len, 0) :]
        await self.model.gap_advertise(
            None if interval_us < 0 else interval_us, adv, resp, bool(connectable)
        )
        return b""

    def _config_get(self, payload: bytes) -> bytes:
        return json.dumps(_config_json(self.model.config_get(payload.decode()))).encode()

    def _config_set(self, payload: bytes) -> None:
        values: dict[str, Any] = json.loads(payload)
        if "gap_name" in values:
            values["gap_name"] = bytes.fromhex(values["gap_name"])
        self.model.config_set(**values)

    def _register_services(self, payload: bytes) -> bytes:
        handles = self.model.gatts_register_services(json.loads(payload))
        return json.dumps(handles).encode()

    def _notify(self, payload: bytes) -> None:
        conn, handle, has_data = struct.unpack_from("<HHB", payload)
        self.model.gatts_notify(conn, handle, payload[5:] if has_data else None)

    def _indicate(self, payload: bytes) -> None:
        conn, handle, has_data = struct.unpack_from("<HHB", payload)
        self.model.gatts_indicate(conn, handle, payload[5:] if has_data else None)

    def _disconnect(self, payload: bytes) -> bytes:
        (conn,) = struct.unpack("<H", payload)
        return bytes((self.model.gap_disconnect(conn),))

    def _write(self, payload: bytes) -> None:
        handle, send_update = struct.unpack_from("<HB", payload)
        self.model.gatts_write(handle, payload[3:], bool(send_update))

    def _set_buffer(self, payload: bytes) -> None:
        handle, size, append = struct.unpack("<HHB", payload)
        self.model.gatts_set_buffer(handle, size, bool(append))
