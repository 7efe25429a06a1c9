# The fields of a BLE IRQ as the firmware's handler gets them (layouts in
# blewire.py), and their end when the handler returns.
#
# As on a board (modbluetooth.c), addresses and data are memoryviews into the
# event's own buffer and a UUID is the stack's object: all only valid during
# the handler. When it returns they are wiped (zeroed), so firmware that keeps
# one instead of a copy (bytes(addr), bluetooth.UUID(uuid)) sees it change, as
# it would on an ESP32 where the memory is reused.
import struct

from . import blewire
from .bleuuid import UUID


def decode(layout: str, buf: bytearray, at: int) -> tuple:
    """(data tuple, written bytes, UUIDs handed out) from `buf[at:]`."""
    view = memoryview(buf)
    items: list = []
    uuids: list = []
    written = b""
    for code in layout:
        if code == "H":
            items.append(buf[at] | buf[at + 1] << 8)
            at += 2
        elif code == "B":
            items.append(buf[at])
            at += 1
        elif code == "b":
            value = buf[at]
            items.append(value - 256 if value > 127 else value)
            at += 1
        elif code == "i":
            items.append(struct.unpack_from("<i", buf, at)[0])
            at += 4
        elif code == "A":
            items.append(view[at : at + 6])
            at += 6
        elif code == "U":
            size = buf[at]
            uuid = UUID(bytes(buf[at + 1 : at + 1 + size]))
            items.append(uuid)
            uuids.append(uuid)
            at += 1 + size
        else:  # "D" or "W": len:u16 + bytes
            size = buf[at] | buf[at + 1] << 8
            at += 2
            if code == "W":
                written = bytes(buf[at : at + size])
            elif size == blewire.NONE_LEN:
                items.append(None)
                size = 0
            else:
                items.append(view[at : at + size])
            at += size
    return tuple(items), written, uuids


def wipe(buf: bytearray, uuids: list) -> None:
    """The handler returned: what it was lent is no longer valid."""
    buf[:] = bytes(len(buf))
    for uuid in uuids:
        uuid._data = bytes(len(uuid._data))
