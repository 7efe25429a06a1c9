"""ADC inputs: a voltage per pin (set by the test), read through the attenuator with noise."""

from __future__ import annotations

import random

from kommune.hil.profiles import BoardProfile
from kommune.hil.rigchannel import RigFault


class AdcBank:
    def __init__(self, profile: BoardProfile, *, seed: int = 0, noise_uv: int = 2000) -> None:
        self._profile = profile
        self._volts: dict[int, float] = {}
        self._rng = random.Random(seed)
        self.noise_uv = noise_uv  # standard deviation of each reading's noise

    def set_voltage(self, pin: int, volts: float) -> None:
        if pin not in self._profile.adc:
            raise KeyError(f"GPIO{pin} has no ADC channel on a {self._profile.name} board")
        self._volts[pin] = volts

    def voltage(self, pin: int) -> float:
        return self._volts.get(pin, 0.0)

    def vm_read(self, pin: int, atten: int) -> tuple[int, int]:
        """(read_u16, read_uv) for one conversion."""
        p = self._profile
        if pin not in p.adc:
            raise RigFault.value_error("invalid Pin for ADC")
        if not 0 <= atten < len(p.adc_full_scale_uv):
            raise RigFault.value_error("invalid attenuation")
        full_uv = p.adc_full_scale_uv[atten]
        uv = self._volts.get(pin, 0.0) * 1e6 + self._rng.gauss(0.0, self.noise_uv)
        uv = min(max(uv, 0.0), float(full_uv))
        return round(uv / full_uv * 65535), round(uv)
