# machine.RTC, machine.WDT and machine.Timer.
#
# The RTC's time and memory live in the rig (they outlive a reset, not a power
# cut). The watchdog runs in the rig: if feed() stops, the rig resets the board
# with WDT_RESET. Timers are software timers run at the VM's dispatch points
# (rig.Rig.service), like soft-IRQ timer callbacks on a real board.
import struct

from . import emutime, rigwire
from . import rig as _rig


class RTC:
    def __init__(self, id: int = 0) -> None:
        pass

    def init(self, datetime: tuple) -> None:
        self.datetime(datetime)

    def datetime(self, datetimetuple: tuple | None = None) -> tuple | None:
        if datetimetuple is None:
            t = emutime.gmtime()  # (year, month, mday, hour, minute, second, weekday, yearday)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        y, mo, d, _wd, h, mi, s = datetimetuple[:7]
        epoch_s = emutime.mktime((y, mo, d, h, mi, s, 0, 0))
        _rig.get().call(rigwire.RTC_SET, struct.pack("<q", epoch_s))
        emutime.set_rtc(epoch_s)
        return None

    def memory(self, data: bytes | None = None) -> bytes | None:
        reply = _rig.get().call(rigwire.RTC_MEMORY, b"" if data is None else bytes(data))
        return reply if data is None else None


class WDT:
    def __init__(self, id: int = 0, timeout: int = 5000) -> None:
        if timeout < 1:
            raise ValueError("timeout must be >= 1 ms")
        _rig.get().call(rigwire.WDT_START, struct.pack("<I", timeout))

    def feed(self) -> None:
        _rig.get().send(rigwire.WDT_FEED)


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id: int = -1, **kwargs: object) -> None:
        self._id = id
        if kwargs:
            self.init(**kwargs)  # type: ignore[arg-type]

    def init(
        self,
        *,
        mode: int = 1,
        period: int = -1,
        freq: float = -1,
        callback: object = None,
        hard: bool = False,
    ) -> None:
        if freq > 0:
            period = int(1000 / freq)
        if period < 0:
            raise ValueError("period or freq needed")
        if callback is None:
            self.deinit()
            return
        _rig.get().add_timer(self, max(1, period), callback, mode == Timer.PERIODIC)

    def deinit(self) -> None:
        _rig.get().remove_timer(self)
