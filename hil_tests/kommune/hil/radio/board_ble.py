"""A board's `bluetooth.BLE` (peripheral role) as a Bumble host on the air.

The emulated board's supervisor holds one `BoardBle` per board. It opens the
board's HCI transport on the air (`AirDevice.transport`) and behaves like
MicroPython's `bluetooth.BLE` on an ESP32 (NimBLE): the methods below take
and return what the MicroPython methods do, and what MicroPython raises as
`OSError(errno)` is raised as `BleError` (an `OSError`). Events reach
`on_event` as `BleEvent(code, data)` with MicroPython's IRQ codes and data
tuples; addresses are 6 `bytes` in display order (MicroPython's).

    ble = BoardBle(device.transport, device.address, on_event=events.append)
    await ble.active(True)
    ((tx, rx),) = ble.gatts_register_services([(SERVICE, [(TX, 0x12), (RX, 0x08)])])
    await ble.gap_advertise(100_000, adv_data)
    ...                                   # BleEvent(IRQ_CENTRAL_CONNECT, (1, 1, b"..."))
    ble.gatts_notify(1, tx, b"hi")
    await ble.close()

Only `active` and `gap_advertise` wait for the controller (they are
coroutines); the other calls return at once, as on the board, and what they
send goes out from tasks in call order. Values are JSON-able except that
bytes stay `bytes` (the rig wire carries them raw). Events and their codes
are in `board_ble_events`, the value store (buffers, append mode) in
`board_ble_gatt`. Not modelled: the central role, scanning, L2CAP channels,
pairing/bonding and the security flags, `_IRQ_GATTS_READ_REQUEST` (STM32 only
in MicroPython), RPA/NRPA address modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from bumble import att, gatt, hci
from bumble.core import BaseBumbleError
from bumble.device import AdvertisingType, Connection, Device, DeviceConfiguration
from bumble.transport import open_transport
from bumble.transport.common import Transport

from kommune.hil.radio.board_ble_events import (
    IRQ_CENTRAL_CONNECT,
    IRQ_CENTRAL_DISCONNECT,
    IRQ_CONNECTION_UPDATE,
    IRQ_GATTS_INDICATE_DONE,
    IRQ_GATTS_WRITE,
    IRQ_MTU_EXCHANGED,
    STATUS_NOT_CONNECTED,
    STATUS_OK,
    STATUS_TIMEOUT,
    BleEvent,
    EventSink,
    display_address,
)
from kommune.hil.radio.board_ble_gatt import BleError, GattTable, reset_server

logger = logging.getLogger(__name__)

ADDR_MODE_PUBLIC = 0
ADDR_MODE_RANDOM = 1
DEFAULT_GAP_NAME = b"ESP32"  # MICROPY_PY_BLUETOOTH_DEFAULT_GAP_NAME on the ESP32 port
DEFAULT_MTU = 256  # NimBLE's preferred ATT MTU (CONFIG_BT_NIMBLE_ATT_PREFERRED_MTU)
DEFAULT_RXBUF = 128  # MICROPY_PY_BLUETOOTH_RINGBUF_SIZE
GAP_NAME_MAX = 31  # CONFIG_BT_NIMBLE_GAP_DEVICE_NAME_MAX_LEN
ADV_DATA_MAX = 31  # legacy advertising PDU payload
ADV_UNIT_US = 625
ADV_DEFAULT_UNITS = 48  # NimBLE's default when the interval rounds to 0 (30 ms)
ADV_MIN_UNITS, ADV_MAX_UNITS = 0x20, 0x4000
REMOTE_USER_TERMINATED = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR

ConfigValue = int | bytes | tuple[int, bytes]


def random_static_address(public: str) -> hci.Address:
    """The board's random static address: stable per board (derived from its public one)."""
    digest = bytearray(hashlib.sha256(b"kommune-static:" + public.encode()).digest()[:6])
    digest[5] |= 0xC0  # static random: the two most significant bits set
    return hci.Address(bytes(digest), hci.Address.RANDOM_DEVICE_ADDRESS)


