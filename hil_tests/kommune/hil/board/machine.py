# The `machine` module of the emulated board (the ESP32 port's API and
# constants), installed as sys.modules["machine"] before the firmware runs.
# Peripherals talk to the board's models in the rig; see rigwire.py.
import struct
import time as _t

from . import rig as _rig
from . import rigwire
from .analog import ADC, PWM
from .buses import I2C, UART, SoftI2C
from .clocks import RTC, WDT, Timer
from .pins import Pin, Signal

__all__ = [
    "ADC",
    "I2C",
    "PWM",
    "RTC",
    "UART",
    "WDT",
    "Pin",
    "Signal",
    "SoftI2C",
    "Timer",
]

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

SLEEP = 2
DEEPSLEEP = 4
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

_cpu_hz = [0]


def _config(key: str, default: object = None) -> object:
    return _rig.get().config.get(key, default)


def reset_cause() -> int:
    cause: int = _config("reset_cause", PWRON_RESET)  # type: ignore[assignment]
    return cause


def wake_reason() -> int:
    reason: int = _config("wake_reason", 0)  # type: ignore[assignment]
    return reason


def unique_id() -> bytes:
    uid: str = _config("unique_id", "")  # type: ignore[assignment]
    return bytes.fromhex(uid)


def freq(hz: int = -1) -> int | None:
    if hz == -1:
        if not _cpu_hz[0]:
            hz = _config("cpu_hz", 160_000_000)  # type: ignore[assignment]
            _cpu_hz[0] = hz
        return _cpu_hz[0]
    _cpu_hz[0] = hz
    return None


def _reset(how: int, arg_ms: int = 0) -> None:
    # The rig ends this VM; until it does, do nothing (and run no handlers).
    _rig.get().send(rigwire.RESET, struct.pack("<BI", how, arg_ms))
    while True:
        _t.sleep(1)


def reset() -> None:
    _reset(rigwire.RESET_HARD)


def soft_reset() -> None:
    _reset(rigwire.RESET_SOFT)


def deepsleep(time_ms: int = 0) -> None:
    _reset(rigwire.RESET_DEEPSLEEP, time_ms)


def lightsleep(time_ms: int = -1) -> None:
    r = _rig.get()
    if time_ms >= 0:
        r.wait_ms(time_ms)
        return
    # No timeout: sleep until something happens (an event or a timer).
    while not r.wait_event(-1):
        pass


def sleep() -> None:
    lightsleep()


def idle() -> None:
    _rig.get().wait_event(10)


def disable_irq() -> int:
    r = _rig.get()
    state = 1 if r.irq_enabled else 0
    r.irq_enabled = False
    return state


def enable_irq(state: int = 1) -> None:
    r = _rig.get()
    r.irq_enabled = bool(state)
    if state:
        r.service()
