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


def set_raw(fd: int, *, lflag_marker: int = 0) -> None:
    """Raw mode, plus `lflag_marker` (local-mode bits that change nothing in raw mode)."""
    tty.setraw(fd, termios.TCSANOW)
    if lflag_marker:
        attrs = termios.tcgetattr(fd)
        attrs[3] |= lflag_marker
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


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


#: Set in a VM terminal's settings; the unix port clears all local modes
#: while it reads a REPL line and restores them while it runs code, so the
#: marker tells (from the master side) whether code is running.
RUNNING_MARKER = termios.ECHOCTL


def vm_terminal() -> tuple[int, int]:
    """(master, slave) for one VM's stdin/stdout, raw (no signal characters)."""
    master, slave = os.openpty()
    set_raw(slave, lflag_marker=RUNNING_MARKER)
    set_nonblocking(master)
    return master, slave


def vm_running_code(master: int) -> bool:
    """Whether the VM behind `master` runs code (rather than reading a REPL line).

    On Linux the master reports the slave's terminal settings."""
    try:
        return bool(termios.tcgetattr(master)[3] & RUNNING_MARKER)
    except termios.error:
        return False
