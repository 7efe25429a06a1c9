# The node runtime a lamp or parking app runs on: the link to the edge, the
# Hello, health (Status), the log ring, settings, groups, time and the
# watchdog. The app gives its own message classes and a handler for them, and
# starts its own tasks; hardware is made by main.py and handed in.
#
#   node = Node(uart, wdt, kind=runtime.KIND_LAMP, version=(1, 0, 0),
#               classes=[lamp.SetLevel, ...], settings=Settings(TABLE),
#               reset_cause=machine.reset_cause(), uid=machine.unique_id())
#   node.handler = app.handle          # msg -> ACKED or a nack code
#   node.reporters[lamp.ENERGY_REPORT] = app.energy_report   # for Request
#   await node.run(app.tasks())
import asyncio
import gc
import struct
import sys
import time

from micropython import const

from common import files, nodeid
from common.link import NodeLink
from common.logring import LogRing
from common.settings import Settings
from kommune.protocols import frame, runtime
from kommune.protocols.dedup import ACKED

GROUPS_PATH = "/node/groups.bin"  # u16 group ids, big-endian, replaced atomically
_TICK_MS = const(250)

# Settings every node has: (key, name, lo, hi, default); apps append theirs.
SETTINGS = [
    (0x01, "status_s", 0, 86400, 300),  # a Status this often (0: only on request)
    (0x02, "silence_s", 2, 86400, 60),  # the edge said nothing this long: it is silent
    (0x03, "wdt_ms", 1000, 60000, 8000),  # watchdog timeout (at the next boot)
    (0x04, "ack_timeout_ms", 20, 10000, 300),  # first retransmission after this
    (0x05, "max_backoff_ms", 100, 60000, 4000),  # retransmissions at most this far apart
]


# Edge -> node messages the runtime answers itself.
_RUNTIME_CLASSES = [
    runtime.TimeSync,
    runtime.ConfigSet,
    runtime.ConfigGet,
    runtime.Groups,
    runtime.Request,
]


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]
    return t


