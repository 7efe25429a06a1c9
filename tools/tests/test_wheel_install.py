"""The built wheel is the product: installed (not editable) it boots a board.

How (about 5 s here): the working tree, minus environments and caches, is copied to
tmp_path and built there with `pip wheel --no-deps` (build isolation fetches setuptools
as ./run's editable install does; nothing is written into the tree). The wheel goes into
a fresh venv (no pip, no system site-packages) with `pip --python VENV install --no-deps
--no-index`. The third-party dependencies are not downloaded again: a .pth file, written
after the install, appends this environment's site-packages to the new venv's path. A
directory added by a .pth line has its own .pth files ignored, so this environment's
editable-install finder never loads: `kommune.*` comes only from the wheel. The test
asserts that, then runs the venv's `kommune emulate --blank --json` from a directory
outside the checkout, talks to the board's raw REPL and stops it with Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import serial

from hil_tests.testing.processes import running
from kommune.hil.children import start_ready, stop_sync

pytestmark = [pytest.mark.slow, pytest.mark.micropython]

REPO = Path(__file__).resolve().parents[2]
#: Not copied for the build: at the top of the tree ...
TOP_LEVEL_SKIP = {".git", ".venv", "build", "dist", "bench", ".kommune"}
#: ... and anywhere.
ANYWHERE_SKIP = shutil.ignore_patterns(
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.img",
)

PROBE = """
import importlib.util, json, sys
import kommune, kommune.hil, kommune.hil.paths as paths, kommune.hil.profiles as profiles
print(json.dumps({
    "kommune_path": list(kommune.__path__),
    "hil": kommune.hil.__file__,
    "protocols": importlib.util.find_spec("kommune.protocols").origin,
    "firmware": str(paths.FIRMWARE_ROOT),
    "checkout": None if paths.CHECKOUT is None else str(paths.CHECKOUT),
    "boards": profiles.available(),
    "sys_path": sys.path,
    "meta_path": [repr(f) for f in sys.meta_path],
}))
"""


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = set(ANYWHERE_SKIP(directory, names))
    if Path(directory) == REPO:
        skip |= TOP_LEVEL_SKIP & set(names)
    return skip


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=_ignore, symlinks=True)
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(purelib, "zz-test-dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))


def _inside(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


def _read_until(port: serial.Serial, end: bytes, deadline: float) -> bytes:
    seen = b""
    while not seen.endswith(end) and time.monotonic() < deadline:
        seen += port.read(max(1, port.in_waiting))
    return seen


def _raw_repl_exec(console: str, code: str, timeout_s: float = 15.0) -> bytes:
    """Run `code` through the raw REPL (as mpremote does) and return what it printed."""
    deadline = time.monotonic() + timeout_s
    with serial.Serial(console, 115200, timeout=0.1) as port:
        port.write(b"\r\x03\x03")  # interrupt whatever runs
        banner = b""
        # Ctrl-A again re-prints the banner; the port drops unread input when it
        # switches terminal modes, so one request may be lost.
        while not banner.endswith(b"raw REPL; CTRL-B to exit\r\n>") and (
            time.monotonic() < deadline
        ):
            port.write(b"\x01")
            banner = _read_until(port, b"raw REPL; CTRL-B to exit\r\n>", time.monotonic() + 2)
        assert banner.endswith(b"raw REPL; CTRL-B to exit\r\n>"), banner
        port.write(code.encode() + b"\x04")
        out = _read_until(port, b"\x04>", deadline)
        port.write(b"\x02")  # back to the friendly REPL
    assert out.endswith(b"\x04>"), out
    return out


def test_the_installed_wheel_emulates_a_board(tmp_path: Path) -> None:
    started = time.monotonic()
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in (
        "kommune/firmware/boards/esp32.json",
        "kommune/hil/board/start.py",
        "kommune/hil/vmlaunch.py",
        "kommune/protocols/frame.py",
    ):
        assert shipped in names
    assert not [n for n in names if "vectors" in n or "/tests/" in n], "test data shipped"

    venv = tmp_path / "venv"
    _install(wheel, venv)
    elsewhere = tmp_path / "elsewhere"  # a working directory outside the checkout
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    assert found["kommune_path"] and all(_inside(p, venv) for p in found["kommune_path"])
    for module in ("hil", "protocols", "firmware"):
        assert _inside(found[module], venv), (module, found[module])
    assert found["checkout"] is None
    assert "esp32" in found["boards"]
    assert not [f for f in found["meta_path"] if "editable" in f.lower()]
    sources = [REPO, *(REPO / d for d in ("protocols", "edge", "tools", "hil_tests", "firmware"))]
    assert not [p for p in found["sys_path"] if p and Path(p).resolve() in sources]

    proc, ports = start_ready(
        [str(venv / "bin" / "kommune"), "emulate", "--blank", "--json"],
        what="kommune emulate from the wheel",
        timeout_s=60,
        cwd=elsewhere,
        env=env,
        stderr=subprocess.PIPE,
    )
    vm_pid = None
    try:
        vm_pid = ports["pid"]
        assert ports["board"] == "esp32"
        out = _raw_repl_exec(
            ports["console"],
            "import sys, machine\nprint(sys.implementation.name, 6 * 7, machine.reset_cause())",
        )
        assert out.startswith(b"OKmicropython 42 "), out
        assert out.endswith(b"\x04\x04>"), out  # nothing on stderr
    finally:
        _, err = stop_sync(proc, sig=signal.SIGINT, sig_wait_s=30)
    assert proc.returncode == 0, err
    assert vm_pid is not None and not running(vm_pid), "the VM outlived kommune emulate"
    print(f"wheel built, installed and booted in {time.monotonic() - started:.1f} s")
