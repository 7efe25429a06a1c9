"""One Bumble host stack per HCI transport, shared by every scanner and client.

A controller can be opened once (a USB dongle, an HCI port on the HIL air),
while bleak code makes a scanner and then clients as separate objects. They
all share one `BumbleHost` per (event loop, transport spec), counted: the first
user opens and powers it on, the last one powers it off and closes it.
`hold_host(spec)` pins it open for a block, so an agent that scans and
connects all day does not reopen the controller in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable

from bleak.exc import BleakBluetoothNotAvailableError, BleakBluetoothNotAvailableReason
from bumble import hci
from bumble.core import BaseBumbleError
from bumble.device import Advertisement, Device
from bumble.transport import open_transport
from bumble.transport.common import Transport

logger = logging.getLogger(__name__)

AdvertisementListener = Callable[[Advertisement], None]

HOST_NAME = "kommune-edge"


def bleak_address(address: hci.Address) -> str:
    """Bumble address -> bleak's "AA:BB:CC:DD:EE:FF" (no type suffix)."""
    return address.to_string(False)


def _unavailable(spec: str, error: Exception) -> BleakBluetoothNotAvailableError:
    return BleakBluetoothNotAvailableError(
        f"cannot open HCI transport {spec!r}: {error!r}",
        BleakBluetoothNotAvailableReason.NO_BLUETOOTH,
    )


class BumbleHost:
    """A powered-on Bumble `Device` on one HCI transport, and what it has seen."""

    def __init__(self, spec: str, transport: Transport, device: Device) -> None:
        self.spec = spec
        self.transport = transport
        self.device = device
        self.refs = 0
        # Bumble allows one pending LE connection per controller.
        self.connect_lock = asyncio.Lock()
        # Addresses seen advertising, with their type (public/random), by bleak string.
        self.addresses: dict[str, hci.Address] = {}
        self._listeners: dict[object, AdvertisementListener] = {}
        self._scan_users = 0
        self._scanning_actively = False
        self._scan_lock = asyncio.Lock()
        device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)

    @classmethod
    async def open(cls, spec: str) -> BumbleHost:
        try:
            transport = await open_transport(spec)
        except (OSError, BaseBumbleError, ValueError) as e:
            raise _unavailable(spec, e) from e
        try:
            device = Device.with_hci(
                HOST_NAME, hci.Address.generate_static_address(), transport.source, transport.sink
            )
            await device.power_on()
        except BaseException as e:
            await transport.close()
            if isinstance(e, OSError | BaseBumbleError):
                raise _unavailable(spec, e) from e
            raise
        return cls(spec, transport, device)

    async def close(self) -> None:
        try:
            with contextlib.suppress(BaseBumbleError, OSError):
                await self.device.power_off()
        finally:
            await self.transport.close()

    # -- scanning ---------------------------------------------------------------------

    def listen(self, listener: AdvertisementListener) -> Callable[[], None]:
        """Call `listener` for every advertisement; returns the unregister function."""
        token = object()
        self._listeners[token] = listener

        def unlisten() -> None:
            self._listeners.pop(token, None)

        return unlisten

    async def start_scanning(self, *, active: bool = True) -> None:
        """Count one more scanning user; scan actively while any user wants it."""
        async with self._scan_lock:
            want_active = active or (self._scan_users > 0 and self._scanning_actively)
            if self._scan_users == 0 or want_active != self._scanning_actively:
                if self.device.scanning:
                    await self.device.stop_scanning()
                await self.device.start_scanning(active=want_active, filter_duplicates=False)
                self._scanning_actively = want_active
            self._scan_users += 1

    async def stop_scanning(self) -> None:
        async with self._scan_lock:
            self._scan_users -= 1
            if self._scan_users == 0 and self.device.scanning:
                await self.device.stop_scanning()

    async def find_address(self, address: str, timeout_s: float) -> hci.Address | None:
        """The typed address of `address` ("AA:BB:..."), scanning for it if unseen."""
        key = address.upper()
        if key in self.addresses:
            return self.addresses[key]
        found: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()

        def on_advertisement(advertisement: Advertisement) -> None:
            if bleak_address(advertisement.address) == key and not found.done():
                found.set_result(advertisement.address)

        unlisten = self.listen(on_advertisement)
        await self.start_scanning(active=False)
        try:
            async with asyncio.timeout(timeout_s):
                return await found
        except TimeoutError:
            return None
        finally:
            unlisten()
            await self.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        self.addresses[bleak_address(advertisement.address)] = advertisement.address
        for listener in list(self._listeners.values()):
            listener(advertisement)


class _LoopHosts:
    """The hosts open on one event loop, and a lock per spec for opening/closing."""

    def __init__(self) -> None:
        self.hosts: dict[str, BumbleHost] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    def lock(self, spec: str) -> asyncio.Lock:
        return self.locks.setdefault(spec, asyncio.Lock())


# Weak: a finished event loop (each test has one) takes its entry with it.
_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopHosts] = (
    weakref.WeakKeyDictionary()
)


def _loop_hosts() -> _LoopHosts:
    loop = asyncio.get_running_loop()
    hosts = _registry.get(loop)
    if hosts is None:
        hosts = _registry[loop] = _LoopHosts()
    return hosts


async def acquire_host(spec: str) -> BumbleHost:
    """The shared host on `spec`, opened if nobody holds it; pair with `release_host`."""
    registry = _loop_hosts()
    async with registry.lock(spec):
        host = registry.hosts.get(spec)
        if host is None:
            host = await BumbleHost.open(spec)
            registry.hosts[spec] = host
        host.refs += 1
        return host


async def release_host(host: BumbleHost) -> None:
    """Drop one reference; the last one powers the controller off and closes it."""
    registry = _loop_hosts()
    async with registry.lock(host.spec):
        host.refs -= 1
        if host.refs > 0:
            return
        if registry.hosts.get(host.spec) is host:
            del registry.hosts[host.spec]
        await host.close()


@contextlib.asynccontextmanager
async def hold_host(spec: str) -> AsyncIterator[BumbleHost]:
    """Keep the host on `spec` open for the block (scanners and clients share it)."""
    host = await acquire_host(spec)
    try:
        yield host
    finally:
        await release_host(host)
