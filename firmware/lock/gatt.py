# The lock's GATT service and advertisement.
#
# Service 4b4d4c00-6b6f-6d6d-756e-652d6c6f636b ("KML" + "kommune-lock"):
#   handshake ...4c01  write, write without response, notify: every LOCK.md
#                      message; a CHALLENGE_REQUEST (08 02) asks for a CHALLENGE
#                      (stock MicroPython tells the firmware of no subscription)
#   status    ...4c02  read: one line of text (README.md)
# Advertisement: flags, manufacturer data (company 0xFFFF, the test id: "KL",
# version 1, state flags, lock id u32 big-endian), the name "kl-<lock id>";
# the service UUID in the scan response. A phone finds its door by the lock
# id without connecting to any other.
import struct

import bluetooth
from common import adv
from micropython import const

_FLAG_READ = const(0x0002)
_FLAG_WRITE_NO_RESPONSE = const(0x0004)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)

SERVICE_UUID = "4b4d4c00-6b6f-6d6d-756e-652d6c6f636b"
HANDSHAKE_UUID = "4b4d4c01-6b6f-6d6d-756e-652d6c6f636b"
STATUS_UUID = "4b4d4c02-6b6f-6d6d-756e-652d6c6f636b"
COMPANY_ID = const(0xFFFF)
ADV_MAGIC = b"KL"
ADV_VERSION = const(1)
# Advertised state flags
ADV_PROVISIONED = const(0x01)
ADV_FAULT = const(0x02)
ADV_BATTERY_LOW = const(0x04)
ADV_NEEDS_TIME = const(0x08)

_BUFFER_BYTES = const(160)  # the longest message written: a full DENY_LIST, 155 bytes
_ADV_INTERVAL_US = const(100_000)


def register(ble: "bluetooth.BLE") -> "tuple[int, int]":
    # (handshake value handle, status value handle)
    service = bluetooth.UUID(SERVICE_UUID)
    handshake = (
        bluetooth.UUID(HANDSHAKE_UUID),
        _FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE | _FLAG_NOTIFY,
    )
    status = (bluetooth.UUID(STATUS_UUID), _FLAG_READ)
    ((hs, st),) = ble.gatts_register_services(((service, (handshake, status)),))
    ble.gatts_set_buffer(hs, _BUFFER_BYTES)
    return hs, st  # type: ignore[return-value]  # handles are ints on every port


def advertise(ble: "bluetooth.BLE", lock_id: int, flags: int) -> None:
    data = adv.payload(
        manufacturer=(COMPANY_ID, ADV_MAGIC + struct.pack(">BBI", ADV_VERSION, flags, lock_id)),
        name=b"kl-%d" % lock_id,
    )
    resp = adv.scan_response(uuid128=bytes(bluetooth.UUID(SERVICE_UUID)))  # type: ignore[call-overload]
    ble.gap_advertise(_ADV_INTERVAL_US, data, resp_data=resp)
