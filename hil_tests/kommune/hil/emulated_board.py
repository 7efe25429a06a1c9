"""One emulated board: its VM process across reboots, its console, its peripherals.

Life of a board (all on the supervisor's event loop):

    off --power_on--> booting --HELLO--> running --VM exits--> (restart by cause)

When the VM process ends, the board decides what that was: a reset the rig
caused (power cut, reset pin, brown-out, watchdog, machine.reset/deepsleep --
each recorded before the SIGKILL), a crash (killed by another signal: a
panic), or a soft reboot (the VM exited by itself: Ctrl-D at the REPL,
mpremote's soft reset, sys.exit). It then prints what the chip prints, resets
the peripherals as the chip would, and starts a new VM on the same flash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kommune.hil import flash
from kommune.hil.board import rigwire
from kommune.hil.console import Console
from kommune.hil.errors import RigError
from kommune.hil.peripherals import Peripherals
from kommune.hil.ptys import vm_terminal
from kommune.hil.rigchannel import HandlerTable, frame, read_frame
from kommune.hil.vmprocess import MIN_HEAP_KB, vm_command, vm_environment

if TYPE_CHECKING:
    from kommune.hil.profiles import BoardProfile
    from kommune.hil.radio.board_ble_bridge import BoardBleBridge

log = logging.getLogger(__name__)

#: Heap the emulation itself uses inside the VM (machine, rig channel, asyncio
#: hook, in 32-bit-word KB like the profile's heap), added to the profile's so
#: the firmware sees the real board's free RAM.
EMULATION_HEAP_KB = 30
BOOT_TIMEOUT_S = 30.0
SOFT_REBOOT_TEXT = b"MPY: soft reboot\r\n"
EXT0_WAKE = 2  # machine.wake_reason() values (ESP32)
TIMER_WAKE = 4


class BoardError(RigError):
    """The board did not boot, or was asked for something it cannot do."""


class EmulatedBoard:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        profile: BoardProfile,
        flash_path: Path,
        *,
        rig_socket: Path,
        workdir: Path,
        package_root: Path,
        tokens: dict[str, EmulatedBoard],
        heap_kb: int | None = None,
        seed: int = 0,
        clock_ppm: int = 0,
        flash_lock: flash.FlashLock | None = None,
    ) -> None:
        self.loop = loop
        self.name = name
        self.profile = profile
        self.flash_path = flash_path
        #: Held while the board is open, released when it closes (flash.lock_image).
        self.flash_lock = flash_lock
        self.heap_kb = heap_kb or profile.heap_kb + EMULATION_HEAP_KB
        self.unique_id = hashlib.sha256(name.encode()).digest()[:6]
        self._rig_socket = rig_socket
        self._workdir = workdir
        self._env = vm_environment(package_root)
        self._tokens = tokens
        self.console = Console(loop, on_settled=self._changed_soon)
        self.handlers = HandlerTable()
        self.hw = Peripherals(
            loop,
            profile,
            seed=seed,
            clock_ppm=clock_ppm,
            send_event=self.send_event,
            on_watchdog=lambda: self._kill("watchdog"),
            on_reset=self._on_vm_reset,
        )
        self.hw.register(self.handlers)
        #: The board's radio (`bluetooth.BLE` bridged to an air), set by the supervisor.
        self.ble: BoardBleBridge | None = None
        self.handlers.request(rigwire.HELLO, self._hello)
        self.handlers.note(rigwire.BOOTED, self._booted)
        self.handlers.note(rigwire.BOOT_FAILED, self._boot_failed)
        #: Why the board failed to boot (when `state` is "failed"), in one line.
        self.failure: str | None = None
        self._reported: str | None = None  # the VM's BOOT_FAILED reason, for `_fail`
        self.state = "off"  # off | booting | running | sleeping | failed | closing | closed
        self.boots = 0  # VM starts (soft reboots included)
        self.booted_count = 0  # VM starts that mounted the flash and are running
        self.reset_kind = "power_on"  # the last chip reset, for machine.reset_cause()
        self.resets: list[tuple[float, str]] = []  # (monotonic s, kind), soft reboots included
        self.last_exit: int | None = None
        self.pids: list[int] = []  # every VM process this board started
        self._run_main = True
        self._wake_reason = 0
        self._wake_by = TIMER_WAKE  # what ends the current deep sleep
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._token = ""
        self._booted_this_boot = False
        self._ctl: asyncio.StreamWriter | None = None
        self._pending: tuple[str, float | None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Condition()
        self._panics: list[float] = []
        self._cut_after = -1  # armed flash fault point for the next boot
        self._cut_off_s: float | None = None

    # -- ports ----------------------------------------------------------------

    @property
    def console_path(self) -> str:
        return self.console.path

    @property
    def link_path(self) -> str:
        return self.hw.link.path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- power and resets (the test's and the CLI's controls) -----------------

    def power_on(self) -> None:
        if self.state not in ("off", "failed", "sleeping"):
            return
        self._cancel_timer()
        self._reported = None
        # What the host can check fails the board at once, with its cause.
        try:
            flash.ensure_image(self.flash_path, self.profile.flash)
        except flash.FlashError as e:
            self._fail(f"flash: {e}")
            self._changed_soon()
            return
        if self.heap_kb < MIN_HEAP_KB:
            self._fail(f"a heap of {self.heap_kb} KB is too small to boot (at least {MIN_HEAP_KB})")
            self._changed_soon()
            return
        kind = "deepsleep" if self.state == "sleeping" else "power_on"
        self._run_main = True
        self._start_vm(kind)

    def power_cut(self, off_s: float | None = 0.0) -> None:
        """Cut the power now (mid-instruction, mid-flash-write); back on after `off_s`
        seconds, or only on power_on() if `off_s` is None."""
        if self._proc is not None:
            self._kill("power_cut", off_s)
            return
        self._cancel_timer()
        self.hw.chip_reset()
        self.hw.rtc.power_on()
        self.state = "off"
        if off_s is not None:
            self._timer = self.loop.call_later(off_s, self.power_on)

    def reset(self) -> None:
        """Press the reset button (EN pin)."""
        self._reset_or_start("reset_pin")

    def brownout(self) -> None:
        """Supply dips below the brown-out threshold: the chip resets."""
        self._reset_or_start("brownout")

    def arm_power_cut(self, after_flash_writes: int, off_s: float | None = None) -> None:
        """Cut the power during the n-th flash page write of the next boot
        (deterministic fault injection; back on after `off_s`, None: stay off)."""
        self._cut_after = after_flash_writes
        self._cut_off_s = off_s

    def wake(self) -> None:
        """Wake from deep sleep now (a wake pin)."""
        if self.state == "sleeping":
            self._wake_by = EXT0_WAKE
            self.power_on()

    def _reset_or_start(self, kind: str) -> None:
        if self._proc is not None:
            self._kill(kind)
        elif self.state in ("off", "failed", "sleeping"):
            self._cancel_timer()
            self.hw.chip_reset()
            self._run_main = True
            self._start_vm(kind)

    def _kill(self, kind: str, arg: float | None = None) -> None:
        self._pending = (kind, arg)
        if self._proc is not None:
            try:
                os.kill(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _on_vm_reset(self, how: int, arg_ms: int) -> None:
        if how == rigwire.RESET_SOFT:
            self._kill("soft")
        elif how == rigwire.RESET_DEEPSLEEP:
            self._kill("deepsleep", arg_ms / 1000)
        elif how == rigwire.RESET_POWER_CUT:
            self._kill("power_cut", self._cut_off_s)
        else:
            self._kill("software")

    # -- the VM process ---------------------------------------------------------

    def _start_vm(self, kind: str) -> None:
        """Start a VM after a reset of `kind` ("soft": a soft reboot)."""
        self.boots += 1
        self.resets.append((time.monotonic(), kind))
        if kind == "soft":
            self.console.announce(SOFT_REBOOT_TEXT)
        else:
            self.reset_kind = kind
            self._wake_reason = self._wake_by if kind == "deepsleep" else 0
            self.console.announce(self.profile.rom_text(kind).encode())
        self._token = f"{self.name}/{self.boots}/{secrets.token_hex(4)}"
        self._tokens[self._token] = self
        self._booted_this_boot = False
        master, slave = vm_terminal()
        try:
            self._proc = subprocess.Popen(
                vm_command(self.heap_kb, self._rig_socket, self._token),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                close_fds=True,
                cwd=self._workdir,
                env=self._env,
            )
        finally:
            os.close(slave)
        self.pids.append(self._proc.pid)
        self.console.attach(master, self._proc.pid, enter_raw=not self._run_main)
        self._pidfd = os.pidfd_open(self._proc.pid)
        self.loop.add_reader(self._pidfd, self._on_exit)
        self.state = "booting"
        self._cancel_timer()
        self._timer = self.loop.call_later(BOOT_TIMEOUT_S, self._boot_timeout, self.boots)

    def _boot_timeout(self, boot: int) -> None:
        if boot == self.boots and not self._booted_this_boot and self._proc is not None:
            self._reported = f"not booted within {BOOT_TIMEOUT_S:.0f} s{self._console_error()}"
            self._kill("failed")

    def _boot_failed(self, payload: bytes) -> None:
        """BOOT_FAILED: the VM's boot script failed; end this boot, failing with its reason."""
        self._reported = payload.decode(errors="replace") or "the boot script failed"
        self._kill("failed")

    def _on_exit(self) -> None:
        assert self._pidfd is not None and self._proc is not None
        self.loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self.last_exit = self._proc.wait()
        self._proc = None
        self._tokens.pop(self._token, None)
        self.console.detach()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        for link in self.hw.uarts.values():
            link.detach()
        pending, self._pending = self._pending, None
        self._cancel_timer()
        if self.state == "closing":
            self.state = "closed"
        elif pending is not None:
            self._after_reset(*pending)
        elif not self._booted_this_boot:
            self._fail("the VM exited before it booted")
        elif self.last_exit < 0:
            self._after_reset("panic", None)
        else:
            self._after_reset("soft", None)
        self.loop.create_task(self._notify())

    def _after_reset(self, kind: str, arg: float | None) -> None:
        if kind == "soft":
            self._run_main = not self.console.raw_mode
            self._start_vm("soft")
            return
        self.hw.chip_reset()
        self._run_main = True
        if kind == "failed":
            self._fail("the boot script did not finish")
        elif kind == "power_cut":
            self.hw.rtc.power_on()
            self.state = "off"
            if arg is not None:
                self._timer = self.loop.call_later(arg, self.power_on)
        elif kind == "deepsleep":
            self.state = "sleeping"
            self._wake_by = TIMER_WAKE
            if arg:
                self._timer = self.loop.call_later(arg, self.power_on)
        elif kind == "panic" and self._crash_looping():
            self._fail("the VM keeps crashing")
        else:
            if kind == "brownout":
                self.hw.rtc.power_on()
            self._start_vm(kind)

    def _crash_looping(self) -> bool:
        now = time.monotonic()
        self._panics = [t for t in self._panics if now - t < 10.0] + [now]
        return len(self._panics) > 5

    def _fail(self, why: str) -> None:
        """The board stops trying; `why` unless the VM said why itself (BOOT_FAILED)."""
        reported, self._reported = self._reported, None
        if reported is None and why == "the VM exited before it booted":
            why += self._console_error()
        self.failure = reported or why
        log.error(
            "board %s failed: %s; console:\n%s", self.name, self.failure, self.console.recent()
        )
        self.state = "failed"

    def _console_error(self) -> str:
        """The last exception line the console shows, as ` (console: ...)`, or ""."""
        found = re.findall(r"^\w*(?:Error|Exception|Interrupt)\b.*$", self.console.recent(), re.M)
        return f" (console: {found[-1].strip()})" if found else ""

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _changed_soon(self) -> None:
        """Wake the waiters of `wait_for` (from a callback)."""
        self.loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until `predicate()` holds (checked whenever the board changes)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_booted(self, *, after: int = 0, timeout_s: float = 15.0) -> None:
        """Wait until a VM started after boot number `after` has booted: flash mounted and,
        after a soft reset in the raw REPL, back in it with its banner shown."""
        try:
            await self.wait_for(
                lambda: (
                    self.state == "failed"
                    or (self.boots > after and self._booted_this_boot and self.console.settled)
                ),
                timeout_s,
            )
        except TimeoutError as e:
            raise BoardError(
                f"board {self.name}: not booted after {timeout_s} s ({self.state})"
            ) from e
        if self.state == "failed":
            raise BoardError(
                f"board {self.name} failed to boot: {self.failure}\n"
                f"console:\n{self.console.recent()}"
            )

    # -- the rig channel ------------------------------------------------------

    def _hello(self, payload: bytes) -> bytes:
        profile = self.profile
        cut_after, self._cut_after = self._cut_after, -1  # armed for one boot
        config = {
            "board": self.name,
            "reset_cause": profile.reset_cause[self.reset_kind],
            "wake_reason": self._wake_reason,
            "unique_id": self.unique_id.hex(),
            "cpu_hz": profile.cpu_hz,
            "run_main": self._run_main,
            "rtc_epoch_s": int(self.hw.rtc.now()),
            "clock_ppm": self.hw.rtc.drift_ppm,
            "flash": {
                "path": str(self.flash_path),
                "block_size": profile.flash.block_size,
                "block_count": profile.flash.block_count,
                "page_size": profile.flash.page_size,
                "cut_after": cut_after,
            },
            "i2c": {str(k): list(v) for k, v in profile.i2c.items()},
        }
        return json.dumps(config).encode()

    def _booted(self, payload: bytes) -> None:
        self._booted_this_boot = True
        self.booted_count += 1
        self.state = "running"
        self._cancel_timer()
        self.console.open_input()
        self.loop.create_task(self._notify())

    async def serve(
        self, token: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve the control connection of the VM that sent HELLO(token)."""
        if token != self._token:
            writer.close()
            return
        self._ctl = writer
        out = self.handlers.dispatch(rigwire.HELLO, token.encode())
        if out:
            writer.write(out)
        try:
            while True:
                kind, payload = await read_frame(reader)
                out = self.handlers.dispatch(kind, payload)
                if out is not None:
                    writer.write(out)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._ctl is writer:
                self._ctl = None
            writer.close()

    def attach_uart(
        self, token: str, uart_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if token != self._token or uart_id not in self.profile.uarts:
            writer.close()
            return
        self.hw.uart(uart_id).attach(reader, writer)

    def send_event(self, kind: int, payload: bytes) -> None:
        """Send an event frame to the running VM (dropped if none is connected)."""
        if self._ctl is not None and not self._ctl.is_closing():
            self._ctl.write(frame(kind, payload))

    # -- shutdown ---------------------------------------------------------------

    async def aclose(self) -> None:
        self._cancel_timer()
        if self._proc is not None:
            self.state = "closing"
            self._kill("closing")
            try:
                await self.wait_for(lambda: self.state == "closed", 5.0)
            except TimeoutError:
                log.error("board %s: VM %s did not exit", self.name, self.pid)
        self.state = "closed"
        try:
            self.console.close()
        finally:
            try:
                await self.hw.aclose()
            finally:
                if self.flash_lock is not None:
                    self.flash_lock.release()
