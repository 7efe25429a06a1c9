# Battery voltage through a resistor divider on an ADC pin.
from config import BATTERY_DIVIDER, BATTERY_EMPTY_MV, BATTERY_FULL_MV
from micropython import const

_LOW_PERCENT = const(15)


class Battery:
    def __init__(self, adc: object) -> None:
        self._adc = adc  # machine.ADC at 11 dB attenuation
        self.mv = 0

    def read(self) -> int:
        # The battery's voltage in mV (one conversion).
        uv: int = self._adc.read_uv()  # type: ignore[attr-defined]
        self.mv = uv * BATTERY_DIVIDER // 1000
        return self.mv

    @property
    def percent(self) -> int:
        span = BATTERY_FULL_MV - BATTERY_EMPTY_MV
        return max(0, min(100, (self.mv - BATTERY_EMPTY_MV) * 100 // span))

    @property
    def low(self) -> bool:
        return self.percent < _LOW_PERCENT
