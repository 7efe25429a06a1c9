"""The board BLE model's GATT server at run time: `gatts_*` as MicroPython on NimBLE.

The value store and the attribute table are `board_ble_gatt`; this module
registers them, serves the firmware's calls and sends what they send:
notifications and indications go out from tasks in call order (the call
returns at once, as NimBLE's does once the PDU is queued), cut to the link's
MTU as NimBLE cuts every ATT PDU; an indication ends with
_IRQ_GATTS_INDICATE_DONE (0 once confirmed, 13 on the ATT timeout, 7 when the
link drops first, before its disconnection IRQ). It also tells the table what
a link's security is (`board_ble_gatt.LinkSecurity`).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Sequence
from typing import Any

from bumble import gatt
from bumble.core import BaseBumbleError
from bumble.device import Connection, Device
from bumble.transport.common import TransportLostError

from kommune.hil.radio.board_ble_events import (
    IRQ_GATTS_INDICATE_DONE,
    IRQ_GATTS_WRITE,
    STATUS_NOT_CONNECTED,
    STATUS_OK,
    STATUS_TIMEOUT,
)
from kommune.hil.radio.board_ble_gatt import BleError, GattTable, reset_server
from kommune.hil.radio.board_ble_links import Link, Radio
from kommune.hil.radio.board_ble_security import Security
from kommune.hil.radio.board_ble_stack import HostStack


class GattServer:
    """The `gatts_*` calls of one board."""

    def __init__(
        self,
        radio: Radio,
        security: Security,
        gap_name: Callable[[], bytes],
        *,
        database_hash: bool,
    ) -> None:
        self.radio = radio
        self.security = security
        self._gap_name = gap_name
        # NimBLE on the ESP32 builds without GATT caching: no Database Hash.
        self._database_hash = database_hash
        self._table = GattTable(self._on_write, self)

    def reset(self, device: Device) -> None:
        """The stack's own services only, and an empty value store (a fresh start)."""
        self._table = GattTable(self._on_write, self)
        reset_server(
            device.gatt_server,
            self._gap_name,
            self.radio.preferred_mtu,
            database_hash=self._database_hash,
        )

    # -- the calls ------------------------------------------------------------------

    def register_services(self, definition: Sequence[Any]) -> tuple[tuple[int, ...], ...]:
        stack = self.radio.require_active()
        if stack.advertising or stack.scanning or self.radio.links():
            raise BleError(errno.EBUSY, "stop advertising and disconnect before registering")
        server = stack.device.gatt_server
        table = GattTable(self._on_write, self)
        services, handles = table.build(definition, server)
        self.reset(stack.device)
        server.add_services(services)
        self._table = table
        return handles()

    def read(self, value_handle: int) -> bytes:
        self.radio.require_active()
        return self._table.buffer(value_handle).local_read()

    def write(self, value_handle: int, data: bytes, send_update: bool) -> None:
        stack = self.radio.require_active()
        buffer = self._table.buffer(value_handle)
        buffer.local_write(bytes(data))
        if not send_update or not self._table.is_characteristic(value_handle):
            return
        characteristic = self._table.characteristic(value_handle)
        for link in self.radio.links():
            subscriptions = stack.device.gatt_server.subscribers.get(link.connection, {})
            cccd = subscriptions.get(characteristic.handle, b"\0\0")
            value = buffer.data[: link.connection.att_mtu - 3]
            if cccd[0] & gatt.ClientCharacteristicConfigurationBits.NOTIFICATION:
                self._start_notification(link, characteristic, value)
            elif cccd[0] & gatt.ClientCharacteristicConfigurationBits.INDICATION:
                self._start_indication(link, characteristic, value)

    def notify(self, conn_handle: int, value_handle: int, data: bytes | None) -> None:
        self._start_notification(*self._target(conn_handle, value_handle, data))

    def indicate(self, conn_handle: int, value_handle: int, data: bytes | None) -> None:
        self._start_indication(*self._target(conn_handle, value_handle, data))

    def set_buffer(self, value_handle: int, size: int, append: bool) -> None:
        self.radio.require_active()
        if not 0 <= size <= 0xFFFF:
            raise BleError(errno.EINVAL, "len: 0..65535")
        self._table.buffer(value_handle).resize(size, append)

    # -- what the table needs to know of a link (board_ble_gatt.LinkSecurity) ----------

    def encrypted(self, connection: Connection) -> bool:
        return bool(connection.is_encrypted)

    def authenticated(self, connection: Connection) -> bool:
        link = self.radio.find_link(connection.handle)
        return link is not None and bool(connection.is_encrypted) and link.authenticated

    async def bonded(self, connection: Connection) -> bool:
        keys = await self.security.keystore.get(str(connection.peer_address))
        return keys is not None and bool(keys.ltk or keys.ltk_central or keys.ltk_peripheral)

    # -- internals ------------------------------------------------------------------

    def _on_write(self, conn_handle: int, attr_handle: int, value: bytes) -> None:
        self.radio.emit(IRQ_GATTS_WRITE, (conn_handle, attr_handle), value)

    def _target(
        self, conn_handle: int, value_handle: int, data: bytes | None
    ) -> tuple[Link, gatt.Characteristic[bytes], bytes]:
        link = self.radio.link(conn_handle)
        characteristic = self._table.characteristic(value_handle)
        value = self._table.buffer(value_handle).data if data is None else bytes(data)
        return link, characteristic, value[: link.connection.att_mtu - 3]

    def _start_notification(
        self, link: Link, characteristic: gatt.Characteristic[bytes], value: bytes
    ) -> None:
        stack = self.radio.require_active()
        stack.spawn(self._notify(stack, link.connection, characteristic, value))

    async def _notify(
        self,
        stack: HostStack,
        connection: Connection,
        characteristic: gatt.Characteristic[bytes],
        value: bytes,
    ) -> None:
        try:
            # force: MicroPython notifies whether or not the central subscribed.
            await stack.wait(
                stack.device.notify_subscriber(connection, characteristic, value, force=True)
            )
        except (BaseBumbleError, TransportLostError):
            pass  # the link (or the radio) went down meanwhile

    def _start_indication(
        self, link: Link, characteristic: gatt.Characteristic[bytes], value: bytes
    ) -> None:
        stack = self.radio.require_active()
        handle = characteristic.handle

        def failure(status: int) -> None:
            self.radio.emit(IRQ_GATTS_INDICATE_DONE, (link.handle, handle, status))

        self.radio.spawn_on(link, self._indicate(stack, link, characteristic, value), failure)

    async def _indicate(
        self,
        stack: HostStack,
        link: Link,
        characteristic: gatt.Characteristic[bytes],
        value: bytes,
    ) -> None:
        status = STATUS_OK
        try:
            await stack.wait(
                stack.device.indicate_subscriber(link.connection, characteristic, value, force=True)
            )
        except TimeoutError:
            status = STATUS_TIMEOUT
        except (BaseBumbleError, TransportLostError):
            status = STATUS_NOT_CONNECTED
        if link.done(asyncio.current_task()):  # (else the disconnection reported it)
            self.radio.emit(IRQ_GATTS_INDICATE_DONE, (link.handle, characteristic.handle, status))
