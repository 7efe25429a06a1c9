"""The board BLE model's connections, and what its role modules share of it.

A `Link` is one connection of the board, in either role, with the operations
still running on it (GATT client procedures, indications): when the link
drops they are failed with BLE_HS_ENOTCONN before the disconnection is
reported, as NimBLE does. `Radio` is what `BoardBle` offers the modules that
implement a part of `bluetooth.BLE` (`board_ble_central`, `board_ble_gattc`,
`board_ble_security`), so that they need not know each other.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from bumble import core, hci
from bumble.device import Connection

from kommune.hil.radio.board_ble_events import Asker
from kommune.hil.radio.board_ble_gatt import BleError
from kommune.hil.radio.board_ble_stack import HostStack

EventData = tuple[int | bytes | str | None, ...]
Failure = Callable[[int], None]  # reports an operation's end with this status


@dataclass(eq=False)
class Link:
    """One connection: its role, and the operations pending on it."""

    connection: Connection
    # We connected to it (gap_connect): its IRQs are PERIPHERAL_*, not CENTRAL_*.
    we_are_central: bool
    pending: dict[asyncio.Task[Any], Failure] = field(default_factory=dict)
    mtu_exchanged: bool = False
    # Security (NimBLE's ble_gap_sec_state, as the ENCRYPTION_UPDATE IRQ reports it)
    authenticated: bool = False
    bonded: bool = False

    @property
    def handle(self) -> int:
        return int(self.connection.handle)

    def track(self, task: asyncio.Task[Any], failure: Failure) -> None:
        self.pending[task] = failure

    def done(self, task: asyncio.Task[Any] | None) -> bool:
        """The operation ended by itself: True if it still is to be reported."""
        return task is not None and self.pending.pop(task, None) is not None

    def fail_pending(self, status: int) -> None:
        """The link dropped: every pending operation ends with `status`, in order."""
        pending, self.pending = self.pending, {}
        for task, failure in pending.items():
            task.cancel()
            failure(status)


class Radio(Protocol):
    """What the role modules use of `BoardBle`."""

    @property
    def lock(self) -> asyncio.Lock: ...

    @property
    def preferred_mtu(self) -> int: ...

    def require_active(self) -> HostStack: ...

    def emit(self, code: int, data: EventData, written: bytes = b"") -> None: ...

    def link(self, conn_handle: int) -> Link:
        """The connection's link (ENODEV when inactive, ENOTCONN for no such link)."""
        ...

    def find_link(self, conn_handle: int) -> Link | None: ...

    def links(self) -> list[Link]: ...

    async def use_own_address(self) -> hci.OwnAddressType:
        """Put the address mode's address in the controller; the own address type."""
        ...

    def spawn_on(self, link: Link, coroutine: Coroutine[Any, Any, None], failure: Failure) -> None:
        """Run an operation on `link`; `failure(status)` reports it if the link drops."""
        ...

    @property
    def ask(self) -> Asker | None: ...


def not_connected(conn_handle: int) -> BleError:
    return BleError(errno.ENOTCONN, f"no connection {conn_handle}")


def display_uuid(uuid: core.UUID) -> int | str:
    """A discovered UUID as the model's events carry it (MicroPython's wire form)."""
    raw = uuid.to_bytes()
    if len(raw) < 16:
        return int.from_bytes(raw, "little")
    h = raw[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
