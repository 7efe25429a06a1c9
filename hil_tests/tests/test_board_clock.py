"""Clock drift: a board's crystal runs fast or slow, and everything on it follows.

Exaggerated rates (±10 %) keep a two-second test clear of scheduling noise;
real crystals are tens of ppm, which is what the time sync of the edge and
the lock's validity windows have to absorb.
"""

from __future__ import annotations

import time

import pytest

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec

pytestmark = pytest.mark.micropython

READ = "import time; print(time.ticks_ms(), time.time())"
HOST_WAIT_S = 2.0


def _board_clock(board_exec: str) -> tuple[int, int]:
    ticks, wall = board_exec.split()
    return int(ticks), int(wall)


@pytest.mark.parametrize("ppm", [100_000, -100_000, 0])
def test_ticks_and_wall_clock_follow_the_boards_crystal(make_board: MakeBoard, ppm: int) -> None:
    board = make_board(f"clock{ppm}", clock_ppm=ppm)
    t0, w0 = _board_clock(repl_exec(board, READ))
    host0 = time.monotonic()
    time.sleep(HOST_WAIT_S)
    t1, w1 = _board_clock(repl_exec(board, READ))
    host_s = time.monotonic() - host0
    rate = (t1 - t0) / 1000 / host_s
    assert rate == pytest.approx(1 + ppm / 1e6, abs=0.03)
    # The wall clock (whole seconds) moves with the ticks.
    assert abs((w1 - w0) - (t1 - t0) / 1000) <= 1


def test_a_sleep_lasts_the_boards_time_not_the_hosts(make_board: MakeBoard) -> None:
    board = make_board("fast", clock_ppm=250_000)  # 25 % fast
    started = time.monotonic()
    out = repl_exec(
        board,
        "import time; t = time.ticks_ms(); time.sleep_ms(2000); "
        "print(time.ticks_diff(time.ticks_ms(), t))",
    )
    host_s = time.monotonic() - started
    assert 2000 <= int(out) < 2100  # the board slept its two seconds...
    assert host_s < 1.9  # ...which pass sooner in real time


def test_the_rtc_keeps_its_drift_across_a_reset(make_board: MakeBoard) -> None:
    board = make_board("rtc", clock_ppm=500_000)  # 50 % fast, to beat whole-second readings
    set_at = 1_795_867_200  # 2026-11-28 12:00:00 UTC
    repl_exec(board, "import machine; machine.RTC().datetime((2026, 11, 28, 5, 12, 0, 0, 0))")
    host0 = time.monotonic()
    time.sleep(4.0)
    boots = board.boots
    board.reset()  # the RTC lives on in the rig; a fresh VM reads it at boot
    board.wait_booted(after=boots)
    _, wall = _board_clock(repl_exec(board, READ))
    host_s = time.monotonic() - host0
    # Whole seconds, truncated at the set and at the boot: within 2 s of 1.5x real time.
    assert 1.5 * host_s - 2 <= wall - set_at <= 1.5 * host_s + 1
