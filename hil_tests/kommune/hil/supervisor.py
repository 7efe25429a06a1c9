"""The board supervisor: one asyncio process side that runs many emulated boards.

It owns a work directory (flash images of temporary boards, the rig socket)
and one unix socket every VM connects to: the first frame says who is
calling -- HELLO(token) for a VM's control connection, UART_OPEN(uart, token)
for a UART's byte stream -- and the token says which board and which boot.

    async with Supervisor() as sup:
        board = await sup.add_board("lamp-1")
        print(board.console_path, board.link_path)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from kommune.hil import flash, profiles
from kommune.hil.board import rigwire
from kommune.hil.emulated_board import EmulatedBoard
from kommune.hil.rigchannel import read_frame
from kommune.hil.vmprocess import board_package

log = logging.getLogger(__name__)


def _raise_fd_limit() -> None:
    # Each board holds a handful of fds (ptys, sockets, a pidfd).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Supervisor:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="kommune-rig-"))
        self.socket_path = self.workdir / "rig.sock"
        self.boards: dict[str, EmulatedBoard] = {}
        self._tokens: dict[str, EmulatedBoard] = {}
        self._server: asyncio.Server | None = None
        self._package_root = self.workdir
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        _raise_fd_limit()
        self._package_root = await asyncio.to_thread(board_package)
        self._server = await asyncio.start_unix_server(
            self._on_connection, path=str(self.socket_path)
        )

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def add_board(
        self,
        name: str,
        profile: str = "esp32",
        *,
        flash_path: Path | None = None,
        files: Mapping[str, bytes] | None = None,
        heap_kb: int | None = None,
        seed: int = 0,
        power_on: bool = True,
        clock_ppm: int = 0,
    ) -> EmulatedBoard:
        """A new board; `files` are written to its flash first (kept if `flash_path` is given)."""
        if name in self.boards:
            raise ValueError(f"a board named {name!r} exists already")
        prof = profiles.load(profile)
        path = flash_path or self.workdir / f"{name.replace('/', '_')}.flash"
        flash.ensure_image(path, prof.flash)
        if files:
            flash.write_files(path, prof.flash, files)
        board = EmulatedBoard(
            asyncio.get_running_loop(),
            name,
            prof,
            path,
            rig_socket=self.socket_path,
            workdir=self.workdir,
            package_root=self._package_root,
            tokens=self._tokens,
            heap_kb=heap_kb,
            seed=seed,
            clock_ppm=clock_ppm,
        )
        self.boards[name] = board
        if power_on:
            board.power_on()
        return board

    async def remove_board(self, name: str) -> None:
        board = self.boards.pop(name)
        await board.aclose()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            kind, payload = await read_frame(reader)
            if kind == rigwire.HELLO:
                token = payload.decode()
                board = self._tokens.get(token)
                if board is not None:
                    await board.serve(token, reader, writer)
                    return
            elif kind == rigwire.UART_OPEN and payload:
                token = payload[1:].decode()
                board = self._tokens.get(token)
                if board is not None:
                    board.attach_uart(token, payload[0], reader, writer)
                    return
            log.warning("rig: connection with unknown first frame 0x%02x", kind)
            writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, UnicodeDecodeError):
            writer.close()
        finally:
            self._connections.discard(task)

    async def aclose(self) -> None:
        boards = list(self.boards.values())
        self.boards.clear()
        await asyncio.gather(*(b.aclose() for b in boards), return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shutil.rmtree(self.workdir, ignore_errors=True)
