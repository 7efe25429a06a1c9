"""pytest fixtures for emulated boards, for every test folder (the root conftest.py loads
this module as a plugin). Test support, not part of the installed `kommune` package.

    def test_button(board):                       # a blank esp32 board, booted
        with board_repl(board) as repl:
            repl.exec("import machine; p = machine.Pin(4, machine.Pin.IN)")
        board.pins.drive(4, 1)

    def test_street(make_board):                  # boards made to order
        lamps = [make_board(f"lamp-{i}", files={"main.py": MAIN}) for i in range(3)]

    async def test_lock(air, make_board):         # a board with a radio on the air
        lock = make_board("lock", files=FIRMWARE, radio=await air.add_device("lock"))
        phone = await air.add_device("phone")    # phone.transport: for the bleak backend

Every fixture tears down cleanly: VMs killed and reaped, ptys closed, the
rig's work directory removed -- and `rig` fails the test if a VM survived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Unpack

import pytest

from kommune.hil.harness import Board, Rig
from kommune.hil.radio import Air, running_air
from kommune.hil.supervisor import BoardOptions

from .processes import running

MakeBoard = Callable[..., Board]


@pytest.fixture
def rig() -> Iterator[Rig]:
    """A board supervisor for this test; checks at teardown that no VM outlived it."""
    r = Rig()
    try:
        yield r
    finally:
        pids = r.all_pids()
        workdir = r.supervisor.workdir
        r.close()
        stray = [pid for pid in pids if running(pid)]
        assert not stray, f"VM processes outlived the rig: {stray}"
        assert not workdir.exists(), f"rig work directory left behind: {workdir}"


@pytest.fixture
def make_board(rig: Rig) -> MakeBoard:
    """make_board(name="board", profile="esp32", *, wait=True, **options) -> Board, powered
    on and booted (unless power_on=False or wait=False); options are `BoardOptions`
    (files=, flash_path=, heap_kb=, seed=, power_on=, radio=, clock_ppm=). With
    radio=<a device on the air> the board's `bluetooth.BLE` is live and `board.ble` is
    its bridge."""

    def make(
        name: str = "board",
        profile: str = "esp32",
        *,
        wait: bool = True,
        **options: Unpack[BoardOptions],
    ) -> Board:
        b = rig.add_board(name, profile, **options)
        if options.get("power_on", True) and wait:
            b.wait_booted()
        return b

    return make


@pytest.fixture
async def air() -> AsyncIterator[Air]:
    """The virtual BLE radio (an air process) for this test, on the test's event loop."""
    async with running_air(seed=0) as a:
        yield a


@pytest.fixture
def board(make_board: MakeBoard) -> Board:
    """One blank esp32 board, booted to its REPL."""
    return make_board()


@pytest.fixture
def boards(make_board: MakeBoard) -> Callable[..., list[Board]]:
    """boards(n, profile="esp32", **options) -> n booted boards named board-0 .. board-(n-1)."""

    def make(n: int, profile: str = "esp32", **options: Any) -> list[Board]:
        made = [make_board(f"board-{i}", profile, wait=False, **options) for i in range(n)]
        for b in made:
            b.wait_booted()
        return made

    return make
