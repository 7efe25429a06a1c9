"""A street lamp's LED string behind its driver, seen through the current-sense amplifier.

Wiring (a board profile's `devices` entry, model "lamp_load"; pins are GPIO numbers):

    pwm    output  the driver's dimming input (PWM): the LED current follows its duty
    sense  ADC     the current-sense amplifier: `sense_v_per_a` volts per ampere

The string draws `rated_a` at full duty, in proportion below it (the driver averages the
PWM). Faults a test injects: `burn_out()` (the string opens: no current at any duty),
`repair()`. The ADC reading follows every PWM change at once (`update`, called by the
board's peripherals when a PWM output changes). Runs on the rig's event loop.
"""

from __future__ import annotations

from kommune.hil.models.adc import AdcBank
from kommune.hil.models.pwm import PwmBank


class LampLoad:
    def __init__(
        self,
        pwm: PwmBank,
        adc: AdcBank,
        *,
        pwm_pin: int,
        sense: int,
        rated_a: float = 1.0,
        sense_v_per_a: float = 1.0,
    ) -> None:
        self._pwm = pwm
        self._adc = adc
        self.pwm_pin = pwm_pin
        self.sense_pin = sense
        self.rated_a = rated_a
        self.sense_v_per_a = sense_v_per_a
        self.burnt_out = False
        self.update()

    @property
    def current_a(self) -> float:
        """The LED current now."""
        setting = self._pwm.current(self.pwm_pin)
        if self.burnt_out or setting is None:
            return 0.0
        return self.rated_a * setting.duty_u16 / 65535

    def update(self) -> None:
        self._adc.set_voltage(self.sense_pin, self.current_a * self.sense_v_per_a)

    def burn_out(self) -> None:
        self.burnt_out = True
        self.update()

    def repair(self) -> None:
        self.burnt_out = False
        self.update()
