"""Waiting in a test for something that has no event to wait on (a file, an HTTP
endpoint, a model's state): ask again every few milliseconds, up to a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float = 5.0,
    *,
    what: str = "the condition",
    interval_s: float = 0.01,
) -> None:
    """Return once `predicate()` holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(interval_s)
