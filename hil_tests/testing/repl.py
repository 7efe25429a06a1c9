"""The board's raw REPL from a test, through mpremote's own transport (as a technician's
mpremote would talk to a USB board).

    with board_repl(board) as repl:       # Ctrl-C first: a running main.py stops
        repl.exec("import machine")
    out = repl_exec(board, "print(6 * 7)")  # "42\n"
    repl_start(board, "machine.reset()")     # start it and leave
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from kommune.hil.harness import Board

#: mpremote reads a pty with blocking one-byte reads, so without a port timeout a
#: lost byte would hang it for good; with one, its own overall timeouts apply.
REPL_READ_TIMEOUT_S = 1.0


def _open_repl(board: Board, *, soft_reset: bool) -> SerialTransport:
    transport = SerialTransport(board.console, baudrate=115200)
    transport.serial.timeout = REPL_READ_TIMEOUT_S
    try:
        transport.enter_raw_repl(soft_reset=soft_reset)
    except TransportError as e:
        transport.close()
        raise TransportError(
            f"{board.name}: could not enter the raw REPL ({e}); state {board.state}, "
            f"console:\n{board.console_output()}"
        ) from e
    return transport


@contextlib.contextmanager
def board_repl(board: Board, *, soft_reset: bool = False) -> Iterator[SerialTransport]:
    """The board's raw REPL through mpremote's own transport (Ctrl-C stops a running main.py)."""
    transport = _open_repl(board, soft_reset=soft_reset)
    try:
        yield transport
        transport.exit_raw_repl()
    finally:
        transport.close()


def repl_exec(board: Board, code: str, *, soft_reset: bool = False) -> str:
    """Run `code` in the board's raw REPL and return what it printed."""
    with board_repl(board, soft_reset=soft_reset) as repl:
        out: bytes = repl.exec(code)
    return out.decode().replace("\r\n", "\n")


def repl_start(board: Board, code: str) -> None:
    """Start `code` in the board's raw REPL and leave without waiting (machine.reset(), ...)."""
    transport = SerialTransport(board.console, baudrate=115200)
    try:
        transport.enter_raw_repl(soft_reset=False)
        transport.exec_raw_no_follow(code)
    finally:
        transport.close()
