"""Host-side access to an emulated board's flash image (littlefs2, as the VM mounts it).

The VM formats an erased image on first boot, as an ESP32 does; the host can
also build an image with files on it (a board flashed before it is powered)
and read files back after a test, with `littlefs-python`.

What is on an image decides what a boot may do with it (`classify`): a
missing or blank image (erased: all 0xFF, or all zeros) is formatted as a
board's first boot does; a littlefs image is mounted; anything else is
refused, never formatted silently -- `keep_aside` moves it out of the way
first when the user asks for a fresh filesystem. A board holds its image
locked (`lock_image`) for its life, so a second board or emulator on the
same image is refused and told who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

import littlefs

from kommune.hil.errors import RigError
from kommune.hil.profiles import FlashGeometry

Contents = Literal["missing", "blank", "littlefs", "foreign"]


def _littlefs(
    data: bytearray, geometry: FlashGeometry
) -> tuple[littlefs.LittleFS, littlefs.UserContext]:
    ctx = littlefs.UserContext(buffer=data)
    fs = littlefs.LittleFS(
        context=ctx,
        mount=False,
        block_size=geometry.block_size,
        block_count=geometry.block_count,
        # MicroPython's VfsLfs2 defaults
        read_size=32,
        prog_size=32,
        lookahead_size=32,
    )
    return fs, ctx


class FlashError(RigError):
    """The image is missing, the wrong size, unusable, in use, or does not mount."""


class FlashInUse(FlashError):
    """Another board or process holds the image."""


def create_erased(path: Path, geometry: FlashGeometry, *, exclusive: bool = False) -> None:
    """A factory-fresh flash chip: every byte 0xFF (`exclusive`: only if `path` is new)."""
    block = b"\xff" * geometry.block_size
    with path.open("xb" if exclusive else "wb") as f:
        for _ in range(geometry.block_count):
            f.write(block)


def check_image(path: Path, geometry: FlashGeometry) -> None:
    """What the host can check before a board boots: `path` is a regular file the
    board can read and write, of the flash's size -- or a new file in a directory."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise FlashError(f"{path}: directory {path.parent} does not exist") from None
        return
    except OSError as e:
        raise FlashError(f"{path}: {e.strerror}") from e
    if stat.S_ISDIR(st.st_mode):
        raise FlashError(f"{path} is a directory; give the flash image's file name")
    if not stat.S_ISREG(st.st_mode):
        raise FlashError(f"{path} is not a regular file")
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as e:
        raise FlashError(f"{path}: the board cannot read and write it ({e.strerror})") from e
    if st.st_size != geometry.size:
        raise FlashError(f"{path}: {st.st_size} bytes, the board's flash has {geometry.size}")


def ensure_image(path: Path, geometry: FlashGeometry) -> None:
    """Check the image (`check_image`); create an erased one if there is none."""
    check_image(path, geometry)
    with contextlib.suppress(FileExistsError):
        create_erased(path, geometry, exclusive=True)


def classify(path: Path, geometry: FlashGeometry) -> Contents:
    """What the image holds: nothing yet ("missing", "blank": all 0xFF or all zeros),
    a littlefs filesystem, or something else ("foreign", which a boot must not format)."""
    try:
        data = bytearray(path.read_bytes())
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        raise FlashError(f"{path}: {e.strerror}") from e
    if data.count(0xFF) == len(data) or data.count(0) == len(data):
        return "blank"
    if len(data) == geometry.size:
        fs, _ = _littlefs(data, geometry)
        try:
            fs.mount()
        except littlefs.LittleFSError:
            return "foreign"
        fs.unmount()
        return "littlefs"
    return "foreign"


