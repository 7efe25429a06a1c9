"""`kommune bench unlock`: a staff phone opening the emulated door lock (issue 8's benchmark).

One run starts its own rig: the virtual air, one esp32-lock board running the lock
firmware (every module but main.py compiled with mpy-cross, as a bundle ships them; the
profile's 64 KB heap plus the emulation's share), provisioned with the keys of a site key
drawn for the run (never a fixed key), its clock set through the edge's API
(`edge.lock.edge_link.set_time`). The phone is this process: bleak on the edge's Bumble
backend, tokens minted by `TokenAuthority` for the run's site key, unlocks done by the
API `kommune unlock` runs (`edge.lock.unlock.unlock`), each a new scan, connection and
handshake. Everything (VM, air, temporary directory) goes when the run ends, also on
Ctrl-C.

At each connection interval (15 ms, then 30 ms; `air.set_link`), in this order:
* `unlocks` cached unlocks of a locked bolt: the RESULT comes once the unlocked end
  switch closed, after the model's 150 ms travel (`*_bolt_*`, and `unlock_total_*`);
  the bolt relocks 300 ms after each opening (bench config) before the next one;
* `unlocks` cached unlocks with the door held open, so the bolt stays at its unlocked
  end and the firmware's drive returns at once: no motor wait (`handshake_ms_*`,
  `unlock_total_nobolt_*`); every 4th of them is preceded by an uncached one
  (`unlock_total_uncached_*`, also no motor wait).
Cached: a new LockCache read from its file (what the next `kommune unlock` process
finds), the in-memory GATT cache cleared first; the backend checks the database hash.
Uncached: no cache file, nothing in memory (first run): full service discovery.

Figures (p50 = median, p95 = 95th percentile, inclusive method):
* rtt_after_connect: ATT round trips the phone waits for from its first write (the
  CCCD write that subscribes) to the verified RESULT; rtt_setup_cached/_uncached: those
  before it (MTU exchange, database-hash check or discovery). Counted from the ATT PDUs
  the phone's Bumble host sends and receives (tapped in this process): a round trip is a
  turn from the phone sending to the lock answering. The largest count seen is reported.
* handshake_ms_*: connected -> verified RESULT, no motor wait: the LE link up (the
  host's connection event) to the RESULT verified by the phone: MTU, cache check,
  subscription, challenge, REQUEST, the lock's verification and flash commit.
  handshake_bolt_ms_*: the same with the bolt's travel in it.
* unlock_total_ms_*: the whole unlock from the call (window check, scan for the lock's
  advertised id, connect, cache or discovery, handshake), cached handles, with the bolt's
  travel: what a person at the door waits for. unlock_total_nobolt_* /
  unlock_total_uncached_*: cached / uncached, no motor wait.
* lock_respond_us_*: the lock's compute per handshake: `LockVerifier.respond()` on an
  honest REQUEST, timed with ticks_us on the board itself after the run (its firmware
  stopped with Ctrl-C over the console, the raw REPL, the modules the firmware loaded,
  keys of the run, `respond_rounds` times). The firmware exposes no timing of its own.
* lock_heap_*: the status characteristic's `heap_low` (the lowest gc.mem_free() the
  firmware saw, sampled after each handshake before its collection; an automatic
  collection in between is not seen) and `heap` (free after the last collection), read
  at the end; in the VM's bytes (64-bit objects, about twice an ESP32's). The VM's heap
  is the profile's 64 KB plus the emulation's 30 KB, in 32-bit words. lock_heap_peak_bytes
  is the board's 64 KB less the lowest free heap scaled to 32-bit bytes: used at the
  peak, as a 32-bit board would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kommune.bench.report import BenchError, Metric, Metrics, Suite

UNLOCKS = 200
INTERVALS_MS = (15, 30)
UNCACHED_EVERY = 4
RESPOND_ROUNDS = 200
LOCK_ID = 1017
LOCK_ADDRESS = "F0:4C:00:00:03:F9"
PROFILE = "esp32-lock"
BOARD_HEAP_BYTES = 64 * 1024
#: Short relock for the bench; a watchdog long enough for the REPL measurement at the end.
BENCH_CONFIG = {"relock_ms": 300, "door_settle_ms": 100, "travel_timeout_ms": 600, "wdt_ms": 60000}
ATT_CID = 0x0004
ATT_WRITE_REQUEST = 0x12
ATT_WRITE_COMMAND = 0x52
BOLT_TIMEOUT_S = 5.0


# -- round trips, from the phone's ATT PDUs -----------------------------------------------


class AttTrace:
    """The ATT PDUs of the phone's Bumble host, ("out" | "in", opcode), in order."""

    def __init__(self, device: Any) -> None:
        self.pdus: list[tuple[str, int]] = []
        self._host = device.host
        self._channels = device.l2cap_channel_manager
        send, receive = self._host.send_l2cap_pdu, self._channels.on_pdu

        def on_send(handle: int, cid: int, pdu: bytes) -> None:
            if cid == ATT_CID and pdu:
                self.pdus.append(("out", pdu[0]))
            send(handle, cid, pdu)

        def on_receive(connection: Any, cid: int, pdu: bytes) -> None:
            if cid == ATT_CID and pdu:
                self.pdus.append(("in", pdu[0]))
            receive(connection, cid, pdu)

        setattr(self._host, "send_l2cap_pdu", on_send)  # noqa: B010  # an instance's method
        setattr(self._channels, "on_pdu", on_receive)  # noqa: B010

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            delattr(self._host, "send_l2cap_pdu")
            delattr(self._channels, "on_pdu")

    def take(self) -> list[tuple[str, int]]:
        pdus, self.pdus = self.pdus, []
        return pdus


