"""The board BLE model's GATT client: `gattc_*` as MicroPython on NimBLE does them.

Every call returns at once (ENOTCONN for an unknown connection) and its
result comes as IRQs, on either role's connections:

- `gattc_discover_services(conn, uuid=None)`: a _IRQ_GATTC_SERVICE_RESULT per
  primary service (by UUID: Find By Type Value), then _IRQ_GATTC_SERVICE_DONE.
- `gattc_discover_characteristics(conn, start, end, uuid=None)`: every
  characteristic in the range is discovered (so each one's end handle is the
  next one's declaration - 1, the last one's `end`), those matching `uuid` are
  reported; one such discovery at a time (EBUSY), as MicroPython keeps one.
- `gattc_discover_descriptors(conn, start, end)`: Find Information from
  `start` + 1 (`start` is the characteristic's value handle), reporting every
  attribute found up to `end`.
- `gattc_read(conn, handle)`: one Read Request (no long read):
  _IRQ_GATTC_READ_RESULT with the value, then _IRQ_GATTC_READ_DONE.
- `gattc_write(conn, handle, data, mode)`: mode 0 a Write Command (no IRQ),
  mode 1 a Write Request (_IRQ_GATTC_WRITE_DONE); a value longer than the
  MTU allows is cut, as NimBLE cuts every ATT PDU to the MTU.
- `gattc_exchange_mtu(conn)`: _IRQ_MTU_EXCHANGED (also when the peer starts
  it); once per connection, EALREADY after.
- Notifications and indications from the server arrive as _IRQ_GATTC_NOTIFY /
  _IRQ_GATTC_INDICATE, subscribed or not; indications are confirmed by the
  stack.

Statuses: 0, an ATT error as 0x100 + its code (BLE_HS_ERR_ATT_BASE), 7 when
the link drops first (every pending procedure fails before the disconnection
IRQ), 13 for an ATT timeout.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from bumble import att
from bumble import core as bumble_core
from bumble.core import UUID, BaseBumbleError
from bumble.gatt_client import Client, ServiceProxy
from bumble.transport.common import TransportLostError

from kommune.hil.radio.board_ble_events import (
    IRQ_GATTC_CHARACTERISTIC_DONE,
    IRQ_GATTC_CHARACTERISTIC_RESULT,
    IRQ_GATTC_DESCRIPTOR_DONE,
    IRQ_GATTC_DESCRIPTOR_RESULT,
    IRQ_GATTC_INDICATE,
    IRQ_GATTC_NOTIFY,
    IRQ_GATTC_READ_DONE,
    IRQ_GATTC_READ_RESULT,
    IRQ_GATTC_SERVICE_DONE,
    IRQ_GATTC_SERVICE_RESULT,
    IRQ_GATTC_WRITE_DONE,
    STATUS_NOT_CONNECTED,
    STATUS_OK,
    STATUS_TIMEOUT,
    att_status,
)
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_links import Failure, Link, Radio, display_uuid

T = TypeVar("T")

WRITE_WITHOUT_RESPONSE, WRITE_WITH_RESPONSE = 0, 1


def parse_raw_uuid(raw: bytes | None) -> UUID | None:
    """A UUID argument as `bytes(bluetooth.UUID(...))` gives it (None: none)."""
    if not raw:
        return None
    if len(raw) not in (2, 4, 16):
        raise ValueError("invalid UUID")
    return UUID.from_bytes(raw)


class GattClient:
    """The `gattc_*` calls of one board."""

    def __init__(self, radio: Radio) -> None:
        self.radio = radio
        self._characteristic_discovery: asyncio.Task[None] | None = None

    def attach(self, link: Link) -> None:
        """A new link: report what its server sends unasked."""
        client = link.connection.gatt_client
        handle = link.handle

        def on_notification(pdu: att.ATT_Handle_Value_Notification) -> None:
            value = bytes(pdu.attribute_value)
            self.radio.emit(IRQ_GATTC_NOTIFY, (handle, pdu.attribute_handle, value))

        def on_indication(pdu: att.ATT_Handle_Value_Indication) -> None:
            client.send_confirmation(att.ATT_Handle_Value_Confirmation())
            value = bytes(pdu.attribute_value)
            self.radio.emit(IRQ_GATTC_INDICATE, (handle, pdu.attribute_handle, value))

        # Bumble's client hands these only to its own subscribers; NimBLE reports all.
        client.on_att_handle_value_notification = on_notification  # type: ignore[method-assign,assignment]
        client.on_att_handle_value_indication = on_indication  # type: ignore[method-assign,assignment]

    def closed(self) -> None:
        self._characteristic_discovery = None

    # -- the calls ------------------------------------------------------------------

    def discover_services(self, conn_handle: int, uuid: UUID | None) -> None:
        link = self.radio.link(conn_handle)
        client = link.connection.gatt_client
        done = IRQ_GATTC_SERVICE_DONE

        async def run() -> None:
            found = await self._attempt(
                link, client.discover_service(uuid) if uuid else client.discover_services()
            )
            if isinstance(found, int):
                self._end(link, done, (conn_handle, found))
                return
            if self._still(link):
                for service in found:
                    self.radio.emit(
                        IRQ_GATTC_SERVICE_RESULT,
                        (
                            conn_handle,
                            service.handle,
                            service.end_group_handle,
                            display_uuid(service.uuid),
                        ),
                    )
            self._end(link, done, (conn_handle, STATUS_OK))

        self._start(link, run(), lambda status: self.radio.emit(done, (conn_handle, status)))

    def discover_characteristics(
        self, conn_handle: int, start: int, end: int, uuid: UUID | None
    ) -> None:
        link = self.radio.link(conn_handle)
        if self._characteristic_discovery is not None:
            raise BleError(errno.EBUSY, "a characteristic discovery is in progress")
        client = link.connection.gatt_client
        done = IRQ_GATTC_CHARACTERISTIC_DONE
        # The range as a service: Bumble then computes each one's end handle.
        scope = ServiceProxy(client, start, end, UUID.from_16_bits(0))  # type: ignore[no-untyped-call]

        async def run() -> None:
            try:
                found = await self._attempt(link, client.discover_characteristics([], scope))
                if isinstance(found, int):
                    self._end(link, done, (conn_handle, found))
                    return
                if self._still(link):
                    for c in found:
                        if uuid is not None and c.uuid != uuid:
                            continue
                        self.radio.emit(
                            IRQ_GATTC_CHARACTERISTIC_RESULT,
                            (
                                conn_handle,
                                c.end_group_handle,
                                c.handle,
                                int(c.properties),
                                display_uuid(c.uuid),
                            ),
                        )
                self._end(link, done, (conn_handle, STATUS_OK))
            finally:
                self._characteristic_discovery = None

        def failed(status: int) -> None:
            self._characteristic_discovery = None
            self.radio.emit(done, (conn_handle, status))

        self._characteristic_discovery = self._start(link, run(), failed)

    def discover_descriptors(self, conn_handle: int, start: int, end: int) -> None:
        link = self.radio.link(conn_handle)
        client = link.connection.gatt_client
        done = IRQ_GATTC_DESCRIPTOR_DONE

        async def run() -> None:
            found = await self._attempt(
                link, client.discover_descriptors(start_handle=start + 1, end_handle=end)
            )
            if isinstance(found, int):
                self._end(link, done, (conn_handle, found))
                return
            if self._still(link):
                for d in found:
                    self.radio.emit(
                        IRQ_GATTC_DESCRIPTOR_RESULT, (conn_handle, d.handle, display_uuid(d.type))
                    )
            self._end(link, done, (conn_handle, STATUS_OK))

        self._start(link, run(), lambda status: self.radio.emit(done, (conn_handle, status)))

    def read(self, conn_handle: int, value_handle: int) -> None:
        link = self.radio.link(conn_handle)
        client = link.connection.gatt_client
        done = IRQ_GATTC_READ_DONE

        async def run() -> None:
            value = await self._attempt(link, client.read_value(value_handle, no_long_read=True))
            if isinstance(value, int):
                self._end(link, done, (conn_handle, value_handle, value))
                return
            if self._still(link):
                self.radio.emit(IRQ_GATTC_READ_RESULT, (conn_handle, value_handle, bytes(value)))
            self._end(link, done, (conn_handle, value_handle, STATUS_OK))

        self._start(
            link, run(), lambda status: self.radio.emit(done, (conn_handle, value_handle, status))
        )

    def write(self, conn_handle: int, value_handle: int, data: bytes, mode: int) -> None:
        link = self.radio.link(conn_handle)
        if mode not in (WRITE_WITHOUT_RESPONSE, WRITE_WITH_RESPONSE):
            raise BleError(errno.EINVAL, "mode: 0 or 1")
        client = link.connection.gatt_client
        value = bytes(data)[: link.connection.att_mtu - 3]  # NimBLE cuts ATT PDUs to the MTU
        done = IRQ_GATTC_WRITE_DONE
        if mode == WRITE_WITHOUT_RESPONSE:
            self._start(link, self._command(link, client, value_handle, value), lambda status: None)
            return

        async def run() -> None:
            outcome = await self._attempt(
                link, client.write_value(value_handle, value, with_response=True)
            )
            status = outcome if isinstance(outcome, int) else STATUS_OK
            self._end(link, done, (conn_handle, value_handle, status))

        self._start(
            link, run(), lambda status: self.radio.emit(done, (conn_handle, value_handle, status))
        )

    def exchange_mtu(self, conn_handle: int) -> None:
        link = self.radio.link(conn_handle)
        if link.mtu_exchanged:
            raise BleError(errno.EALREADY, "the MTU was exchanged already")
        link.mtu_exchanged = True
        client = link.connection.gatt_client
        mtu = self.radio.preferred_mtu

        async def run() -> None:
            # The result is reported by the link's MTU update (_IRQ_MTU_EXCHANGED).
            await self._attempt(link, client.request_mtu(mtu))
            self._end(link, None, ())

        self._start(link, run(), lambda status: None)

    # -- internals ------------------------------------------------------------------

    def _start(
        self, link: Link, coroutine: Coroutine[Any, Any, None], failure: Failure
    ) -> asyncio.Task[None]:
        task = self.radio.require_active().spawn(coroutine)
        link.track(task, failure)
        return task

    async def _attempt(self, link: Link, operation: Awaitable[T]) -> T | int:
        """The procedure's result, or its failure status."""
        try:
            return await self.radio.require_active().wait(operation)
        except att.ATT_Error as e:
            return att_status(e.error_code)
        except (bumble_core.TimeoutError, TimeoutError):
            return STATUS_TIMEOUT
        except (BaseBumbleError, TransportLostError, BleError):
            return STATUS_NOT_CONNECTED

    async def _command(self, link: Link, client: Client, handle: int, value: bytes) -> None:
        await self._attempt(link, client.write_value(handle, value, with_response=False))
        self._end(link, None, ())

    def _still(self, link: Link) -> bool:
        """The current procedure has not been failed by a disconnection."""
        return asyncio.current_task() in link.pending

    def _end(self, link: Link, code: int | None, data: tuple[int, ...]) -> None:
        """The current procedure ends: report it (`code`), unless the link's drop has."""
        if link.done(asyncio.current_task()) and code is not None:
            self.radio.emit(code, data)
