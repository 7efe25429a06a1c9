"""A board's Bumble host on its HCI transport: what it has started, and its clean close.

`HostStack` owns the transport, the powered-on Bumble `Device` and every task
the model starts on the radio's behalf. The board is the only user of its
device's advertising sets and scan, so their state is Bumble's own record of
them (`device.extended_advertising_sets`, `device.scanning`), and the stack
keeps that record true:

- A controller state change (start/stop advertising or scanning, set an
  address) goes through `command()`, which runs it to completion even when
  the caller is cancelled meanwhile and only then lets the cancellation
  through: Bumble's bookkeeping around a command is not cancellation-safe (an
  advertising set removed from the controller but not from Bumble's record is
  removed twice later, a KeyError).
- A wait for the air (a link's end, an indication's confirmation, a
  connection) goes through `wait()`, which the caller may cancel.
- Both fail with `TransportLostError` as soon as the transport is gone:
  Bumble waits for ever for the answer to a command it could not deliver.

`close()` undoes what was opened, in reverse order (scan, advertising, links,
tasks, host, transport), runs every step even when an earlier one fails, and
then raises what went genuinely wrong: a lost transport, a link that is
already gone or that does not confirm its end in time are expected on the
way down and only logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from bumble import hci
from bumble.core import BaseBumbleError
from bumble.device import (
    AdvertisingParameters,
    Connection,
    Device,
    DeviceConfiguration,
)
from bumble.transport import open_transport
from bumble.transport.common import Transport, TransportLostError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DISCONNECT_WAIT_S = 2.0  # for the controller to confirm a link's end while closing
POWER_OFF_WAIT_S = 2.0
REMOTE_USER_TERMINATED = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR

# On the way down these mean "already undone": logged, not raised.
EXPECTED_WHILE_CLOSING = (TransportLostError, hci.HCI_Error, TimeoutError)


class BoardDevice(Device):
    """Bumble's `Device`, telling when it starts initiating a connection (NimBLE's
    `ble_gap_connect` returns once the controller initiates; Bumble's `connect`
    only once connected), and finding a Legacy Pairing key as a peripheral.

    After Legacy Pairing Bumble stores the key the peripheral distributed as
    `ltk_central` on both sides (the central encrypts with it), but looks for
    `ltk_peripheral` when a central asks the peripheral for it, and so cannot
    re-encrypt a bonded link. The key asked for is the one whose EDIV and Rand
    the central sends (Core Vol 3, Part H, 2.4.4.2).
    """

    async def get_long_term_key(
        self, connection_handle: int, rand: bytes, ediv: int
    ) -> bytes | None:
        connection = self.lookup_connection(connection_handle)
        if connection is None or connection.role != hci.Role.PERIPHERAL:
            return await super().get_long_term_key(connection_handle, rand, ediv)
        session_key = self.smp_manager.get_long_term_key(connection, rand, ediv)
        if session_key is not None or self.keystore is None:
            return session_key
        keys = await self.keystore.get(str(connection.peer_address))
        if keys is None:
            return None
        if keys.ltk is not None:
            return keys.ltk.value  # Secure Connections: one key, no EDIV/Rand
        for key in (keys.ltk_central, keys.ltk_peripheral):
            if key is not None and key.ediv == ediv and key.rand == rand:
                return key.value
        return None

    _initiating: asyncio.Event | None = None

    @property
    def initiating(self) -> asyncio.Event:
        if self._initiating is None:
            self._initiating = asyncio.Event()
        return self._initiating

    @property
    def le_connecting(self) -> bool:  # set by Device.connect_le around the attempt
        return self.initiating.is_set()

    @le_connecting.setter
    def le_connecting(self, value: bool) -> None:
        if value:
            self.initiating.set()
        else:
            self.initiating.clear()


class Interrupted(BaseBumbleError):
    """Bumble abandoned the operation (it cancels a link's pending requests when
    the link drops)."""


class HostStack:
    """One powered-on Bumble host on a board's HCI transport."""

    def __init__(self, transport: Transport, device: BoardDevice) -> None:
        self.transport = transport
        self.device = device
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        # A lost transport fails the command in flight (Bumble sets the error on
        # its pending response). Mark that error as seen at once: the task that
        # waits for it may be cancelled before it reads it.
        transport.source.terminated.add_done_callback(self._on_transport_lost)

    @classmethod
    async def open(cls, spec: str, config: DeviceConfiguration) -> HostStack:
        """Open `spec`, reset the controller and bring the host up."""
        transport = await open_transport(spec)
        try:
            device = BoardDevice.from_config_with_hci(config, transport.source, transport.sink)
            assert isinstance(device, BoardDevice)
            stack = cls(transport, device)
            await stack.command(device.power_on())
        except BaseException:
            await transport.close()
            raise
        return stack

    @property
    def transport_lost(self) -> bool:
        return self.transport.source.terminated.done()

    @property
    def advertising(self) -> bool:
        return any(s.enabled for s in self.device.extended_advertising_sets.values())

    @property
    def scanning(self) -> bool:
        return bool(self.device.scanning)

    # -- controller operations ------------------------------------------------------

    async def command(self, operation: Awaitable[T]) -> T:
        """A controller state change: done (or failed) before a cancellation of the
        caller takes effect; `TransportLostError` if the transport goes."""
        task = self._start(operation)
        lost = self.transport.source.terminated
        cancelled = False
        while not task.done() and not lost.done():
            try:
                await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                cancelled = True  # finish the command first
        return await self._outcome(task, cancelled)

    async def wait(self, operation: Awaitable[T]) -> T:
        """Wait for the air (cancellable); `TransportLostError` if the transport goes."""
        task = self._start(operation)
        lost = self.transport.source.terminated
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait((task,))
            raise
        return await self._outcome(task, cancelled=False)

    def _start(self, operation: Awaitable[T]) -> asyncio.Future[T]:
        if self.transport_lost:
            if isinstance(operation, Coroutine):
                operation.close()  # never started: no "never awaited" warning
            raise TransportLostError("HCI transport lost")
        return asyncio.ensure_future(operation)

    async def _outcome(self, task: asyncio.Future[T], cancelled: bool) -> T:
        if not task.done():  # the transport went: the answer will never come
            task.cancel()
            await asyncio.wait((task,))
        if cancelled:
            if not task.cancelled():
                task.exception()  # seen: the caller's cancellation wins
            raise asyncio.CancelledError
        if task.cancelled():
            if self.transport_lost:
                raise TransportLostError("HCI transport lost")
            raise Interrupted("abandoned by the host stack")
        return task.result()

    def spawn(self, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coroutine` as a task of this stack: `close()` cancels and awaits it."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start_advertising(
        self, parameters: AdvertisingParameters, adv_data: bytes, resp_data: bytes
    ) -> None:
        """Advertise with one legacy-PDU advertising set (replacing any other)."""
        await self.stop_advertising()
        await self.command(
            self.device.create_advertising_set(
                advertising_parameters=parameters,
                random_address=self.device.random_address,
                advertising_data=adv_data,
                scan_response_data=resp_data,
                auto_start=True,
            )
        )

    async def stop_advertising(self) -> None:
        """Stop and remove every advertising set (one a connection ended is only
        removed)."""
        for advertising_set in list(self.device.extended_advertising_sets.values()):
            if advertising_set.enabled:
                await self.command(advertising_set.stop())
            await self.command(advertising_set.remove())

    async def stop_scanning(self) -> None:
        if self.device.scanning:
            await self.command(self.device.stop_scanning())

    # -- closing ----------------------------------------------------------------------

    async def close(self, *, graceful: bool) -> None:
        """Shut the host down. `graceful`: stop the scan and advertising and end
        the links first (what `active(False)` does); otherwise the controller
        just goes silent (a power cut). Raises what went unexpectedly wrong,
        after every step ran."""
        self._closing = True
        errors: list[Exception] = []

        async def step(what: str, operation: Callable[[], Awaitable[object]]) -> None:
            try:
                await operation()
            except EXPECTED_WHILE_CLOSING as e:
                logger.debug("closing the radio: %s: %r", what, e)
            except Exception as e:
                logger.error("closing the radio: %s failed: %r", what, e)
                errors.append(e)

        if graceful:
            await step("stop scanning", self.stop_scanning)
            await step("stop advertising", self.stop_advertising)
            # The links open now (one may have ended while advertising stopped).
            for link in list(self.device.connections.values()):
                await step(f"end link {link.handle}", functools.partial(self._end, link))
        await step("stop tasks", self.cancel_tasks)
        if graceful:
            await step("power off", self._power_off)
        await step("close transport", self.transport.close)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("closing the radio", errors)

    async def cancel_tasks(self) -> None:
        """Cancel every task of this stack and wait until they are all done."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(
                    result, EXPECTED_WHILE_CLOSING | BaseBumbleError
                ):
                    logger.error("radio task failed: %r", result)

    async def _end(self, link: Connection) -> None:
        if self.transport_lost:
            return
        if link.handle not in self.device.connections:
            return  # it ended meanwhile
        async with asyncio.timeout(DISCONNECT_WAIT_S):
            await self.wait(link.disconnect(REMOTE_USER_TERMINATED))

    async def _power_off(self) -> None:
        if self.transport_lost:
            return
        async with asyncio.timeout(POWER_OFF_WAIT_S):
            await self.wait(self.device.power_off())

    def _on_transport_lost(self, _terminated: asyncio.Future[None]) -> None:
        pending = self.device.host.pending_response
        if pending is not None and pending.done() and not pending.cancelled():
            pending.exception()  # retrieved: its waiter may be cancelled before it looks
        if not self._closing:
            logger.warning("radio: HCI transport lost")