def turns(pdus: list[tuple[str, int]]) -> int:
    """Round trips: each time the phone, having sent, gets the lock's answer."""
    count, waiting = 0, False
    for direction, _ in pdus:
        if direction == "out":
            waiting = True
        elif waiting:
            count, waiting = count + 1, False
    return count


def round_trips(pdus: list[tuple[str, int]]) -> tuple[int, int]:
    """(before the first write: MTU, discovery or cache check; from it: the handshake)."""
    first = next(
        (
            i
            for i, (direction, op) in enumerate(pdus)
            if direction == "out" and op in (ATT_WRITE_REQUEST, ATT_WRITE_COMMAND)
        ),
        len(pdus),
    )
    return turns(pdus[:first]), turns(pdus[first:])


# -- the rig ------------------------------------------------------------------------------


def lock_firmware() -> dict[str, bytes]:
    """The lock's files as a bundle: main.py as source, every other module as .mpy."""
    from kommune.hil import firmware_files

    try:
        return firmware_files.compiled(firmware_files.node_files("lock"))
    except firmware_files.FirmwareError as e:
        raise BenchError(str(e)) from e


def identity(lock_keys: Any) -> bytes:
    """/lock/identity.json as `kommune provision lock` writes it."""
    doc = {
        "version": 1,
        "lock_id": lock_keys.lock_id,
        "site_id": "bench",
        "token_key": lock_keys.token_key.hex(),
        "edge_key": lock_keys.edge_key.hex(),
        "audit_key": lock_keys.audit_key.hex(),
    }
    return json.dumps(doc).encode()


def percentiles(samples: list[float], name: str, interval_ms: int) -> Metrics:
    p95 = statistics.quantiles(samples, n=20, method="inclusive")[-1] if len(samples) > 1 else 0
    return {
        f"{name}_ms_p50_{interval_ms}ms": round(statistics.median(samples), 1),
        f"{name}_ms_p95_{interval_ms}ms": round(max(p95, statistics.median(samples)), 1),
    }


