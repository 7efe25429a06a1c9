# The door lock: BLE peripheral, LockVerifier, bolt, flash. One asyncio task
# does the work; the BLE IRQ handler and the door contact's IRQ only queue an
# event and set a flag (aioble's style). Hardware comes from main().
#
# Order for every message (LOCK.md, "Persist before replying"): the verifier
# decides; its state and the audit log are committed to flash; then the bolt
# moves; then the reply is notified. A power cut at any instant therefore
# loses no opening: an opening that was not committed never happened.
import asyncio
import gc
import os
import sys
import time

import gatt
from bolt import (
    EV_DOOR_CLOSED,
    EV_DOOR_OPENED,
    EV_FAULT_CLEARED,
    EV_LOCKED,
    EV_UNLOCKED,
    FAULT_NAMES,
    LOCKED,
    STATE_NAMES,
    Bolt,
)
from micropython import const
from store import LockStore, StoreError

from kommune.protocols.audit import EVENT_BOOT, EVENT_DOOR, AuditLog
from kommune.protocols.errors import (
    BAD_LENGTH,
    MECHANISM_FAULT,
    RATE_LIMITED,
    REPLAY,
    UNPROVISIONED,
    ProtocolError,
)
from kommune.protocols.handshake import Notice
from kommune.protocols.lock_verifier import (
    ACT_ADMIN,
    ACT_CHALLENGE,
    ACT_DROP,
    ACT_LOCK,
    ACT_OPEN,
    ACT_SEND_AUDIT,
    ACT_SET_DENY,
    ACT_SET_TIME,
    LockVerifier,
)
from kommune.protocols.lock_wire import MSG_CHALLENGE, OK

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_MTU_EXCHANGED = const(21)

_TICK_MS = const(100)  # main loop wakes at least this often (relock, verifier tick, watchdog)
_STATUS_EVERY_MS = const(2000)  # battery and heap in the status at least this often
_MAX_WRITES_QUEUED = const(8)  # more writes pending than this are dropped (flooding)
_DEFAULT_MTU = const(23)
_CHALLENGE_MTU = const(33)  # a 30-byte CHALLENGE notification needs an ATT MTU of 33
_BATCH_HEAD = const(21)  # ATT notify header (3) + AUDIT_BATCH head (18)
_ENTRY_BYTES = const(55)
_MAX_CONNECTIONS = const(4)


# Site time is Unix seconds; on ports whose time.time() counts from 2000 it is shifted.
_EPOCH_SHIFT_S = 946_684_800 if time.gmtime(0)[0] == 2000 else 0


def _clock() -> int:
    return time.time() + _EPOCH_SHIFT_S


def _ms() -> int:
    t: int = time.ticks_ms()  # type: ignore[assignment]  # the stubs' ticks type is an int
    return t


