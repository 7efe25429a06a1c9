"""A board that cannot boot says why at once (the host's checks, or the VM's BOOT_FAILED
frame), never formats what may be someone's data, and keeps its image to itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil import emulated_board, flash, profiles
from kommune.hil.emulated_board import BoardError
from kommune.hil.harness import Board, Rig

pytestmark = pytest.mark.micropython

#: "Within a second or two": the boot timeout these replace was 30 s.
PROMPT_S = 2.0


def _boot_failure(board: Board) -> tuple[str, float]:
    """The first line of the boot failure, and how long it took to be known."""
    start = time.monotonic()
    with pytest.raises(BoardError) as failed:
        board.wait_booted(timeout_s=20.0)
    return str(failed.value).splitlines()[0], time.monotonic() - start


def test_a_foreign_flash_image_is_not_formatted(make_board: MakeBoard, tmp_path: Path) -> None:
    image = tmp_path / "someone.img"
    original = os.urandom(profiles.load("esp32").flash.size)
    image.write_bytes(original)
    board = make_board(flash_path=image, wait=False)
    line, took = _boot_failure(board)
    assert line == (
        "board board failed to boot: "
        "OSError: the flash holds no littlefs filesystem and is not blank"
    )
    assert took < PROMPT_S
    assert board.state == "failed"
    assert image.read_bytes() == original


def test_the_vm_reports_a_heap_too_small_to_boot(
    make_board: MakeBoard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(emulated_board, "MIN_HEAP_KB", 1)  # let the VM find out itself
    board = make_board(heap_kb=24, wait=False)
    line, took = _boot_failure(board)
    assert line.startswith("board board failed to boot: MemoryError: memory allocation failed")
    assert took < PROMPT_S


def test_the_host_checks_what_it_can_before_each_boot(make_board: MakeBoard) -> None:
    small = make_board("small", heap_kb=20, wait=False)
    line, took = _boot_failure(small)
    assert line == "board small failed to boot: a heap of 20 KB is too small to boot (at least 40)"
    assert took < PROMPT_S

    board = make_board()
    board.power_cut(off_s=None)
    board.wait_state("off")
    board.flash_path.write_bytes(b"lost")  # the image changed while the board was off
    board.power_on()
    line, took = _boot_failure(board)
    assert line == (
        f"board board failed to boot: flash: {board.flash_path}: 4 bytes,"
        " the board's flash has 2097152"
    )
    assert took < PROMPT_S


def test_two_boards_cannot_share_a_flash_image(rig: Rig, tmp_path: Path) -> None:
    image = tmp_path / "shared.img"
    first = rig.add_board("first", flash_path=image)
    first.wait_booted()
    with pytest.raises(flash.FlashInUse, match=r"shared\.img is in use by board 'first'"):
        rig.add_board("second", flash_path=image)
    rig.run(rig.supervisor.remove_board("first"))
    second = rig.add_board("second", flash_path=image)  # free once the first is gone
    second.wait_booted()
    assert second.list_files() == ["/boot.py"]
