"""The supervisor's end of the rig channel (frame format: kommune/hil/board/rigwire.py).

A `HandlerTable` maps each frame kind the VM sends to a handler; requests
return their REPLY payload (or raise `RigFault`, sent as FAIL), notes return
nothing. New peripherals (bluetooth) register their kinds on a board's table:

    board.handlers.request(rigwire.BLE_GAP_ADVERTISE, on_advertise)
    board.handlers.note(rigwire.BLE_GATTS_NOTIFY, on_notify)
    board.send_event(rigwire.BLE_IRQ, payload)   # rig -> VM, any time
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kommune.hil.board import rigwire

log = logging.getLogger(__name__)

Handler = Callable[[bytes], bytes | None]


class RigFault(Exception):
    """A request the board refuses, raised in the VM as OSError or ValueError."""

    def __init__(self, exc: int, errno: int = 0, message: str = "") -> None:
        super().__init__(message or errno_codes.errorcode.get(errno, str(errno)))
        self.exc = exc
        self.errno = errno
        self.message = message

    @classmethod
    def value_error(cls, message: str) -> RigFault:
        return cls(rigwire.EXC_VALUEERROR, 0, message)

    @classmethod
    def os_error(cls, errno: int, message: str = "") -> RigFault:
        return cls(rigwire.EXC_OSERROR, errno, message)

    def payload(self) -> bytes:
        return struct.pack("<BH", self.exc, self.errno) + self.message.encode()


def frame(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > rigwire.MAX_PAYLOAD:
        raise ValueError(f"rig frame payload of {len(payload)} bytes is too long")
    return struct.pack("<BH", kind, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame; raises asyncio.IncompleteReadError at the end of the stream."""
    head = await reader.readexactly(rigwire.HEADER_SIZE)
    kind, size = struct.unpack("<BH", head)
    return kind, (await reader.readexactly(size) if size else b"")


@dataclass(frozen=True)
class _Entry:
    handler: Handler
    is_request: bool


class HandlerTable:
    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def request(self, kind: int, handler: Handler) -> None:
        self._entries[kind] = _Entry(handler, True)

    def note(self, kind: int, handler: Handler) -> None:
        self._entries[kind] = _Entry(handler, False)

    def dispatch(self, kind: int, payload: bytes) -> bytes | None:
        """Run the handler; the frame to send back (REPLY/FAIL), None for a note."""
        entry = self._entries.get(kind)
        if entry is None:
            # Both ends come from this repo, so this is a bug: fail loudly in the VM.
            log.error("rig: unknown frame kind 0x%02x from the VM", kind)
            fault = RigFault.os_error(errno_codes.ENOSYS, f"rig: unknown frame kind 0x{kind:02x}")
            return frame(rigwire.FAIL, fault.payload())
        try:
            result = entry.handler(payload)
        except RigFault as refused:
            return frame(rigwire.FAIL, refused.payload()) if entry.is_request else None
        except (struct.error, IndexError, ValueError) as e:
            log.error("rig: malformed frame 0x%02x from the VM: %r", kind, e)
            bad = RigFault.os_error(errno_codes.EINVAL, f"rig: malformed frame ({e})")
            return frame(rigwire.FAIL, bad.payload()) if entry.is_request else None
        if not entry.is_request:
            return None
        return frame(rigwire.REPLY, result or b"")