class LockApp:
    def __init__(
        self,
        ble: object,
        *,
        bolt: Bolt,
        battery: object,
        rtc: object,
        wdt: object,
        cfg: dict,
        ident: object,
        why_unprovisioned: str,
        reset_cause: int,
    ) -> None:
        self._ble = ble
        self.bolt = bolt
        self._battery = battery
        self._rtc = rtc
        self._wdt = wdt
        self._cfg = cfg
        self._reset_cause = reset_cause
        self._flag = asyncio.ThreadSafeFlag()
        self._events: list = []
        self._writes = 0  # writes in _events
        self._conns: dict = {}  # conn handle -> [verifier Connection or None, ATT MTU]
        self.lock_id = 0
        self.verifier: "LockVerifier | None" = None
        self.log: "AuditLog | None" = None
        self.store: "LockStore | None" = None
        self.unprovisioned = why_unprovisioned
        self.handshakes = 0
        self.heap_free = 0  # after the last collection
        self.heap_low = 1 << 30  # lowest free heap seen before a collection
        self._status = ""
        self._hs = 0  # the handshake characteristic's value handle
        self._st = 0  # the status characteristic's
        self._status_ms = 0
        self._unlocked_ms = 0  # when the bolt last reached its unlocked end
        self._opened = False  # the door opened since
        self._door_closed = bolt.door_closed()
        self._closed_ms = 0
        if ident is not None:
            try:
                self._start(ident)
            except ProtocolError as e:  # all-zero or identical keys
                self.unprovisioned = "bad keys: " + e.reason
            except (StoreError, OSError) as e:
                self.unprovisioned = "storage: " + str(e)
                self.verifier = None

    def _start(self, ident: object) -> None:
        lock_id: int = ident.lock_id  # type: ignore[attr-defined]
        audit_key: bytes = ident.audit_key  # type: ignore[attr-defined]
        store = LockStore(audit_key, lock_id, self._cfg["audit_capacity"])
        saved = store.load()
        log = AuditLog(
            audit_key,
            lock_id,
            capacity=store.capacity,
            next_seq=saved.next_seq,
            last_hash=saved.last_hash,
            last_time_s=saved.last_time_s,
        )
        log.restore(saved.entries)
        v = LockVerifier(
            lock_id,
            ident.token_key,  # type: ignore[attr-defined]
            ident.edge_key,  # type: ignore[attr-defined]
            saved.epoch,
            log,
            needs_time=saved.needs_time,
            max_connections=_MAX_CONNECTIONS,
        )
        deny = store.load_deny()
        if deny is not None:
            v.load_deny(*deny)
        # A fault outlives a reset (a stalled motor may well brown the board out).
        v.mechanism_fault = self.bolt.fault = saved.fault
        self.lock_id, self.store, self.log, self.verifier = lock_id, store, log, v
        if saved.dropped:
            print("audit: %d entries failed their checks" % saved.dropped)

    # -- flash ----------------------------------------------------------------

    def _save(self) -> None:
        v, store = self.verifier, self.store
        if v is None or store is None:
            return
        try:
            store.save(v.audit, v.epoch, v.needs_time, self.bolt.fault)
        except OSError as e:
            # RAM and flash disagree now: nothing may be answered or moved.
            print("flash write failed:", e)
            import machine

            machine.reset()

    def _save_deny(self) -> None:
        v, store = self.verifier, self.store
        if v is None or store is None:
            return
        try:
            store.save_deny(*v.deny)
        except OSError as e:
            print("flash write failed:", e)
            import machine

            machine.reset()

    def _door_event(self, arg: int) -> None:
        # An audit entry for the bolt or the door, committed at once.
        if self.log is not None:
            self.log.append(_clock(), EVENT_DOOR, 0, OK, arg=arg)
            self._save()

    # -- the bolt -------------------------------------------------------------

    async def _open_bolt(self) -> bool:
        ok = await self.bolt.drive(True)
        if ok:
            self._unlocked_ms = _ms()
            self._opened = False
            self._door_event(EV_UNLOCKED)
            return True
        self._fault()
        await self._lock_bolt()  # back to safety
        return False

    async def _lock_bolt(self) -> bool:
        before = self.bolt.state()
        if await self.bolt.drive(False):
            if before != LOCKED:
                self._door_event(EV_LOCKED)
            return True
        self._fault()
        return False

    def _fault(self) -> None:
        if self.verifier is not None:
            self.verifier.mechanism_fault = self.bolt.fault
        self._door_event(self.bolt.fault)

    async def _clear_fault(self) -> bool:
        # An admin request: try the mechanism again (throw the bolt).
        fault, self.bolt.fault = self.bolt.fault, 0
        if await self._lock_bolt():
            if self.verifier is not None:
                self.verifier.mechanism_fault = 0
            if fault:
                self._door_event(EV_FAULT_CLEARED)
            return True
        return False

    async def _relock(self) -> None:
        # Throw the bolt again: relock_ms after it opened with the door shut,
        # or door_settle_ms after the door shut again; never with the door open.
        bolt = self.bolt
        now = _ms()
        closed = bolt.door_closed()
        if closed != self._door_closed:
            self._door_closed = closed
            self._door_event(EV_DOOR_CLOSED if closed else EV_DOOR_OPENED)
            if closed:
                self._closed_ms = now
            else:
                self._opened = True
        if bolt.fault or not closed or bolt.state() == LOCKED:
            return
        if self._opened:
            due = time.ticks_diff(now, self._closed_ms) >= self._cfg["door_settle_ms"]
        else:
            due = time.ticks_diff(now, self._unlocked_ms) >= self._cfg["relock_ms"]
        if due:
            await self._lock_bolt()

    # -- BLE ----------------------------------------------------------------------

    def _irq(self, event: int, data: tuple) -> None:
        # Copy what is needed, queue it, wake the task: nothing else here.
        if event == _IRQ_GATTS_WRITE:
            if data[1] == self._hs and self._writes < _MAX_WRITES_QUEUED:
                self._writes += 1
                self._events.append((event, data[0], self._ble.gatts_read(data[1])))  # type: ignore[attr-defined]
        elif event in (_IRQ_CENTRAL_CONNECT, _IRQ_CENTRAL_DISCONNECT):
            self._events.append((event, data[0], None))
        elif event == _IRQ_MTU_EXCHANGED:
            self._events.append((event, data[0], data[1]))
        self._flag.set()

    def _wake(self, _pin: object = None) -> None:
        self._flag.set()

    def _advertise(self) -> None:
        if len(self._conns) >= _MAX_CONNECTIONS:
            return
        flags = 0
        v = self.verifier
        if v is not None:
            flags |= gatt.ADV_PROVISIONED
            if v.needs_time:
                flags |= gatt.ADV_NEEDS_TIME
        if self.bolt.fault:
            flags |= gatt.ADV_FAULT
        if self._battery.low:  # type: ignore[attr-defined]
            flags |= gatt.ADV_BATTERY_LOW
        gatt.advertise(self._ble, self.lock_id, flags)  # type: ignore[arg-type]

    def _notify(self, conn: int, data: "bytes | bytearray") -> None:
        try:
            self._ble.gatts_notify(conn, self._hs, data)  # type: ignore[attr-defined]
        except OSError:
            pass  # the peer left meanwhile

    def _disconnect(self, conn: int) -> None:
        try:
            self._ble.gap_disconnect(conn)  # type: ignore[attr-defined]
        except OSError:
            pass

    def _drop_closed(self) -> None:
        # Peers the verifier closed (idle, or pushed out by a new connection).
        for conn, c in self._conns.items():
            if c[0] is not None and c[0].closed:
                c[0] = None
                self._disconnect(conn)

    def _challenge(self, conn: int, c: list) -> None:
        v = self.verifier
        if v is None or c[0] is None:
            return
        if c[1] < _CHALLENGE_MTU:
            self._notify(conn, Notice(MSG_CHALLENGE, BAD_LENGTH).encode())
            return
        for _ in range(3):
            try:
                msg = v.challenge(c[0], os.urandom(16), _ms(), _clock())
            except ProtocolError as e:
                if e.reason == REPLAY:
                    continue  # the nonce repeats a recent one: draw another
                return  # the connection was dropped
            self._notify(conn, msg)
            return

    def _on_connect(self, conn: int) -> None:
        v = self.verifier
        self._conns[conn] = [None if v is None else v.connect(_ms()), _DEFAULT_MTU]
        self._drop_closed()
        self._advertise()

    def _on_disconnect(self, conn: int) -> None:
        c = self._conns.pop(conn, None)
        if c is not None and c[0] is not None and self.verifier is not None:
            self.verifier.disconnect(c[0])
        self._advertise()

    async def _on_write(self, conn: int, data: bytes) -> None:
        c = self._conns.get(conn)
        v = self.verifier
        if c is None:
            return
        if v is None or c[0] is None:
            # Unprovisioned (or already dropped): nobody is answered.
            why = UNPROVISIONED if v is None else RATE_LIMITED
            self._notify(conn, Notice(data[0] if data else 0, why).encode())
            self._disconnect(conn)
            return
        verdict = v.respond(c[0], data, _ms(), _clock())
        act = verdict.action
        if act == ACT_SET_DENY:
            self._save_deny()  # the list first: the reply says it is in force
        if act != ACT_CHALLENGE or verdict.state_changed:
            self._save()  # epoch, needs_time, audit log: before anything else
        if act == ACT_OPEN:
            if not await self._open_bolt():
                v.restatus(verdict, data, MECHANISM_FAULT)
        elif act == ACT_LOCK:
            if not await self._lock_bolt():
                v.restatus(verdict, data, MECHANISM_FAULT)
        elif act == ACT_ADMIN:
            if not await self._clear_fault():
                v.restatus(verdict, data, MECHANISM_FAULT)
        elif act == ACT_SET_TIME:
            tm = time.gmtime(verdict.value - _EPOCH_SHIFT_S)
            self._rtc.datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))  # type: ignore[attr-defined]
        if act != ACT_CHALLENGE:
            self.handshakes += 1
            self._battery.read()  # type: ignore[attr-defined]  # the motor may have drawn it down
            self._write_status()  # a peer reading it after the reply sees the new state
        if verdict.reply:
            self._notify(conn, verdict.reply)
        if act == ACT_SEND_AUDIT:
            batch = v.audit.batch(max(0, (c[1] - _BATCH_HEAD) // _ENTRY_BYTES))
            self._save()  # a batch may first log the failure summary
            self._notify(conn, batch)
        if act == ACT_DROP:
            c[0] = None
            self._disconnect(conn)
        else:
            self._challenge(conn, c)  # the answer to a CHALLENGE_REQUEST, or the next one

    # -- status -----------------------------------------------------------------------

    def _collect(self) -> None:
        self.heap_low = min(self.heap_low, gc.mem_free())
        gc.collect()
        self.heap_free = gc.mem_free()

    def _update_status(self, force: bool = False) -> None:
        # Battery and heap measured when forced (after a handshake) or every
        # _STATUS_EVERY_MS; the status text itself is always current.
        now = _ms()
        if force or time.ticks_diff(now, self._status_ms) >= _STATUS_EVERY_MS:
            self._status_ms = now
            self._battery.read()  # type: ignore[attr-defined]
            self._collect()
        self._write_status()

    def _write_status(self) -> None:
        bolt, bat = self.bolt, self._battery
        common = "bolt=%s door=%s fault=%s battery=%dmV,%d%% heap=%d heap_low=%d" % (
            STATE_NAMES[bolt.state()],
            "closed" if bolt.door_closed() else "open",
            FAULT_NAMES.get(bolt.fault, "jam"),
            bat.mv,  # type: ignore[attr-defined]
            bat.percent,  # type: ignore[attr-defined]
            self.heap_free,
            self.heap_low,
        )
        v = self.verifier
        if v is None:
            text = "unprovisioned (%s) " % self.unprovisioned + common
        else:
            text = (
                "lock=%d time=%s epoch=%d seq=%d handshakes=%d "
                % (
                    self.lock_id,
                    "needed" if v.needs_time else "ok",
                    v.epoch,
                    v.audit.next_seq,
                    self.handshakes,
                )
                + common
            )
        if text != self._status:
            self._status = text
            self._ble.gatts_write(self._st, text)  # type: ignore[attr-defined]

    # -- the task ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep_ms(_TICK_MS)
            self._flag.set()

    async def _boot(self) -> None:
        self._battery.read()  # type: ignore[attr-defined]
        v = self.verifier
        if v is not None:
            if _clock() < v.audit.last_time_s:
                v.needs_time = True  # the clock is behind what the lock has seen
            v.audit.append(_clock(), EVENT_BOOT, 0, OK, arg=self._reset_cause)
            self._save()
        # Safe state first: the bolt thrown (unless the door is open: then
        # when it shuts).
        self._unlocked_ms = _ms()
        self._opened = not self.bolt.door_closed()  # open: throw the bolt once it shuts
        if self.bolt.state() != LOCKED and self.bolt.door_closed():
            await self._lock_bolt()

    async def run(self) -> None:
        ble = self._ble
        ble.active(True)  # type: ignore[attr-defined]
        ble.config(mtu=256)  # type: ignore[attr-defined]
        self._hs, self._st = gatt.register(ble)  # type: ignore[arg-type]
        ble.irq(self._irq)  # type: ignore[attr-defined]
        self.bolt.on_door(self._wake)
        await self._boot()
        self._update_status(True)
        self._advertise()
        print("lock", self.lock_id, "ready" if self.verifier else "unprovisioned")
        self._ticker_task = asyncio.create_task(self._ticker())
        while True:
            await self._flag.wait()
            self._wdt.feed()  # type: ignore[attr-defined]
            busy = False
            while self._events:
                event, conn, value = self._events.pop(0)
                try:
                    if event == _IRQ_GATTS_WRITE:
                        self._writes -= 1
                        busy = True
                        await self._on_write(conn, value)
                    elif event == _IRQ_CENTRAL_CONNECT:
                        self._on_connect(conn)
                    elif event == _IRQ_CENTRAL_DISCONNECT:
                        self._on_disconnect(conn)
                    elif event == _IRQ_MTU_EXCHANGED and conn in self._conns:
                        self._conns[conn][1] = value
                except Exception as e:  # a bug or a MemoryError: this event is lost, not the lock
                    sys.print_exception(e)
            if self.verifier is not None:
                self.verifier.tick(_ms())
                self._drop_closed()
            await self._relock()
            if busy:
                self._collect()
            self._update_status(busy)
