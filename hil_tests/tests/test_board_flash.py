"""The board's flash under power cuts: littlefs must always mount, and a file
being rewritten must read back whole -- the old version or the new one."""

from __future__ import annotations

import hashlib
import random
import re
import time

import pytest

from hil_tests.testing.fixtures import MakeBoard
from kommune.hil.harness import Board

pytestmark = pytest.mark.micropython

# Firmware that rewrites a 16 KB file forever, version after version, and on
# every boot checks the version it finds (as real firmware checks its config).
WRITER = b"""
import hashlib

def body(k):
    return hashlib.sha256(b"v%d" % k).digest() * 512

def check():
    try:
        f = open("data.bin", "rb")
    except OSError:
        print("check none")
        return 0
    with f:
        head = f.read(8)
        if not head:  # created, never written (littlefs commits a create at once)
            print("check none")
            return 0
        k = int(head)
        ok = f.read() == body(k)
    print("check", k, "ok" if ok else "CORRUPT")
    return k

k = check()
while True:
    k += 1
    b = body(k)
    with open("data.bin", "wb") as f:
        f.write(b"%08d" % k)
        for i in range(0, len(b), 1024):
            f.write(b[i : i + 1024])
"""
FILES = {"main.py": WRITER, "marker.txt": b"written by the flasher"}


def body(version: int) -> bytes:
    return hashlib.sha256(b"v%d" % version).digest() * 512


def check_on_host(board: Board) -> int:
    """Mount the image with littlefs-python; the version of data.bin (0: none yet)."""
    files = board.list_files()  # raises FlashError if the image does not mount
    assert "/marker.txt" in files, "the filesystem was lost (reformatted?)"
    if "/data.bin" not in files:
        return 0
    data = board.read_file("/data.bin")
    if not data:
        return 0  # littlefs commits the create at once, the first data only at close
    version = int(data[:8])
    assert data[8:] == body(version), f"data.bin version {version} is torn"
    return version


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_power_cut_during_a_chosen_flash_write(make_board: MakeBoard, seed: int) -> None:
    board = make_board(files=FILES, power_on=False)
    versions = []
    rng = random.Random(seed)
    for _ in range(3):
        # The n-th page write of this boot: an erase or a program, cut halfway.
        board.arm_power_cut(after_flash_writes=rng.randrange(1, 1200), off_s=None)
        board.power_on()
        board.wait_state("off")
        versions.append(check_on_host(board))
    assert board.reset_kinds.count("power_on") == 3
    assert versions == sorted(versions)  # never back to an older version

    # Back on without a fault: the firmware finds an intact file, version >= the last seen.
    boots = board.boots
    board.power_on()
    board.wait_booted(after=boots)
    # Wait for the whole line: the console may have shown only "check" so far.
    check_line = re.compile(r"check (none|(\d+) (ok|CORRUPT))\r?\n")
    deadline = time.monotonic() + 10
    while not (seen := check_line.search(board.console_output().rsplit("POWERON_RESET", 1)[-1])):
        assert time.monotonic() < deadline, board.console_output()
        time.sleep(0.02)
    assert seen[3] != "CORRUPT" and "CORRUPT" not in board.console_output()
    found = "none" if seen[1] == "none" else seen[2]
    assert (0 if found == "none" else int(found)) >= versions[-1]


def test_power_cut_at_random_moments(make_board: MakeBoard) -> None:
    board = make_board(files=FILES)
    rng = random.Random(7)
    last = 0
    for _ in range(4):
        time.sleep(rng.uniform(0.05, 0.3))  # the firmware is writing all the while
        board.power_cut(off_s=None)
        board.wait_state("off")
        version = check_on_host(board)
        assert version >= last
        last = version
        boots = board.boots
        board.power_on()
        board.wait_booted(after=boots)
    assert last > 0
    assert "CORRUPT" not in board.console_output()


def test_an_erased_flash_is_formatted_on_first_boot(board: Board) -> None:
    # As MicroPython's ESP32 port does: littlefs2, with a boot.py.
    assert board.list_files() == ["/boot.py"]
    assert board.read_file("/boot.py").startswith(b"# This file is executed on every boot")
