"""A board's `bluetooth.BLE` as a Bumble host on the air.

The emulated board's supervisor holds one `BoardBle` per board. It opens the
board's HCI transport on the air (`AirDevice.transport`) and behaves like
MicroPython's `bluetooth.BLE` on an ESP32 (NimBLE): the methods below take
and return what the MicroPython methods do, and what MicroPython raises as
`OSError(errno)` is raised as `BleError` (an `OSError`). Events reach
`on_event` as `BleEvent(code, data)` with MicroPython's IRQ codes and data
tuples; addresses are 6 `bytes` in display order (MicroPython's). The two
IRQs whose return value the stack uses (the bond store's _IRQ_GET_SECRET and
_IRQ_SET_SECRET) go to `ask`, which returns the firmware's answer.

    ble = BoardBle(device.transport, device.address, on_event=events.append, ask=store)
    await ble.active(True)
    ((tx, rx),) = ble.gatts_register_services([(SERVICE, [(TX, 0x12), (RX, 0x08)])])
    await ble.gap_advertise(100_000, adv_data)
    ...                                   # BleEvent(IRQ_CENTRAL_CONNECT, (1, 1, b"..."))
    ble.gatts_notify(1, tx, b"hi")
    await ble.close()

The calls that wait for the controller are coroutines (`active`,
`gap_advertise`, `gap_scan`, `gap_connect`) and run one at a time; the others
return at once, as on the board, and their results come as IRQs. This module
holds the life of the radio, its configuration, the advertiser and the links;
the rest is in one module each: `board_ble_stack` (the Bumble host and its
clean close), `board_ble_server` and `board_ble_gatt` (GATT server, value
store, security flags), `board_ble_central` (scanning, connecting),
`board_ble_gattc` (GATT client), `board_ble_security` (pairing, bonding, the
firmware's key store), `board_ble_address` (address modes), `board_ble_events`
(IRQ codes). Not modelled: L2CAP channels (the ESP32 port has none),
`_IRQ_GATTS_READ_REQUEST` (STM32 only), `hci_cmd`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from bumble import att, hci
from bumble.core import BaseBumbleError
from bumble.device import (
    AdvertisingEventProperties,
    AdvertisingParameters,
    Connection,
    Device,
    DeviceConfiguration,
)

from kommune.hil.radio.board_ble_address import OwnAddress
from kommune.hil.radio.board_ble_central import Central
from kommune.hil.radio.board_ble_events import (
    IRQ_CENTRAL_CONNECT,
    IRQ_CENTRAL_DISCONNECT,
    IRQ_CONNECTION_UPDATE,
    IRQ_MTU_EXCHANGED,
    IRQ_PERIPHERAL_CONNECT,
    IRQ_PERIPHERAL_DISCONNECT,
    STATUS_NOT_CONNECTED,
    STATUS_OK,
    Asker,
    BleEvent,
    EventSink,
    display_address,
)
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_gattc import GattClient, parse_raw_uuid
from kommune.hil.radio.board_ble_links import EventData, Failure, Link, not_connected
from kommune.hil.radio.board_ble_security import Security
from kommune.hil.radio.board_ble_server import GattServer
from kommune.hil.radio.board_ble_stack import REMOTE_USER_TERMINATED, HostStack

logger = logging.getLogger(__name__)

# CONFIG_BT_NIMBLE_SVC_GAP_DEVICE_NAME in MicroPython's ports/esp32/boards/sdkconfig.ble
DEFAULT_GAP_NAME = b"MPY ESP32"
DEFAULT_MTU = 256  # NimBLE's preferred ATT MTU (CONFIG_BT_NIMBLE_ATT_PREFERRED_MTU)
GAP_NAME_MAX = 31  # CONFIG_BT_NIMBLE_GAP_DEVICE_NAME_MAX_LEN
ADV_DATA_MAX = 31  # legacy advertising PDU payload
ADV_UNIT_US = 625
ADV_DEFAULT_UNITS = 48  # NimBLE's default when the interval rounds to 0 (30 ms)
ADV_MIN_UNITS, ADV_MAX_UNITS = 0x20, 0x4000
MTU_MIN, MTU_MAX = att.ATT_DEFAULT_MTU, 517

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
        ask: Asker | None = None,
        database_hash: bool = False,
    ) -> None:
        self.transport_spec = transport
        self.public_address = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.random_address = random_static_address(address)
        self.on_event = on_event
        self._ask = ask
        self._lock = asyncio.Lock()  # controller operations, one at a time
        self._stack: HostStack | None = None
        self._links: dict[int, Link] = {}  # conn_handle -> link, both roles
        self.central = Central(self)
        self.gattc = GattClient(self)
        self.security = Security(self)
        self.server = GattServer(
            self, self.security, lambda: self._gap_name, database_hash=database_hash
        )
        self._gap_name = DEFAULT_GAP_NAME
        self._mtu = DEFAULT_MTU
        self.own_address = OwnAddress(self.public_address, self.random_address)
        self._adv_data = b""
        self._resp_data = b""
        self._quiet = False  # deactivating: MicroPython reports nothing from here on

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
        async with self._lock:
            if self._stack is not None:
                await self._shut_down(graceful=False)

    # -- configuration ------------------------------------------------------------

    async def active(self, state: bool | None = None) -> bool:
        """`BLE.active([state])`: switch the radio on or off; the state after.

        As in MicroPython, active(True) on an active radio restarts the stack:
        connections, advertising and services are gone."""
        async with self._lock:
            if state is not None and self._stack is not None:
                await self._shut_down(graceful=True)
            if state:
                await self._power_on()
            return self._stack is not None

    @property
    def is_active(self) -> bool:
        return self._stack is not None

    def config_get(self, name: str) -> ConfigValue:
        """`BLE.config(name)`: gap_name (bytes), mac ((addr_type, addr)), mtu."""
        if name == "gap_name":
            return self._gap_name
        if name == "mac":
            self.require_active()
            return self.own_address.mac()
        if name == "mtu":
            self.require_active()
            return self._mtu
        # Not "rxbuf": the ESP32 port runs IRQs synchronously and has no event buffer.
        raise ValueError("unknown config param")

    def config_set(self, **values: int | bytes | str) -> None:
        """`BLE.config(gap_name=..., mtu=..., addr_mode=...)`."""
        for name, value in values.items():
            if name == "gap_name":
                raw = value.encode() if isinstance(value, str) else value
                if not isinstance(raw, bytes) or len(raw) > GAP_NAME_MAX:
                    raise BleError(errno.EINVAL, "gap_name: up to 31 bytes")
                self._gap_name = raw
            elif name == "mtu":
                stack = self.require_active()
                if not isinstance(value, int) or not MTU_MIN <= value <= MTU_MAX:
                    raise BleError(errno.EINVAL, f"mtu: {MTU_MIN}..{MTU_MAX}")
                self._mtu = value
                stack.device.gatt_server.max_mtu = value
            elif self.security.config_set(name, value):
                pass  # bond, mitm, io, le_secure
            elif name == "addr_mode":
                self.require_active()
                self.own_address.set_mode(value)
                self.security.identity_public = self.own_address.identity_public
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
        async with self._lock:
            stack = self.require_active()
            await stack.stop_advertising()
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
            # As NimBLE's legacy advertising: ADV_IND, else ADV_SCAN_IND with a
            # scan response, else ADV_NONCONN_IND.
            scannable = connectable or bool(self._resp_data)
            interval_ms = units * ADV_UNIT_US / 1000
            own_address_type = await self.use_own_address()
            parameters = AdvertisingParameters(
                advertising_event_properties=AdvertisingEventProperties(
                    is_connectable=connectable, is_scannable=scannable, is_legacy=True
                ),
                primary_advertising_interval_min=interval_ms,
                primary_advertising_interval_max=interval_ms,
                own_address_type=own_address_type,
            )
            await stack.start_advertising(
                parameters, self._adv_data, self._resp_data if scannable else b""
            )

    @property
    def advertising(self) -> bool:
        return self._stack is not None and self._stack.advertising

    def gap_disconnect(self, conn_handle: int) -> bool:
        """`BLE.gap_disconnect`: start it (IRQ_CENTRAL_DISCONNECT follows); False if
        there is no such connection."""
        stack = self.require_active()
        link = self._links.get(conn_handle)
        if link is None:
            return False
        stack.spawn(self._disconnect(link.connection))
        return True

    async def _disconnect(self, connection: Connection) -> None:
        try:
            await self.require_active().wait(connection.disconnect(REMOTE_USER_TERMINATED))
        except (BaseBumbleError, BleError):
            pass  # the link ended meanwhile: its disconnection event says so

    # -- observer and central (board_ble_central) --------------------------------------

    async def gap_scan(
        self,
        duration_ms: int | None = 0,
        interval_us: int = 1_280_000,
        window_us: int = 11_250,
        active: bool = False,
    ) -> None:
        """`BLE.gap_scan`: None stops, 0 scans until stopped."""
        await self.central.gap_scan(duration_ms, interval_us, window_us, active)

    async def gap_connect(
        self,
        addr_type: int | None,
        addr: bytes = bytes(6),
        scan_duration_ms: int = 2000,
        min_conn_interval_us: int = 0,
        max_conn_interval_us: int = 0,
    ) -> None:
        """`BLE.gap_connect`; `gap_connect(None)` cancels the attempt in progress."""
        await self.central.gap_connect(
            addr_type, addr, scan_duration_ms, min_conn_interval_us, max_conn_interval_us
        )

    # -- GATT client (board_ble_gattc) ------------------------------------------------

    def gattc_discover_services(self, conn_handle: int, uuid: bytes | None = None) -> None:
        """`uuid`: `bytes(bluetooth.UUID(...))`, little-endian, or None."""
        self.gattc.discover_services(conn_handle, parse_raw_uuid(uuid))

    def gattc_discover_characteristics(
        self, conn_handle: int, start_handle: int, end_handle: int, uuid: bytes | None = None
    ) -> None:
        self.gattc.discover_characteristics(
            conn_handle, start_handle, end_handle, parse_raw_uuid(uuid)
        )

    def gattc_discover_descriptors(
        self, conn_handle: int, start_handle: int, end_handle: int
    ) -> None:
        self.gattc.discover_descriptors(conn_handle, start_handle, end_handle)

    def gattc_read(self, conn_handle: int, value_handle: int) -> None:
        self.gattc.read(conn_handle, value_handle)

    def gattc_write(self, conn_handle: int, value_handle: int, data: bytes, mode: int = 0) -> None:
        self.gattc.write(conn_handle, value_handle, data, mode)

    def gattc_exchange_mtu(self, conn_handle: int) -> None:
        self.gattc.exchange_mtu(conn_handle)

    # -- pairing (board_ble_security) -------------------------------------------------

    def gap_pair(self, conn_handle: int) -> None:
        """`BLE.gap_pair`: _IRQ_ENCRYPTION_UPDATE follows (see board_ble_security)."""
        self.security.gap_pair(conn_handle)

    def gap_passkey(self, conn_handle: int, action: int, passkey: int) -> None:
        """`BLE.gap_passkey`: the answer to an _IRQ_PASSKEY_ACTION."""
        self.security.gap_passkey(conn_handle, action, passkey)

    # -- GATT server (board_ble_server) ---------------------------------------------------

    def gatts_register_services(self, definition: Sequence[Any]) -> tuple[tuple[int, ...], ...]:
        """`BLE.gatts_register_services`: replaces every service; the value handles."""
        return self.server.register_services(definition)

    def gatts_read(self, value_handle: int) -> bytes:
        """`BLE.gatts_read`: the local value (taken, in append mode)."""
        return self.server.read(value_handle)

    def gatts_write(self, value_handle: int, data: bytes, send_update: bool = False) -> None:
        """`BLE.gatts_write`; with `send_update`, subscribed centrals get a notification
        (or an indication, if that is what they subscribed to)."""
        self.server.write(value_handle, data, send_update)

    def gatts_notify(self, conn_handle: int, value_handle: int, data: bytes | None = None) -> None:
        """`BLE.gatts_notify`: sent whether or not the central subscribed; `data`
        (if given) is sent instead of the local value, which stays as it is."""
        self.server.notify(conn_handle, value_handle, data)

    def gatts_indicate(
        self, conn_handle: int, value_handle: int, data: bytes | None = None
    ) -> None:
        """`BLE.gatts_indicate`: IRQ_GATTS_INDICATE_DONE follows, with status 0 once
        the central confirms."""
        self.server.indicate(conn_handle, value_handle, data)

    def gatts_set_buffer(self, value_handle: int, size: int, append: bool = False) -> None:
        """`BLE.gatts_set_buffer(value_handle, len, append)`: resize and empty it."""
        self.server.set_buffer(value_handle, size, append)

    # -- internals ------------------------------------------------------------------

    def require_active(self) -> HostStack:
        if self._stack is None:
            raise BleError(errno.ENODEV, "BLE is not active")
        return self._stack

    async def use_own_address(self) -> hci.OwnAddressType:
        """Put the address of the mode in the controller (see board_ble_address)."""
        return await self.own_address.apply(self.require_active())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.require_active().spawn(coroutine)

    # -- what the role modules use (board_ble_links.Radio) ------------------------------

    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    @property
    def preferred_mtu(self) -> int:
        return self._mtu

    @property
    def ask(self) -> Asker | None:
        return self._ask

    def link(self, conn_handle: int) -> Link:
        self.require_active()
        link = self._links.get(conn_handle)
        if link is None:
            raise not_connected(conn_handle)
        return link

    def find_link(self, conn_handle: int) -> Link | None:
        return self._links.get(conn_handle)

    def links(self) -> list[Link]:
        return list(self._links.values())

    def spawn_on(self, link: Link, coroutine: Coroutine[Any, Any, None], failure: Failure) -> None:
        link.track(self._spawn(coroutine), failure)

    def emit(self, code: int, data: EventData, written: bytes = b"") -> None:
        if self.on_event is not None and not self._quiet:
            self.on_event(BleEvent(code, data, written))

    def _on_connection(self, connection: Connection) -> None:
        we_are_central = connection.role == hci.Role.CENTRAL
        link = Link(connection, we_are_central)
        handle = link.handle
        self._links[handle] = link
        self.gattc.attach(link)
        self.security.attach(link)

        def on_mtu() -> None:
            link.mtu_exchanged = True
            self.emit(IRQ_MTU_EXCHANGED, (handle, connection.att_mtu))

        def on_parameters() -> None:
            p = connection.parameters
            self.emit(
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
            self._links.pop(handle, None)
            self.security.detach(link)
            # NimBLE fails the pending procedures and indications before it
            # reports the disconnection.
            link.fail_pending(STATUS_NOT_CONNECTED)
            code = IRQ_PERIPHERAL_DISCONNECT if we_are_central else IRQ_CENTRAL_DISCONNECT
            self.emit(code, (handle, *display_address(connection.peer_address)))

        connection.on(Connection.EVENT_CONNECTION_ATT_MTU_UPDATE, on_mtu)
        connection.on(Connection.EVENT_CONNECTION_PARAMETERS_UPDATE, on_parameters)
        connection.on(Connection.EVENT_DISCONNECTION, on_disconnection)
        code = IRQ_PERIPHERAL_CONNECT if we_are_central else IRQ_CENTRAL_CONNECT
        self.emit(code, (handle, *display_address(connection.peer_address)))

    async def _power_on(self) -> None:
        config = DeviceConfiguration(
            name=DEFAULT_GAP_NAME.decode(),
            address=self.random_address,
            gap_service_enabled=False,
            gatt_service_enabled=False,
        )
        stack = await HostStack.open(self.transport_spec, config)
        # NimBLE comes up with its defaults on every activation.
        self._gap_name = DEFAULT_GAP_NAME
        self._mtu = DEFAULT_MTU
        self.own_address.reset()
        self.security.identity_public = self.own_address.identity_public
        self._adv_data = self._resp_data = b""
        self.server.reset(stack.device)
        stack.device.on(Device.EVENT_CONNECTION, self._on_connection)
        self.central.attach(stack)
        self._stack = stack
        try:
            await self.security.start(stack)
        except BaseException:
            await self._shut_down(graceful=False)
            raise

    async def _shut_down(self, *, graceful: bool) -> None:
        """Take the stack down (gracefully: as active(False); else a power cut).
        No operation starts on it meanwhile, and it reports nothing."""
        stack, self._stack = self._stack, None
        assert stack is not None
        self._quiet = True
        try:
            await stack.close(graceful=graceful)
        finally:
            stack.device.remove_listener(Device.EVENT_CONNECTION, self._on_connection)
            self.central.closed()
            self.gattc.closed()
            self._links.clear()
            self._quiet = False