class Node:
    def __init__(
        self,
        uart: object,
        wdt: object,
        *,
        kind: int,
        version: tuple,
        classes: list,
        settings: Settings,
        reset_cause: int,
        uid: bytes,
    ) -> None:
        self.settings = settings
        s = settings
        self.address, hw_rev = nodeid.identity()
        self.boot_count = nodeid.next_boot()
        self.reset_cause = nodeid.reset_cause(reset_cause)
        self._wdt = wdt
        self.started_ms = _ms()
        self.handler: object = None  # the app's: msg -> ACKED or a nack code
        self.reporters: dict = {}  # msg type -> fn() that queues that message (Request)
        self.log = LogRing()
        self.link = NodeLink(
            uart,
            address=self.address,
            classes=_RUNTIME_CLASSES + classes,
            handler=self._handle,
            ack_timeout_ms=s["ack_timeout_ms"],
            max_backoff_ms=s["max_backoff_ms"],
        )
        self.log.sink = self.link.send
        self.link.groups = self._load_groups()
        self.hello = runtime.Hello(
            kind=kind,
            hw_rev=hw_rev,
            fw_major=version[0],
            fw_minor=version[1],
            fw_patch=version[2],
            reset_cause=self.reset_cause,
            boot_count=self.boot_count,
            uid=bytes(uid[: runtime.MAX_UID]),
        )
        # The Hello is the first reliable frame of every boot (the edge folds its
        # boot count into the seqs of what follows).
        self.link.send(self.hello)
        self.reporters[runtime.HELLO] = lambda: self.link.send(self.hello)
        self.reporters[runtime.STATUS] = self.send_status
        self.reporters[runtime.LOG] = self.log.send_unsent
        self.heap_min = gc.mem_free()
        self.time_offset_ms = 0  # unix ms = ticks ms + offset, once synced
        self.time_synced = False
        self._asked_ms = self.started_ms
        self._status_ms = self.started_ms
        self._failed = False  # a task died: the watchdog will reset the board

    # -- messages the runtime handles -------------------------------------------------

    def _handle(self, msg: object) -> int:
        if isinstance(msg, runtime.TimeSync):
            self._time_sync(msg)
            return ACKED
        if isinstance(msg, runtime.ConfigSet):
            code = self.settings.set(msg.key, msg.value)
            if code:
                return code
            self.log.log(runtime.LOG_INFO, "config %d set" % msg.key)
            return ACKED
        if isinstance(msg, runtime.ConfigGet):
            value = self.settings.get(msg.key)
            if value is None:
                return runtime.NACK_UNKNOWN_KEY
            self.link.send(runtime.ConfigValue(key=msg.key, value=value))
            return ACKED
        if isinstance(msg, runtime.Groups):
            return self._set_groups(msg.groups)
        if isinstance(msg, runtime.Request):
            fn = self.reporters.get(msg.msg_type)
            if fn is None:
                return runtime.NACK_NOT_SUPPORTED
            fn()
            return ACKED
        if self.handler is None:
            return runtime.NACK_NOT_SUPPORTED
        answer: int = self.handler(msg)  # type: ignore[operator]
        return answer

    def _time_sync(self, msg: runtime.TimeSync) -> None:
        # unix time at the edge's send = unix_s.ms; the request left at node_ms, so
        # the answer is taken to be half a round trip old (unsolicited: 0).
        now = _ms()
        rtt = time.ticks_diff(now, msg.node_ms) if msg.node_ms else 0
        if not 0 <= rtt < 10000:
            rtt = 0
        self.time_offset_ms = msg.unix_s * 1000 + msg.ms + rtt // 2 - now
        self.time_synced = True

    def unix_s(self) -> int:
        # Site time (Unix seconds), 0 before the first TimeSync.
        if not self.time_synced:
            return 0
        return (_ms() + self.time_offset_ms) // 1000

    def _load_groups(self) -> list:
        raw = files.read(GROUPS_PATH)
        if raw is None or len(raw) & 1 or len(raw) > 2 * runtime.MAX_GROUPS:
            return []
        groups = [struct.unpack_from(">H", raw, i)[0] for i in range(0, len(raw), 2)]
        return [g for g in groups if g <= frame.MAX_GROUP]

    def _set_groups(self, groups: list) -> int:
        try:
            files.ensure_dir("/node")
            files.write_atomic(GROUPS_PATH, b"".join(struct.pack(">H", g) for g in groups))
        except OSError:
            return runtime.NACK_STORAGE
        self.link.groups = list(groups)
        self.log.log(runtime.LOG_INFO, "groups %s" % groups)
        return ACKED

    # -- health -----------------------------------------------------------------------

    def uptime_s(self) -> int:
        return time.ticks_diff(_ms(), self.started_ms) // 1000

    def status(self) -> runtime.Status:
        # heap_free after a collection; heap_min_free: the lowest seen before one.
        self._heap_sample()
        gc.collect()
        link = self.link
        d = link.decoder
        return runtime.Status(
            uptime_s=self.uptime_s(),
            heap_free=gc.mem_free(),
            heap_min_free=self.heap_min,
            rx_ok=d.frames_ok & 0xFFFF,
            rx_bad=d.frames_bad & 0xFFFF,
            tx_retries=link.tx_retries & 0xFFFF,
        )

    def _heap_sample(self) -> None:
        self.heap_min = min(self.heap_min, gc.mem_free())

    def send_status(self) -> None:
        self.link.send(self.status())

    # -- the tasks ------------------------------------------------------------------------

    async def _guard(self, name: str, coro: object) -> None:
        # A task that ends by an exception stops the watchdog feeding: the board
        # resets, as a hung one would.
        try:
            await coro  # type: ignore[misc]
        except Exception as e:
            sys.print_exception(e)
            print("task", name, "died")
            self._failed = True

    async def _housekeeping(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep_ms(_TICK_MS)
            if not self._failed:
                self._wdt.feed()  # type: ignore[attr-defined]
            free = gc.mem_free()
            self.heap_min = min(self.heap_min, free)
            now = _ms()
            every = s["status_s"] * 1000
            if every and time.ticks_diff(now, self._status_ms) >= every:
                self._status_ms = now
                self.send_status()
            # Quiet for a third of silence_s: ask the time. The TimeSync answer
            # shows the edge is there (and keeps the clock).
            quiet = s["silence_s"] * 333
            if self.link.silent_ms() >= quiet and time.ticks_diff(now, self._asked_ms) >= quiet:
                self._asked_ms = now
                self.link.send_now(runtime.TimeRequest(node_ms=now & 0xFFFFFFFF))

    async def run(self, app: list) -> None:
        # app: (name, coroutine) pairs; runs until the board resets.
        tasks = [self._guard(n, c) for n, c in app]
        link = self.link
        tasks.append(self._guard("rx", link.receiver()))
        tasks.append(self._guard("tx", link.sender()))
        running = [asyncio.create_task(t) for t in tasks]
        print("node %d boot %d up" % (self.address, self.boot_count))
        await self._housekeeping()
        for t in running:  # not reached: housekeeping runs for ever
            t.cancel()
