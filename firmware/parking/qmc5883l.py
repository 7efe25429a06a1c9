# QMC5883L 3-axis magnetometer on I2C (datasheet v1.0, section 9): one
# reading per call, in standby in between (the chip draws ~3 uA idle,
# ~2.6 mA measuring). Range 2 G (120 LSB/uT), OSR 512; the temperature
# register (0x07-0x08, 100 LSB/degC) drives the drift compensation.
import struct
import time

import machine
from micropython import const

ADDRESS = const(0x0D)
_REG_DATA = const(0x00)  # X, Y, Z int16 LE, status, temperature int16 LE
_REG_STATUS = const(0x06)
_REG_CONTROL1 = const(0x09)
_REG_CONTROL2 = const(0x0A)
_REG_PERIOD = const(0x0B)
_REG_CHIP_ID = const(0x0D)
_CHIP_ID = const(0xFF)
_DRDY = const(0x01)
_OVL = const(0x02)
_SOFT_RESET = const(0x80)
_MEASURE = const(0x0D)  # OSR 512, 2 G, 200 Hz, continuous
_STANDBY = const(0x0C)
_LSB_PER_UT = const(120)
_READY_TRIES = const(20)


class SensorError(Exception):
    pass


class Qmc5883l:
    def __init__(self, i2c: "machine.I2C", address: int = ADDRESS) -> None:
        self.i2c = i2c
        self.address = address
        self._buf = bytearray(9)
        self.overflows = 0

    def init(self) -> None:
        i2c = self.i2c
        if i2c.readfrom_mem(self.address, _REG_CHIP_ID, 1)[0] != _CHIP_ID:
            raise SensorError("no QMC5883L at 0x%02x" % self.address)
        i2c.writeto_mem(self.address, _REG_CONTROL2, bytes((_SOFT_RESET,)))
        i2c.writeto_mem(self.address, _REG_PERIOD, b"\x01")  # datasheet: SET/RESET period 1
        i2c.writeto_mem(self.address, _REG_CONTROL1, bytes((_STANDBY,)))

    def read(self) -> "tuple[float, float, float, float]":
        # (x, y, z in uT, temperature in degC): wake, wait for DRDY, read, standby.
        i2c = self.i2c
        addr = self.address
        i2c.writeto_mem(addr, _REG_CONTROL1, bytes((_MEASURE,)))
        try:
            for _ in range(_READY_TRIES):
                if i2c.readfrom_mem(addr, _REG_STATUS, 1)[0] & _DRDY:
                    break
                time.sleep_ms(1)
            else:
                raise SensorError("no data ready")
            i2c.readfrom_mem_into(addr, _REG_DATA, self._buf)
        finally:
            i2c.writeto_mem(addr, _REG_CONTROL1, bytes((_STANDBY,)))
        x, y, z, status, temp = struct.unpack("<hhhBh", self._buf)
        if status & _OVL:
            self.overflows += 1
        return x / _LSB_PER_UT, y / _LSB_PER_UT, z / _LSB_PER_UT, temp / 100
