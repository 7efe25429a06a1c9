"""The board's console: a stable pty for clients, relayed to each VM's own terminal.

Clients (pyserial, mpremote, the kommune CLI) open `Console.path` once; VMs
come and go behind it. The relay also does what a board's firmware does
around its REPL across a reboot:

* it prints the reboot text (ROM banner, "MPY: soft reboot") between VMs;
* it remembers whether the REPL was in raw mode (mpremote's soft reset is a
  Ctrl-D in the raw REPL, after which a board comes back in the raw REPL) and
  then brings the new VM's REPL into raw mode itself, hiding the friendly
  banner a real board would not print;
* Ctrl-C is the interrupt character: while the VM executes code with
  Ctrl-C enabled (a REPL line, a raw-REPL or raw-paste program, boot.py,
  main.py; not after micropython.kbd_intr(-1)), the byte is taken out of the
  stream and the VM gets a KeyboardInterrupt (`interrupt.py` says how, without
  a race); otherwise it is data, as on a board;
* input that arrives while no VM runs is lost, as on a rebooting board;
  input that arrives while a VM boots waits (a Ctrl-C must not hit the
  boot script) until the board opens its REPL input (`open_input`);
* when it brings a rebooted REPL back to raw mode for a client, it shows the
  raw-REPL banner a board prints then -- unless the client has meanwhile
  started its own exchange (a Ctrl-C or Ctrl-A: mpremote's "\\r\\x03 ... \\r\\x01"
  is on its way), which gets its own banner. Showing both would hand the
  client a second banner after it flushed its input, and mpremote then takes
  the start of that banner for its raw-paste answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

from kommune.hil.interrupt import interrupt_if_catching
from kommune.hil.ptys import ClientPort

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
RAW_PROMPT = RAW_BANNER + b">"
FRIENDLY_BANNER = b'Type "help()" for more information.\r\n'
FRIENDLY_PROMPT = FRIENDLY_BANNER + b">>> "
BANNER_START = b"MicroPython "
CTRL_A = b"\x01"  # enter raw REPL
CTRL_C = b"\x03"  # the interrupt character
_TAIL = max(len(RAW_BANNER), len(FRIENDLY_PROMPT))
_HOLD_LIMIT = 64 * 1024
_RECENT = 4096
_WAITING_LIMIT = 4096
#: Ctrl-Cs this close together are one interrupt. A board just raises the
#: pending KeyboardInterrupt again; the unix port exits on a second SIGINT
#: that arrives before it raised the first.
INTERRUPT_COALESCE_S = 0.1


class Console:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_settled: Callable[[], None] | None = None
    ) -> None:
        self._loop = loop
        self._on_settled = on_settled  # called when a raw-mode re-entry is done
        self._port = ClientPort()
        self.path = self._port.path
        self._vm: int | None = None  # master fd of the running VM's terminal
        self._vm_pid: int | None = None
        self._to_vm = bytearray()  # client bytes the VM's terminal has not taken yet
        self._input_open = False  # the VM booted far enough to take console input
        self._waiting = bytearray()  # client input held until then
        self._hold: bytearray | None = None  # VM output held while entering raw mode
        self._switching = False  # the console sent Ctrl-A; the raw banner is due
        self._tail = b""
        self.raw_mode = False
        self._recent = bytearray()  # the last output, for error messages
        self._last_interrupt = float("-inf")  # monotonic s of the last Ctrl-C sent as SIGINT
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
        self._switching = False
        self._input_open = False
        self._waiting.clear()
        self._last_interrupt = float("-inf")
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
        self._switching = False

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
        if not self._switching:
            self._on_friendly_prompt()
        if self._switching:
            self._on_raw_prompt()
        if self._hold is not None and len(self._hold) > _HOLD_LIMIT:
            # The REPL never came (boot.py loops or printed a lot): show it all.
            self._emit(bytes(self._hold))
            self._hold = None
            self._switching = False
            self._release()
            if self._on_settled is not None:
                self._on_settled()

    def _on_friendly_prompt(self) -> None:
        """Entering raw mode, step 1: the friendly prompt came; hide it and send Ctrl-A."""
        assert self._hold is not None
        end = self._hold.find(FRIENDLY_PROMPT)
        if end < 0:
            return
        start = self._hold.rfind(BANNER_START, 0, end)
        self._emit(bytes(self._hold[: start if start >= 0 else end]))  # what boot.py printed
        del self._hold[: end + len(FRIENDLY_PROMPT)]
        self._switching = True
        self._send_to_vm(CTRL_A)

    def _on_raw_prompt(self) -> None:
        """Step 2: the raw REPL is up; show its banner unless the client started its own."""
        assert self._hold is not None
        end = self._hold.find(RAW_PROMPT)
        if end < 0:
            return
        rest = bytes(self._hold[end + len(RAW_PROMPT) :])
        self._hold = None
        self._switching = False
        self._take_client_input()  # decide on everything the client sent up to now
        if CTRL_A in self._waiting or CTRL_C in self._waiting:
            self._emit(rest)
        else:
            self._emit(RAW_PROMPT + rest)
        self._release()
        if self._on_settled is not None:
            self._on_settled()

    @property
    def settled(self) -> bool:
        """Not busy bringing a rebooted REPL back to raw mode: what a client sees is final."""
        return self._hold is None

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
            self._deliver(data)

    def _take_client_input(self) -> None:
        """Move what the client wrote and we have not read yet into `_waiting`."""
        while data := self._port.read(65536):
            self._waiting += data
        del self._waiting[:-_WAITING_LIMIT]

    def _on_client(self) -> None:
        data = self._port.read(65536)
        if not data or self._vm is None:
            return  # nobody to hear it: a rebooting board loses serial input
        if not self._input_open or self._hold is not None:
            self._waiting += data
            del self._waiting[:-_WAITING_LIMIT]
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        """Client bytes to the VM; a Ctrl-C the VM takes as an interrupt is not data."""
        while (i := data.find(CTRL_C)) >= 0:
            self._send_to_vm(data[:i])
            if not self._interrupt():
                self._send_to_vm(CTRL_C)
            data = data[i + 1 :]
        self._send_to_vm(data)

    def _interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the VM if Ctrl-C is its interrupt character now."""
        pid = self._vm_pid
        if pid is None:
            return False
        now = time.monotonic()
        if now - self._last_interrupt < INTERRUPT_COALESCE_S:
            return True  # the same interrupt, still on its way
        if not interrupt_if_catching(pid):
            return False
        self._last_interrupt = now
        return True

    def _send_to_vm(self, data: bytes) -> None:
        fd = self._vm
        if fd is None or not data:
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
        try:
            self.detach()
        finally:
            self._loop.remove_reader(self._port.master)
            self._port.close()
