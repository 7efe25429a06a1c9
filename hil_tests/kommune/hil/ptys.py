"""Pseudo-terminals for the rig: the ports clients open, and the VM's own terminal.

A client-facing port keeps its master open for the rig's whole life and also
holds one slave fd itself, so the path stays valid across VM restarts and
client reconnects: pyserial sets RTS on open, which a pty with no master
answers with EIO, and a master whose slave side has no opener reports a
hangup on every poll. Ports are in raw mode (mpremote needs it: a cooked pty
turns "\\n" into "\\r\\r\\n").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
import tty

#: Output the client has not read yet beyond which a port drops new output,
#: as a USB-serial bridge with nobody listening does.
UNREAD_LIMIT = 16 * 1024


def set_raw(fd: int) -> None:
    tty.setraw(fd, termios.TCSANOW)


def set_nonblocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class ClientPort:
    """A pty whose slave path a client (pyserial, mpremote, the edge) opens."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        set_raw(self._slave)
        set_nonblocking(self.master)
        self.path = os.ttyname(self._slave)

    def unread(self) -> int:
        """Bytes written to the port that the client has not read yet."""
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        count: int = struct.unpack("i", buf)[0]
        return count

    def write(self, data: bytes) -> int:
        """Write what fits; returns how many bytes were taken (the rest is lost)."""
        if not data or self.unread() > UNREAD_LIMIT:
            return 0
        try:
            return os.write(self.master, data)
        except (BlockingIOError, OSError):
            return 0

    def read(self, limit: int = 4096) -> bytes:
        """What the client wrote (b"" if nothing)."""
        try:
            return os.read(self.master, limit)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def vm_terminal() -> tuple[int, int]:
    """(master, slave) for one VM's stdin/stdout, raw (no signal characters: the
    console decides what a Ctrl-C is, see interrupt.py)."""
    master, slave = os.openpty()
    set_raw(slave)
    set_nonblocking(master)
    return master, slave
