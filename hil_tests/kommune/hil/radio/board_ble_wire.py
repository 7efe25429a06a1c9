"""The model's IRQs as the rig channel carries them to the VM (layouts in blewire.py).

The VM decodes them (`kommune/hil/board/bleirq.py`); what the firmware's
handler returns for an asked IRQ comes back as a BLE_ANSWER.
"""

from __future__ import annotations

import struct

from kommune.hil.board import blewire
from kommune.hil.radio.board_ble_events import BleEvent

_FIXED = {"H": "<H", "B": "<B", "b": "<b", "i": "<i"}


def _uuid_bytes(value: object) -> bytes:
    """A UUID in the model's form (int, or a 128-bit string) as its little-endian bytes."""
    if isinstance(value, int):
        return value.to_bytes(2 if value <= 0xFFFF else 4, "little")
    if isinstance(value, str):
        return bytes.fromhex(value.replace("-", ""))[::-1]
    raise ValueError(f"not a UUID: {value!r}")


def encode_fields(layout: str, data: tuple[object, ...], written: bytes = b"") -> bytes:
    """The event's data tuple laid out for the VM."""
    out = bytearray()
    values = iter(data)
    for code in layout:
        if code == "W":
            out += struct.pack("<H", len(written)) + written
            continue
        value = next(values)
        if code in _FIXED:
            out += struct.pack(_FIXED[code], value)
        elif code == "A":
            assert isinstance(value, bytes) and len(value) == 6, value
            out += value
        elif code == "U":
            raw = _uuid_bytes(value)
            out += bytes((len(raw),)) + raw
        elif value is None:  # "D"
            out += struct.pack("<H", blewire.NONE_LEN)
        else:
            assert isinstance(value, bytes), value
            out += struct.pack("<H", len(value)) + value
    return bytes(out)


def encode_event(event: BleEvent) -> bytes:
    """A model IRQ as a BLE_IRQ payload (event code, then its fields)."""
    layout = blewire.IRQ_LAYOUTS[event.code]
    return bytes((event.code,)) + encode_fields(layout, event.data, event.written)


def encode_ask(ask_id: int, event: BleEvent) -> bytes:
    """An IRQ whose return value is wanted, as a BLE_ASK payload."""
    return struct.pack("<H", ask_id) + encode_event(event)


def decode_answer(payload: bytes) -> tuple[int, bytes | bool | None]:
    """A BLE_ANSWER: (ask id, the handler's return value: bytes, True or None)."""
    ask_id, kind = struct.unpack_from("<HB", payload)
    if kind == blewire.ANSWER_BYTES:
        return ask_id, bytes(payload[3:])
    return ask_id, True if kind == blewire.ANSWER_TRUE else None
