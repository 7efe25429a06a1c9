# The LED driver's PWM input: arc power levels through the DALI-style
# logarithmic curve (protocols lamp.level_to_duty), a floor, and fades.
#
# A fade runs linearly in level over its time (so exponentially in light, as
# the eye likes it), from wherever the output is when it starts; a new set()
# replaces the fade under way at once. set(level, 0) writes the PWM before it
# returns (presence must not wait for a task switch).
import asyncio
import time

from micropython import const

from kommune.protocols.lamp import MASK, level_to_duty

_STEP_MS = const(10)  # a fading output is updated this often


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]
    return t


class Dimmer:
    def __init__(self, pwm: object, floor: int = 1) -> None:
        self._pwm = pwm  # machine.PWM, made by main
        self.floor = floor
        self.level = 0  # the output now, 0..254
        self.target = 0  # where it is going
        self.duty = -1
        self._from = 0
        self._start_ms = 0
        self._fade_ms = 0
        self.fading = False
        self._wake = asyncio.ThreadSafeFlag()
        self.changed_ms = _ms()  # when the output last changed (the meter lets it settle)

    def duty_of(self, level: int) -> int:
        if level == 0:
            return 0
        return level_to_duty(level if level > self.floor else self.floor)

    def _apply(self, level: int) -> None:
        self.level = level
        duty = self.duty_of(level)
        if duty != self.duty:
            self.duty = duty
            self._pwm.duty_u16(duty)  # type: ignore[attr-defined]
            self.changed_ms = _ms()

    def set(self, level: int, fade_ms: int = 0) -> None:
        # Go to level (0..254) over fade_ms; MASK stops a fade where it is.
        if level == MASK:
            self.fading = False
            self.target = self.level
            return
        self.target = level
        if fade_ms <= 0 or level == self.level:
            self.fading = False
            self._apply(level)
            return
        self._from = self.level
        self._start_ms = _ms()
        self._fade_ms = fade_ms
        self.fading = True
        self._wake.set()

    def set_freq(self, hz: int) -> None:
        self._pwm.freq(hz)  # type: ignore[attr-defined]

    def refresh(self) -> None:
        # Re-write the duty (after the floor changed).
        self.duty = -1
        self._apply(self.level)

    async def run(self) -> None:
        while True:
            if not self.fading:
                await self._wake.wait()
                continue
            elapsed = time.ticks_diff(_ms(), self._start_ms)
            if elapsed >= self._fade_ms:
                self.fading = False
                self._apply(self.target)
                continue
            span = self.target - self._from
            self._apply(self._from + span * elapsed // self._fade_ms)
            await asyncio.sleep_ms(_STEP_MS)
