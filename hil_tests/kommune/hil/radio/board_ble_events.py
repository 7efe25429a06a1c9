"""The board BLE model's events: MicroPython's IRQ codes and data tuples.

`BoardBle` reports each IRQ the firmware would get as a `BleEvent`; the rig
bridge encodes them for the VM (`kommune/hil/board/blewire.py`). Most IRQs
are told (`EventSink`); the two whose handler's return value the stack uses,
`_IRQ_GET_SECRET` and `_IRQ_SET_SECRET`, are asked (`Asker`) and awaited.
Codes as in MicroPython's extmod/modbluetooth.h; status values as NimBLE
passes them on (an ESP32).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bumble import hci

IRQ_CENTRAL_CONNECT = 1  # (conn_handle, addr_type, addr)
IRQ_CENTRAL_DISCONNECT = 2  # (conn_handle, addr_type, addr)
IRQ_GATTS_WRITE = 3  # (conn_handle, attr_handle)
IRQ_SCAN_RESULT = 5  # (addr_type, addr, adv_type, rssi, adv_data)
IRQ_SCAN_DONE = 6  # ()
IRQ_PERIPHERAL_CONNECT = 7  # (conn_handle, addr_type, addr)
IRQ_PERIPHERAL_DISCONNECT = 8  # (conn_handle, addr_type, addr)
IRQ_GATTC_SERVICE_RESULT = 9  # (conn_handle, start_handle, end_handle, uuid)
IRQ_GATTC_SERVICE_DONE = 10  # (conn_handle, status)
IRQ_GATTC_CHARACTERISTIC_RESULT = 11  # (conn_handle, end_handle, value_handle, properties, uuid)
IRQ_GATTC_CHARACTERISTIC_DONE = 12  # (conn_handle, status)
IRQ_GATTC_DESCRIPTOR_RESULT = 13  # (conn_handle, dsc_handle, uuid)
IRQ_GATTC_DESCRIPTOR_DONE = 14  # (conn_handle, status)
IRQ_GATTC_READ_RESULT = 15  # (conn_handle, value_handle, char_data)
IRQ_GATTC_READ_DONE = 16  # (conn_handle, value_handle, status)
IRQ_GATTC_WRITE_DONE = 17  # (conn_handle, value_handle, status)
IRQ_GATTC_NOTIFY = 18  # (conn_handle, value_handle, notify_data)
IRQ_GATTC_INDICATE = 19  # (conn_handle, value_handle, notify_data)
IRQ_GATTS_INDICATE_DONE = 20  # (conn_handle, value_handle, status)
IRQ_MTU_EXCHANGED = 21  # (conn_handle, mtu)
IRQ_CONNECTION_UPDATE = 27  # (conn_handle, interval, latency, supervision_timeout, status)
IRQ_ENCRYPTION_UPDATE = 28  # (conn_handle, encrypted, authenticated, bonded, key_size)
IRQ_GET_SECRET = 29  # (sec_type, index, key or None) -> value or None
IRQ_SET_SECRET = 30  # (sec_type, key, value or None) -> True if stored
IRQ_PASSKEY_ACTION = 31  # (conn_handle, action, passkey)

# Statuses: NimBLE's BLE_HS_* codes, and ATT errors as BLE_HS_ERR_ATT_BASE + code.
STATUS_OK = 0
STATUS_NOT_CONNECTED = 7  # BLE_HS_ENOTCONN
STATUS_TIMEOUT = 13  # BLE_HS_ETIMEOUT
ATT_ERROR_BASE = 0x100  # BLE_HS_ERR_ATT_BASE

# A failed gap_connect: NimBLE reports no handle and no address.
NO_CONN_HANDLE = 0xFFFF  # BLE_HS_CONN_HANDLE_NONE
NO_ADDR_TYPE = 0xFF
NO_ADDR = bytes(6)


def att_status(error_code: int) -> int:
    """An ATT error response as the status of a GATT client IRQ."""
    return ATT_ERROR_BASE + error_code


@dataclass(frozen=True)
class BleEvent:
    """One IRQ for the firmware: MicroPython's event code and data tuple.

    For IRQ_GATTS_WRITE, `written` is what the central wrote (before the buffer
    rules), so that a mirror of the value store can replay the write. Bytes in
    `data` (addresses, values, keys) become memoryviews in the VM; a UUID is
    its MicroPython wire form (an int, or a 128-bit string)."""

    code: int
    data: tuple[int | bytes | str | None, ...]
    written: bytes = b""


EventSink = Callable[[BleEvent], None]
# Runs the firmware's handler for an event and gives its return value (None if
# there is no firmware to answer).
Asker = Callable[[BleEvent], Awaitable[object]]


def display_address(address: hci.Address) -> tuple[int, bytes]:
    """(addr_type, addr) as MicroPython reports them: 0 public / 1 random, MSB first."""
    return address.address_type & 1, bytes(address)[::-1]
