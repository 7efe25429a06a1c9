# The VM's end of the rig channel (frame format in rigwire.py).
#
# Peripheral calls become requests (`call`) or notes (`send`). Events the rig
# sends unasked (a pin level change, later BLE events) are queued and run at
# the VM's dispatch points: the asyncio poller (aiohook), time.sleep*,
# machine.idle/lightsleep and the end of each request -- the places where a
# real board runs its scheduled (soft) IRQ handlers. Software timers
# (machine.Timer) are run at the same points.
import select
import socket
import struct
import sys
import time

from . import rigwire

_POLLIN = select.POLLIN
_AF_UNIX = 1  # Linux's value; the board stubs' socket has no AF_UNIX


def _unix_addr(path: str) -> bytes:
    # sockaddr_un: family (native u16) + NUL-terminated path
    return struct.pack("H", _AF_UNIX) + path.encode() + b"\x00"


def connect(path: str) -> socket.socket:
    s = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    s.connect(_unix_addr(path))
    return s


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack("<BH", kind, len(payload)) + payload


def _guarded(fn: object, arg: object) -> None:
    # As a board does for IRQ callbacks: report the exception, keep running.
    try:
        fn(arg)  # type: ignore[operator]
    except Exception as e:
        print("Uncaught exception in IRQ callback handler")
        sys.print_exception(e)


class RigError(OSError):
    pass


class Rig:
    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token
        self.sock = connect(path)
        self._poll = select.poll()
        self._poll.register(self.sock, _POLLIN)
        self._events: list = []  # (kind, payload) received while a request waited
        self._handlers: dict = {}  # kind -> fn(payload)
        self._timers: list = []  # [deadline_ms, period_ms, callback, owner]
        self._dispatching = False
        self.irq_enabled = True  # machine.disable_irq() holds events back
        self.config: dict = {}

    # -- frames -------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.read(n - len(data))
            if not chunk:
                raise RigError(5, "rig channel closed")
            data += chunk
        return data

    def _read_frame(self) -> tuple:
        head = self._read_exact(rigwire.HEADER_SIZE)
        kind = head[0]
        size = head[1] | (head[2] << 8)
        return kind, self._read_exact(size) if size else b""

    def _readable(self, timeout_ms: int) -> bool:
        return bool(self._poll.poll(timeout_ms))

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.sock.write(frame(kind, payload))

    def call(
        self, kind: int, payload: bytes = b"", urgent_kind: int = -1, urgent: object = None
    ) -> bytes:
        """Send a request and return its REPLY payload; FAIL raises. Events wait for the
        reply, except frames of `urgent_kind`: `urgent(payload)` runs at once (the rig
        waits for their answer before it replies)."""
        self.send(kind, payload)
        while True:
            got, body = self._read_frame()
            if got == rigwire.REPLY:
                break
            if got == rigwire.FAIL:
                self._raise(body)
            if got == urgent_kind:
                urgent(body)  # type: ignore[operator]
            else:
                self._events.append((got, body))
        if self._events:
            self.service()
        return body

    def _raise(self, body: bytes) -> None:
        exc = body[0]
        errno = body[1] | (body[2] << 8)
        message = body[3:].decode()
        if exc == rigwire.EXC_VALUEERROR:
            raise ValueError(message)
        raise OSError(errno, message) if message else OSError(errno)

    # -- events -------------------------------------------------------------

    def on(self, kind: int, handler: object) -> None:
        """Run `handler(payload)` for every event frame of `kind`."""
        self._handlers[kind] = handler

    def service(self) -> None:
        """Run queued and pending events and due timers (never re-entrant)."""
        if self._dispatching or not self.irq_enabled:
            return
        self._dispatching = True
        try:
            while self._readable(0):
                self._events.append(self._read_frame())
            events = self._events
            while events:
                kind, body = events.pop(0)
                handler = self._handlers.get(kind)
                if handler is not None:
                    _guarded(handler, body)
            self._run_timers()
        finally:
            self._dispatching = False

    def wait_ms(self, ms: int) -> None:
        """Sleep `ms`, running events and timers as they come (time.sleep_ms)."""
        deadline = time.ticks_add(time.ticks_ms(), ms)
        while True:
            self.service()
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return
            nxt = self.next_timer_ms()
            if nxt >= 0 and nxt < left:
                left = nxt
            self._readable(left)

    def wait_event(self, timeout_ms: int) -> bool:
        """Wait for an event or a due timer (at most `timeout_ms`, -1 = no
        limit) and run it; False if the time ran out first (machine.idle)."""
        nxt = self.next_timer_ms()
        if nxt >= 0 and (timeout_ms < 0 or nxt < timeout_ms):
            timeout_ms = nxt
        woke = bool(self._events) or self._readable(timeout_ms) or 0 <= nxt == timeout_ms
        self.service()
        return woke

    # -- software timers (machine.Timer) -----------------------------------

    def add_timer(self, owner: object, period_ms: int, callback: object, periodic: bool) -> None:
        self.remove_timer(owner)
        due = time.ticks_add(time.ticks_ms(), period_ms)
        self._timers.append([due, period_ms if periodic else 0, callback, owner])

    def remove_timer(self, owner: object) -> None:
        self._timers = [t for t in self._timers if t[3] is not owner]

    def next_timer_ms(self) -> int:
        """Milliseconds until the next timer is due, -1 if none."""
        if not self._timers:
            return -1
        now = time.ticks_ms()
        best = -1
        for t in self._timers:
            left = time.ticks_diff(t[0], now)
            left = max(left, 0)
            if best < 0 or left < best:
                best = left
        return best

    def _run_timers(self) -> None:
        if not self._timers:
            return
        now = time.ticks_ms()
        for t in list(self._timers):
            if time.ticks_diff(t[0], now) > 0:
                continue
            if t[1]:
                t[0] = time.ticks_add(t[0], t[1])
            else:
                self.remove_timer(t[3])
            _guarded(t[2], t[3])


_current: list = []  # the VM's one Rig, set by start.py before the firmware runs


def attach(rig: Rig) -> None:
    _current.clear()
    _current.append(rig)


def get() -> Rig:
    if not _current:
        raise OSError(19, "no rig attached")
    return _current[0]
