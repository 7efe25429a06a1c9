"""The hardware watchdog: once started it cannot be stopped, only fed.

It keeps counting across a soft reboot (the chip is not reset), and stops
only when the chip resets or loses power.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, on_expire: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expire = on_expire
        self.timeout_ms: int | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.feeds = 0
        self.expired = 0

    @property
    def running(self) -> bool:
        return self.timeout_ms is not None

    def start(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.feed()

    def feed(self) -> None:
        if self.timeout_ms is None:
            return
        self.feeds += 1
        self._deadline = self._loop.time() + self.timeout_ms / 1000
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.timeout_ms is None:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check)
            return
        self.stop()
        self.expired += 1
        self._on_expire()

    def stop(self) -> None:
        """The chip reset: the watchdog is off until the firmware starts it again."""
        self.timeout_ms = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