class BoardBle:
    """MicroPython's `bluetooth.BLE` for one board, on the air's HCI transport."""

    def __init__(
        self,
        transport: str,
        address: str,
        *,
        on_event: EventSink | None = None,
        database_hash: bool = False,
    ) -> None:
        self.transport_spec = transport
        self.public_address = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.random_address = random_static_address(address)
        self.on_event = on_event
        # NimBLE on the ESP32 builds without GATT caching: no Database Hash.
        self._database_hash = database_hash
        self._transport: Transport | None = None
        self._device: Device | None = None
        self._table = GattTable(self._on_write)
        self._connections: dict[int, Connection] = {}
        self._indications: dict[int, dict[asyncio.Task[None], int]] = {}  # conn -> task -> handle
        self._tasks: set[asyncio.Task[None]] = set()
        self._gap_name = DEFAULT_GAP_NAME
        self._mtu = DEFAULT_MTU
        self._rxbuf = DEFAULT_RXBUF
        self._addr_mode = ADDR_MODE_PUBLIC
        self._adv_data = b""
        self._resp_data = b""
        self._deactivating = False

    async def __aenter__(self) -> BoardBle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Power the radio off (as `active(False)`) and drop the transport."""
        await self.active(False)

    async def power_cut(self) -> None:
        """The chip lost power (or reset): the controller falls silent without a
        goodbye, so connected centrals see their link time out."""
        if self._device is not None:
            await self._shut_down(graceful=False)

    # -- configuration ------------------------------------------------------------

    async def active(self, state: bool | None = None) -> bool:
        """`BLE.active([state])`: switch the radio on or off; the state after.

        As in MicroPython, active(True) on an active radio restarts the stack:
        connections, advertising and services are gone."""
        if state is not None and self._device is not None:
            await self._power_off()
        if state:
            await self._power_on()
        return self._device is not None

    @property
    def is_active(self) -> bool:
        return self._device is not None

    def config_get(self, name: str) -> ConfigValue:
        """`BLE.config(name)`: gap_name (bytes), mac ((addr_type, addr)), mtu, rxbuf."""
        if name == "gap_name":
            return self._gap_name
        if name == "mac":
            self._require_active()
            own = (
                self.public_address if self._addr_mode == ADDR_MODE_PUBLIC else self.random_address
            )
            return display_address(own)
        if name == "mtu":
            return self._mtu
        if name == "rxbuf":
            return self._rxbuf
        raise ValueError("unknown config param")

    def config_set(self, **values: int | bytes | str) -> None:
        """`BLE.config(gap_name=..., mtu=..., rxbuf=..., addr_mode=...)`."""
        for name, value in values.items():
            if name == "gap_name":
                raw = value.encode() if isinstance(value, str) else value
                if not isinstance(raw, bytes) or len(raw) > GAP_NAME_MAX:
                    raise BleError(errno.EINVAL, "gap_name: up to 31 bytes")
                self._gap_name = raw
            elif name == "mtu":
                if not isinstance(value, int) or not att.ATT_DEFAULT_MTU <= value <= 517:
                    raise BleError(errno.EINVAL, "mtu: 23..517")
                self._mtu = value
                if self._device is not None:
                    self._device.gatt_server.max_mtu = value
            elif name == "rxbuf":
                # The VM's event ring buffer: nothing to do here but remember it.
                if not isinstance(value, int) or not 16 <= value <= 0xFFFF:
                    raise ValueError("rxbuf: 16..65535")
                self._rxbuf = value
            elif name == "addr_mode":
                if value not in (ADDR_MODE_PUBLIC, ADDR_MODE_RANDOM):
                    raise ValueError("addr_mode: only 0 (public) and 1 (random static) modelled")
                assert isinstance(value, int)
                self._addr_mode = value
            else:
                raise ValueError("unknown config param")

    # -- GAP ----------------------------------------------------------------------

    async def gap_advertise(
        self,
        interval_us: int | None,
        adv_data: bytes | None = None,
        resp_data: bytes | None = None,
        connectable: bool = True,
    ) -> None:
        """`BLE.gap_advertise`: None stops; None data reuses the previous call's."""
        device = self._require_active()
        await device.stop_advertising()
        if interval_us is None:
            return
        for data in (adv_data, resp_data):
            if data is not None and len(data) > ADV_DATA_MAX:
                raise BleError(errno.EINVAL, "advertising data longer than 31 bytes")
        units = interval_us // ADV_UNIT_US or ADV_DEFAULT_UNITS
        if not ADV_MIN_UNITS <= units <= ADV_MAX_UNITS:
            raise BleError(errno.EINVAL, "interval_us: 20 ms .. 10.24 s")
        if adv_data is not None:
            self._adv_data = bytes(adv_data)
        if resp_data is not None:
            self._resp_data = bytes(resp_data)
        if connectable:
            kind = AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
        elif self._resp_data:
            kind = AdvertisingType.UNDIRECTED_SCANNABLE
        else:
            kind = AdvertisingType.UNDIRECTED
        interval_ms = units * ADV_UNIT_US / 1000
        await device.start_advertising(
            advertising_type=kind,
            own_address_type=(
                hci.OwnAddressType.PUBLIC
                if self._addr_mode == ADDR_MODE_PUBLIC
                else hci.OwnAddressType.RANDOM
            ),
            advertising_data=self._adv_data,
            scan_response_data=self._resp_data,
            advertising_interval_min=interval_ms,
            advertising_interval_max=interval_ms,
        )

    @property
    def advertising(self) -> bool:
        return self._device is not None and bool(self._device.is_advertising)

    def gap_disconnect(self, conn_handle: int) -> bool:
        """`BLE.gap_disconnect`: start it (IRQ_CENTRAL_DISCONNECT follows); False if
        there is no such connection."""
        self._require_active()
        connection = self._connections.get(conn_handle)
        if connection is None:
            return False
        self._spawn(self._disconnect(connection))
        return True

    async def _disconnect(self, connection: Connection) -> None:
        with contextlib.suppress(BaseBumbleError):
            await connection.disconnect(REMOTE_USER_TERMINATED)

    # -- GATT server ----------------------------------------------------------------

    def gatts_register_services(self, definition: Sequence[Any]) -> tuple[tuple[int, ...], ...]:
        """`BLE.gatts_register_services`: replaces every service; the value handles."""
        device = self._require_active()
        if device.is_advertising or self._connections:
            raise BleError(errno.EBUSY, "stop advertising and disconnect before registering")
        table = GattTable(self._on_write)
        services, handles = table.build(definition)
        self._reset_server(device)
        device.gatt_server.add_services(services)
        self._table = table
        return handles()

    def gatts_read(self, value_handle: int) -> bytes:
        """`BLE.gatts_read`: the local value (taken, in append mode)."""
        self._require_active()
        return self._table.buffer(value_handle).local_read()

    def gatts_write(self, value_handle: int, data: bytes, send_update: bool = False) -> None:
        """`BLE.gatts_write`; with `send_update`, subscribed centrals get a notification
        (or an indication, if that is what they subscribed to)."""
        device = self._require_active()
        buffer = self._table.buffer(value_handle)
        buffer.local_write(bytes(data))
        if not send_update or not self._table.is_characteristic(value_handle):
            return
        characteristic = self._table.characteristic(value_handle)
        for connection in list(self._connections.values()):
            subscriptions = device.gatt_server.subscribers.get(connection, {})
            cccd = subscriptions.get(characteristic.handle, b"\0\0")
            if cccd[0] & gatt.ClientCharacteristicConfigurationBits.NOTIFICATION:
                self._start_notification(connection, characteristic, buffer.data)
            elif cccd[0] & gatt.ClientCharacteristicConfigurationBits.INDICATION:
                self._start_indication(connection, characteristic, buffer.data)

    def gatts_notify(self, conn_handle: int, value_handle: int, data: bytes | None = None) -> None:
        """`BLE.gatts_notify`: sent whether or not the central subscribed; `data`
        (if given) is sent instead of the local value, which stays as it is."""
        self._start_notification(*self._target(conn_handle, value_handle, data))

    def gatts_indicate(
        self, conn_handle: int, value_handle: int, data: bytes | None = None
    ) -> None:
        """`BLE.gatts_indicate`: IRQ_GATTS_INDICATE_DONE follows, with status 0 once
        the central confirms."""
        self._start_indication(*self._target(conn_handle, value_handle, data))

    def gatts_set_buffer(self, value_handle: int, size: int, append: bool = False) -> None:
        """`BLE.gatts_set_buffer(value_handle, len, append)`: resize and empty it."""
        self._require_active()
        if not 0 <= size <= 0xFFFF:
            raise BleError(errno.EINVAL, "len: 0..65535")
        self._table.buffer(value_handle).resize(size, append)

    # -- internals ------------------------------------------------------------------

    def _require_active(self) -> Device:
        if self._device is None:
            raise BleError(errno.ENODEV, "BLE is not active")
        return self._device

    def _target(
        self, conn_handle: int, value_handle: int, data: bytes | None
    ) -> tuple[Connection, gatt.Characteristic[bytes], bytes]:
        self._require_active()
        connection = self._connections.get(conn_handle)
        if connection is None:
            raise BleError(errno.ENOTCONN, f"no connection {conn_handle}")
        characteristic = self._table.characteristic(value_handle)
        value = self._table.buffer(value_handle).data if data is None else bytes(data)
        return connection, characteristic, value

    def _start_notification(
        self, connection: Connection, characteristic: gatt.Characteristic[bytes], value: bytes
    ) -> None:
        # Sent from a task, in call order: the call returns at once, as NimBLE's
        # does once the PDU is queued.
        self._spawn(self._notify(self._require_active(), connection, characteristic, value))

    async def _notify(
        self,
        device: Device,
        connection: Connection,
        characteristic: gatt.Characteristic[bytes],
        value: bytes,
    ) -> None:
        with contextlib.suppress(BaseBumbleError):  # the link went down meanwhile
            # force: MicroPython notifies whether or not the central subscribed.
            await device.notify_subscriber(connection, characteristic, value, force=True)

    def _start_indication(
        self, connection: Connection, characteristic: gatt.Characteristic[bytes], value: bytes
    ) -> None:
        device = self._require_active()
        pending = self._indications.setdefault(connection.handle, {})
        task = self._spawn(self._indicate(device, connection, characteristic, value))
        pending[task] = characteristic.handle

    async def _indicate(
        self,
        device: Device,
        connection: Connection,
        characteristic: gatt.Characteristic[bytes],
        value: bytes,
    ) -> None:
        status = STATUS_OK
        try:
            await device.indicate_subscriber(connection, characteristic, value, force=True)
        except TimeoutError:
            status = STATUS_TIMEOUT
        except BaseBumbleError:
            status = STATUS_NOT_CONNECTED
        task = asyncio.current_task()
        pending = self._indications.get(connection.handle, {})
        if task is not None and pending.pop(task, None) is not None:
            # (else the disconnection has reported it already)
            self._emit(IRQ_GATTS_INDICATE_DONE, (connection.handle, characteristic.handle, status))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _emit(self, code: int, data: tuple[int | bytes, ...], written: bytes = b"") -> None:
        if self.on_event is not None and not self._deactivating:
            self.on_event(BleEvent(code, data, written))

    def _on_write(self, conn_handle: int, attr_handle: int, value: bytes) -> None:
        self._emit(IRQ_GATTS_WRITE, (conn_handle, attr_handle), value)

    def _on_connection(self, connection: Connection) -> None:
        if connection.role != hci.Role.PERIPHERAL:
            return  # the central role is not modelled
        handle = connection.handle
        self._connections[handle] = connection

        def on_mtu() -> None:
            self._emit(IRQ_MTU_EXCHANGED, (handle, connection.att_mtu))

        def on_parameters() -> None:
            p = connection.parameters
            self._emit(
                IRQ_CONNECTION_UPDATE,
                (
                    handle,
                    round(p.connection_interval / 1.25),
                    p.peripheral_latency,
                    round(p.supervision_timeout / 10),
                    STATUS_OK,
                ),
            )

        def on_disconnection(_reason: int) -> None:
            self._connections.pop(handle, None)
            # NimBLE fails the pending indications before it reports the disconnection.
            for task, value_handle in self._indications.pop(handle, {}).items():
                task.cancel()
                self._emit(IRQ_GATTS_INDICATE_DONE, (handle, value_handle, STATUS_NOT_CONNECTED))
            self._emit(IRQ_CENTRAL_DISCONNECT, (handle, *display_address(connection.peer_address)))

        connection.on(Connection.EVENT_CONNECTION_ATT_MTU_UPDATE, on_mtu)
        connection.on(Connection.EVENT_CONNECTION_PARAMETERS_UPDATE, on_parameters)
        connection.on(Connection.EVENT_DISCONNECTION, on_disconnection)
        self._emit(IRQ_CENTRAL_CONNECT, (handle, *display_address(connection.peer_address)))

    def _reset_server(self, device: Device) -> None:
        reset_server(
            device.gatt_server, lambda: self._gap_name, self._mtu, database_hash=self._database_hash
        )

    async def _power_on(self) -> None:
        transport = await open_transport(self.transport_spec)
        config = DeviceConfiguration(
            name=DEFAULT_GAP_NAME.decode(),
            address=self.random_address,
            gap_service_enabled=False,
            gatt_service_enabled=False,
        )
        device = Device.from_config_with_hci(config, transport.source, transport.sink)
        try:
            await device.power_on()
        except BaseException:
            await transport.close()
            raise
        # NimBLE comes up with its defaults on every activation.
        self._gap_name = DEFAULT_GAP_NAME
        self._mtu = DEFAULT_MTU
        self._adv_data = self._resp_data = b""
        self._table = GattTable(self._on_write)
        self._reset_server(device)
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        self._transport, self._device = transport, device

    async def _power_off(self) -> None:
        await self._shut_down(graceful=True)

    async def _shut_down(self, *, graceful: bool) -> None:
        device, transport = self._device, self._transport
        assert device is not None and transport is not None
        # MicroPython reports nothing once deactivating: no IRQs from here on.
        self._deactivating = True
        try:
            if graceful:
                with contextlib.suppress(BaseBumbleError, OSError):
                    await device.stop_advertising()
                for connection in list(self._connections.values()):
                    with contextlib.suppress(BaseBumbleError, OSError, TimeoutError):
                        async with asyncio.timeout(2.0):
                            await connection.disconnect(REMOTE_USER_TERMINATED)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if graceful:
                with contextlib.suppress(BaseBumbleError, OSError):
                    await device.power_off()
        finally:
            device.remove_listener(Device.EVENT_CONNECTION, self._on_connection)
            self._device = self._transport = None
            self._connections.clear()
            self._indications.clear()
            self._deactivating = False
            await transport.close()
