# BLE advertising payloads (Core Spec Supplement, Part A, 1: AD structures).
import struct

from micropython import const

_AD_FLAGS = const(0x01)
_AD_NAME = const(0x09)  # complete local name
_AD_UUID128 = const(0x07)  # complete list of 128-bit service UUIDs
_AD_MANUFACTURER = const(0xFF)
_FLAGS_GENERAL_NO_BR_EDR = const(0x06)
MAX_BYTES = const(31)  # legacy advertising data


def _field(kind: int, data: bytes) -> bytes:
    return struct.pack("BB", len(data) + 1, kind) + data


def payload(
    *, name: bytes = b"", manufacturer: "tuple[int, bytes] | None" = None, uuid128: bytes = b""
) -> bytes:
    # Flags, then what is given; ValueError if it does not fit 31 bytes.
    out = _field(_AD_FLAGS, bytes((_FLAGS_GENERAL_NO_BR_EDR,)))
    if manufacturer is not None:
        out += _field(_AD_MANUFACTURER, struct.pack("<H", manufacturer[0]) + manufacturer[1])
    if name:
        out += _field(_AD_NAME, name)
    if uuid128:
        out += _field(_AD_UUID128, uuid128)
    if len(out) > MAX_BYTES:
        raise ValueError("advertising data too long")
    return out


def scan_response(*, uuid128: bytes) -> bytes:
    return _field(_AD_UUID128, uuid128)
