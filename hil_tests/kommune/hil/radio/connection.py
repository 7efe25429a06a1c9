"""One LE connection as the air sees it: its two ends, timing, and in-order delivery."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from bumble import hci
from bumble.controller import Controller

from kommune.hil.radio.timing import ConnectionEvents

Pair = frozenset[str]

# HCI error codes the air reports (Core Vol 1, Part F).
CONNECTION_TIMEOUT = hci.HCI_ErrorCode.CONNECTION_TIMEOUT_ERROR  # 0x08
FAILED_TO_BE_ESTABLISHED = hci.HCI_ErrorCode.CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR  # 0x3E


def pair(a: str, b: str) -> Pair:
    """Devices by name, unordered: the key of profiles and stats."""
    return frozenset((a, b))


class Direction:
    """One direction of one connection: PDUs delivered in order at their times."""

    def __init__(self) -> None:
        self.queue: deque[tuple[float, Callable[[], None]]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.last_at_s = 0.0

    def push(self, at_s: float, deliver: Callable[[], None]) -> None:
        self.queue.append((at_s, deliver))
        self.last_at_s = at_s
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_at(self.queue[0][0], self._fire)

    def _fire(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        while self.queue and self.queue[0][0] <= loop.time():
            _, deliver = self.queue.popleft()
            deliver()
        if self.queue:
            self.timer = loop.call_at(self.queue[0][0], self._fire)

    def cancel(self) -> int:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        dropped = len(self.queue)
        self.queue.clear()
        return dropped


class AirConnection:
    """One LE connection as the air sees it."""

    def __init__(
        self,
        central: Controller,
        peripheral: Controller,
        *,
        central_address: hci.Address,
        peripheral_address: hci.Address,
        negotiated_interval_s: float,
        negotiated_timeout_s: float,
        events: ConnectionEvents,
    ) -> None:
        self.central = central
        self.peripheral = peripheral
        self.central_address = central_address
        self.peripheral_address = peripheral_address
        self.negotiated_interval_s = negotiated_interval_s
        self.negotiated_timeout_s = negotiated_timeout_s
        self.events = events
        self.names = pair(central.name, peripheral.name)
        self.directions = {central: Direction(), peripheral: Direction()}
        self.watchdog: asyncio.TimerHandle | None = None  # blackout supervision timer
        self.doom: asyncio.TimerHandle | None = None  # the link will drop (retries ran out)
        self.doom_reason: int = CONNECTION_TIMEOUT

    def peer_of(self, controller: Controller) -> Controller:
        return self.peripheral if controller is self.central else self.central

    def address_of(self, controller: Controller) -> hci.Address:
        return self.central_address if controller is self.central else self.peripheral_address
