"""I2C: devices wired to a (scl, sda) pin pair, each at a 7-bit address.

A device model implements `I2CDevice`. Most chips are register files with an
auto-incrementing pointer: subclass `RegisterDevice` and override
`read_register` / `write_register`.
"""

from __future__ import annotations

import errno
from typing import Protocol

from kommune.hil.rigchannel import RigFault


class I2CDevice(Protocol):
    def write(self, data: bytes) -> None:
        """Bytes the controller wrote (after the address byte)."""

    def read(self, count: int) -> bytes:
        """Bytes the controller reads next."""


class RegisterDevice:
    """A register file: the first written byte sets the pointer, the rest are data."""

    def __init__(self) -> None:
        self.pointer = 0

    def read_register(self, reg: int) -> int:
        return 0

    def write_register(self, reg: int, value: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.pointer = data[0]
        for value in data[1:]:
            self.write_register(self.pointer, value)
            self.pointer = (self.pointer + 1) & 0xFF

    def read(self, count: int) -> bytes:
        out = bytearray()
        for _ in range(count):
            out.append(self.read_register(self.pointer) & 0xFF)
            self.pointer = (self.pointer + 1) & 0xFF
        return bytes(out)


class I2CWiring:
    def __init__(self) -> None:
        self._buses: dict[tuple[int, int], dict[int, I2CDevice]] = {}

    def attach(self, scl: int, sda: int, addr: int, device: I2CDevice) -> None:
        if not 0x08 <= addr <= 0x77:
            raise ValueError(f"I2C address 0x{addr:02x} is reserved")
        bus = self._buses.setdefault((scl, sda), {})
        if addr in bus:
            raise ValueError(f"two devices at 0x{addr:02x} on scl={scl} sda={sda}")
        bus[addr] = device

    def detach(self, scl: int, sda: int, addr: int) -> None:
        self._buses.get((scl, sda), {}).pop(addr, None)

    def device(self, scl: int, sda: int, addr: int) -> I2CDevice | None:
        return self._buses.get((scl, sda), {}).get(addr)

    def vm_scan(self, scl: int, sda: int) -> bytes:
        return bytes(sorted(self._buses.get((scl, sda), {})))

    def vm_xfer(self, scl: int, sda: int, addr: int, write: bytes, nread: int) -> bytes:
        dev = self.device(scl, sda, addr)
        if dev is None:
            raise RigFault.os_error(errno.ENODEV)  # no ACK for the address
        if write or not nread:
            dev.write(write)
        return dev.read(nread) if nread else b""
