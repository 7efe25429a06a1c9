"""Child processes that say when they are ready: start one, wait for it, stop it.

The rig's long-lived helpers announce readiness the same way: one JSON object on
a line of stdout once they serve (the air process: its control endpoint;
`kommune emulate --json`: the board's ports). These functions start such a
child, wait for that line with a deadline, and stop the child again -- also
when it died, stayed silent or printed something else, in which case the error
says what it wrote on stderr (when the caller captured it).

    proc, ready = await spawn_ready([sys.executable, "-m", "pkg"], what="the air")
    ...
    await stop(proc, grace_s=5.0)          # wait, then SIGTERM, then SIGKILL

    proc, ports = start_ready(["kommune", "emulate", "--json"], what="kommune emulate",
                              stderr=subprocess.PIPE)   # the same, for blocking code
    stop_sync(proc, sig=signal.SIGINT)

Making a child die with its parent is the child's part (the air and the VMs set
PR_SET_PDEATHSIG themselves, see radio/air.py and vmlaunch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from kommune.hil.errors import RigError

READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0


class ChildError(RigError):
    """A child process did not become ready."""


def _ready_doc(line: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(line)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        text = line.decode(errors="replace") if isinstance(line, bytes) else line
        raise ChildError(f"{what} printed {text.strip()[:200]!r} instead of its ready line")
    return doc


def _last_line(text: bytes | str | None) -> str:
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = text.strip().splitlines()
    return f": {lines[-1]}" if lines else ""


# -- asyncio ----------------------------------------------------------------------


async def spawn_ready(
    argv: Sequence[str], *, what: str, timeout_s: float = READY_TIMEOUT_S, **kwargs: Any
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start `argv` (stdout piped; other `asyncio.create_subprocess_exec` options pass
    through) and wait for its ready line; stops it and raises `ChildError` if none comes."""
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, **kwargs)
    assert process.stdout is not None
    try:
        try:
            async with asyncio.timeout(timeout_s):
                line = await process.stdout.readline()
        except TimeoutError:
            raise ChildError(f"{what} was not ready within {timeout_s:.0f} s") from None
        if not line:
            await process.wait()
            err = await process.stderr.read() if process.stderr is not None else b""
            raise ChildError(
                f"{what} exited with {process.returncode} before it was ready{_last_line(err)}"
            )
        return process, _ready_doc(line, what)
    except BaseException:
        await stop(process, grace_s=0.0)
        raise


async def stop(
    process: asyncio.subprocess.Process,
    *,
    grace_s: float = STOP_GRACE_S,
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Let `process` end within `grace_s` (it was asked to), else send `sig`, and after
    another `STOP_GRACE_S` SIGKILL; reaps it and drains its pipes."""
    for send, wait_s in ((None, grace_s), (sig, STOP_GRACE_S)):
        if send is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(send)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await process.wait()
        if process.returncode is not None:
            break
    else:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            await stream.read()


# -- blocking code (tests, scripts) --------------------------------------------------


def start_ready(
    argv: Sequence[str], *, what: str, timeout_s: float = READY_TIMEOUT_S, **kwargs: Any
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`spawn_ready` for blocking code: a text-mode `subprocess.Popen` (stdout piped;
    other Popen options pass through) and its ready document."""
    proc: subprocess.Popen[str] = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, **kwargs
    )
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise ChildError(f"{what} was not ready within {timeout_s:.0f} s")
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=STOP_GRACE_S)
            raise ChildError(
                f"{what} exited with {proc.returncode} before it was ready{_last_line(err)}"
            )
        return proc, _ready_doc(line, what)
    except BaseException:
        stop_sync(proc, grace_s=0.0)
        raise


def stop_sync(
    proc: subprocess.Popen[str],
    *,
    grace_s: float = 0.0,
    sig: signal.Signals = signal.SIGTERM,
    sig_wait_s: float = STOP_GRACE_S,
) -> tuple[str, str]:
    """`stop` for blocking code: send `sig` after `grace_s`, SIGKILL if it still runs
    `sig_wait_s` later; returns what the child still printed (stdout, stderr)."""
    deadline = time.monotonic() + grace_s
    for send in (None, sig):
        if send is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(send)
        wait_s = max(0.0, deadline - time.monotonic()) if send is None else sig_wait_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, err = proc.communicate(timeout=wait_s)
            return out or "", err or ""
    proc.kill()
    out, err = proc.communicate()
    return out or "", err or ""
