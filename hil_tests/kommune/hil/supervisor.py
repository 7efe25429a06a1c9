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
import logging
import resource
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TypedDict, Unpack

from kommune.hil import flash, profiles
from kommune.hil.board import rigwire
from kommune.hil.emulated_board import EmulatedBoard
from kommune.hil.radio.board_ble_bridge import BoardBleBridge
from kommune.hil.radio.client import AirDevice
from kommune.hil.rigchannel import read_frame
from kommune.hil.vmprocess import board_package
from kommune.hil.workdirs import make_workdir

log = logging.getLogger(__name__)


class BoardOptions(TypedDict, total=False):
    """How to make a board: the one list of options (`Supervisor.add_board`, `Rig.add_board`
    and the `make_board` fixture all take these)."""

    #: A flash image to use and keep (default: a fresh one in the rig's work directory).
    flash_path: Path | None
    #: Files written to the flash before the first boot ({"main.py": b"..."}).
    files: Mapping[str, bytes] | None
    #: The VM's heap in 32-bit-word KB (default: the profile's, plus the emulation's share).
    heap_kb: int | None
    #: Seed of the board's noise models (ADC, magnetometer, UART line noise).
    seed: int
    #: Power on at once (default True).
    power_on: bool
    #: A device on a virtual air: the board's `bluetooth.BLE` uses it.
    radio: AirDevice | None
    #: The crystal runs this many ppm fast (> 0) or slow (< 0).
    clock_ppm: int


def _raise_fd_limit() -> None:
    # Each board holds a handful of fds (ptys, sockets, a pidfd).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Supervisor:
    def __init__(self) -> None:
        self.workdir = make_workdir("kommune-rig-")
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
        self, name: str, profile: str = "esp32", **options: Unpack[BoardOptions]
    ) -> EmulatedBoard:
        """A new board; `files` are written to its flash first (kept if `flash_path` is
        given); with `radio` (a device on an air) its `bluetooth.BLE` is live."""
        if name in self.boards:
            raise ValueError(f"a board named {name!r} exists already")
        prof = profiles.load(profile)
        flash_path = options.get("flash_path")
        path = flash_path or self.workdir / f"{name.replace('/', '_')}.flash"
        flash_lock = flash.lock_image(path, prof.flash)  # the board releases it when closed
        try:
            files = options.get("files")
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
                heap_kb=options.get("heap_kb"),
                seed=options.get("seed", 0),
                clock_ppm=options.get("clock_ppm", 0),
                flash_lock=flash_lock,
            )
        except BaseException:
            flash_lock.release()
            raise
        self.boards[name] = board
        flash_lock.hold_for(board)
        radio = options.get("radio")
        if radio is not None:
            # On the rig channel before the VM's first BLE call, so before power-on.
            board.ble = BoardBleBridge(board, radio)
        if options.get("power_on", True):
            board.power_on()
        return board

    async def remove_board(self, name: str) -> None:
        await _close_board(self.boards.pop(name))

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
        """Close every board (its radio, then its VM and ports), the server, the work
        directory: each step runs even when an earlier one failed; failures are raised
        together at the end."""
        errors: list[BaseException] = []
        boards = list(self.boards.values())
        self.boards.clear()
        results = await asyncio.gather(*(_close_board(b) for b in boards), return_exceptions=True)
        errors += [r for r in results if isinstance(r, BaseException)]
        if self._server is not None:
            server, self._server = self._server, None
            try:
                server.close()
                await server.wait_closed()
            except Exception as e:
                errors.append(e)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise BaseExceptionGroup("closing the rig", errors)


async def _close_board(board: EmulatedBoard) -> None:
    """Close a board's radio, then the board, even if the radio's close fails."""
    try:
        if board.ble is not None:
            await board.ble.aclose()
    finally:
        await board.aclose()
