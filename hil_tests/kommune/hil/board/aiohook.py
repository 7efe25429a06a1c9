# Lets the rig wake the firmware's asyncio loop, as an interrupt wakes a real
# board: asyncio's poller is replaced by one that also waits on the rig
# channel (running pin IRQs, timers and other events as they arrive) and that
# checks fd-less pollables (asyncio.ThreadSafeFlag, set by those handlers) in
# Python instead of making the C poll loop spin every millisecond.
import select
import time

from . import rig as _rig

_MP_STREAM_POLL = 3
_MP_STREAM_GET_FILENO = 10


def _has_fd(obj: object) -> bool:
    if hasattr(obj, "fileno"):
        return True
    ioctl = getattr(obj, "ioctl", None)
    if ioctl is None:
        return True  # a native stream: let the C poller decide
    try:
        fd = ioctl(_MP_STREAM_GET_FILENO, 0)
    except Exception:
        return False
    return isinstance(fd, int) and fd >= 0


class RigPoller:
    def __init__(self) -> None:
        self._rig = _rig.get()
        self._poll = select.poll()
        self._poll.register(self._rig.sock, select.POLLIN)
        self._soft: dict = {}  # id(obj) -> [obj, mask] for fd-less pollables

    def register(self, obj: object, mask: int = select.POLLIN | select.POLLOUT) -> None:
        if _has_fd(obj):
            self._poll.register(obj, mask)
        else:
            self._soft[id(obj)] = [obj, mask]

    def modify(self, obj: object, mask: int) -> None:
        entry = self._soft.get(id(obj))
        if entry is not None:
            entry[1] = mask
        else:
            self._poll.modify(obj, mask)

    def unregister(self, obj: object) -> None:
        if self._soft.pop(id(obj), None) is None:
            self._poll.unregister(obj)

    def _soft_ready(self) -> list:
        out = []
        for obj, mask in self._soft.values():
            ev = obj.ioctl(_MP_STREAM_POLL, mask) if mask else 0
            if ev:
                out.append((obj, ev))
        return out

    def ipoll(self, timeout_ms: int = -1, flags: int = 0) -> list:
        # Like poll.ipoll: return only when something is ready or the time is
        # up (asyncio relies on that for an infinite wait). Rig events and
        # timers run in between; they may make a ThreadSafeFlag ready.
        rig = self._rig
        sock = rig.sock
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms) if timeout_ms >= 0 else -1
        while True:
            rig.service()
            soft = self._soft_ready()
            if soft:
                wait = 0
            elif timeout_ms < 0:
                wait = -1
            else:
                wait = max(0, time.ticks_diff(deadline, time.ticks_ms()))
            nxt = rig.next_timer_ms()
            if nxt >= 0 and (wait < 0 or nxt < wait):
                wait = nxt
            out = []
            woke = False
            for obj, ev in self._poll.ipoll(wait):
                if obj is sock:
                    woke = True
                else:
                    out.append((obj, ev))
            if woke or rig.next_timer_ms() == 0:
                rig.service()
                soft = self._soft_ready()
            out.extend(soft)
            if out or (timeout_ms >= 0 and time.ticks_diff(deadline, time.ticks_ms()) <= 0):
                return out

    def poll(self, timeout_ms: int = -1) -> list:
        return self.ipoll(timeout_ms)


def install() -> None:
    """Make asyncio's current and future event loops use RigPoller."""
    from asyncio import core  # type: ignore[attr-defined]

    base = core.IOQueue

    class RigIOQueue(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.poller = RigPoller()

    core.IOQueue = RigIOQueue
    core.new_event_loop()
