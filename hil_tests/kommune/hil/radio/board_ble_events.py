"""The board BLE model's events: MicroPython's IRQ codes and data tuples.

`BoardBle` reports each IRQ the firmware would get as a `BleEvent`; the rig
bridge encodes them for the VM (`kommune/hil/board/blewire.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bumble import hci

IRQ_CENTRAL_CONNECT = 1  # (conn_handle, addr_type, addr)
IRQ_CENTRAL_DISCONNECT = 2  # (conn_handle, addr_type, addr)
IRQ_GATTS_WRITE = 3  # (conn_handle, attr_handle)
IRQ_GATTS_INDICATE_DONE = 20  # (conn_handle, value_handle, status)
IRQ_MTU_EXCHANGED = 21  # (conn_handle, mtu)
IRQ_CONNECTION_UPDATE = 27  # (conn_handle, interval, latency, supervision_timeout, status)

# INDICATE_DONE status: NimBLE's BLE_HS_* codes, as MicroPython passes them on.
STATUS_OK = 0
STATUS_NOT_CONNECTED = 7  # BLE_HS_ENOTCONN
STATUS_TIMEOUT = 13  # BLE_HS_ETIMEOUT


@dataclass(frozen=True)
class BleEvent:
    """One IRQ for the firmware: MicroPython's event code and data tuple.

    For IRQ_GATTS_WRITE, `written` is what the central wrote (before the buffer
    rules), so that a mirror of the value store can replay the write."""

    code: int
    data: tuple[int | bytes, ...]
    written: bytes = b""


EventSink = Callable[[BleEvent], None]


def display_address(address: hci.Address) -> tuple[int, bytes]:
    """(addr_type, addr) as MicroPython reports them: 0 public / 1 random, MSB first."""
    return address.address_type & 1, bytes(address)[::-1]
