# The `time` module the firmware sees: the port's own, except that
#  - the wall clock is the board's RTC (it starts at 2000-01-01 on power-up,
#    survives resets, is lost on a power cut; the rig keeps it), and
#  - sleeps run the board's pending events and timers, as a real board runs
#    its IRQ handlers while it sleeps, and
#  - the board's crystal may run `clock_ppm` fast or slow: ticks, the wall
#    clock and sleeps all follow the board's clock, not the host's (drift is
#    counted in ms from boot, exact for the ~6 days ticks_diff can span).
# Boards have no time zone: localtime() is gmtime().
import time as _t

from . import rig as _rig

ticks_cpu = _t.ticks_cpu
ticks_add = _t.ticks_add
ticks_diff = _t.ticks_diff
mktime = _t.mktime

_offset_s = [0]  # RTC seconds minus (host seconds + drift)
_drift_ppm = [0]  # the board's clock_ppm
_boot_ms = [_t.ticks_ms()]  # host ticks when the drift was set


def set_drift(ppm: int) -> None:
    _drift_ppm[0] = ppm
    _boot_ms[0] = _t.ticks_ms()


def _extra_ms() -> int:
    # How far the board's clock has run ahead of the host's since boot.
    ppm = _drift_ppm[0]
    if not ppm:
        return 0
    return _t.ticks_diff(_t.ticks_ms(), _boot_ms[0]) * ppm // 1_000_000


def ticks_ms():  # type: ignore[no-untyped-def]  # the stubs' ticks type
    return _t.ticks_add(_t.ticks_ms(), _extra_ms())


def ticks_us():  # type: ignore[no-untyped-def]
    return _t.ticks_add(_t.ticks_us(), _extra_ms() * 1000)


def set_rtc(epoch_s: int) -> None:
    _offset_s[0] = epoch_s - int(_t.time()) - _extra_ms() // 1000


def time() -> int:
    return int(_t.time()) + _extra_ms() // 1000 + _offset_s[0]


def time_ns() -> int:
    return _t.time_ns() + (_extra_ms() + _offset_s[0] * 1000) * 1_000_000


def gmtime(secs: int | None = None) -> tuple:
    # the board's 8-tuple (the unix port adds a 9th field)
    return _t.gmtime(time() if secs is None else secs)[:8]


def localtime(secs: int | None = None) -> tuple:
    return gmtime(secs)


def sleep_ms(ms: int) -> None:
    if ms > 0:
        # ms of the board's clock, in host ms
        _rig.get().wait_ms(ms * 1_000_000 // (1_000_000 + _drift_ppm[0]))


def sleep(seconds: float) -> None:
    sleep_ms(int(seconds * 1000))


def sleep_us(us: int) -> None:
    if us >= 1000:
        sleep_ms(us // 1000)
        us %= 1000
    if us > 0:
        _t.sleep_us(us)
