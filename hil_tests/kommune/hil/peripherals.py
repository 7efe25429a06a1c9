"""A board's peripheral models, and the rig-channel handlers that bind them to `machine`."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from kommune.hil.board import rigwire
from kommune.hil.models.adc import AdcBank
from kommune.hil.models.bolt import BoltMechanism
from kommune.hil.models.i2c import I2CWiring
from kommune.hil.models.lamp_load import LampLoad
from kommune.hil.models.magnetometer import ADDRESS as QMC5883L_ADDRESS
from kommune.hil.models.magnetometer import MagneticScene, Qmc5883l
from kommune.hil.models.pins import PinBank
from kommune.hil.models.pwm import PwmBank
from kommune.hil.models.rtc import RtcModel
from kommune.hil.models.watchdog import Watchdog
from kommune.hil.profiles import BoardProfile, DeviceSpec
from kommune.hil.rigchannel import HandlerTable, RigFault
from kommune.hil.uartlink import UartLink


def _opt8(value: int) -> int | None:
    return None if value == rigwire.NONE8 else value


class Peripherals:
    """Everything on the board besides the CPU: pins, PWM, ADC, I2C, UARTs, RTC, watchdog."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        profile: BoardProfile,
        *,
        seed: int,
        clock_ppm: int = 0,
        send_event: Callable[[int, bytes], None],
        on_watchdog: Callable[[], None],
        on_reset: Callable[[int, int], None],
    ) -> None:
        self._loop = loop
        self.profile = profile
        self.pins = PinBank(
            profile, lambda pin, level: send_event(rigwire.PIN_LEVEL, bytes((pin, level)))
        )
        self.pwm = PwmBank(profile)
        self.adc = AdcBank(profile, seed=seed)
        self.i2c = I2CWiring()
        self.rtc = RtcModel(clock_ppm)
        self.watchdog = Watchdog(loop, on_watchdog)
        self.uarts: dict[int, UartLink] = {profile.link_uart: UartLink(loop, profile.link_uart)}
        self.devices: dict[str, Any] = {}
        #: Called after every PWM change (models whose input is a PWM output).
        self.pwm_listeners: list[Callable[[], None]] = []
        self._on_reset = on_reset
        self._seed = seed
        for spec in profile.devices:
            self.add_device(spec)

    @property
    def link(self) -> UartLink:
        return self.uarts[self.profile.link_uart]

    def uart(self, uart_id: int) -> UartLink:
        if uart_id not in self.profile.uarts:
            raise RigFault.value_error(f"UART({uart_id}) does not exist")
        if uart_id not in self.uarts:
            self.uarts[uart_id] = UartLink(self._loop, uart_id)
        return self.uarts[uart_id]

    def add_device(self, spec: DeviceSpec) -> Any:
        """Wire a peripheral model to the board (profile `devices` entries)."""
        if spec.model == "qmc5883l":
            scene = MagneticScene(seed=int(spec.options.get("seed", self._seed)))
            device = Qmc5883l(scene)
            addr = int(spec.options.get("addr", QMC5883L_ADDRESS))
            self.i2c.attach(int(spec.options["scl"]), int(spec.options["sda"]), addr, device)
            self.devices[str(spec.options.get("name", "magnetometer"))] = device
            return device
        if spec.model == "bolt":
            opts = {k: v for k, v in spec.options.items() if k != "name"}
            bolt = BoltMechanism(self._loop, self.pins, self.adc, **opts)
            self.devices[str(spec.options.get("name", "bolt"))] = bolt
            return bolt
        if spec.model == "lamp_load":
            opts = {k: v for k, v in spec.options.items() if k not in ("name", "pwm")}
            load = LampLoad(self.pwm, self.adc, pwm_pin=int(spec.options["pwm"]), **opts)
            self.pwm_listeners.append(load.update)
            self.devices[str(spec.options.get("name", "lamp"))] = load
            return load
        raise ValueError(f"unknown device model {spec.model!r}")

    def chip_reset(self) -> None:
        """What a reset does to the peripherals (the RTC and the wiring survive)."""
        self.watchdog.stop()
        self.pins.reset()
        self.pwm.reset()
        self._pwm_changed()
        for link in self.uarts.values():
            link.detach()

    async def aclose(self) -> None:
        """Stop the watchdog and close every UART, each even if another's close fails."""
        self.watchdog.stop()
        results = await asyncio.gather(
            *(link.aclose() for link in self.uarts.values()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise BaseExceptionGroup("closing the board's UARTs", errors)

    # -- the rig channel ------------------------------------------------------

    def register(self, table: HandlerTable) -> None:
        table.request(rigwire.PIN_INIT, self._pin_init)
        table.note(rigwire.PIN_WRITE, lambda p: self.pins.vm_write(p[0], p[1]))
        table.note(rigwire.PIN_IRQ, lambda p: self.pins.vm_irq(p[0], p[1]))
        table.request(rigwire.PWM_INIT, self._pwm_init)
        table.note(rigwire.PWM_DEINIT, self._pwm_deinit)
        table.request(rigwire.ADC_READ, lambda p: struct.pack("<HI", *self.adc.vm_read(p[0], p[1])))
        table.request(rigwire.I2C_XFER, self._i2c_xfer)
        table.request(rigwire.I2C_SCAN, lambda p: self.i2c.vm_scan(p[0], p[1]))
        table.request(rigwire.UART_INIT, self._uart_init)
        table.request(
            rigwire.UART_TXDONE, lambda p: bytes((1 if self.uart(p[0]).tx_done() else 0,))
        )
        table.request(rigwire.WDT_START, self._wdt_start)
        table.note(rigwire.WDT_FEED, lambda p: self.watchdog.feed())
        table.note(rigwire.RESET, self._reset)
        table.request(rigwire.RTC_SET, self._rtc_set)
        table.request(rigwire.RTC_MEMORY, self._rtc_memory)

    def _pin_init(self, p: bytes) -> bytes:
        level = self.pins.vm_init(p[0], _opt8(p[1]), _opt8(p[2]), _opt8(p[3]))
        return bytes((level,))

    def _pwm_init(self, p: bytes) -> None:
        pin, freq, duty = struct.unpack("<BIH", p)
        self.pwm.vm_init(pin, freq, duty)
        self._pwm_changed()

    def _pwm_deinit(self, p: bytes) -> None:
        self.pwm.vm_deinit(p[0])
        self._pwm_changed()

    def _pwm_changed(self) -> None:
        for listener in self.pwm_listeners:
            listener()

    def _i2c_xfer(self, p: bytes) -> bytes:
        scl, sda, addr, _stop, nread = struct.unpack_from("<BBBBH", p)
        return self.i2c.vm_xfer(scl, sda, addr, p[6:], nread)

    def _uart_init(self, p: bytes) -> None:
        uart_id, baud, bits, parity, stop = struct.unpack("<BIBBB", p)
        try:
            self.uart(uart_id).configure(baud, bits, _opt8(parity), stop)
        except ValueError as e:
            raise RigFault.value_error(str(e)) from e

    def _wdt_start(self, p: bytes) -> None:
        (timeout_ms,) = struct.unpack("<I", p)
        self.watchdog.start(timeout_ms)

    def _reset(self, p: bytes) -> None:
        how, arg_ms = struct.unpack("<BI", p)
        self._on_reset(how, arg_ms)

    def _rtc_set(self, p: bytes) -> None:
        (epoch_s,) = struct.unpack("<q", p)
        self.rtc.set(epoch_s)

    def _rtc_memory(self, p: bytes) -> bytes:
        try:
            return self.rtc.vm_memory(p)
        except ValueError as e:
            raise RigFault.value_error(str(e)) from e
