"""The board BLE model on a board's rig channel: blewire frames to `BoardBle` and back.

    device = await air.add_device(board.name)
    bridge = BoardBleBridge(board, device)     # the board's `bluetooth.BLE` is live
    ...
    await bridge.aclose()

The bridge registers a handler for each bluetooth frame the VM sends (wire
format in `kommune/hil/board/blewire.py`) on the board's `HandlerTable`, and
sends the model's IRQs to the VM as BLE_IRQ events. `active()`,
`gap_advertise()`, `gap_scan()` and `gap_connect()` wait for the controller:
they are taken as notes and answered later with a REPLY/FAIL frame of their
own (the VM is blocked in that call meanwhile, as MicroPython is, so the
answer cannot overtake anything). An IRQ whose return value the stack needs
(_IRQ_GET_SECRET, _IRQ_SET_SECRET) goes as a BLE_ASK; the VM's BLE_ANSWER
carries what the handler returned (none within ASK_TIMEOUT_S, or no VM: None).
The radio goes down with the VM that switched it on: a soft reset
deinitialises it (centrals see a disconnection), any other reset or a power
cut silences it (their links time out).

`aclose()` first stops taking requests (a VM that asks meanwhile is told
ENODEV, as a stopping NimBLE answers), then cancels and awaits every task of
the bridge (a request cut short is answered with a FAIL, so no VM waits for
ever), then closes the model under the same lock as every other controller
operation, so nothing runs on the radio while it goes down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kommune.hil.board import blewire, rigwire
from kommune.hil.radio.board_ble import BoardBle, ConfigValue
from kommune.hil.radio.board_ble_events import BleEvent
from kommune.hil.radio.board_ble_wire import decode_answer, encode_ask, encode_event
from kommune.hil.radio.client import AirDevice
from kommune.hil.rigchannel import HandlerTable, RigFault

if TYPE_CHECKING:
    from kommune.hil.emulated_board import EmulatedBoard

logger = logging.getLogger(__name__)

WATCH_S = 3600.0  # re-arm period of the wait for the VM to go away
# How long the stack waits for the firmware's answer to GET/SET_SECRET. A board
# calls the handler at once; the VM does at its next dispatch point, and one
# that never gets there (a busy loop) is taken to have no answer.
ASK_TIMEOUT_S = 5.0

# A deferred request: (pid of the asking VM, payload) -> REPLY payload.
Operation = Callable[[int | None, bytes], Awaitable[bytes]]
Reply = tuple[int, bytes]  # (REPLY or FAIL, payload)
T = TypeVar("T")


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


def _closed() -> RigFault:
    return RigFault.os_error(errno.ENODEV, "BLE is shutting down")


def _sync(handler: Callable[[bytes], bytes | None]) -> Callable[[bytes], bytes | None]:
    def guarded(payload: bytes) -> bytes | None:
        try:
            return handler(payload)
        except Exception as e:
            raise _fault(e) from e

    return guarded


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
            device.transport,
            device.address,
            on_event=self._on_event,
            ask=self._ask,
            database_hash=database_hash,
        )
        self._lock = asyncio.Lock()  # one controller operation at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        self._owner: int | None = None  # pid of the VM that switched the radio on
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        self._asks: dict[int, tuple[int | None, asyncio.Future[object]]] = {}
        self._next_ask = 0
        self._register(board.handlers)

    async def aclose(self) -> None:
        self._closing = True
        self._drop_asks()
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
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
        table.note(blewire.BLE_SCAN, self._deferred(self._scan))
        table.note(blewire.BLE_CONNECT, self._deferred(self._connect))
        table.request(blewire.BLE_GATTC, _sync(self._gattc))
        table.request(blewire.BLE_PAIR, _sync(self._pair))
        table.request(blewire.BLE_PASSKEY, _sync(self._passkey))
        table.note(blewire.BLE_ANSWER, self._logged(self._answered))

    # -- plumbing -------------------------------------------------------------------

    def _spawn(self, coroutine: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("board %s: BLE task failed: %r", self.board.name, error)

    def _deferred(self, operation: Operation) -> Callable[[bytes], None]:
        """A request answered once `operation` is done (its REPLY sent by us). The
        answer is sent however the task ends, also when it is cancelled before it
        ran at all: the VM that asked is blocked until it comes."""

        def start(payload: bytes) -> None:
            if self._closing:
                self.board.send_event(rigwire.FAIL, _closed().payload())
                return
            pid = self.board.pid
            task = self._spawn(self._answer(operation, pid, payload))
            task.add_done_callback(functools.partial(self._reply, pid))

        return start

    async def _answer(self, operation: Operation, pid: int | None, payload: bytes) -> Reply:
        try:
            async with self._lock:
                return rigwire.REPLY, await operation(pid, payload)
        except Exception as e:
            return rigwire.FAIL, _fault(e).payload()

    def _reply(self, pid: int | None, task: asyncio.Task[Reply]) -> None:
        reply = (rigwire.FAIL, _closed().payload()) if task.cancelled() else task.result()
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

    async def _ask(self, event: BleEvent) -> object:
        """Run the firmware's handler for `event`; its return value (None if the VM
        that switched the radio on is gone, or does not answer in time)."""
        pid = self.board.pid
        # (While active(True) runs there is no owner yet: the VM asking is it.)
        if pid is None or self._owner not in (None, pid) or self._closing:
            return None
        self._next_ask = ask_id = (self._next_ask + 1) & 0xFFFF
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = (pid, future)
        self.board.send_event(blewire.BLE_ASK, encode_ask(ask_id, event))
        try:
            async with asyncio.timeout(ASK_TIMEOUT_S):
                return await future
        except TimeoutError:
            logger.warning("board %s: no answer to BLE IRQ %d", self.board.name, event.code)
            return None
        finally:
            self._asks.pop(ask_id, None)

    def _answered(self, payload: bytes) -> None:
        ask_id, value = decode_answer(payload)
        pending = self._asks.get(ask_id)
        if pending is not None and pending[0] == self.board.pid and not pending[1].done():
            pending[1].set_result(value)

    def _drop_asks(self) -> None:
        """Nobody will answer: the VM is gone, or the bridge closes."""
        for _pid, future in self._asks.values():
            if not future.done():
                future.set_result(None)

    async def _follow_vm(self, pid: int | None, resets: int) -> None:
        """Take the radio down when the VM `pid` (which switched it on) goes away."""
        while True:
            with contextlib.suppress(TimeoutError):
                await self.board.wait_for(lambda: self.board.pid != pid, WATCH_S)
                break
        self._drop_asks()
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

    # -- observer, central, GATT client, security -------------------------------------

    async def _scan(self, _pid: int | None, payload: bytes) -> bytes:
        duration_ms, interval_us, window_us, active = struct.unpack("<iiiB", payload)
        await self.model.gap_scan(
            None if duration_ms == blewire.NO_DATA else duration_ms,
            interval_us,
            window_us,
            bool(active),
        )
        return b""

    async def _connect(self, _pid: int | None, payload: bytes) -> bytes:
        if not payload:
            await self.model.gap_connect(None)
            return b""
        addr_type, addr, duration_ms, low_us, high_us = struct.unpack("<B6siii", payload)
        await self.model.gap_connect(addr_type, addr, duration_ms, low_us, high_us)
        return b""

    def _gattc(self, payload: bytes) -> None:
        op, conn = struct.unpack_from("<BH", payload)
        fields = payload[3:]
        if op == blewire.GATTC_DISCOVER_SERVICES:
            self.model.gattc_discover_services(conn, _raw_uuid(fields))
        elif op == blewire.GATTC_DISCOVER_CHARACTERISTICS:
            start, end = struct.unpack_from("<HH", fields)
            self.model.gattc_discover_characteristics(conn, start, end, _raw_uuid(fields[4:]))
        elif op == blewire.GATTC_DISCOVER_DESCRIPTORS:
            start, end = struct.unpack_from("<HH", fields)
            self.model.gattc_discover_descriptors(conn, start, end)
        elif op == blewire.GATTC_READ:
            (handle,) = struct.unpack("<H", fields)
            self.model.gattc_read(conn, handle)
        elif op == blewire.GATTC_WRITE:
            handle, mode = struct.unpack_from("<HB", fields)
            self.model.gattc_write(conn, handle, fields[3:], mode)
        elif op == blewire.GATTC_EXCHANGE_MTU:
            self.model.gattc_exchange_mtu(conn)
        else:
            raise ValueError(f"unknown GATT client operation {op}")

    def _pair(self, payload: bytes) -> None:
        (conn,) = struct.unpack("<H", payload)
        self.model.gap_pair(conn)

    def _passkey(self, payload: bytes) -> None:
        conn, action, passkey = struct.unpack("<HBi", payload)
        self.model.gap_passkey(conn, action, passkey)


def _raw_uuid(field: bytes) -> bytes | None:
    """A request's optional UUID (len:u8 + its bytes; length 0: None)."""
    size = field[0]
    return bytes(field[1 : 1 + size]) if size else None
