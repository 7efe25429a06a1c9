"""Flash images on the host: what a boot may format, keeping an image aside, the lock
a board holds on its image (no VM here: see test_board_boot_failures.py)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kommune.hil import flash, profiles

GEOMETRY = profiles.load("esp32").flash


def test_classify_tells_blank_littlefs_and_foreign(tmp_path: Path) -> None:
    image = tmp_path / "f.img"
    assert flash.classify(image, GEOMETRY) == "missing"
    flash.create_erased(image, GEOMETRY)
    assert flash.classify(image, GEOMETRY) == "blank"
    image.write_bytes(bytes(GEOMETRY.size))  # zeros (truncate, dd from /dev/zero)
    assert flash.classify(image, GEOMETRY) == "blank"
    flash.format_with_files(image, GEOMETRY, {"main.py": b"print(1)\n"})
    assert flash.classify(image, GEOMETRY) == "littlefs"
    image.write_bytes(os.urandom(GEOMETRY.size))
    assert flash.classify(image, GEOMETRY) == "foreign"
    data = bytearray(b"\xff" * GEOMETRY.size)
    data[GEOMETRY.size // 2] = 0x42  # one byte of someone's data is enough
    image.write_bytes(data)
    assert flash.classify(image, GEOMETRY) == "foreign"


def test_files_are_never_written_over_a_foreign_image(tmp_path: Path) -> None:
    image = tmp_path / "f.img"
    original = os.urandom(GEOMETRY.size)
    image.write_bytes(original)
    with pytest.raises(flash.FlashError, match="not a littlefs filesystem"):
        flash.write_files(image, GEOMETRY, {"main.py": b"x = 1\n"})
    assert image.read_bytes() == original
    image.write_bytes(bytes(GEOMETRY.size))  # blank: formatted, as a first boot does
    flash.write_files(image, GEOMETRY, {"main.py": b"x = 1\n"})
    assert flash.list_files(image, GEOMETRY) == ["/main.py"]


def test_keep_aside_renames_and_never_overwrites(tmp_path: Path) -> None:
    image = tmp_path / "lamp.flash"
    image.write_bytes(b"first")
    kept = flash.keep_aside(image)
    assert not image.exists() and kept.read_bytes() == b"first"
    assert kept.name.startswith("lamp.flash.bad-")
    image.write_bytes(b"second")  # the same second: a new name, the first copy stays
    again = flash.keep_aside(image, "old")
    assert again != kept and again.name.startswith("lamp.flash.old-")
    assert kept.read_bytes() == b"first" and again.read_bytes() == b"second"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b"short"), "5 bytes, the board's flash has"),
        (os.mkfifo, "not a regular file"),
    ],
)
def test_check_image_says_what_is_wrong(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    image = tmp_path / "f.img"
    make(image)
    with pytest.raises(flash.FlashError, match=message):
        flash.check_image(image, GEOMETRY)
    with pytest.raises(flash.FlashError, match="does not exist"):
        flash.check_image(tmp_path / "no" / "f.img", GEOMETRY)
    flash.check_image(tmp_path / "new.img", GEOMETRY)  # a new image in a directory: fine


class _Board:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = "running"


def test_a_board_holds_its_image_until_it_closes(tmp_path: Path) -> None:
    image = tmp_path / "f.img"
    first = _Board("lamp-1")
    flash.lock_image(image, GEOMETRY).hold_for(first)
    with pytest.raises(flash.FlashInUse, match="in use by board 'lamp-1' of this process"):
        flash.lock_image(image, GEOMETRY)
    first.state = "closed"
    second = _Board("lamp-2")
    flash.lock_image(image, GEOMETRY).hold_for(second)  # the closed board's lock went
    del second  # a board that is gone holds nothing either
    flash.lock_image(image, GEOMETRY).release()


HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_another_process_holding_the_image_is_named(tmp_path: Path) -> None:
    image = tmp_path / "f.img"
    flash.create_erased(image, GEOMETRY)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(image), "--holder-marker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(flash.FlashInUse) as refused:
            flash.lock_image(image, GEOMETRY)
        assert f"in use by pid {holder.pid} (" in str(refused.value)
        assert "--holder-marker" in str(refused.value)
    finally:
        holder.communicate("", timeout=10)
    flash.lock_image(image, GEOMETRY).release()  # free again once the holder is gone


def test_a_closed_board_frees_its_image_for_other_processes(tmp_path: Path) -> None:
    from kommune.hil.harness import Rig

    image = tmp_path / "f.img"
    with Rig() as rig:
        rig.add_board("lamp-1", flash_path=image, power_on=False)
        rig.run(rig.supervisor.remove_board("lamp-1"))
        # Another process (here a fresh open file) gets the lock at once.
        fd = os.open(image, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
