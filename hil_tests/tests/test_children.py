"""Starting a child that announces itself ready, and every way that can go wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from kommune.hil.children import ChildError, spawn_ready, start_ready, stop, stop_sync

READY = "import json, sys, time; print(json.dumps({'port': 7}), flush=True); time.sleep(60)"
DIES = "import sys; print('no config file', file=sys.stderr); sys.exit(3)"
SILENT = "import time; time.sleep(60)"
GARBAGE = "import time; print('hello', flush=True); time.sleep(60)"


def _my_children() -> set[int]:
    """Processes (zombies included) whose parent is this test process."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid():
            found.add(int(entry))
    return found


def test_a_ready_child_is_started_and_stopped() -> None:
    proc, ready = start_ready([sys.executable, "-c", READY], what="the child")
    assert ready == {"port": 7}
    stop_sync(proc, sig=signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (DIES, "the child exited with 3 before it was ready: no config file"),
        (SILENT, "the child was not ready within 1 s"),
        (GARBAGE, "the child printed 'hello' instead of its ready line"),
    ],
)
def test_a_child_that_is_not_ready_is_named_and_gone(code: str, message: str) -> None:
    before = _my_children()
    with pytest.raises(ChildError, match=message):
        start_ready(
            [sys.executable, "-c", code], what="the child", timeout_s=1, stderr=subprocess.PIPE
        )
    assert _my_children() <= before  # stopped and reaped


async def test_the_same_from_asyncio() -> None:
    proc, ready = await spawn_ready([sys.executable, "-c", READY], what="the child")
    assert ready == {"port": 7}
    await stop(proc, grace_s=0.0)
    assert proc.returncode == -signal.SIGTERM
    with pytest.raises(ChildError, match="exited with 3 before it was ready: no config"):
        await spawn_ready([sys.executable, "-c", DIES], what="the child", stderr=subprocess.PIPE)
