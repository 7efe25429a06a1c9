"""Bench `radio`: the virtual BLE air, as the edge's bleak code sees it.

Three processes, as in the rig: the air, the echo peripheral (a board's
stand-in, `python -m kommune.hil.radio.echo`) and this one, running bleak on
the Bumble backend. A round trip is one write-with-response whose value the
peripheral notifies back; the median is what the rig bench reports. With a
connection interval set, a back-to-back round trip costs two intervals: the
request waits for the next connection event, the answer for the one after.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator

from bleak import BleakClient
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bumble import hci

from kommune.bench import report
from kommune.edge.ble import BleakClientBumble, forget_cached_services, hold_host
from kommune.hil.radio import AirError, running_air
from kommune.hil.radio.echo import ECHO_CHAR, ECHO_SERVICE

ROUND_TRIPS = 200
CONNECTS = 5
INTERVAL_MS = 15.0
LOCK_ADDRESS = "F0:4B:00:00:00:01"
LOCK_NAME = "bench-lock"
READY_TIMEOUT_S = 20.0


def measure_gatt_rtt_ms(round_trips: int = ROUND_TRIPS) -> float:
    """Median GATT write-with-response + notify round trip, no added latency, in ms."""
    return asyncio.run(_measure(round_trips, connects=0))["gatt_rtt_ms"]


def run() -> report.Metrics:
    measured = asyncio.run(_measure(ROUND_TRIPS, connects=CONNECTS))
    results: report.Metrics = dict(measured)
    return results


async def _measure(round_trips: int, connects: int) -> dict[str, float]:
    try:
        async with running_air(seed=1) as air:
            lock = await air.add_device("lock", LOCK_ADDRESS)
            edge = await air.add_device("edge")
            # The host stays open throughout, as in the edge agent: connects
            # measure the link, not opening the controller.
            async with _echo_process(lock.transport, lock.address), hold_host(edge.transport):
                bench = _Bench(edge.transport)
                rtts = await bench.round_trips_ms(round_trips)
                results = {
                    "gatt_rtt_ms": statistics.median(rtts),
                    "gatt_rtt_p95_ms": statistics.quantiles(rtts, n=20)[-1],
                }
                if connects:
                    uncached = [await bench.connect_ms(cached=False) for _ in range(connects)]
                    cached = [await bench.connect_ms(cached=True) for _ in range(connects)]
                    results["connect_ms"] = statistics.median(uncached)
                    results["connect_cached_ms"] = statistics.median(cached)
                    await air.set_link("edge", "lock", interval_ms=INTERVAL_MS)
                    slow = await bench.round_trips_ms(max(10, round_trips // 10))
                    results["gatt_rtt_15ms_interval_ms"] = statistics.median(slow)
                return results
    except (AirError, BleakError, TimeoutError, OSError) as e:
        raise report.BenchError(f"virtual air: {str(e).splitlines()[0]}") from e


# The echo peripheral as firmware on an emulated board, written against
# `bluetooth.BLE` as for an ESP32: the IRQ copies the write, a task notifies it back.
ECHO_FIRMWARE = f"""
import asyncio
import bluetooth

ble = bluetooth.BLE()
ble.active(True)
((echo,),) = ble.gatts_register_services(
    ((bluetooth.UUID("{ECHO_SERVICE}"), ((bluetooth.UUID("{ECHO_CHAR}"), 0x0018),)),)
)
ble.gatts_set_buffer(echo, 64)
flag = asyncio.ThreadSafeFlag()
writes = []


def advertise():
    ble.gap_advertise(20_000, b"\\x02\\x01\\x06\\x0b\\x09echo-board")


def irq(event, data):
    if event == 3:  # _IRQ_GATTS_WRITE
        writes.append((data[0], ble.gatts_read(data[1])))
        flag.set()
    elif event == 2:  # _IRQ_CENTRAL_DISCONNECT
        advertise()


async def main():
    ble.irq(irq)
    advertise()
    while True:
        await flag.wait()
        while writes:
            conn, value = writes.pop(0)
            ble.gatts_notify(conn, echo, value)


asyncio.run(main())
"""


def measure_board_gatt_rtt_ms(round_trips: int = ROUND_TRIPS) -> float:
    """The same round trip, answered by firmware on an emulated board (the VM's share too)."""
    return asyncio.run(_measure_board(round_trips))


async def _measure_board(round_trips: int) -> float:
    from kommune.hil.emulated_board import BoardError
    from kommune.hil.harness import Rig

    try:
        async with running_air(seed=2) as air:
            device = await air.add_device("echo-board")
            edge = await air.add_device("edge")
            with Rig() as rig:
                board = await asyncio.to_thread(
                    rig.add_board,
                    "echo-board",
                    files={"main.py": ECHO_FIRMWARE.encode()},
                    radio=device,
                )
                await asyncio.to_thread(board.wait_booted)
                async with hold_host(edge.transport):
                    bench = _Bench(edge.transport, device.address)
                    return statistics.median(await bench.round_trips_ms(round_trips))
    except (AirError, BoardError, BleakError, TimeoutError, OSError) as e:
        raise report.BenchError(f"GATT round trip to a board: {str(e).splitlines()[0]}") from e


class _Bench:
    """The edge side: bleak on the Bumble backend, on the air device `transport`."""

    def __init__(self, transport: str, address: str = LOCK_ADDRESS) -> None:
        self.transport = transport
        public = hci.Address(address, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.target = BLEDevice(address, LOCK_NAME, public)

    def client(self) -> BleakClient:
        return BleakClient(self.target, backend=BleakClientBumble, transport=self.transport)

    async def round_trips_ms(self, count: int) -> list[float]:
        notified: asyncio.Queue[bytes] = asyncio.Queue()
        samples = []
        async with self.client() as client:
            await client.start_notify(ECHO_CHAR, lambda _c, data: notified.put_nowait(bytes(data)))
            for i in range(count):
                value = i.to_bytes(4, "little")
                started = time.perf_counter()
                await client.write_gatt_char(ECHO_CHAR, value, response=True)
                while await notified.get() != value:
                    pass
                samples.append((time.perf_counter() - started) * 1000)
        return samples

    async def connect_ms(self, *, cached: bool) -> float:
        if not cached:
            forget_cached_services(LOCK_ADDRESS)
        started = time.perf_counter()
        async with self.client():
            return (time.perf_counter() - started) * 1000


@contextlib.asynccontextmanager
async def _echo_process(transport: str, address: str) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kommune.hil.radio.echo",
        transport,
        address,
        LOCK_NAME,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            ready = await process.stdout.readline()
        if ready.strip() != b"ready":
            raise report.BenchError("the echo peripheral did not start")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()
        await process.stdout.read()


SUITE = report.Suite(
    name="radio",
    metrics=(
        report.Metric("gatt_rtt_ms", "GATT write+notify round trip, median", "ms", "≈1.5 ms"),
        report.Metric("gatt_rtt_p95_ms", "GATT round trip, 95th percentile", "ms"),
        report.Metric("connect_ms", "connect + MTU + discovery", "ms", "well under 1 s"),
        report.Metric("connect_cached_ms", "connect + MTU + cached services", "ms"),
        report.Metric(
            "gatt_rtt_15ms_interval_ms",
            "round trip at a 15 ms connection interval",
            "ms",
            "≤ 2 intervals: 30 ms",
        ),
    ),
    run=run,
)
