"""`kommune bench rig`: what an emulated board costs, and how many one machine holds.

* boot_ms: power on -> the REPL prompt on the console pty (a client reading it), median.
* rss_mb_per_board: RAM per idle board: the VM processes' proportional set
  size (shared pages divided among the processes that map them) plus the
  supervisor's, divided by the boards. Plain RSS of one VM is reported too.
* max_boards: boards started in steps, each running firmware that idles in
  asyncio with a timer and a UART reader; after each step every board must
  answer a ping on its node link. The largest count that did, and
  max_boards_limit: what stopped it -- the bound (`max_boards`, --max-boards),
  the time budget, or the machine: ptys (3 per board, /proc/sys/kernel/pty/max,
  some left for others), file descriptors, RAM, processes, a board that did not
  boot, or boards that stopped answering. Machine limits are checked before each
  step (a step is cut to what fits) and recognised when a board cannot be made
  ("(hit: ...)"). Measured on a 2-core, 24 GiB machine: ~1,340 boards in about a
  minute, stopped by its 4,096 ptys.
* gatt_rtt_ms: GATT write-with-response + notify round trip over the virtual
  air, no added latency (kommune.bench.radio, against a Bumble echo peripheral);
  gatt_rtt_board_ms: the same answered by firmware on an emulated board.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import statistics
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import serial

from kommune.bench import radio
from kommune.bench.report import BenchError, Metric, Metrics, Suite

if TYPE_CHECKING:
    from kommune.hil.harness import Board, Rig

BOOTS = 15
MEMORY_BOARDS = 20
STEP = 20
MAX_BOARDS = 120  # the default bound: what CI needs to see (>= 100), in about a minute
PING_TIMEOUT_S = 5.0
PING_RETRY_S = 0.2  # bytes sent before the firmware opened its UART are lost: send again
PING_BATCH = 256  # links open at once while pinging
TIME_BUDGET_S = 150.0
PTYS_PER_BOARD = 3  # console, node link, the VM's own terminal
PTY_RESERVE = 64  # left for the rest of the machine (terminals, other tests)
RAM_RESERVE_FRACTION = 0.05  # of the machine's RAM, left free

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


def ping(links: list[str], timeout_s: float = PING_TIMEOUT_S) -> list[str]:
    """Ping every node link ("p" -> a "pong" line); the links that did not answer.

    poll(), not select(): with hundreds of boards the fds are far above 1024."""
    silent: list[str] = []
    for start in range(0, len(links), PING_BATCH):
        silent += _ping_batch(links[start : start + PING_BATCH], timeout_s)
    return silent


def _ping_batch(links: list[str], timeout_s: float) -> list[str]:
    fds: dict[int, str] = {}
    try:
        for link in links:
            fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
            fds[fd] = link
            tty.setraw(fd)
        waiting = dict.fromkeys(fds, b"")
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        resend = 0.0
        while waiting and (now := time.monotonic()) < deadline:
            if now >= resend:
                for fd in waiting:
                    try:
                        os.write(fd, b"p")
                    except BlockingIOError:
                        pass
                resend = now + PING_RETRY_S
            wait_ms = max(1, int((min(resend, deadline) - now) * 1000))
            for fd, _ in poller.poll(wait_ms):
                if fd not in waiting:
                    continue
                try:
                    waiting[fd] += os.read(fd, 256)
                except BlockingIOError:
                    continue
                if any(line.startswith(b"pong") for line in waiting[fd].split(b"\n")[:-1]):
                    del waiting[fd]
                    poller.unregister(fd)
        return [fds[fd] for fd in waiting]
    finally:
        for fd in fds:
            os.close(fd)


def measure_boot_ms(rig: Rig) -> float:
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


# -- how many boards fit ------------------------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _ram_free_kb() -> int:
    """RAM still free for boards: MemAvailable, or less under a cgroup limit."""
    free = _meminfo_kb("MemAvailable")
    limit = _read_int("/sys/fs/cgroup/memory.max")
    used = _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free = min(free, (limit - used) // 1024)
    return free


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Costs:
    """What one more idle board takes, measured on the first boards."""

    fds: float
    ram_kb: float


@dataclass(frozen=True)
class Headroom:
    """How many more boards each machine limit allows now (None: no such limit)."""

    ptys: int | None
    fds: int
    ram: int
    processes: int | None

    @classmethod
    def now(cls, costs: Costs) -> Headroom:
        pty_max = _read_int("/proc/sys/kernel/pty/max")
        pty_nr = _read_int("/proc/sys/kernel/pty/nr")
        ptys = None
        if pty_max is not None and pty_nr is not None:
            ptys = (pty_max - pty_nr - PTY_RESERVE) // PTYS_PER_BOARD
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = int((soft - _open_fds() - PING_BATCH - 32) // max(costs.fds, 1.0))
        reserve = _meminfo_kb("MemTotal") * RAM_RESERVE_FRACTION
        ram = int((_ram_free_kb() - reserve) // max(costs.ram_kb, 1.0))
        pids_max = _read_int("/sys/fs/cgroup/pids.max")
        pids_now = _read_int("/sys/fs/cgroup/pids.current")
        processes = None if pids_max is None or pids_now is None else pids_max - pids_now - 16
        return cls(ptys, fds, ram, processes)

    def tightest(self) -> tuple[int, str]:
        limits = {
            "ptys": self.ptys,
            "fds": self.fds,
            "ram": self.ram,
            "processes": self.processes,
        }
        name, room = min(((k, v) for k, v in limits.items() if v is not None), key=lambda x: x[1])
        return max(room, 0), name


def _limit_text(name: str, costs: Costs) -> str:
    if name == "ptys":
        return (
            f"ptys: {_read_int('/proc/sys/kernel/pty/max')} in all (/proc/sys/kernel/pty/max),"
            f" {PTYS_PER_BOARD} per board, {PTY_RESERVE} left for the rest of the machine"
        )
    if name == "fds":
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"fds: {soft} per process (RLIMIT_NOFILE), ~{costs.fds:.0f} per board"
    if name == "ram":
        return f"ram: {_ram_free_kb() // 1024} MB free, ~{costs.ram_kb / 1024:.1f} MB per board"
    return f"processes: cgroup pids.max {_read_int('/sys/fs/cgroup/pids.max')}"


def _failure_limit(e: BaseException, costs: Costs) -> str:
    """The machine limit an exception from making a board means, and the exception."""
    return f"{_failure_kind(e, costs)} (hit: {str(e).splitlines()[0] if str(e) else repr(e)})"


def _failure_kind(e: BaseException, costs: Costs) -> str:
    if isinstance(e, MemoryError):
        return _limit_text("ram", costs)
    if isinstance(e, OSError):
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return _limit_text("fds", costs)
        if e.errno in (errno.ENOSPC, errno.ENXIO) or "pty" in str(e).lower():
            return _limit_text("ptys", costs)
        if e.errno == errno.EAGAIN:
            return "processes: fork() failed"
        if e.errno == errno.ENOMEM:
            return _limit_text("ram", costs)
    return f"error: {type(e).__name__}"


@dataclass
class Capacity:
    held: int
    limit: str


def measure_capacity(
    boards: list[Board],
    *,
    bound: int,
    costs: Costs,
    deadline: float,
    add: Callable[[int], list[Board]],
) -> Capacity:
    """Add boards in steps until a limit; `boards` are up and answering already."""
    last_step_s = 0.0
    while True:
        held = len(boards)
        if held >= bound:
            return Capacity(held, f"bound: max_boards {bound}")
        if time.monotonic() + last_step_s * 1.2 > deadline:
            return Capacity(held, f"time: the {TIME_BUDGET_S:.0f} s budget")
        room, tightest = Headroom.now(costs).tightest()
        step = min(STEP, bound - held, room)
        if step <= 0:
            return Capacity(held, _limit_text(tightest, costs))
        started = time.monotonic()
        try:
            fresh = add(step)
        except Exception as e:  # a machine limit met while making a board
            return Capacity(held, _failure_limit(e, costs))
        boards.extend(fresh)
        silent = ping([b.link for b in boards])
        if silent:
            return Capacity(
                held,
                f"unresponsive: {len(silent)} of {len(boards)} boards did not answer"
                f" within {PING_TIMEOUT_S:.0f} s",
            )
        last_step_s = time.monotonic() - started


def run(*, max_boards: int = MAX_BOARDS, time_budget_s: float = TIME_BUDGET_S) -> Metrics:
    results = measure_boards(max_boards=max_boards, time_budget_s=time_budget_s)
    results["gatt_rtt_ms"] = round(radio.measure_gatt_rtt_ms(), 2)
    results["gatt_rtt_board_ms"] = round(radio.measure_board_gatt_rtt_ms(), 2)
    return results


def measure_boards(
    *, max_boards: int = MAX_BOARDS, time_budget_s: float = TIME_BUDGET_S
) -> Metrics:
    """Boot time, RAM per board, and how many boards this machine holds (no radio)."""
    from kommune.hil.emulated_board import BoardError
    from kommune.hil.harness import Rig

    started = time.monotonic()
    results: Metrics = {}
    with Rig() as rig:
        results["boot_ms"] = round(measure_boot_ms(rig), 1)

        boards: list[Board] = []

        def add(count: int) -> list[Board]:
            fresh: list[Board] = []
            try:
                for i in range(count):
                    name = f"node-{len(boards) + i}"
                    fresh.append(rig.add_board(name, files={"main.py": IDLE_NODE}))
                for b in fresh:
                    b.wait_booted(timeout_s=60.0)
            except BoardError as e:
                raise BenchError(f"a board did not boot: {str(e).splitlines()[0]}") from e
            return fresh

        fds_before = _open_fds()
        first = min(MEMORY_BOARDS, max_boards)
        boards.extend(add(first))
        if ping([b.link for b in boards]):
            raise BenchError("idle boards did not answer on their links")
        time.sleep(1.0)  # let them settle into idle
        pids = [pid for b in boards if (pid := b.pid) is not None]
        total_kb = sum(_pss_kb(pid) for pid in pids) + _pss_kb(os.getpid())
        results["rss_mb_per_board"] = round(total_kb / len(boards) / 1024, 2)
        results["vm_rss_mb"] = round(statistics.median(_rss_kb(p) for p in pids) / 1024, 2)
        costs = Costs(fds=(_open_fds() - fds_before) / len(boards), ram_kb=total_kb / len(boards))

        capacity = measure_capacity(
            boards,
            bound=max_boards,
            costs=costs,
            deadline=started + time_budget_s,
            add=add,
        )
        results["max_boards"] = capacity.held
        results["max_boards_bound"] = max_boards
        results["max_boards_limit"] = capacity.limit
        results["fds_per_board"] = round(costs.fds, 1)
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
        Metric("max_boards_limit", "what stopped adding boards", ""),
        Metric("fds_per_board", "file descriptors per board in the supervisor", ""),
        Metric("gatt_rtt_ms", "GATT write + notify round trip (median)", "ms"),
        Metric("gatt_rtt_board_ms", "the same, answered by firmware on a board", "ms"),
    ),
    run=run,
    options=("max_boards",),
)
