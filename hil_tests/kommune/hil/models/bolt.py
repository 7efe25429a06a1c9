"""A door lock's mechanism: a motor-driven bolt with end-position switches, a door
contact, and the battery that powers them.

Wiring (a board profile's `devices` entry, model "bolt"; pins are GPIO numbers):

    dir       output  motor direction: 1 retracts the bolt (unlock), 0 throws it (lock)
    enable    output  motor driver enable: the motor runs while it is 1
    locked    input   end switch, 1 while the bolt is fully thrown
    unlocked  input   end switch, 1 while the bolt is fully retracted
    door      input   door contact (reed), 1 while the door is shut
    battery   ADC     battery voltage through a divider (`divider`: battery / ADC volts)

The bolt travels end to end in `travel_s` while the motor runs; it reaches an
end switch only by travelling there. A power cut stops the motor (the driver's
inputs fall to 0 with the chip's pins). Faults a test injects: `jam()` (the
bolt stops where it is and reaches no end), `hold_door_open()` (the door stays
open, e.g. wedged). A test opens and shuts the door (`open_door`, `close_door`;
the door opens only while the bolt is fully retracted) and reads `state`,
`position`, `door_closed` and `history`. Runs on the rig's event loop.
"""

from __future__ import annotations

import asyncio
import time

from kommune.hil.models.adc import AdcBank
from kommune.hil.models.pins import PinBank

LOCKED = "locked"
UNLOCKED = "unlocked"
BETWEEN = "between"


class BoltMechanism:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pins: PinBank,
        adc: AdcBank,
        *,
        dir: int,
        enable: int,
        locked: int,
        unlocked: int,
        door: int,
        battery: int,
        travel_s: float = 0.15,
        battery_v: float = 6.0,
        divider: float = 3.0,
        drain_v_per_s: float = 0.0,
    ) -> None:
        self._loop = loop
        self._pins = pins
        self._adc = adc
        self.dir_pin, self.enable_pin = dir, enable
        self.locked_pin, self.unlocked_pin, self.door_pin = locked, unlocked, door
        self.battery_pin = battery
        self.travel_s = travel_s
        self.divider = divider
        self.drain_v_per_s = drain_v_per_s
        self.position = 0.0  # 0: thrown (locked) .. 1: retracted (unlocked)
        self.direction = 0  # +1 retracting, -1 throwing, 0 still
        self.jammed = False
        self.door_closed = True
        self.door_held_open = False
        self.motor_runs = 0  # times the motor started
        #: (monotonic s, state) at every change of `state`, and of the door ("door open"/...)
        self.history: list[tuple[float, str]] = []
        self._since = loop.time()
        self._timer: asyncio.TimerHandle | None = None  # reaching the far end
        self._release: asyncio.TimerHandle | None = None  # leaving an end switch
        self._state = ""
        self.battery_v = battery_v
        self.set_battery(battery_v)
        pins.listeners.append(self._on_pin)
        self._update_switches()
        pins.drive(door, 1)

    # -- the test's side --------------------------------------------------------

    @property
    def state(self) -> str:
        """The bolt's state: locked, unlocked or between (neither end switch closed)."""
        self._advance()
        return self._state

    def jam(self) -> None:
        """The bolt sticks where it is: the motor stalls, no end is reached."""
        self._advance()
        self.jammed = True
        self._cancel()

    def clear_jam(self) -> None:
        self._advance()
        self.jammed = False
        self._plan()

    def open_door(self) -> bool:
        """Pull the door open; False (it stays shut) unless the bolt is fully retracted."""
        if self.state != UNLOCKED:
            return False
        if self.door_closed:
            self.door_closed = False
            self._pins.drive(self.door_pin, 0)
            self.history.append((time.monotonic(), "door open"))
        return True

    def close_door(self) -> bool:
        """Push the door shut; False if it is held open."""
        if self.door_held_open:
            return False
        if not self.door_closed:
            self.door_closed = True
            self._pins.drive(self.door_pin, 1)
            self.history.append((time.monotonic(), "door closed"))
        return True

    def hold_door_open(self, held: bool = True) -> None:
        """The door is wedged open (held=False: free again; it stays where it is)."""
        if held and self.door_closed:
            self.open_door()
        self.door_held_open = held

    def set_battery(self, volts: float) -> None:
        self.battery_v = max(0.0, volts)
        self._adc.set_voltage(self.battery_pin, self.battery_v / self.divider)

    def states(self) -> list[str]:
        """The bolt's states in order (door events left out)."""
        return [s for _, s in self.history if s in (LOCKED, UNLOCKED, BETWEEN)]

    # -- the motor ----------------------------------------------------------------

    def _on_pin(self, pin: int, level: int) -> None:
        if pin in (self.dir_pin, self.enable_pin):
            self._advance()
            direction = 0
            if self._pins.level(self.enable_pin):
                direction = 1 if self._pins.level(self.dir_pin) else -1
            if direction and not self.direction:
                self.motor_runs += 1
            self.direction = direction
            self._plan()

    def _advance(self) -> None:
        """Move the bolt to where it is now, and set the switches."""
        now = self._loop.time()
        elapsed = now - self._since
        self._since = now
        if self.direction:
            self.set_battery(self.battery_v - self.drain_v_per_s * elapsed)
            if not self.jammed:
                pos = self.position + self.direction * elapsed / self.travel_s
                self.position = min(1.0, max(0.0, pos))
        self._update_switches()

    def _plan(self) -> None:
        """Wake when the moving bolt leaves the end switch it is on, and when it reaches
        the other end."""
        self._cancel()
        if self.jammed or not self.direction:
            return
        left = (1.0 - self.position) if self.direction > 0 else self.position
        if left <= 0:
            return
        if left >= 1.0:
            # The switch opens within the first 2 % of the travel.
            self._release = self._loop.call_later(0.02 * self.travel_s, self._advance)
        self._timer = self._loop.call_later(left * self.travel_s, self._arrive)

    def _arrive(self) -> None:
        # Planned for the moment the bolt gets there: float rounding must not stop it short.
        self._timer = None
        self._advance()
        if self.direction and not self.jammed:
            self.position = 1.0 if self.direction > 0 else 0.0
            self._update_switches()

    def _cancel(self) -> None:
        for timer in (self._timer, self._release):
            if timer is not None:
                timer.cancel()
        self._timer = self._release = None

    def _update_switches(self) -> None:
        state = LOCKED if self.position <= 0.0 else UNLOCKED if self.position >= 1.0 else BETWEEN
        if state == self._state:
            return
        self._state = state
        self.history.append((time.monotonic(), state))
        self._pins.drive(self.locked_pin, 1 if state == LOCKED else 0)
        self._pins.drive(self.unlocked_pin, 1 if state == UNLOCKED else 0)
