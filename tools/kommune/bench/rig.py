"""`kommune bench rig`: what an emulated board costs, and how many one machine holds.

* boot_ms: power on -> the REPL prompt on the console pty (a client reading it), median.
* rss_mb_per_board: RAM per idle board: the VM processes' proportional set
  size (shared pages divided among the processes that map them) plus the
  supervisor's, divided by the boards. Plain RSS of one VM is reported too.
* max_boards: boards started in steps, each running firmware that idles in
  asyncio with a timer and a UART reader; after each step every board must
  answer a ping on its node link. The largest count that did, up to a bound.
* gatt_rtt_ms: GATT write-with-response + notify round trip over the virtual
  air, no added latency (kommune.bench.radio, against a Bumble echo peripheral);
  gatt_rtt_board_ms: the same answered by firmware on an emulated board.
"""

from __future__ import annotations

import os
import statistics
import time

import serial

from kommune.bench import radio
from kommune.bench.report import BenchError, Metric, Metrics, Suite

BOOTS = 15
MEMORY_BOARDS = 20
STEP = 20
MAX_BOARDS = 120
PING_TIMEOUT_S = 5.0
TIME_BUDGET_S = 150.0

IDLE_NODE = b"""
import asyncio, machine
uart = machine.UART(2, 115200)
ticks = 0
async def timer():
    global ticks
    while True:
        ticks += 1
        await asyncio.sleep_ms(1000)
async def reader():
    r = asyncio.StreamReader(uart)
    w = asyncio.StreamWriter(uart, {})
    while True:
        await r.read(64)
        w.write(b"pong %d\\n" % ticks)
        await w.drain()
async def main():
    asyncio.create_task(timer())
    await reader()
asyncio.run(main())
"""


def _pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss for pid {pid}")


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def _read_until(port: serial.Serial, ending: bytes, timeout_s: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(ending) and time.monotonic() < deadline:
        data += port.read(max(1, port.in_waiting))
    return data


def _ping(link: str) -> bool:
    """The firmware answers on its node link (bytes before its UART opens are lost: retry)."""
    with serial.Serial(link, 115200, timeout=0.2) as port:
        deadline = time.monotonic() + PING_TIMEOUT_S
        while time.monotonic() < deadline:
            port.write(b"p")
            if port.readline().startswith(b"pong"):
                return True
    return False


def measure_boot_ms(rig: object) -> float:
    from kommune.hil.harness import Rig

    assert isinstance(rig, Rig)
    board = rig.add_board("boot")
    board.wait_booted()
    times = []
    with serial.Serial(board.console, 115200, timeout=0.05) as console:
        for _ in range(BOOTS):
            board.power_cut(off_s=None)
            board.wait_state("off")
            console.reset_input_buffer()
            start = time.perf_counter()
            board.power_on()
            seen = _read_until(console, b">>> ", 10.0)
            if not seen.endswith(b">>> "):
                raise BenchError(f"no REPL prompt after power-on: {seen[-200:]!r}")
            times.append((time.perf_counter() - start) * 1000)
    rig.run(rig.supervisor.remove_board("boot"))
    return statistics.median(times)


def run() -> Metrics:
    from kommune.hil.harness import Board, Rig

    started = time.monotonic()
    results: Metrics = {}
    with Rig() as rig:
        results["boot_ms"] = round(measure_boot_ms(rig), 1)

        boards: list[Board] = []

        def add(count: int) -> None:
            fresh = [
                rig.add_board(f"node-{len(boards) + i}", files={"main.py": IDLE_NODE})
                for i in range(count)
            ]
            for b in fresh:
                b.wait_booted(timeout_s=60.0)
            boards.extend(fresh)

        add(MEMORY_BOARDS)
        if not all(_ping(b.link) for b in boards):
            raise BenchError("idle boards did not answer on their links")
        time.sleep(1.0)  # let them settle into idle
        pids = [pid for b in boards if (pid := b.pid) is not None]
        total_kb = sum(_pss_kb(pid) for pid in pids) + _pss_kb(os.getpid())
        results["rss_mb_per_board"] = round(total_kb / len(boards) / 1024, 2)
        results["vm_rss_mb"] = round(statistics.median(_rss_kb(p) for p in pids) / 1024, 2)

        held = len(boards)
        while held < MAX_BOARDS and time.monotonic() - started < TIME_BUDGET_S:
            add(min(STEP, MAX_BOARDS - held))
            if not all(_ping(b.link) for b in boards):
                break
            held = len(boards)
        results["max_boards"] = held
        results["max_boards_bound"] = MAX_BOARDS

    results["gatt_rtt_ms"] = round(radio.measure_gatt_rtt_ms(), 2)
    results["gatt_rtt_board_ms"] = round(radio.measure_board_gatt_rtt_ms(), 2)
    return results


SUITE = Suite(
    name="rig",
    metrics=(
        Metric("boot_ms", "board boot to REPL prompt (median)", "ms", "<= 300"),
        Metric(
            "rss_mb_per_board", "RAM per idle board (PSS, supervisor share incl.)", "MB", "<= 15"
        ),
        Metric("vm_rss_mb", "RSS of one idle VM process", "MB"),
        Metric("max_boards", "idle boards one machine holds, all responsive", "boards", ">= 100"),
        Metric("gatt_rtt_ms", "GATT write + notify round trip (median)", "ms"),
        Metric("gatt_rtt_board_ms", "the same, answered by firmware on a board", "ms"),
    ),
    run=run,
)
