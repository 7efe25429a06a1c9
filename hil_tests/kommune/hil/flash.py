"""Host-side access to an emulated board's flash image (littlefs2, as the VM mounts it).

The VM formats an erased image on first boot, as an ESP32 does; the host can
also build an image with files on it (a board flashed before it is powered)
and read files back after a test, with `littlefs-python`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import littlefs

from kommune.hil.profiles import FlashGeometry


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


class FlashError(RuntimeError):
    """The image is missing, the wrong size, or does not mount."""


def create_erased(path: Path, geometry: FlashGeometry) -> None:
    """A factory-fresh flash chip: every byte 0xFF."""
    block = b"\xff" * geometry.block_size
    with path.open("wb") as f:
        for _ in range(geometry.block_count):
            f.write(block)


def ensure_image(path: Path, geometry: FlashGeometry) -> None:
    """Create an erased image unless one of the right size exists."""
    if path.exists():
        size = path.stat().st_size
        if size != geometry.size:
            raise FlashError(f"{path}: {size} bytes, the board's flash has {geometry.size}")
        return
    create_erased(path, geometry)


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
    """Put `files` on the image, keeping what else is there (format it if it does not mount)."""
    ensure_image(path, geometry)
    try:
        with mounted(path, geometry, write=True) as fs:
            _put(fs, files)
    except FlashError:
        format_with_files(path, geometry, files)


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