class Bench:
    """The lock board, the phone's host and trace, the token, the cache file."""

    def __init__(self, rig: Any, board: Any, phone: str, workdir: Path, token: Any) -> None:
        self.rig, self.board, self.phone, self.token = rig, board, phone, token
        self.cache_file = workdir / "locks.json"
        self.trace: AttTrace | None = None
        self.setup_trips: dict[str, int] = {"cached": 0, "uncached": 0}
        self.rtt_after_connect = 0

    async def bolt(self, what: Callable[[Any], Any]) -> Any:
        bolt = self.board.device("bolt")
        return await asyncio.to_thread(self.board.call, lambda: what(bolt))

    async def wait_bolt(self, state: str) -> None:
        deadline = time.monotonic() + BOLT_TIMEOUT_S
        while await self.bolt(lambda b: b.state) != state:
            if time.monotonic() > deadline:
                raise BenchError(f"the bolt did not become {state} within {BOLT_TIMEOUT_S:g} s")
            await asyncio.sleep(0.01)

    async def unlock(self, *, cached: bool) -> dict[str, float]:
        """One unlock through the phone's API; its timings (ms) and round trips."""
        from kommune.edge.ble import forget_cached_services
        from kommune.edge.lock.errors import LockError
        from kommune.edge.lock.finder import LockCache
        from kommune.edge.lock.unlock import unlock

        forget_cached_services(LOCK_ADDRESS)
        if not cached:
            self.cache_file.unlink(missing_ok=True)
        assert self.trace is not None
        self.trace.take()
        started = time.monotonic()
        try:
            result = await unlock(
                self.token, transport=self.phone, cache=LockCache(self.cache_file), attempts=1
            )
        except LockError as e:
            raise BenchError(f"an unlock failed: {e}") from e
        total_ms = (time.monotonic() - started) * 1000
        setup, handshake = round_trips(self.trace.take())
        kind = "cached" if cached else "uncached"
        self.setup_trips[kind] = max(self.setup_trips[kind], setup)
        self.rtt_after_connect = max(self.rtt_after_connect, handshake)
        t = result.timings
        if not result.opened or t.get("discover_ms") is None:
            raise BenchError(f"unexpected unlock result: {result.to_json()}")
        return {
            "total": total_ms,
            "handshake": float(t["discover_ms"] or 0) + float(t["handshake_ms"] or 0),
            "scan": float(t["scan_ms"] or 0),
        }

    async def interval(self, air: Any, interval_ms: int, unlocks: int) -> Metrics:
        await air.set_link("lock-phone", "lock", interval_ms=float(interval_ms))
        await self.unlock(cached=False)  # fills the cache file (not counted)
        await self.bolt(lambda b: (b.hold_door_open(False), b.close_door()))
        with_bolt: list[dict[str, float]] = []
        for _ in range(unlocks):
            await self.wait_bolt("locked")
            with_bolt.append(await self.unlock(cached=True))
        # The door held open from the moment the bolt is back: it stays unlocked.
        await self.wait_bolt("locked")
        opening = asyncio.create_task(self.unlock(cached=True))
        await self.wait_bolt("unlocked")
        await self.bolt(lambda b: b.hold_door_open())
        await opening
        no_bolt: list[dict[str, float]] = []
        uncached: list[dict[str, float]] = []
        for i in range(unlocks):
            if i % UNCACHED_EVERY == 0:
                uncached.append(await self.unlock(cached=False))
            no_bolt.append(await self.unlock(cached=True))
        if await self.bolt(lambda b: b.state) != "unlocked":
            raise BenchError("the bolt moved while the door was held open")
        await self.bolt(lambda b: (b.hold_door_open(False), b.close_door()))
        results: Metrics = {
            f"unlocks_{interval_ms}ms": len(with_bolt) + len(no_bolt) + len(uncached)
        }
        results |= percentiles([s["handshake"] for s in no_bolt], "handshake", interval_ms)
        results |= percentiles([s["handshake"] for s in with_bolt], "handshake_bolt", interval_ms)
        results |= percentiles([s["total"] for s in with_bolt], "unlock_total", interval_ms)
        results |= percentiles([s["total"] for s in no_bolt], "unlock_total_nobolt", interval_ms)
        results |= percentiles([s["total"] for s in uncached], "unlock_total_uncached", interval_ms)
        results |= percentiles([s["scan"] for s in with_bolt + no_bolt], "scan", interval_ms)
        return results


