"""`kommune bench`: report paths checked before a run; the rig bench's board count is
measured (poll()-based pings, the limit that stopped it named)."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import pty
import resource
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from kommune.bench import report, rig

KOMMUNE = str(Path(sys.executable).with_name("kommune"))


def _kommune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KOMMUNE, *args], capture_output=True, text=True, timeout=120, check=False
    )


# -- report paths ----------------------------------------------------------------------


def test_report_path_rules(tmp_path: Path) -> None:
    at = dt.datetime(2026, 11, 29, 14, 5, 9)
    assert report.report_path("rig", tmp_path, at) == tmp_path / "rig-20261129-140509.json"
    assert report.report_path("rig", tmp_path / "r.json") == tmp_path / "r.json"
    assert report.report_path("rig", None) == report.default_report_path("rig")
    with pytest.raises(report.BenchError, match=f"directory {tmp_path / 'a' / 'b'} does not"):
        report.report_path("rig", tmp_path / "a" / "b" / "r.json")
    assert not (tmp_path / "a").exists()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(report.BenchError, match="is not a regular file"):
        report.report_path("rig", tmp_path / "fifo")


def test_a_bad_report_path_fails_before_the_run(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "r.json"
    start = time.monotonic()
    proc = _kommune("bench", "rig", "--report", str(missing))  # the rig bench runs a minute
    assert time.monotonic() - start < 10.0
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kommune bench: error: --report: directory {missing.parent} does not exist\n"
    )
    assert not (tmp_path / "no").exists()


def test_a_report_directory_gets_a_dated_file(tmp_path: Path) -> None:
    proc = _kommune("bench", "protocols", "--report", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (written,) = tmp_path.iterdir()
    assert written.name.startswith("protocols-") and written.suffix == ".json"
    assert proc.stdout.rstrip().endswith(f"report: {written}")
    assert json.loads(written.read_text())["suite"] == "protocols"


def test_max_boards_is_the_rig_benchs_option() -> None:
    proc = _kommune("bench", "protocols", "--max-boards", "5")
    assert (proc.returncode, proc.stderr) == (
        2,
        "kommune bench: error: --max-boards is for the rig suite, not protocols\n",
    )
    assert "--max-boards N" in _kommune("bench", "--help").stdout


# -- pings and limits, against fake boards (ptys answered by a thread) ------------------


class FakeBoard:
    """A node link that answers "p" with a "pong" line, as IDLE_NODE does (or not)."""

    def __init__(self, answers: bool = True) -> None:
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self.link = os.ttyname(slave)
        self._slave = slave
        self.answers = answers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import select

        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            try:
                data = os.read(self.master, 64)
            except OSError:
                return
            if self.answers and data:
                os.write(self.master, b"pong 1\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def fakes() -> Iterator[list[FakeBoard]]:
    made: list[FakeBoard] = []
    yield made
    for board in made:
        board.close()


def test_ping_works_with_fds_above_1024(fakes: list[FakeBoard]) -> None:
    fakes += [FakeBoard() for _ in range(3)] + [FakeBoard(answers=False)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"the fd limit ({hard}) keeps fds below select()'s 1024")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # select() ends at 1023
    try:
        assert rig.ping([b.link for b in fakes], timeout_s=1.0) == [fakes[3].link]
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _capacity(
    fakes: list[FakeBoard], *, bound: int, fail: BaseException | None = None, silent: bool = False
) -> rig.Capacity:
    boards: list[rig.Board] = []

    def add(count: int) -> list[rig.Board]:
        if fail is not None and len(boards) >= 4:
            raise fail
        fresh = [FakeBoard(answers=not (silent and len(boards) >= 4)) for _ in range(count)]
        fakes.extend(fresh)
        return fresh  # type: ignore[return-value]  # a Board as far as capacity goes

    boards.extend(add(4))
    costs = rig.Costs(fds=2, ram_kb=1024)
    return rig.measure_capacity(
        boards, bound=bound, costs=costs, deadline=time.monotonic() + 60, add=add
    )


def test_capacity_names_the_limit_that_stopped_it(fakes: list[FakeBoard]) -> None:
    assert _capacity(fakes, bound=6) == rig.Capacity(6, "bound: max_boards 6")
    ptys = _capacity(fakes, bound=50, fail=OSError(errno.ENOSPC, "No space left on device"))
    assert ptys.held == 4
    assert ptys.limit.startswith("ptys: ")
    assert ptys.limit.endswith("(hit: [Errno 28] No space left on device)")
    fds = _capacity(fakes, bound=50, fail=OSError(errno.EMFILE, "Too many open files"))
    assert (fds.held, fds.limit.split(":")[0]) == (4, "fds")
    unresponsive = _capacity(fakes, bound=50, silent=True)
    assert unresponsive.held == 4
    assert unresponsive.limit.startswith("unresponsive: ")
    late = rig.measure_capacity([], bound=50, costs=rig.Costs(2, 1024), deadline=0.0, add=list)
    assert late == rig.Capacity(0, "time: the 150 s budget")


# -- the real thing --------------------------------------------------------------------

MEASURE = """
import json, resource, sys
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
from kommune.bench import rig
print(json.dumps(rig.measure_boards(max_boards=int(sys.argv[1]))))
"""


def _measure(max_boards: int, fd_limit: int = 0) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(max_boards), str(fd_limit)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    measured: dict[str, object] = json.loads(proc.stdout)
    return measured


@pytest.mark.micropython
def test_the_rig_bench_holds_its_bound_and_names_a_machine_limit() -> None:
    held = _measure(25)
    assert (held["max_boards"], held["max_boards_limit"]) == (25, "bound: max_boards 25")
    # A process allowed 700 fds: the boards stop there, not at the bound of 500.
    tight = _measure(500, fd_limit=700)
    assert str(tight["max_boards_limit"]).startswith("fds: 700 per process (RLIMIT_NOFILE)")
    assert 20 <= int(str(tight["max_boards"])) < 500
