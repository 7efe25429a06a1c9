"""A QMC5883L 3-axis magnetometer under a parking bay, and the field it sees.

The field is the Earth's (at the site), plus each vehicle's signature (mostly
vertical, fading in and out as it parks and leaves), plus a temperature-driven
offset drift, plus Gaussian noise. Every random draw comes from one seeded
generator, so a scenario replays exactly.

Register map (QMC5883L datasheet v1.0, section 9): 0x00-0x05 X/Y/Z as int16
little-endian, 0x06 status (DRDY, OVL, DOR), 0x07-0x08 temperature (100
LSB/degC), 0x09 control 1 (MODE, ODR, RNG, OSR), 0x0A control 2 (INT_ENB,
ROL_PNT, SOFT_RST), 0x0B set/reset period, 0x0D chip id (0xFF).
"""

from __future__ import annotations

import math
import random
import struct
import time
from dataclasses import dataclass

from kommune.hil.models.i2c import RegisterDevice

ADDRESS = 0x0D
CHIP_ID = 0xFF

_STATUS = 0x06
_TEMP = 0x07
_CONTROL1 = 0x09
_CONTROL2 = 0x0A
_PERIOD = 0x0B
_CHIP_ID_REG = 0x0D

_DRDY = 0x01
_OVL = 0x02
_ODR_HZ = (10, 50, 100, 200)
_LSB_PER_UT = (120.0, 30.0)  # RNG 2 G (12000 LSB/G), 8 G (3000 LSB/G); 1 G = 100 uT

Vector = tuple[float, float, float]

#: Typical signatures (uT, sensor frame: x along the bay, y across, z up).
VEHICLE_KINDS: dict[str, tuple[Vector, Vector]] = {
    # kind: (mean, standard deviation)
    "car": ((2.0, 0.0, -28.0), (9.0, 6.0, 9.0)),
    "van": ((3.0, 0.0, -45.0), (12.0, 8.0, 12.0)),
    "motorcycle": ((0.5, 0.0, -6.0), (2.5, 2.0, 2.5)),
}


@dataclass
class Vehicle:
    signature: Vector  # full-presence field change, uT
    arrived: float  # monotonic s when it started to enter the bay
    ramp_s: float  # how long entering (and leaving) takes
    left: float | None = None

    def weight(self, now: float) -> float:
        w = 1.0 if self.ramp_s <= 0 else min(1.0, max(0.0, (now - self.arrived) / self.ramp_s))
        if self.left is not None:
            out = 1.0 if self.ramp_s <= 0 else min(1.0, max(0.0, (now - self.left) / self.ramp_s))
            w *= 1.0 - out
        # smooth step: the signature grows as the metal body comes over the sensor
        return w * w * (3.0 - 2.0 * w)


class MagneticScene:
    def __init__(
        self,
        *,
        seed: int = 0,
        earth_ut: Vector = (14.5, 0.8, -49.0),
        noise_ut: float = 0.2,
        temperature_c: float = 20.0,
        drift_ut_per_c: Vector = (0.03, -0.02, 0.05),
    ) -> None:
        self.rng = random.Random(seed)
        self.earth_ut = earth_ut
        self.noise_ut = noise_ut
        self.temperature_c = temperature_c
        self.drift_ut_per_c = drift_ut_per_c
        self.vehicles: list[Vehicle] = []

    def park(self, kind: str = "car", *, ramp_s: float = 1.5, scale: float = 1.0) -> Vehicle:
        """A vehicle of `kind` enters the bay (scale < 1: parked in the next bay)."""
        mean, sd = VEHICLE_KINDS[kind]
        sig = tuple(scale * self.rng.gauss(m, s) for m, s in zip(mean, sd, strict=True))
        return self.park_signature((sig[0], sig[1], sig[2]), ramp_s=ramp_s)

    def park_signature(self, signature: Vector, *, ramp_s: float = 1.5) -> Vehicle:
        vehicle = Vehicle(signature, time.monotonic(), ramp_s)
        self.vehicles.append(vehicle)
        return vehicle

    def leave(self, vehicle: Vehicle | None = None) -> None:
        """`vehicle` (default: the last one still parked) drives off."""
        parked = [v for v in self.vehicles if v.left is None]
        target = vehicle or (parked[-1] if parked else None)
        if target is not None and target.left is None:
            target.left = time.monotonic()

    def field_ut(self, now: float | None = None) -> Vector:
        """The field at the sensor right now, noise included."""
        now = time.monotonic() if now is None else now
        dt = self.temperature_c - 25.0
        out = []
        for axis in range(3):
            value = self.earth_ut[axis] + self.drift_ut_per_c[axis] * dt
            for v in self.vehicles:
                value += v.signature[axis] * v.weight(now)
            out.append(value + self.rng.gauss(0.0, self.noise_ut))
        self.vehicles = [v for v in self.vehicles if v.left is None or v.weight(now) > 0.0]
        return out[0], out[1], out[2]

    def expected_ut(self, now: float | None = None) -> Vector:
        """The noiseless field (what a perfect sensor would report)."""
        now = time.monotonic() if now is None else now
        dt = self.temperature_c - 25.0
        return tuple(  # type: ignore[return-value]
            self.earth_ut[a]
            + self.drift_ut_per_c[a] * dt
            + sum(v.signature[a] * v.weight(now) for v in self.vehicles)
            for a in range(3)
        )


class Qmc5883l(RegisterDevice):
    def __init__(self, scene: MagneticScene) -> None:
        super().__init__()
        self.scene = scene
        self._soft_reset()

    def _soft_reset(self) -> None:
        self.control1 = 0x00  # standby
        self.control2 = 0x00
        self.period = 0x00
        self._data = bytes(6)
        self._status = 0
        self._last_sample = 0.0
        self.samples = 0

    @property
    def continuous(self) -> bool:
        return self.control1 & 0x03 == 0x01

    def _sample_due(self) -> bool:
        odr = _ODR_HZ[(self.control1 >> 2) & 0x03]
        return self.continuous and time.monotonic() - self._last_sample >= 1.0 / odr

    def _sample(self) -> None:
        self._last_sample = time.monotonic()
        lsb = _LSB_PER_UT[(self.control1 >> 4) & 0x01]
        raw = []
        overflow = False
        for value in self.scene.field_ut(self._last_sample):
            counts = math.floor(value * lsb + 0.5)
            if not -32768 <= counts <= 32767:
                overflow = True
                counts = max(-32768, min(32767, counts))
            raw.append(counts)
        self._data = struct.pack("<hhh", *raw)
        self._status = _DRDY | (_OVL if overflow else 0)
        self.samples += 1

    def read_register(self, reg: int) -> int:
        if reg == 0x00 and self._sample_due():
            self._sample()
        if reg <= 0x05:
            if reg == 0x05:
                self._status &= ~_DRDY  # reading the data clears DRDY
            return self._data[reg]
        if reg == _STATUS:
            if self._sample_due():
                self._sample()
            return self._status
        if reg in (_TEMP, _TEMP + 1):
            temp = struct.pack("<h", int(self.scene.temperature_c * 100))
            return temp[reg - _TEMP]
        if reg == _CONTROL1:
            return self.control1
        if reg == _CONTROL2:
            return self.control2
        if reg == _PERIOD:
            return self.period
        if reg == _CHIP_ID_REG:
            return CHIP_ID
        return 0

    def write_register(self, reg: int, value: int) -> None:
        if reg == _CONTROL1:
            self.control1 = value
        elif reg == _CONTROL2:
            if value & 0x80:
                self._soft_reset()
            else:
                self.control2 = value
        elif reg == _PERIOD:
            self.period = value