async def read_status(phone: str) -> dict[str, str]:
    from kommune.edge.lock.errors import LockError
    from kommune.edge.lock.session import open_link

    try:
        async with open_link(LOCK_ID, transport=phone) as link:
            text = await link.read_status()
    except LockError as e:
        raise BenchError(f"reading the lock's status: {e}") from e
    fields: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        fields[key] = value
    return fields


# MicroPython, on the board after Ctrl-C: respond() on honest REQUESTs, the firmware's modules.
RESPOND_SCRIPT = """
import asyncio, bluetooth, gc, os, time
# Let go of the stopped firmware (its tasks, its BLE handler): its heap is ours now.
asyncio.new_event_loop()
bluetooth.BLE().irq(None)
gc.collect()
from binascii import unhexlify as h
from kommune.protocols.audit import AuditLog
from kommune.protocols.lock_verifier import LockVerifier
from kommune.protocols.handshake import proof
from kommune.protocols.hmac_sha256 import HmacKey
def main():
    tok = h(%(token)r); session = HmacKey(h(%(session)r))
    lock = LockVerifier(%(lock_id)d, h(%(token_key)r), h(%(edge_key)r), %(epoch)d,
                        AuditLog(h(%(audit_key)r), %(lock_id)d, capacity=8))
    conn = lock.connect(0)
    ok = 0
    # Each time printed at once: the heap the firmware leaves is fragmented (its largest
    # free block can be under 1 KB), so no list of them is kept.
    for i in range(%(rounds)d):
        ch = lock.challenge(conn, os.urandom(16), i * 100, %(now)d)
        body = b"\\x02\\x01" + ch[14:30] + os.urandom(16) + tok
        req = body + proof(session, %(lock_id)d, body)
        t0 = time.ticks_us()
        v = lock.respond(conn, req, i * 100 + 20, %(now)d)
        dt = time.ticks_diff(time.ticks_us(), t0)
        ok += v.ok
        del lock.audit.entries[:]
        print("T", dt)
    gc.collect()
    print("RESULT", ok, gc.mem_free() + gc.mem_alloc())
gc.collect()
main()
"""


