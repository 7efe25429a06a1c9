"""`kommune bench unlock`: one small run gives every figure, with sane relations between
them, and leaves nothing behind (the lock's VM, the air, temporary directories), also
when interrupted. Tiny sizes: the goals are the bench's to measure, never asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hil_tests.testing.processes import cmdline, descendants, running
from kommune.bench import report, unlock

KOMMUNE = str(Path(sys.executable).with_name("kommune"))

INTERVALS = ("15ms", "30ms")
TIMES = (
    "handshake",
    "handshake_bolt",
    "unlock_total",
    "unlock_total_nobolt",
    "unlock_total_uncached",
    "scan",
)


class Watch:
    """Every process the bench starts (polled while it runs), to check none is left."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.seen: dict[int, str] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set() and self.process.poll() is None:
            for pid in descendants(self.process.pid):
                self.seen.setdefault(pid, cmdline(pid))
            time.sleep(0.05)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5.0)

    def left(self) -> list[str]:
        deadline = time.monotonic() + 5.0  # children killed with the bench may take a moment
        while True:
            alive = [f"{pid}: {cmd}" for pid, cmd in self.seen.items() if running(pid)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], Watch, Path]:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    bench = subprocess.Popen(
        [KOMMUNE, "bench", "unlock", *args, "--report", str(tmp_path / "unlock.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    return bench, Watch(bench), tmp


@pytest.mark.micropython
def test_one_small_run_gives_every_figure_and_leaves_nothing_behind(tmp_path: Path) -> None:
    bench, watch, tmp = _start(tmp_path, "--json", "--unlocks", "5")
    try:
        out, err = bench.communicate(timeout=240)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        watch.stop()
    assert bench.returncode == 0, err
    results = json.loads(out)
    for interval in INTERVALS:
        assert results[f"unlocks_{interval}"] == 5 + 5 + 2  # bolt, no motor, every 4th uncached
        for name in TIMES:
            p50 = results[f"{name}_ms_p50_{interval}"]
            p95 = results[f"{name}_ms_p95_{interval}"]
            assert isinstance(p50, float | int) and isinstance(p95, float | int), name
            assert 0 < p50 <= p95, (name, interval, p50, p95)
        # No motor wait in these; the bolt's 150 ms travel in the others.
        assert (
            results[f"handshake_ms_p50_{interval}"] < results[f"handshake_bolt_ms_p50_{interval}"]
        )
        cached = results[f"unlock_total_nobolt_ms_p50_{interval}"]
        assert results[f"unlock_total_uncached_ms_p50_{interval}"] >= cached
        assert results[f"unlock_total_ms_p50_{interval}"] > results[f"handshake_ms_p50_{interval}"]
    # A slower link is slower.
    assert results["handshake_ms_p50_30ms"] > results["handshake_ms_p50_15ms"]
    for key in ("rtt_after_connect", "rtt_setup_cached", "rtt_setup_uncached"):
        assert isinstance(results[key], int) and results[key] >= 1, key
    assert results["rtt_setup_uncached"] > results["rtt_setup_cached"]
    assert 0 < results["lock_respond_us_p50"] <= results["lock_respond_us_p95"]
    assert results["respond_rounds"] == unlock.RESPOND_ROUNDS
    heap = results["lock_heap_vm_bytes"]
    assert 0 < results["lock_heap_low_free_vm_bytes"] <= results["lock_heap_free_vm_bytes"] < heap
    assert isinstance(results["lock_heap_peak_bytes"], int)
    assert 0 < results["lock_heap_peak_bytes"] <= 64 * 1024
    # The clock set, every unlock of both intervals and the ones that set the stage.
    assert results["lock_handshakes"] >= 1 + 2 * (12 + 2)
    written = json.loads((tmp_path / "unlock.json").read_text())
    assert (written["suite"], written["results"]) == ("unlock", results)
    assert any("vmlaunch" in cmd for cmd in watch.seen.values()), watch.seen
    assert any("kommune.hil.radio.air" in cmd for cmd in watch.seen.values()), watch.seen
    assert watch.left() == []
    assert list(tmp.iterdir()) == []


@pytest.mark.micropython
def test_ctrl_c_stops_the_lock_and_the_air_and_removes_temporary_directories(
    tmp_path: Path,
) -> None:
    bench, watch, tmp = _start(tmp_path, "--unlocks", "500")
    try:
        deadline = time.monotonic() + 60
        while not any("vmlaunch" in cmd for cmd in watch.seen.values()):
            assert bench.poll() is None, bench.communicate()
            assert time.monotonic() < deadline, "the bench started no board"
            time.sleep(0.05)
        time.sleep(3.0)  # into the unlocks
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        watch.stop()
    assert bench.returncode == 130, err
    assert err.strip().endswith("kommune bench: interrupted")
    assert watch.left() == []
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "unlock.json").exists()


def test_round_trips_are_turns_from_the_phone_to_the_lock() -> None:
    # LOCK.md, Round trips: the ask rides behind the CCCD write: 2 after connect.
    pipelined = [
        ("out", 0x02),  # MTU request
        ("in", 0x03),
        ("out", 0x12),  # CCCD write
        ("out", 0x52),  # CHALLENGE_REQUEST, write command
        ("in", 0x13),
        ("in", 0x1B),  # CHALLENGE
        ("out", 0x12),  # REQUEST
        ("in", 0x13),
        ("in", 0x1B),  # RESULT
        ("in", 0x1B),  # the next CHALLENGE
    ]
    assert unlock.round_trips(pipelined) == (1, 2)
    # The ask written after the subscription's response: 3.
    serial = [*pipelined[:3], ("in", 0x13), ("out", 0x52), ("in", 0x1B), *pipelined[6:]]
    assert unlock.round_trips(serial) == (1, 3)
    assert unlock.turns([]) == 0


def test_unlocks_is_the_unlock_benchs_option() -> None:
    proc = subprocess.run(
        [KOMMUNE, "bench", "protocols", "--unlocks", "5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (
        2,
        "kommune bench: error: --unlocks is for the unlock suite, not protocols\n",
    )


def test_the_table_says_pass_or_miss_beside_each_goal() -> None:
    results: report.Metrics = dict.fromkeys((m.key for m in unlock.SUITE.metrics), 1)
    results |= {"rtt_after_connect": 3, "handshake_ms_p95_15ms": 80.0}
    table = report.render(unlock.SUITE, results)
    lines = {line.split("  ")[0]: line for line in table.splitlines()[2:]}
    assert lines["GATT round trips, subscription -> verified RESULT"].endswith("MISS")
    assert lines["connected -> verified RESULT, p95, at 15 ms, no motor"].endswith("pass")