def keep_aside(path: Path, label: str = "bad") -> Path:
    """Rename the image to `NAME.<label>-YYYYmmdd-HHMMSS` beside it (never over another
    file); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(100):
        target = path.with_name(f"{path.name}.{label}-{stamp}" + (f"-{n}" if n else ""))
        try:
            os.link(path, target)  # never replaces an existing file, unlike rename
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV) or target.exists():
                raise FlashError(f"{path}: cannot keep it aside as {target} ({e.strerror})") from e
            path.rename(target)  # a filesystem without hard links
            return target
        path.unlink()
        return target
    raise FlashError(f"{path}: too many kept-aside copies named {path.name}.{label}-{stamp}*")


# -- the lock a board holds on its image ------------------------------------------


class FlashLock:
    """An exclusive flock() on a flash image; released by `release`, when its board
    closes (see `hold_for`), or when this process ends."""

    def __init__(self, path: Path, fd: int, key: tuple[int, int]) -> None:
        self.path = path
        self.key = key
        self._release = weakref.finalize(self, os.close, fd)

    def hold_for(self, board: object) -> None:
        """Keep the lock while `board` is open (its `state` is not "closed")."""
        _held[self.key] = (self, weakref.ref(board), getattr(board, "name", "?"))

    def release(self) -> None:
        if _held.get(self.key, (None,))[0] is self:
            del _held[self.key]
        self._release()


# (st_dev, st_ino) -> (lock, its board, the board's name)
_held: dict[tuple[int, int], tuple[FlashLock, weakref.ref[object], str]] = {}


def lock_image(path: Path, geometry: FlashGeometry) -> FlashLock:
    """Check and create the image (`ensure_image`) and lock it for one board; raises
    `FlashInUse` naming the holder if another board or process has it."""
    ensure_image(path, geometry)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise FlashError(f"{path}: {e.strerror}") from e
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    held = _held.get(key)
    if held is not None:
        lock, board, name = held
        if getattr(board(), "state", "closed") != "closed":
            os.close(fd)
            raise FlashInUse(f"{path} is in use by board {name!r} of this process")
        lock.release()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FlashInUse(f"{path} is in use by {_holder(st)}") from None
    return FlashLock(path, fd, key)


def _holder(st: os.stat_result) -> str:
    """Who holds the flock on the file `st` (from /proc/locks): "pid N (command)"."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[str] = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields[1:2] and len(fields) > 5:
                    if fields[5] == dev:
                        pids.insert(0, fields[4])
                    elif fields[5].rsplit(":", 1)[-1] == str(st.st_ino):
                        pids.append(fields[4])  # another device numbering (overlayfs)
    except OSError:
        pass
    if not pids:
        return "another process"
    pid = pids[0]
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return f"pid {pid}"
    # A console script runs as "python /path/bin/kommune ARGS": show "kommune ARGS".
    interpreter = Path(argv[0].decode(errors="replace")).name.startswith("python")
    if interpreter and len(argv) > 1 and not argv[1].startswith(b"-"):
        argv = argv[1:]
    words = [Path(argv[0].decode(errors="replace")).name] + [
        a.decode(errors="replace") for a in argv[1:]
    ]
    return f"pid {pid} ({' '.join(words)})"


# -- files on the image -----------------------------------------------------------


@contextmanager
def mounted(
    path: Path, geometry: FlashGeometry, *, write: bool = False
) -> Iterator[littlefs.LittleFS]:
    """Mount the image with littlefs-python; with `write`, save changes back."""
    data = bytearray(path.read_bytes())
    if len(data) != geometry.size:
        raise FlashError(f"{path}: {len(data)} bytes, expected {geometry.size}")
    fs, ctx = _littlefs(data, geometry)
    try:
        fs.mount()
    except littlefs.LittleFSError as e:
        raise FlashError(f"{path}: does not mount ({e})") from e
    yield fs
    fs.unmount()
    if write:
        path.write_bytes(bytes(ctx.buffer))


def format_with_files(path: Path, geometry: FlashGeometry, files: Mapping[str, bytes]) -> None:
    """A freshly formatted image holding `files` (board path -> content)."""
    create_erased(path, geometry)
    fs, ctx = _littlefs(bytearray(path.read_bytes()), geometry)
    fs.format()
    fs.mount()
    _put(fs, files)
    fs.unmount()
    path.write_bytes(bytes(ctx.buffer))


def write_files(path: Path, geometry: FlashGeometry, files: Mapping[str, bytes]) -> None:
    """Put `files` on the image, keeping what else is there; a blank image is formatted
    first, an image that is neither blank nor littlefs is refused (`classify`)."""
    ensure_image(path, geometry)
    kind = classify(path, geometry)
    if kind == "foreign":
        raise FlashError(f"{path}: not a littlefs filesystem (formatting it would lose its data)")
    if kind == "blank":
        format_with_files(path, geometry, files)
        return
    with mounted(path, geometry, write=True) as fs:
        _put(fs, files)


def _put(fs: littlefs.LittleFS, files: Mapping[str, bytes]) -> None:
    for name, content in sorted(files.items()):
        board_path = PurePosixPath("/") / name
        parent = str(board_path.parent)
        if parent != "/":
            fs.makedirs(parent, exist_ok=True)
        with fs.open(str(board_path), "wb") as f:
            f.write(content)


def read_file(path: Path, geometry: FlashGeometry, name: str) -> bytes:
    with mounted(path, geometry) as fs, fs.open(name, "rb") as f:
        data: bytes = f.read()
        return data


def list_files(path: Path, geometry: FlashGeometry) -> list[str]:
    """Every file on the image, as absolute board paths."""
    out: list[str] = []
    with mounted(path, geometry) as fs:
        for top, _dirs, files in fs.walk("/"):
            out.extend(str(PurePosixPath(top) / f) for f in files)
    return sorted(out)
