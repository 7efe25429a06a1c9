# The bolt: a motor (direction + enable pins) with an end switch at each end,
# and the door contact. Success is only ever what an end switch reports: an
# end not reached within travel_timeout_ms is a fault, and the motor stops.
import asyncio
import time

from micropython import const

LOCKED = const(0)
UNLOCKED = const(1)
BETWEEN = const(2)
STATE_NAMES = ("locked", "unlocked", "between")

# Audit EVENT_DOOR arguments (README.md); the faults are also Bolt.fault values.
EV_UNLOCKED = const(1)  # the bolt reached its unlocked end
EV_LOCKED = const(2)  # ... its locked end
EV_DOOR_OPENED = const(3)
EV_DOOR_CLOSED = const(4)
EV_FAULT_CLEARED = const(5)
FAULT_JAM_UNLOCKING = const(16)  # the unlocked end was not reached in time
FAULT_JAM_LOCKING = const(17)  # the locked end was not reached in time
FAULT_NAMES = {0: "none", 16: "jam_unlocking", 17: "jam_locking"}

_POLL_MS = const(5)


class Bolt:
    def __init__(
        self,
        *,
        motor_dir: object,
        motor_en: object,
        sw_locked: object,
        sw_unlocked: object,
        door: object,
        travel_timeout_ms: int,
    ) -> None:
        # Pins made by main (machine.Pin), so a test can hand in others.
        self._dir = motor_dir
        self._en = motor_en
        self._locked = sw_locked
        self._unlocked = sw_unlocked
        self._door = door
        self.travel_timeout_ms = travel_timeout_ms
        self.fault = 0  # FAULT_*; openings are refused while it is set
        self._en.value(0)  # type: ignore[attr-defined]

    def state(self) -> int:
        if self._locked.value():  # type: ignore[attr-defined]
            return LOCKED
        if self._unlocked.value():  # type: ignore[attr-defined]
            return UNLOCKED
        return BETWEEN

    def door_closed(self) -> bool:
        return bool(self._door.value())  # type: ignore[attr-defined]

    async def drive(self, unlock: bool) -> bool:
        # Run the motor until the wanted end switch closes: True. Not within
        # the timeout: the motor stops, self.fault is set, False.
        end = self._unlocked if unlock else self._locked
        if end.value():  # type: ignore[attr-defined]
            return True
        self._dir.value(1 if unlock else 0)  # type: ignore[attr-defined]
        self._en.value(1)  # type: ignore[attr-defined]
        deadline = time.ticks_add(time.ticks_ms(), self.travel_timeout_ms)
        try:
            while not end.value():  # type: ignore[attr-defined]
                if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                    self.fault = FAULT_JAM_UNLOCKING if unlock else FAULT_JAM_LOCKING
                    return False
                await asyncio.sleep_ms(_POLL_MS)
        finally:
            self._en.value(0)  # type: ignore[attr-defined]
        return True

    def on_door(self, handler: object) -> None:
        # handler(pin) on every edge of the door contact.
        self._door.irq(handler=handler, trigger=3)  # type: ignore[attr-defined]
