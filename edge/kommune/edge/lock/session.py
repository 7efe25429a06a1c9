"""One BLE connection to a lock, through bleak: find it, connect, subscribe, and
exchange handshake messages, every wait raced against the link dropping.

    async with open_link(1017, transport=None, timings=t) as link:   # scan, connect
        challenge = await link.challenge()          # subscribe + CHALLENGE_REQUEST
        reply = await link.exchange(request_bytes)  # write, then the lock's notification

The first `challenge()` on a link subscribes and asks in one round trip: the
CHALLENGE_REQUEST goes as a write without response right behind the subscription's
CCCD write (protocols/LOCK.md, "Round trips"), so a first unlock costs two round trips
after connect, not three. `timings` gets scan_ms, connect_ms (the link is up),
discover_ms (MTU exchange, GATT discovery or the cached database's check). With a
platform backend the link-up moment is not visible: connect_ms holds all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from kommune.edge.ble import NotificationQueue, hold_host, select_backend
from kommune.edge.lock.errors import LockError, NotReached
from kommune.edge.lock.finder import HANDSHAKE_UUID, Advert, LockCache, matches, parse_advert
from kommune.protocols.lock_client import CHALLENGE_REQUEST

T = TypeVar("T")

DEFAULT_REPLY_TIMEOUT_S = 3.0


class LinkLost(LockError):
    """The link dropped while we waited on the lock."""


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


class LockLink:
    """A connected lock: `challenge()`, `exchange()`, `lost`; subscribed to the handshake
    characteristic by the first of them."""

    def __init__(
        self,
        client: BleakClient,
        *,
        queue: NotificationQueue,
        lost: asyncio.Event,
        lock_id: int,
        advert: Advert | None,
        reply_timeout_s: float,
    ) -> None:
        self.client = client
        self.queue = queue
        self.lost = lost
        self.lock_id = lock_id
        self.advert = advert
        self.address = client.address
        self.reply_timeout_s = reply_timeout_s
        self._subscribed = False

    async def _race(self, operation: Awaitable[T], what: str, timeout_s: float) -> T:
        """`operation`, unless the link drops first (LinkLost) or it takes too long."""
        task = asyncio.ensure_future(operation)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task in done and not task.cancelled() and task.exception() is None:
            return task.result()
        if lost in done or self.lost.is_set():
            raise LinkLost(f"lock {self.lock_id}: the link dropped while {what}")
        if task in done:
            error = task.exception()
            if isinstance(error, BleakError | OSError):
                raise LinkLost(f"lock {self.lock_id}: {what}: {error}") from error
            assert error is not None
            raise error
        raise LinkLost(f"lock {self.lock_id}: no answer within {timeout_s:g} s while {what}")

    async def _write(self, data: bytes, what: str, *, response: bool = True) -> None:
        await self._race(
            self.client.write_gatt_char(HANDSHAKE_UUID, data, response=response),
            what,
            self.reply_timeout_s,
        )

    async def _next(self, what: str) -> bytes:
        return await self._race(self.queue.queue.get(), what, self.reply_timeout_s)

    async def _subscribe(self) -> None:
        if not self._subscribed:
            await self._race(
                self.client.start_notify(HANDSHAKE_UUID, self.queue),
                "subscribing",
                self.reply_timeout_s,
            )
            self._subscribed = True

    async def challenge(self) -> bytes:
        """A fresh CHALLENGE: asked for, so it names this connection and a new nonce."""
        while not self.queue.queue.empty():  # a stale one (after an earlier answer)
            self.queue.queue.get_nowait()
        # Without response: the CHALLENGE notification is the answer (no extra round trip).
        ask = self.client.write_gatt_char(HANDSHAKE_UUID, CHALLENGE_REQUEST, response=False)
        if self._subscribed:
            await self._race(ask, "asking for a challenge", self.reply_timeout_s)
        else:
            # The subscription registers its handler before its CCCD write goes out, and
            # the ask follows that write on the link: the CHALLENGE finds us listening.
            subscribe = self.client.start_notify(HANDSHAKE_UUID, self.queue)
            both = asyncio.gather(subscribe, ask)
            await self._race(both, "subscribing and asking for a challenge", self.reply_timeout_s)
            self._subscribed = True
        return await self._next("waiting for the challenge")

    async def exchange(self, message: bytes) -> bytes:
        """Write a REQUEST or COMMAND; the lock's answer (RESULT or NOTICE)."""
        await self._subscribe()
        await self._write(message, "sending the request")
        return await self._next("waiting for the answer")

    async def receive(self, what: str = "waiting for the lock") -> bytes:
        """The lock's next notification (an audit batch after its RESULT, the CHALLENGE
        it sends unasked after an answer)."""
        await self._subscribe()
        return await self._next(what)

    async def read_status(self) -> str:
        from kommune.edge.lock.finder import STATUS_UUID

        value = await self._race(
            self.client.read_gatt_char(STATUS_UUID), "reading the status", self.reply_timeout_s
        )
        return bytes(value).decode(errors="replace")


