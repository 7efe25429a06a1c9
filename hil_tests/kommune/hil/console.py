"""The board's console: a stable pty for clients, relayed to each VM's own terminal.

Clients (pyserial, mpremote, the kommune CLI) open `Console.path` once; VMs
come and go behind it. The relay also does what a board's firmware does
around its REPL across a reboot:

* it prints the reboot text (ROM banner, "MPY: soft reboot") between VMs;
* it remembers whether the REPL was in raw mode (mpremote's soft reset is a
  Ctrl-D in the raw REPL, after which a board comes back in the raw REPL) and
  then brings the new VM's REPL into raw mode itself, hiding the friendly
  banner a real board would not print;
* Ctrl-C is the interrupt character: while the VM runs code and has not
  disabled it (micropython.kbd_intr(-1)), the byte is taken out of the
  stream and the VM gets SIGINT (its KeyboardInterrupt); otherwise it is
  data, as on a board;
* input that arrives while no VM runs is lost, as on a rebooting board;
  input that arrives while a VM boots waits (a Ctrl-C must not hit the
  boot script) until the board opens its REPL input (`open_input`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from kommune.hil.ptys import ClientPort, vm_running_code

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'
FRIENDLY_PROMPT = FRIENDLY_BANNER + b">>> "
BANNER_START = b"MicroPython "
CTRL_A = b"\x01"  # enter raw REPL
CTRL_C = b"\x03"  # the interrupt character
_TAIL = max(len(RAW_BANNER), len(FRIENDLY_PROMPT))
_HOLD_LIMIT = 64 * 1024
_RECENT = 4096
_WAITING_LIMIT = 4096


class Console:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._port = ClientPort()
        self.path = self._port.path
        self._vm: int | None = None  # master fd of the running VM's terminal
        self._vm_pid: int | None = None
        self._to_vm = bytearray()  # client bytes the VM's terminal has not taken yet
        self._input_open = False  # the VM booted far enough to take console input
        self._waiting = bytearray()  # client input held until then
        self._hold: bytearray | None = None  # VM output held while entering raw mode
        self._tail = b""
        self.raw_mode = False
        self._recent = bytearray()  # the last output, for error messages
        self._closed = False
        loop.add_reader(self._port.master, self._on_client)

    # -- VM side ------------------------------------------------------------

    def attach(self, vm_master: int, vm_pid: int, *, enter_raw: bool) -> None:
        """Relay to a freshly started VM; with `enter_raw`, bring its REPL to raw mode."""
        self.detach()
        self._vm = vm_master
        self._vm_pid = vm_pid
        self._tail = b""
        self._hold = bytearray() if enter_raw else None
        self._input_open = False
        self._waiting.clear()
        self.raw_mode = enter_raw
        self._loop.add_reader(vm_master, self._on_vm)

    def detach(self) -> None:
        """Drain what the VM printed last, then stop relaying and close its terminal."""
        fd = self._vm
        if fd is None:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._drain_vm(fd)
        with contextlib.suppress(OSError):
            os.close(fd)
        self._vm = None
        self._vm_pid = None
        self._to_vm.clear()
        self._waiting.clear()
        self._input_open = False
        if self._hold:
            self._emit(bytes(self._hold))
        self._hold = None

    def _drain_vm(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._from_vm(data)

    def _on_vm(self) -> None:
        fd = self._vm
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the VM's side closed (it exited)
            self._loop.remove_reader(fd)
            return
        if not data:
            self._loop.remove_reader(fd)
            return
        self._from_vm(data)

    def _from_vm(self, data: bytes) -> None:
        window = self._tail + data
        self._tail = window[-_TAIL:]
        if RAW_BANNER in window:
            self.raw_mode = True
        if FRIENDLY_BANNER in window and window.rfind(FRIENDLY_BANNER) > window.rfind(RAW_BANNER):
            self.raw_mode = False
        if self._hold is None:
            self._emit(data)
            return
        self._hold += data
        end = self._hold.find(FRIENDLY_PROMPT)
        if end < 0:
            if len(self._hold) > _HOLD_LIMIT:  # boot.py never reached the REPL
                self._emit(bytes(self._hold))
                self._hold.clear()
            return
        start = self._hold.rfind(BANNER_START, 0, end)
        shown = bytes(self._hold[: start if start >= 0 else end])
        rest = bytes(self._hold[end + len(FRIENDLY_PROMPT) :])
        self._hold = None
        self._emit(shown + rest)
        self.raw_mode = True
        self._send_to_vm(CTRL_A)
        self._release()

    def _emit(self, data: bytes) -> None:
        self._recent += data
        del self._recent[:-_RECENT]
        self._port.write(data)

    def recent(self) -> str:
        """The last few KB the board printed (for error messages)."""
        return self._recent.decode(errors="replace")

    def announce(self, text: bytes) -> None:
        """Print board text (a ROM banner, "MPY: soft reboot") on the console."""
        self._emit(text)

    # -- client side --------------------------------------------------------

    def open_input(self) -> None:
        """The VM booted: pass console input on from now (once raw mode is entered)."""
        self._input_open = True
        self._release()

    def _release(self) -> None:
        if self._input_open and self._hold is None and self._waiting:
            data = bytes(self._waiting)
            self._waiting.clear()
            self._send_to_vm(data)

    def _on_client(self) -> None:
        data = self._port.read(65536)
        if not data or self._vm is None:
            return  # nobody to hear it: a rebooting board loses serial input
        if not self._input_open or self._hold is not None:
            self._waiting += data
            del self._waiting[:-_WAITING_LIMIT]
            return
        if CTRL_C in data and self._interrupt():
            data = data.replace(CTRL_C, b"")
        self._send_to_vm(data)

    def _interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the VM if Ctrl-C is its interrupt character now."""
        fd, pid = self._vm, self._vm_pid
        if fd is None or pid is None or not vm_running_code(fd) or not _catches_sigint(pid):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        return True

    def _send_to_vm(self, data: bytes) -> None:
        fd = self._vm
        if fd is None:
            return
        pending = bool(self._to_vm)
        self._to_vm += data
        if not pending:
            self._flush_to_vm()

    def _flush_to_vm(self) -> None:
        fd = self._vm
        if fd is None:
            self._to_vm.clear()
            return
        try:
            n = os.write(fd, self._to_vm)
        except BlockingIOError:
            n = 0
        except OSError:
            self._to_vm.clear()
            n = 0
        del self._to_vm[:n]
        if self._to_vm:
            self._loop.add_writer(fd, self._flush_to_vm)
        else:
            self._loop.remove_writer(fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.detach()
        self._loop.remove_reader(self._port.master)
        self._port.close()


def _catches_sigint(pid: int) -> bool:
    """The unix port handles SIGINT while Ctrl-C is enabled (kbd_intr), else leaves it fatal."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    except OSError:
        pass
    return False
