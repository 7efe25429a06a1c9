"""The rig for synchronous code (pytest fixtures, benchmarks): a supervisor on its own thread.

Tests block on serial ports and run `mpremote` as a subprocess; the boards'
relays must keep running meanwhile, so the supervisor gets a thread and an
event loop of its own. Every call into it is marshalled onto that loop.

    with Rig() as rig:
        board = rig.add_board("lamp-1")
        board.wait_booted()
        board.pins.drive(4, 1)
        board.power_cut()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar, Unpack

from kommune.hil import flash
from kommune.hil.emulated_board import EmulatedBoard
from kommune.hil.models.pins import PinState
from kommune.hil.models.pwm import PwmSetting
from kommune.hil.profiles import DeviceSpec
from kommune.hil.radio.board_ble_bridge import BoardBleBridge
from kommune.hil.supervisor import BoardOptions, Supervisor
from kommune.hil.uartlink import LineNoise

T = TypeVar("T")


class Rig:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kommune-rig", daemon=True
        )
        self._thread.start()
        self.supervisor = Supervisor()
        self._closed = False
        try:
            self.run(self.supervisor.start())
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 60.0) -> T:
        """Run a coroutine on the rig's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout_s)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `fn` on the rig's loop (models are not thread-safe) and return its result."""

        async def wrapper() -> T:
            return fn(*args, **kwargs)

        return self.run(wrapper())

    def add_board(
        self, name: str, profile: str = "esp32", **options: Unpack[BoardOptions]
    ) -> Board:
        """A new board (options: `BoardOptions`; with `radio` its `bluetooth.BLE` is live)."""
        return Board(self, self.run(self.supervisor.add_board(name, profile, **options)))

    def all_pids(self) -> list[int]:
        """Every VM process any board of this rig has started."""
        return self.call(lambda: [pid for b in self.supervisor.boards.values() for pid in b.pids])

    def close(self) -> None:
        """Close the supervisor (every board, radio and port), then stop the loop; the
        loop stops even when closing failed, and the failure is raised."""
        if self._closed:
            return
        self._closed = True
        try:
            self.run(self.supervisor.aclose(), timeout_s=30.0)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        """Cancel what still runs on the loop and wait for it, as asyncio.run() does, then
        stop and close the loop."""
        try:
            self.run(_cancel_other_tasks(), timeout_s=10.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
            self._loop.close()

    def __enter__(self) -> Rig:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _cancel_other_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Pins:
    """A board's GPIOs as the outside world sees them."""

    def __init__(self, rig: Rig, board: EmulatedBoard) -> None:
        self._rig = rig
        self._bank = board.hw.pins

    def drive(self, pin: int, level: int | None) -> None:
        """Drive `pin` to 0/1 from outside (a button, a sensor), None to let go."""
        self._rig.call(self._bank.drive, pin, level)

    def level(self, pin: int) -> int:
        return self._rig.call(self._bank.level, pin)

    def state(self, pin: int) -> PinState:
        return self._rig.call(self._bank.state, pin)

    def history(self, pin: int) -> list[tuple[float, int]]:
        """Every level change of `pin`: (time.monotonic() s, level)."""
        return self._rig.call(self._bank.history, pin)


class Board:
    """A test's handle on one emulated board (thread-safe)."""

    def __init__(self, rig: Rig, board: EmulatedBoard) -> None:
        self._rig = rig
        self.emulated = board
        self.name = board.name
        self.console = board.console_path
        self.link = board.link_path
        self.pins = Pins(rig, board)
        self.profile = board.profile
        self.flash_path = board.flash_path
        #: The board's radio (`bluetooth.BLE` bridged to the air), if it has one.
        self.ble: BoardBleBridge | None = board.ble

    # -- power ------------------------------------------------------------------

    def power_on(self) -> None:
        self._rig.call(self.emulated.power_on)

    def power_cut(self, off_s: float | None = 0.0) -> None:
        """Kill the board's power now; back on after `off_s` (None: stay off)."""
        self._rig.call(self.emulated.power_cut, off_s)

    def reset(self) -> None:
        """The reset button."""
        self._rig.call(self.emulated.reset)

    def brownout(self) -> None:
        self._rig.call(self.emulated.brownout)

    def wake(self) -> None:
        """Wake the board from deep sleep (a wake pin)."""
        self._rig.call(self.emulated.wake)

    def arm_power_cut(self, after_flash_writes: int, off_s: float | None = None) -> None:
        """Cut the power during the n-th flash page write of the next boot."""
        self._rig.call(self.emulated.arm_power_cut, after_flash_writes, off_s)

    def wait_booted(self, *, after: int = 0, timeout_s: float = 15.0) -> None:
        """Wait until a VM started after boot number `after` is up."""
        self._rig.run(self.emulated.wait_booted(after=after, timeout_s=timeout_s), timeout_s + 5)

    def wait_state(self, state: str, timeout_s: float = 15.0) -> None:
        self._rig.run(
            self.emulated.wait_for(lambda: self.emulated.state == state, timeout_s), timeout_s + 5
        )

    @property
    def boots(self) -> int:
        return self._rig.call(lambda: self.emulated.boots)

    @property
    def state(self) -> str:
        return self._rig.call(lambda: self.emulated.state)

    @property
    def reset_kinds(self) -> list[str]:
        """Every (re)start so far: "power_on", "soft", "watchdog", ..."""
        return self._rig.call(lambda: [kind for _, kind in self.emulated.resets])

    @property
    def pid(self) -> int | None:
        return self._rig.call(lambda: self.emulated.pid)

    # -- peripherals --------------------------------------------------------------

    def pwm(self, pin: int) -> PwmSetting | None:
        return self._rig.call(self.emulated.hw.pwm.current, pin)

    def pwm_history(self, pin: int) -> list[PwmSetting]:
        return self._rig.call(self.emulated.hw.pwm.history, pin)

    def set_voltage(self, pin: int, volts: float) -> None:
        self._rig.call(self.emulated.hw.adc.set_voltage, pin, volts)

    def link_noise(self, drop: float = 0.0, flip: float = 0.0, seed: int = 0) -> LineNoise:
        """Seeded faults on the node-link UART, both ways: lost bytes, flipped bits."""
        return self._rig.call(self.emulated.hw.link.set_noise, drop, flip, seed)

    def add_device(self, model: str, **options: Any) -> Any:
        """Wire another peripheral model to the board, e.g. ("qmc5883l", scl=22, sda=21)."""
        return self._rig.call(self.emulated.hw.add_device, DeviceSpec(model, options))

    def device(self, name: str) -> Any:
        """A peripheral model by name (e.g. "magnetometer"); use it via `board.call`."""
        return self._rig.call(self.emulated.hw.devices.__getitem__, name)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the rig's thread (to drive a model safely)."""
        return self._rig.call(fn, *args, **kwargs)

    def console_output(self) -> str:
        """The last few KB the board printed."""
        return self._rig.call(self.emulated.console.recent)

    # -- flash ----------------------------------------------------------------------

    def read_file(self, name: str) -> bytes:
        """A file from the flash image, read on the host (best with the board off)."""
        return flash.read_file(self.flash_path, self.profile.flash, name)

    def list_files(self) -> list[str]:
        return flash.list_files(self.flash_path, self.profile.flash)
