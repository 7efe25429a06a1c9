"""Resets and their causes, as machine.reset_cause() reports them on an ESP32."""

from __future__ import annotations

import time

import pytest

from hil_tests.testing.fixtures import MakeBoard
from hil_tests.testing.repl import repl_exec, repl_start
from kommune.hil.harness import Board

pytestmark = pytest.mark.micropython

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5

CAUSE = "import machine; print(machine.reset_cause())"


def cause(board: Board) -> int:
    return int(repl_exec(board, CAUSE))


def wait_for_boot(board: Board, boots: int, timeout_s: float = 10.0) -> None:
    board.wait_booted(after=boots, timeout_s=timeout_s)


def test_a_starved_watchdog_resets_the_board(make_board: MakeBoard) -> None:
    # The firmware feeds the watchdog five times, then hangs.
    main = b"""
import machine, time
wdt = machine.WDT(timeout=300)
for _ in range(5):
    time.sleep_ms(100)
    wdt.feed()
print("hung")
while True:
    time.sleep_ms(50)
"""
    board = make_board(files={"main.py": main})
    assert cause(board) == PWRON_RESET  # checked before the watchdog bites (Ctrl-C stops main.py)
    boots = board.boots
    board.reset()  # start over: main.py runs from the top
    wait_for_boot(board, boots)
    boots = board.boots
    started = time.monotonic()
    wait_for_boot(board, boots, timeout_s=10)
    waited = time.monotonic() - started
    assert board.reset_kinds[-1] == "watchdog"
    assert waited >= 0.5 + 0.3 - 0.1  # five feeds 100 ms apart, then the 300 ms timeout
    assert "hung" in board.console_output()
    assert cause(board) == WDT_RESET


def test_a_fed_watchdog_keeps_quiet(make_board: MakeBoard) -> None:
    main = b"""
import machine, time
wdt = machine.WDT(timeout=600)
while True:
    time.sleep_ms(20)
    wdt.feed()
"""
    board = make_board(files={"main.py": main})
    time.sleep(1.5)
    assert board.reset_kinds == ["power_on"]
    assert board.call(lambda: board.emulated.hw.watchdog.feeds) > 20


def test_reset_button_brownout_and_power_cut(board: Board) -> None:
    for action, kind, want in [
        (board.reset, "reset_pin", HARD_RESET),
        (board.brownout, "brownout", PWRON_RESET),
        (board.power_cut, "power_on", PWRON_RESET),
    ]:
        boots = board.boots
        action()
        wait_for_boot(board, boots)
        assert board.reset_kinds[-1] == kind
        assert cause(board) == want


def test_machine_reset_and_soft_reset(board: Board) -> None:
    boots = board.boots
    repl_start(board, "import machine\nmachine.reset()")
    wait_for_boot(board, boots)
    assert board.reset_kinds[-1] == "software"
    assert cause(board) == SOFT_RESET  # the ESP32 reports a software reset so

    # A soft reboot does not reset the chip: the cause stays.
    boots = board.boots
    board.reset()
    wait_for_boot(board, boots)
    boots = board.boots
    repl_start(board, "import machine\nmachine.soft_reset()")
    wait_for_boot(board, boots)
    assert board.reset_kinds[-1] == "soft"
    assert cause(board) == HARD_RESET


def test_deepsleep_keeps_rtc_memory_and_wakes_by_timer(board: Board) -> None:
    boots = board.boots
    repl_start(board, "import machine\nmachine.RTC().memory(b'sleep #1')\nmachine.deepsleep(300)")
    board.wait_state("sleeping", timeout_s=5)
    slept = time.monotonic()
    wait_for_boot(board, boots)
    assert time.monotonic() - slept >= 0.15  # 300 ms asked; we saw the sleep begin a bit late
    out = repl_exec(
        board,
        "import machine\n"
        "print(machine.reset_cause(), machine.wake_reason(), machine.RTC().memory())",
    )
    assert out.split() == [str(DEEPSLEEP_RESET), "4", "b'sleep", "#1'"]  # TIMER_WAKE

    # A power cut loses the RTC memory and the clock.
    boots = board.boots
    board.power_cut()
    wait_for_boot(board, boots)
    assert (
        repl_exec(board, "import machine, time\nprint(machine.RTC().memory(), time.gmtime()[0])")
        == "b'' 2000\n"
    )


def test_deepsleep_until_a_wake_pin(board: Board) -> None:
    boots = board.boots
    repl_start(board, "import machine\nmachine.deepsleep()")
    board.wait_state("sleeping", timeout_s=5)
    time.sleep(0.3)
    assert board.state == "sleeping"  # no timer: it sleeps until woken
    board.wake()
    wait_for_boot(board, boots)
    assert repl_exec(board, "import machine\nprint(machine.wake_reason())") == "2\n"  # EXT0_WAKE
