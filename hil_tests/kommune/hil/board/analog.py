# machine.PWM and machine.ADC over the rig (ESP32 semantics: PWM channels are
# a limited resource, ADC readings depend on the attenuation). The rig's models
# validate the pin and keep the history a test reads.
import struct

from . import rig as _rig
from . import rigwire
from .pins import pin_id

_KEEP32 = 0xFFFFFFFF
_KEEP16 = 0xFFFF


class PWM:
    def __init__(
        self,
        dest: object,
        *,
        freq: int = -1,
        duty_u16: int = -1,
        duty_ns: int = -1,
        invert: bool = False,
    ) -> None:
        self._pin = pin_id(dest)
        self._freq = 5000
        self._duty = 0
        self.init(freq=freq, duty_u16=duty_u16, duty_ns=duty_ns)

    def init(self, *, freq: int = -1, duty_u16: int = -1, duty_ns: int = -1) -> None:
        if freq != -1:
            if freq <= 0:
                raise ValueError("freq must be > 0")
            self._freq = freq
        if duty_ns != -1:
            duty_u16 = min(65535, duty_ns * self._freq * 65536 // 1_000_000_000)
        if duty_u16 != -1:
            if not 0 <= duty_u16 <= 65535:
                raise ValueError("duty_u16 must be from 0 to 65535")
            self._duty = duty_u16
        payload = struct.pack("<BIH", self._pin, self._freq, self._duty)
        _rig.get().call(rigwire.PWM_INIT, payload)

    def freq(self, value: int = -1) -> int | None:
        if value == -1:
            return self._freq
        self.init(freq=value)
        return None

    def duty_u16(self, value: int = -1) -> int | None:
        if value == -1:
            return self._duty
        self.init(duty_u16=value)
        return None

    def duty_ns(self, value: int = -1) -> int | None:
        if value == -1:
            return self._duty * 1_000_000_000 // (self._freq * 65536)
        self.init(duty_ns=value)
        return None

    def duty(self, value: int = -1) -> int | None:
        # ESP32's legacy 10-bit duty
        if value == -1:
            return self._duty >> 6
        self.init(duty_u16=min(65535, value << 6))
        return None

    def deinit(self) -> None:
        _rig.get().send(rigwire.PWM_DEINIT, bytes((self._pin,)))


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_9BIT = 9
    WIDTH_10BIT = 10
    WIDTH_11BIT = 11
    WIDTH_12BIT = 12

    def __init__(self, pin: object, *, atten: int = 0) -> None:
        self._pin = pin_id(pin)
        self._atten = atten
        self._bits = 12
        self._read()  # the rig refuses pins without an ADC channel

    def init(self, *, atten: int = -1, sample_ns: int = -1) -> None:
        if atten != -1:
            self._atten = atten

    def atten(self, atten: int) -> None:
        self._atten = atten

    def width(self, bits: int) -> None:
        self._bits = bits

    def _read(self) -> tuple:
        reply = _rig.get().call(rigwire.ADC_READ, bytes((self._pin, self._atten)))
        return struct.unpack("<HI", reply)

    def read_u16(self) -> int:
        raw: int = self._read()[0]
        return raw

    def read_uv(self) -> int:
        uv: int = self._read()[1]
        return uv

    def read(self) -> int:
        return self.read_u16() >> (16 - self._bits)
