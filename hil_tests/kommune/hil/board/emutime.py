# The `time` module the firmware sees: the port's own, except that
#  - the wall clock is the board's RTC (it starts at 2000-01-01 on power-up,
#    survives resets, is lost on a power cut; the rig keeps it), and
#  - sleeps run the board's pending events and timers, as a real board runs
#    its IRQ handlers while it sleeps.
# Boards have no time zone: localtime() is gmtime().
import time as _t

from . import rig as _rig

ticks_ms = _t.ticks_ms
ticks_us = _t.ticks_us
ticks_cpu = _t.ticks_cpu
ticks_add = _t.ticks_add
ticks_diff = _t.ticks_diff
mktime = _t.mktime

_offset_s = [0]  # RTC seconds minus host seconds


def set_rtc(epoch_s: int) -> None:
    _offset_s[0] = epoch_s - int(_t.time())


def time() -> int:
    return int(_t.time()) + _offset_s[0]


def time_ns() -> int:
    return _t.time_ns() + _offset_s[0] * 1_000_000_000


def gmtime(secs: int | None = None) -> tuple:
    # the board's 8-tuple (the unix port adds a 9th field)
    return _t.gmtime(time() if secs is None else secs)[:8]


def localtime(secs: int | None = None) -> tuple:
    return gmtime(secs)


def sleep_ms(ms: int) -> None:
    if ms > 0:
        _rig.get().wait_ms(ms)


def sleep(seconds: float) -> None:
    sleep_ms(int(seconds * 1000))


def sleep_us(us: int) -> None:
    if us >= 1000:
        sleep_ms(us // 1000)
        us %= 1000
    if us > 0:
        _t.sleep_us(us)
