"""A node link on a serial line (UART, RS-485 adapter, or a pseudo-terminal of the HIL
rig): the byte stream goes through a `StreamDecoder`, answers are written back on the
same line.

The device is opened non-blocking and put in raw mode at the link's baud rate with
termios, and read from the event loop (`add_reader`): no thread, and the same code
for a USB adapter and a pty. (pyserial would add nothing here, and on open it sets RTS,
which a pty whose other side has closed answers with EIO.) If the device goes away the
link reports it (`lost`) and the links part opens it again after a pause, while the
other links go on.
"""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from pathlib import Path
from typing import Any

from kommune.edge.agent.process import PartError
from kommune.edge.links.handler import LinkHandler
from kommune.protocols.frame import Frame
from kommune.protocols.stream import StreamDecoder

READ_BYTES = 4096


def _speed(baud: int) -> int:
    speed = getattr(termios, f"B{baud}", None)
    if not isinstance(speed, int):
        raise PartError(f"baud {baud} is not a speed this system's serial driver knows")
    return speed


class SerialTransport:
    kind = "serial"

    def __init__(self, handler: LinkHandler, device: Path, baud: int) -> None:
        self.handler = handler
        self.device = device
        self.baud = baud
        self._fd: int | None = None
        self.decoder = StreamDecoder(self._on_frame)
        self._errors_seen: dict[str, int] = {}
        self.dropped_writes = 0
        #: Resolved with the error when an open device goes away.
        self.lost: asyncio.Future[BaseException] | None = None

    @property
    def where(self) -> str:
        return f"serial {self.device} at {self.baud} baud"

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def open(self) -> None:
        speed = _speed(self.baud)
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as e:
            raise PartError(
                f"link {self.handler.link_id}: cannot open {self.device}: {e.strerror or e}"
            ) from e
        try:
            if os.isatty(fd):
                tty.setraw(fd)
                attrs = termios.tcgetattr(fd)
                attrs[4] = attrs[5] = speed
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
            asyncio.get_running_loop().add_reader(fd, self._readable)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.lost = asyncio.get_running_loop().create_future()
        self.decoder.reset()
        self.handler.send = self._send

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _on_frame(self, frame: Frame) -> None:
        self.handler.on_frame(frame, None)

    def _readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            self._failed(e)
            return
        if not data:
            self._failed(EOFError(f"{self.device}: end of file"))
            return
        bad = self.decoder.frames_bad
        self.decoder.feed(data)  # the handler counts and never raises
        if self.decoder.frames_bad != bad:
            for reason, count in self.decoder.errors.items():
                for _ in range(count - self._errors_seen.get(reason, 0)):
                    self.handler.on_bad_packet(reason)
            self._errors_seen = dict(self.decoder.errors)

    def _failed(self, error: BaseException) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(error)

    def _send(self, wire: bytes, peer: Any) -> None:
        if self._fd is None:
            raise OSError("the link is closed")
        # A leading 0x00 ends whatever a cut-short write left on the line before it.
        out = b"\x00" + wire
        try:
            written = os.write(self._fd, out)
        except BlockingIOError:
            written = 0
        if written < len(out):
            # The line is backed up: the node gets no answer and retransmits.
            self.dropped_writes += 1
