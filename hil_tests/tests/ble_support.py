"""Helpers for the BLE tests: a board's console as a stream of events, the event loop's
unseen errors, and a bond store that plays the firmware's in model tests.

    async with ConsoleWatch(board) as console:
        await console.expect("connected")     # returns what came before it
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

from kommune.hil.harness import Board
from kommune.hil.radio.board_ble_events import IRQ_GET_SECRET, IRQ_SET_SECRET, BleEvent


class ConsoleWatch:
    """What a board prints, read from its console pty as it comes (the port keeps
    what nobody has read yet, so this sees the board's output from its boot on)."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(board.console, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        self._pending = ""  # read, not consumed by expect() yet
        self._arrived = asyncio.Event()
        self._loop.add_reader(self._fd, self._on_readable)

    async def __aenter__(self) -> ConsoleWatch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._pending += data.decode(errors="replace").replace("\r\n", "\n")
            self._arrived.set()

    async def expect(self, text: str, timeout_s: float = 15.0) -> str:
        """Wait until the board prints `text`; consume it and return what came before."""
        try:
            async with asyncio.timeout(timeout_s):
                while (at := self._pending.find(text)) < 0:
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.board.name} did not print {text!r}; since the last match:\n{self._pending}"
            ) from None
        before = self._pending[:at]
        self._pending = self._pending[at + len(text) :]
        return before


@asynccontextmanager
async def loop_errors(
    loop: asyncio.AbstractEventLoop | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches a loop's exception handler (the running one by default) in the
    block: "Future exception was never retrieved", "Task was destroyed but it is
    pending", an exception in a callback..."""
    loop = loop or asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        yield errors
    finally:
        gc.collect()  # what was left unseen is reported when it is collected
        loop.set_exception_handler(previous)


class SecretStore:
    """What firmware does with _IRQ_GET_SECRET / _IRQ_SET_SECRET, for model tests: the
    `ask` of a `BoardBle` (a board's bond store, kept across activations)."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[int, bytes], bytes] = {}

    async def __call__(self, event: BleEvent) -> object:
        if event.code == IRQ_SET_SECRET:
            sec_type, key, value = event.data
            assert isinstance(sec_type, int) and isinstance(key, bytes)
            if value is None:
                return self.secrets.pop((sec_type, key), None) is not None
            assert isinstance(value, bytes)
            self.secrets[(sec_type, key)] = value
            return True
        if event.code == IRQ_GET_SECRET:
            sec_type, index, key = event.data
            if key is None:
                values = [v for (t, _), v in sorted(self.secrets.items()) if t == sec_type]
                assert isinstance(index, int)
                return values[index] if index < len(values) else None
            assert isinstance(sec_type, int) and isinstance(key, bytes)
            return self.secrets.get((sec_type, key))
        return None
