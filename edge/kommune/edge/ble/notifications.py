"""Notifications as an async queue: `start_notify(char, queue)`, then `await queue.next()`."""

from __future__ import annotations

import asyncio

from bleak.backends.characteristic import BleakGATTCharacteristic


class NotificationQueue:
    """A bleak notify callback that queues each value (copied) for a task to await."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def __call__(self, _characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        self.queue.put_nowait(bytes(data))

    async def next(self, timeout_s: float = 5.0) -> bytes:
        """The next value; TimeoutError if none arrives within `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            return await self.queue.get()
