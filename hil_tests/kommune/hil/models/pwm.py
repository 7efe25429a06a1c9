"""PWM outputs: a limited number of channels; every setting kept with its time."""

from __future__ import annotations

import time
from dataclasses import dataclass

from kommune.hil.profiles import BoardProfile
from kommune.hil.rigchannel import RigFault


@dataclass(frozen=True)
class PwmSetting:
    t: float  # time.monotonic() when the firmware set it
    freq_hz: int
    duty_u16: int  # 0 = stopped (also after deinit)


class PwmBank:
    def __init__(self, profile: BoardProfile) -> None:
        self._profile = profile
        self._active: dict[int, PwmSetting] = {}
        self._history: dict[int, list[PwmSetting]] = {}

    def vm_init(self, pin: int, freq_hz: int, duty_u16: int) -> None:
        p = self._profile
        if pin not in p.gpio or pin in p.input_only:
            raise RigFault.value_error("invalid pin for PWM")
        lo, hi = p.pwm_freq_hz
        if not lo <= freq_hz <= hi:
            raise RigFault.value_error(f"frequency must be from {lo}Hz to {hi}Hz")
        if pin not in self._active and len(self._active) >= p.pwm_channels:
            raise RigFault.value_error("out of PWM channels")
        setting = PwmSetting(time.monotonic(), freq_hz, duty_u16)
        self._active[pin] = setting
        self._history.setdefault(pin, []).append(setting)

    def vm_deinit(self, pin: int) -> None:
        old = self._active.pop(pin, None)
        if old is not None:
            self._history[pin].append(PwmSetting(time.monotonic(), old.freq_hz, 0))

    def reset(self) -> None:
        for pin in list(self._active):
            self.vm_deinit(pin)

    # -- the test's side ------------------------------------------------------

    def current(self, pin: int) -> PwmSetting | None:
        """The running setting of `pin`, None if it is not a running PWM output."""
        return self._active.get(pin)

    def history(self, pin: int) -> list[PwmSetting]:
        return list(self._history.get(pin, ()))