def measure_respond(board: Any, lock_keys: Any, token: Any, rounds: int) -> tuple[list[int], int]:
    """respond() times (us) on the board, and the VM's heap size (bytes)."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    code = RESPOND_SCRIPT % {
        "token": token.token.hex(),
        "session": token.session_key.hex(),
        "lock_id": token.lock_id,
        "token_key": lock_keys.token_key.hex(),
        "edge_key": lock_keys.edge_key.hex(),
        "audit_key": lock_keys.audit_key.hex(),
        "epoch": token.epoch,
        "rounds": rounds,
        "now": int(time.time()),
    }
    try:
        console = SerialTransport(board.console, baudrate=115200)
        console.serial.timeout = 1.0  # a lost byte must not hang mpremote's one-byte reads
        try:
            console.enter_raw_repl(soft_reset=False)  # Ctrl-C: the firmware stops
            out = console.exec(code).decode(errors="replace")
        finally:
            console.close()
    except (TransportError, OSError) as e:
        raise BenchError(f"the REPL measurement on the board failed: {e}") from e
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise BenchError(f"the REPL measurement printed no result: {out[-500:]}")
    _, ok, heap = line.split()
    times = [x.split()[1] for x in out.splitlines() if x.startswith("T ")]
    if int(ok) != rounds:
        raise BenchError(f"the lock refused {rounds - int(ok)} honest requests in the REPL")
    return [int(t) for t in times], int(heap)


async def _measure(workdir: Path, unlocks: int, respond_rounds: int) -> Metrics:
    from bleak.exc import BleakError

    from kommune.edge import keys
    from kommune.edge.ble import hold_host
    from kommune.edge.lock.edge_link import set_time
    from kommune.edge.lock.errors import LockError
    from kommune.edge.lock.tokenfile import TokenFile
    from kommune.edge.token_authority import TokenAuthority
    from kommune.hil.emulated_board import BoardError
    from kommune.hil.harness import Rig
    from kommune.hil.radio import AirError, running_air
    from kommune.protocols.lock_wire import RIGHT_LOCK, RIGHT_UNLOCK

    results: Metrics = {"load_1min_start": round(os.getloadavg()[0], 2)}
    site_key = keys.new_site_key()
    lock_keys = keys.derive_lock_keys(site_key, LOCK_ID)
    files = await asyncio.to_thread(lock_firmware)
    files["/lock/config.json"] = json.dumps(BENCH_CONFIG).encode()
    files["/lock/identity.json"] = identity(lock_keys)
    now = int(time.time())
    issued = TokenAuthority(site_key).issue(
        holder_id=42,
        lock_id=LOCK_ID,
        not_before_s=now - 60,
        not_after_s=now + 6 * 3600,
        rights=RIGHT_UNLOCK | RIGHT_LOCK,
    )
    token = TokenFile.from_issued(issued)
    try:
        async with running_air(seed=8) as air:
            device = await air.add_device("lock", LOCK_ADDRESS)
            phone = await air.add_device("lock-phone")
            with Rig() as rig:
                board = await asyncio.to_thread(
                    rig.add_board, "lock", PROFILE, files=files, radio=device
                )
                await asyncio.to_thread(board.wait_booted)
                async with hold_host(phone.transport) as host:
                    await set_time(lock_keys, transport=phone.transport)
                    bench = Bench(rig, board, phone.transport, workdir, token)
                    bench.trace = AttTrace(host.device)
                    try:
                        for interval_ms in INTERVALS_MS:
                            results |= await bench.interval(air, interval_ms, unlocks)
                    finally:
                        bench.trace.close()
                    status = await read_status(phone.transport)
                times, heap = await asyncio.to_thread(
                    measure_respond, board, lock_keys, issued, respond_rounds
                )
                if "MemoryError" in board.console_output():
                    raise BenchError("the lock ran out of memory: " + board.console_output()[-500:])
    except (AirError, BoardError, BleakError, LockError, TimeoutError, OSError) as e:
        raise BenchError(f"unlock bench: {str(e).splitlines()[0]}") from e
    results["rtt_after_connect"] = bench.rtt_after_connect
    results["rtt_setup_cached"] = bench.setup_trips["cached"]
    results["rtt_setup_uncached"] = bench.setup_trips["uncached"]
    results["lock_respond_us_p50"] = round(statistics.median(times), 1)
    results["lock_respond_us_p95"] = round(
        statistics.quantiles(times, n=20, method="inclusive")[-1], 1
    )
    results["respond_rounds"] = len(times)
    heap_low, heap_free = int(status["heap_low"]), int(status["heap"])
    results["lock_heap_vm_bytes"] = heap
    results["lock_heap_low_free_vm_bytes"] = heap_low
    results["lock_heap_free_vm_bytes"] = heap_free
    board_bytes = (BOARD_HEAP_BYTES + 30 * 1024) / heap  # 32-bit bytes per VM byte
    results["lock_heap_peak_bytes"] = round(BOARD_HEAP_BYTES - heap_low * board_bytes)
    results["lock_handshakes"] = int(status["handshakes"])
    results["load_1min_end"] = round(os.getloadavg()[0], 2)
    return results


def run(*, unlocks: int = UNLOCKS, respond_rounds: int = RESPOND_ROUNDS) -> Metrics:
    with tempfile.TemporaryDirectory(prefix="kommune-bench-unlock-") as tmp:
        return asyncio.run(_measure(Path(tmp), unlocks, respond_rounds))


def _at_most(key: str, bound: float) -> Callable[[Metrics], bool]:
    return lambda r: float(r[key]) <= bound


def _interval_metrics(ms: int) -> tuple[Metric, ...]:
    at = f"at {ms} ms"
    judged = ms == 15
    return (
        Metric(
            f"handshake_ms_p50_{ms}ms", f"connected -> verified RESULT, p50, {at}, no motor", "ms"
        ),
        Metric(
            f"handshake_ms_p95_{ms}ms",
            f"connected -> verified RESULT, p95, {at}, no motor",
            "ms",
            "<= 100 ms" if judged else "",
            _at_most(f"handshake_ms_p95_{ms}ms", 100) if judged else None,
        ),
        Metric(f"handshake_bolt_ms_p50_{ms}ms", f"  with the 150 ms bolt travel, p50, {at}", "ms"),
        Metric(f"handshake_bolt_ms_p95_{ms}ms", f"  with the bolt travel, p95, {at}", "ms"),
        Metric(
            f"unlock_total_ms_p50_{ms}ms", f"whole unlock, cached, bolt travel, p50, {at}", "ms"
        ),
        Metric(
            f"unlock_total_ms_p95_{ms}ms",
            f"whole unlock, cached, bolt travel, p95, {at}",
            "ms",
            "<= 500 ms" if judged else "",
            _at_most(f"unlock_total_ms_p95_{ms}ms", 500) if judged else None,
        ),
        Metric(f"unlock_total_nobolt_ms_p95_{ms}ms", f"  cached, no motor, p95, {at}", "ms"),
        Metric(f"unlock_total_uncached_ms_p50_{ms}ms", f"  uncached, no motor, p50, {at}", "ms"),
        Metric(f"unlock_total_uncached_ms_p95_{ms}ms", f"  uncached, no motor, p95, {at}", "ms"),
        Metric(f"scan_ms_p50_{ms}ms", f"  of it: scan for the lock id, p50, {at}", "ms"),
        Metric(f"unlocks_{ms}ms", f"unlocks {at}", ""),
    )


SUITE = Suite(
    name="unlock",
    metrics=(
        Metric(
            "rtt_after_connect",
            "GATT round trips, subscription -> verified RESULT",
            "",
            "<= 2 (1 is better)",
            _at_most("rtt_after_connect", 2),
        ),
        Metric("rtt_setup_cached", "  before it: MTU + cache check", ""),
        Metric("rtt_setup_uncached", "  before it: MTU + discovery", ""),
        *_interval_metrics(15),
        *_interval_metrics(30),
        Metric("lock_respond_us_p50", "lock compute: respond() on the board, p50", "us"),
        Metric("lock_respond_us_p95", "lock compute: respond() on the board, p95", "us"),
        Metric(
            "lock_heap_peak_bytes",
            "lock heap used at its peak (32-bit board estimate)",
            "B",
            "<= 64 KB",
            _at_most("lock_heap_peak_bytes", 64 * 1024),
        ),
        Metric("lock_heap_low_free_vm_bytes", "  lowest free heap seen (VM bytes)", "B"),
        Metric("lock_heap_free_vm_bytes", "  free after a collection, at the end (VM)", "B"),
        Metric("lock_heap_vm_bytes", "  the VM's whole heap", "B"),
        Metric("lock_handshakes", "handshakes the lock counted", ""),
        Metric("load_1min_start", "machine load (1 min) at the start", ""),
        Metric("load_1min_end", "machine load (1 min) at the end", ""),
    ),
    run=run,
    options=("unlocks",),
)