async def find(
    lock_id: int,
    *,
    address: str | None,
    backend: Any,
    timeout_s: float,
) -> tuple[BLEDevice, Advert | None]:
    """The lock's device and advert: by its advertised id, or at `address`."""
    adverts: dict[str, Advert | None] = {}

    def ours(device: BLEDevice, adv: AdvertisementData) -> bool:
        advert = parse_advert(adv)
        if matches(advert, device, lock_id, address):
            adverts[device.address] = advert
            return True
        return False

    try:
        device = await BleakScanner.find_device_by_filter(
            ours, timeout=timeout_s, backend=backend.scanner, **backend.kwargs
        )
    except (BleakError, OSError) as e:
        if backend.scanner is None:
            raise NotReached(
                f"cannot scan with the system's Bluetooth ({e}); is BlueZ running? "
                "Or set KOMMUNE_BLE_TRANSPORT to an HCI transport (usb:0, tcp-client:...)"
            ) from e
        raise NotReached(f"cannot scan: {e}") from e
    if device is None:
        where = f" at {address}" if address else ""
        raise NotReached(
            f"lock {lock_id}{where} not in range: no advertisement within {timeout_s:g} s"
        )
    advert = adverts.get(device.address)
    if advert is not None and advert.lock_id != lock_id:
        raise NotReached(f"the lock at {device.address} is lock {advert.lock_id}, not {lock_id}")
    return device, advert


@contextlib.asynccontextmanager
async def open_link(
    lock_id: int,
    *,
    address: str | None = None,
    transport: str | None = None,
    timeout_s: float = 10.0,
    reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
    cache: LockCache | None = None,
    timings: dict[str, float | None] | None = None,
) -> AsyncIterator[LockLink]:
    """Find lock `lock_id`, connect, subscribe to its handshake characteristic."""
    times: dict[str, float | None] = {} if timings is None else timings
    backend = select_backend(transport)
    async with contextlib.AsyncExitStack() as stack:
        host = None
        if backend.client is not None:
            # One host for the scan and the connection: no controller restart in between.
            try:
                host = await stack.enter_async_context(hold_host(backend.kwargs["transport"]))
            except (BleakError, OSError) as e:
                raise NotReached(f"BLE: {e}") from e
        started = time.monotonic()
        device, advert = await find(lock_id, address=address, backend=backend, timeout_s=timeout_s)
        times["scan_ms"] = _ms(started)
        if cache is not None:
            cache.preload(lock_id, device.address)
        link_up: list[float] = []

        def on_connection(_connection: Any) -> None:
            link_up.append(time.monotonic())

        if host is not None:
            host.device.on("connection", on_connection)
            stack.callback(host.device.remove_listener, "connection", on_connection)
        lost = asyncio.Event()
        client = BleakClient(
            device,
            disconnected_callback=lambda _c: lost.set(),
            timeout=timeout_s,
            backend=backend.client,
            **backend.kwargs,
        )
        connecting = time.monotonic()
        try:
            await client.connect()
        except (BleakError, TimeoutError, OSError) as e:
            raise NotReached(f"lock {lock_id}: cannot connect to {device.address}: {e}") from e
        stack.push_async_callback(_disconnect, client)
        queue = NotificationQueue()
        link = LockLink(
            client,
            queue=queue,
            lost=lost,
            lock_id=lock_id,
            advert=advert,
            reply_timeout_s=reply_timeout_s,
        )
        if link_up:
            times["connect_ms"] = round((link_up[0] - connecting) * 1000, 1)
            times["discover_ms"] = round((time.monotonic() - link_up[0]) * 1000, 1)
        else:
            times["connect_ms"] = _ms(connecting)
            times["discover_ms"] = None
        if cache is not None:
            cache.remember(lock_id, device.address)
        yield link


async def _disconnect(client: BleakClient) -> None:
    with contextlib.suppress(BleakError, TimeoutError, OSError):
        await client.disconnect()
