"""bleak client backend on a Bumble host: `BleakClient(device, backend=BleakClientBumble)`.

Connect = LE connection, ATT MTU exchange, service discovery (cached per
peer, see `gatt`). A GATT operation that the link drops under raises
`BumbleDisconnectedError` (a `BleakError`) instead of hanging; the
disconnected callback runs on every disconnection, as with BlueZ.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bumble import att, core, gatt, hci
from bumble.device import Connection, Peer
from bumble.gatt_client import CharacteristicProxy, Client

from kommune.edge.ble import gatt as gatt_cache
from kommune.edge.ble.host import BumbleHost, acquire_host, release_host
from kommune.edge.ble.transport import require_transport

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ATT MTU we ask for: 517 fits a 512-byte attribute value in one PDU.
DEFAULT_MTU = 517
REMOTE_USER_TERMINATED = hci.HCI_ErrorCode.REMOTE_USER_TERMINATED_CONNECTION_ERROR


class BumbleDisconnectedError(BleakError):
    """The link dropped while a GATT operation was in flight."""

    def __init__(self, operation: str, reason: int | None) -> None:
        why = "" if reason is None else f" ({hci.HCI_ErrorCode(reason).name})"
        super().__init__(f"{operation}: disconnected{why}")
        self.reason = reason


class BleakClientBumble(BaseBleakClient):
    """A GATT client on the shared Bumble host of the configured HCI transport.

    Extra keyword arguments (via `BleakClient(..., transport=..., mtu=...)`):
    transport: Bumble transport spec; default `KOMMUNE_BLE_TRANSPORT`.
    mtu: ATT MTU to request (23..517); default 517.
    use_cached_services: reuse this peer's discovered services; default True.
    services: set by `BleakClient(services=...)`: expose only these services.
    """

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        services: set[str] | None = None,
        transport: str | None = None,
        mtu: int = DEFAULT_MTU,
        use_cached_services: bool = True,
        **kwargs: Any,  # bluez=, winrt=: other backends' options
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        if not att.ATT_DEFAULT_MTU <= mtu <= DEFAULT_MTU:
            raise ValueError(f"mtu {mtu} outside {att.ATT_DEFAULT_MTU}..{DEFAULT_MTU}")
        self._spec = require_transport(transport)
        self._requested_mtu = mtu
        self._use_cached_services = use_cached_services
        self._wanted_services = services
        self._device = (
            address_or_ble_device if isinstance(address_or_ble_device, BLEDevice) else None
        )
        self._host: BumbleHost | None = None
        self._connection: Connection | None = None
        self._lost: asyncio.Future[int] | None = None  # result: the disconnection reason
        self._subscriptions: dict[int, Callable[[bytes], None]] = {}
        self._mtu = att.ATT_DEFAULT_MTU
        self._release: asyncio.Task[None] | None = None

    # -- connection ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        if self._device is not None and self._device.name:
            return self._device.name
        return self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        """The connection's ATT MTU (after a disconnection: the last one it had)."""
        if self._connection is not None:
            self._mtu = self._connection.att_mtu
        return self._mtu

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if self._connection is not None:
            raise BleakError("already connected")
        if pair:
            logger.info("pairing before connect is not supported by the Bumble backend; ignored")
        await self._finish_release()
        host = await acquire_host(self._spec)
        self._host = host
        connection: Connection | None = None
        try:
            address = await self._typed_address(host)
            connection = await self._create_connection(host, address)
            self._attach(connection)
            async with asyncio.timeout(self._timeout):
                await self._guard(Peer(connection).request_mtu(self._requested_mtu), "exchange MTU")
                await self._guard(
                    gatt_cache.load_services(
                        connection.gatt_client, self.address, use_cache=self._use_cached_services
                    ),
                    "discover services",
                )
            self.services = gatt_cache.service_collection(
                connection.gatt_client.services, lambda: self.mtu_size, self._wanted_services
            )
        except BaseException:
            await self._abandon(connection)
            raise

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is not None:
            await self._terminate(connection)
        await self._finish_release()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "pairing: the lock protocol authenticates at the application layer"
        )

    async def unpair(self) -> None:
        raise NotImplementedError(
            "pairing: the lock protocol authenticates at the application layer"
        )

    async def _typed_address(self, host: BumbleHost) -> hci.Address:
        if self._device is not None and isinstance(self._device.details, hci.Address):
            return self._device.details
        found = await host.find_address(self.address, self._timeout)
        if found is None:
            raise BleakDeviceNotFoundError(self.address, f"device {self.address} not found")
        return found

    async def _create_connection(self, host: BumbleHost, address: hci.Address) -> Connection:
        async with host.connect_lock:
            try:
                # Bumble's own timeout: it cancels the controller's initiating on expiry.
                return await host.device.connect(address, timeout=self._timeout)
            except core.TimeoutError as e:
                raise TimeoutError(f"connect to {self.address} timed out") from e
            except core.BaseBumbleError as e:
                raise BleakError(f"connect to {self.address} failed: {e!r}") from e
            except asyncio.CancelledError:
                await _stop_initiating(host, address)
                raise

    async def _terminate(self, connection: Connection) -> None:
        """Disconnect and wait for it (bounded: a dead controller never confirms)."""
        try:
            async with asyncio.timeout(self._timeout):
                await connection.disconnect(REMOTE_USER_TERMINATED)
        except (core.BaseBumbleError, TimeoutError) as e:
            logger.debug("disconnect from %s: %r", self.address, e)
        if self._connection is connection:
            self._on_disconnection(REMOTE_USER_TERMINATED)

    def _attach(self, connection: Connection) -> None:
        self._connection = connection
        self._lost = asyncio.get_running_loop().create_future()
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)

    def _on_disconnection(self, reason: int) -> None:
        if self._connection is None:
            return
        self._connection.remove_listener(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._connection = None
        self.services = None
        self._subscriptions.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)
        if self._host is not None and self._release is None:
            # Release the host off this (synchronous) event; disconnect()/connect() await it.
            self._release = asyncio.get_running_loop().create_task(self._release_host())
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    async def _release_host(self) -> None:
        host, self._host = self._host, None
        if host is not None:
            await release_host(host)

    async def _finish_release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            await release
        elif self._connection is None:
            await self._release_host()

    async def _abandon(self, connection: Connection | None) -> None:
        """Undo a connect that failed half-way: drop the link, release the host."""
        if connection is not None and self._connection is connection:
            await self._terminate(connection)
        await self._finish_release()

    # -- GATT ----------------------------------------------------------------------------

    def _client(self) -> Client:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection.gatt_client

    async def _guard(self, operation: Awaitable[T], what: str) -> T:
        """Run one GATT operation; a dropped link ends it with `BumbleDisconnectedError`."""
        lost = self._lost
        if lost is None or lost.done():
            if inspect.iscoroutine(operation):
                operation.close()  # never started: no "never awaited" warning
            raise BleakError("Not connected")
        task = asyncio.ensure_future(operation)
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
        if lost.done():
            # Bumble cancels its pending request on disconnection; report the link, not that.
            if not task.cancelled() and task.exception() is None:
                return task.result()
            raise BumbleDisconnectedError(what, lost.result())
        try:
            return task.result()
        except asyncio.CancelledError as e:
            raise BumbleDisconnectedError(what, None) from e
        except att.ATT_Error as e:
            raise BleakGATTProtocolError(e.error_code) from e
        except core.TimeoutError as e:
            raise TimeoutError(f"{what}: no ATT response") from e
        except core.BaseBumbleError as e:
            raise BleakError(f"{what}: {e!r}") from e

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        client = self._client()
        if use_cached and characteristic.handle in client.cached_values:
            return bytearray(client.cached_values[characteristic.handle][1])
        value = await self._guard(client.read_value(characteristic.handle), "read")
        return bytearray(value)

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        client = self._client()
        if use_cached and descriptor.handle in client.cached_values:
            return bytearray(client.cached_values[descriptor.handle][1])
        return bytearray(await self._guard(client.read_value(descriptor.handle), "read descriptor"))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        client = self._client()
        value = bytes(memoryview(data))
        await self._guard(
            client.write_value(characteristic.handle, value, with_response=response),
            "write" if response else "write without response",
        )

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        client = self._client()
        value = bytes(memoryview(data))
        await self._guard(
            client.write_value(descriptor.handle, value, with_response=True), "write descriptor"
        )

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        client = self._client()
        proxy = _proxy(characteristic)
        if proxy.get_descriptor(gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR) is None:
            raise BleakError(f"{characteristic.uuid} has no CCCD: cannot notify or indicate")

        def on_value(value: bytes) -> None:
            callback(bytearray(value))

        self._subscriptions[characteristic.handle] = on_value
        await self._guard(client.subscribe(proxy, on_value, prefer_notify=True), "start notify")

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        client = self._client()
        on_value = self._subscriptions.pop(characteristic.handle, None)
        if on_value is None:
            return
        await self._guard(client.unsubscribe(_proxy(characteristic), on_value), "stop notify")


async def _stop_initiating(host: BumbleHost, address: hci.Address) -> None:
    """A cancelled connect leaves the controller initiating: stop it, and drop
    a link that was established in the meantime (nobody owns it)."""
    with contextlib.suppress(core.BaseBumbleError):
        await host.device.send_sync_command(hci.HCI_LE_Create_Connection_Cancel_Command())
    orphan = host.device.find_connection_by_bd_addr(address)
    if orphan is not None:
        with contextlib.suppress(core.BaseBumbleError):
            await orphan.disconnect(REMOTE_USER_TERMINATED)


def _proxy(characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
    proxy = characteristic.obj
    if not isinstance(proxy, CharacteristicProxy):
        raise BleakError(f"{characteristic} does not come from the Bumble backend")
    return proxy
