# Energy, burn time and lamp failure, from the LED current sense (ADC).
#
# Each sample: current = ADC volts / sense gain; power = current x the
# driver's output voltage; energy and burn time integrate since the last
# sample. A lamp that draws (almost) nothing while the output is on and has
# settled is an open LED string: after open_samples such samples in a row
# FAULT_LAMP_OPEN is set; a sample with at least half the expected current
# clears it. Outputs below ~20 mA expected are not judged (noise).
#
# /lamp/energy.bin (replaced atomically at every EnergyReport): magic "KLE1",
# energy_wh u32, energy_mwh u16 (0..999), burn_s u32; big-endian, 14 bytes.
import struct
import time

from common import files
from common.settings import Settings
from dimmer import Dimmer
from micropython import const

from kommune.protocols.lamp import FAULT_LAMP_OPEN

PATH = "/lamp/energy.bin"
_MAGIC = b"KLE1"
_FORMAT = ">4sIHI"
_MWS_PER_MWH = const(3_600_000)  # mW.ms in a mWh
_MIN_JUDGED_MA = const(20)


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]
    return t


class Meter:
    def __init__(self, adc: object, dimmer: Dimmer, settings: Settings, path: str = PATH) -> None:
        self._adc = adc  # machine.ADC at 11 dB, made by main
        self._dimmer = dimmer
        self._s = settings
        self.path = path
        self.energy_wh = 0
        self.energy_mwh = 0
        self.burn_s = 0
        self._burn_ms = 0
        self._acc = 0  # mW.ms not yet a whole mWh
        self.current_ma = 0
        self.power_mw = 0
        self.faults = 0
        self._low = 0  # near-zero samples in a row at level > 0
        self._last_ms = _ms()
        raw = files.read(path)
        if raw is not None and len(raw) == struct.calcsize(_FORMAT):
            magic, wh, mwh, burn = struct.unpack(_FORMAT, raw)
            if magic == _MAGIC and mwh < 1000:
                self.energy_wh, self.energy_mwh, self.burn_s = wh, mwh, burn

    def sample(self) -> bool:
        # One measurement; True if the faults changed.
        s = self._s
        uv: int = self._adc.read_uv()  # type: ignore[attr-defined]
        ma = uv // s["sense_uv_per_ma"]
        self.current_ma = ma
        self.power_mw = ma * s["supply_mv"] // 1000
        now = _ms()
        dt = time.ticks_diff(now, self._last_ms)
        self._last_ms = now
        self._acc += self.power_mw * dt
        if self._acc >= _MWS_PER_MWH:
            whole = self._acc // _MWS_PER_MWH
            self._acc -= whole * _MWS_PER_MWH
            mwh = self.energy_mwh + whole
            self.energy_wh += mwh // 1000
            self.energy_mwh = mwh % 1000
        d = self._dimmer
        if d.level:
            self._burn_ms += dt
            if self._burn_ms >= 1000:
                self.burn_s += self._burn_ms // 1000
                self._burn_ms %= 1000
        return self._judge(ma)

    def _judge(self, ma: int) -> bool:
        d = self._dimmer
        s = self._s
        expected = s["rated_ma"] * d.duty // 65535
        settled = not d.fading and time.ticks_diff(_ms(), d.changed_ms) >= s["sample_ms"]
        before = self.faults
        if not settled or expected < _MIN_JUDGED_MA:
            return False
        if ma * 5 < expected:
            self._low += 1
            if self._low >= s["open_samples"]:
                self.faults |= FAULT_LAMP_OPEN
        elif ma * 2 >= expected:
            self._low = 0
            self.faults &= ~FAULT_LAMP_OPEN
        return self.faults != before

    def save(self) -> None:
        # Raises OSError if the flash fails.
        files.ensure_dir("/lamp")
        data = struct.pack(_FORMAT, _MAGIC, self.energy_wh, self.energy_mwh, self.burn_s)
        files.write_atomic(self.path, data)
