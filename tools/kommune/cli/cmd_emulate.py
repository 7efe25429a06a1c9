"""`kommune emulate NODE`: run an emulated board and print its ports until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kommune.cli.errors import CliError

# Heavy modules (asyncio, the rig) are imported when used: until `main` is in
# its try block, a Ctrl-C would print a traceback, so that time stays short.
if TYPE_CHECKING:
    import logging

    from kommune.hil.emulated_board import EmulatedBoard
    from kommune.hil.profiles import FlashGeometry

EPILOG = """examples:
  kommune emulate --blank                     an empty ESP32 board; then: mpremote connect PORT
  kommune emulate --blank --flash board.img   a board whose flash outlives this run
  kommune emulate --blank --json              one JSON object: {"console": ..., "link": ...}
  kommune emulate lock                        the door lock firmware on an esp32-lock board,
                                              unprovisioned; then: kommune provision lock
                                              --port CONSOLE --lock-id 1017

The board's radio is on a virtual BLE air; a phone or edge host reaches it through
the printed HCI transport, e.g. with the edge's bleak backend:
  KOMMUNE_BLE_TRANSPORT=tcp-client:127.0.0.1:PORT python my_phone_script.py

--flash PATH: a new PATH, or an erased (all 0xFF) or all-zero image, is formatted on
first boot, as a board does; a littlefs image is used as it is; anything else is
refused -- give --format to rename it to PATH.bad-TIME and start on a fresh one.
One board at a time uses an image: a second emulator on it is told who has it.

Ctrl-C (SIGINT, SIGTERM, SIGHUP) stops the board and everything it started: exit
status 0 once the ports are printed; before that, the start is abandoned with
"interrupted" and status 130 (128 + the signal's number).
"""


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary
        + ". The console is a pty in raw mode (the board's REPL, for mpremote or"
        " pyserial); the link is the board's node-link UART.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "node",
        nargs="?",
        metavar="NODE",
        help="a node firmware folder, firmware/NODE, to put on the board",
    )
    p.add_argument(
        "--blank", action="store_true", help="an empty board: formatted flash, no firmware"
    )
    p.add_argument(
        "--board",
        help="board profile from firmware/boards (default: esp32-NODE if there is one, else esp32)",
    )
    p.add_argument(
        "--flash",
        type=Path,
        metavar="PATH",
        help="keep the flash image in PATH (default: temporary)",
    )
    p.add_argument(
        "--format",
        action="store_true",
        help="start on a freshly formatted flash; an image in PATH that holds anything is "
        "first renamed to PATH.bad-TIME (not littlefs) or PATH.old-TIME (littlefs)",
    )
    p.add_argument(
        "--heap",
        type=int,
        metavar="KB",
        help="the VM's heap in KB, the emulation's own ~34 KB included (default: the board's,"
        " plus that share)",
    )
    p.add_argument("--no-radio", action="store_true", help="no BLE: do not start the virtual air")
    p.add_argument("--json", action="store_true", help="print the ports as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from kommune.hil import firmware_files, profiles
    from kommune.hil.vmprocess import MIN_HEAP_KB

    if args.blank and args.node:
        raise CliError("NODE and --blank exclude each other")
    if not args.blank and not args.node:
        raise CliError("give NODE (" + ", ".join(firmware_files.nodes()) + ") or --blank")
    if args.format and args.flash is None:
        raise CliError("--format is for an image given with --flash (a temporary one is new)")
    if args.board is None:
        args.board = _default_board(args.node)
    try:
        profile = profiles.load(args.board)
        # As a bundle ships them: modules compiled (a 64 KB lock's sources do not fit).
        files = {} if args.blank else firmware_files.compiled(firmware_files.node_files(args.node))
    except (profiles.BoardProfileError, firmware_files.FirmwareError) as e:
        raise CliError(str(e)) from e
    if args.heap is not None and not MIN_HEAP_KB <= args.heap <= 65536:
        raise CliError(f"--heap: give {MIN_HEAP_KB} to 65536 KB (the emulation itself needs ~34)")
    if args.flash is not None:
        args.flash = args.flash.absolute()  # the VM runs in the rig's work directory
        _prepare_flash(args.flash, profile.flash, fresh=args.format)
    return asyncio.run(_serve(args, files))


def _default_board(node: str | None) -> str:
    """esp32-NODE where that profile exists (esp32-lock: the bolt and door wired), else esp32."""
    from kommune.hil import profiles

    if node:
        try:
            profiles.load(f"esp32-{node}")
        except profiles.BoardProfileError:
            return "esp32"
        return f"esp32-{node}"
    return "esp32"


def _prepare_flash(path: Path, geometry: FlashGeometry, *, fresh: bool) -> None:
    """Decide on the host, before boot, what the board may do with the image in `path`."""
    from kommune.hil import flash

    try:
        flash.check_image(path, geometry)
        if not path.exists():
            return
        lock = flash.lock_image(path, geometry)  # nothing happens to an image in use
        try:
            kind = flash.classify(path, geometry)
            if kind == "foreign" and not fresh:
                raise CliError(
                    f"--flash: {path} holds no littlefs filesystem; formatting it would lose"
                    " what is on it (--format renames it to PATH.bad-TIME first)"
                )
            kept = None
            if fresh and kind != "blank":
                kept = flash.keep_aside(path, "bad" if kind == "foreign" else "old")
        finally:
            lock.release()
    except flash.FlashError as e:
        raise CliError(f"--flash: {e}") from e
    if kept is not None:
        print(f"kommune emulate: kept the old image as {kept}", file=sys.stderr)


async def _serve(args: argparse.Namespace, files: dict[str, bytes]) -> int:
    import asyncio
    import logging
    import signal

    stopped_by: list[int] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        stopped_by.append(signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)
    # Logs would print tracebacks and the console: the errors that matter reach the
    # user as one line; while the board serves, warnings show as one line each.
    root = logging.getLogger()
    quiet = logging.NullHandler()
    root.addHandler(quiet)
    try:
        async with contextlib.AsyncExitStack() as stack:
            starting = asyncio.create_task(_start(args, files, stack))
            waiting = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting.cancel()
            if not starting.done():  # interrupted: undo what started (the stack does)
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                print("kommune emulate: interrupted", file=sys.stderr)
                return 128 + stopped_by[0]
            board, radio = starting.result()
            _print_ports(args, board, radio)
            watcher = asyncio.create_task(_watch_bolt(args, board))
            try:
                with _one_line_logs(root):
                    await stop.wait()
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    except CliError:
        raise
    except (Exception, BaseExceptionGroup) as e:  # closing failed (Supervisor.aclose)
        raise CliError(f"stopping the board: {str(e).splitlines()[0]}") from e
    finally:
        root.removeHandler(quiet)
    if not args.json:
        print("board stopped", file=sys.stderr)
    return 0


async def _start(
    args: argparse.Namespace, files: dict[str, bytes], stack: contextlib.AsyncExitStack
) -> tuple[EmulatedBoard, dict[str, str] | None]:
    """Start the air, the supervisor and the board on `stack`; wait until it booted."""
    from kommune.hil.errors import RigError
    from kommune.hil.radio import running_air
    from kommune.hil.supervisor import Supervisor

    name = args.node or "blank"
    radio: dict[str, str] | None = None
    try:
        device = None
        if not args.no_radio:
            # The air first: closing runs backwards, so boards leave it before it goes.
            air = await stack.enter_async_context(running_air(seed=0))
            device = await air.add_device(name)
            host = await air.add_device("host")
            # A board that goes away (Ctrl-C, a reset) drops the host's link at once,
            # not after a default supervision timeout of seconds.
            await air.set_link("host", name, supervision_timeout_ms=300)
            radio = {"address": device.address, "air": air.control, "host": host.transport}
        sup = Supervisor()
        stack.push_async_callback(sup.aclose)  # also when cancelled while it starts
        await sup.start()
        board = await sup.add_board(
            name,
            args.board,
            flash_path=args.flash,
            files=files,
            heap_kb=args.heap,
            radio=device,
        )
        await board.wait_booted(timeout_s=30.0)
    except RigError as e:
        raise CliError(str(e).splitlines()[0]) from e
    return board, radio


def _print_ports(args: argparse.Namespace, board: EmulatedBoard, radio: Any) -> None:
    import json

    ports = {
        "node": args.node,
        "board": args.board,
        "console": board.console_path,
        "link": board.link_path,
        "link_uart": board.profile.link_uart,
        "flash": str(board.flash_path),
        "flash_kept": args.flash is not None,
        "pid": board.pid,
        "radio": radio,
    }
    if args.json:
        print(json.dumps(ports), flush=True)
    else:
        print(_human(ports, board.profile.description), flush=True)


#: How often the bolt's model is looked at for changes to report.
_BOLT_POLL_S = 0.02


async def _watch_bolt(args: argparse.Namespace, board: EmulatedBoard) -> None:
    """Report the bolt's and the door's changes (a board with a bolt model: the lock),
    one line each: JSON with --json, else text."""
    import asyncio
    import json
    import time

    bolt = board.hw.devices.get("bolt")
    if bolt is None:
        return
    seen = len(bolt.history)
    while True:
        await asyncio.sleep(_BOLT_POLL_S)  # the model has no listeners: look at its history
        for _, what in bolt.history[seen:]:
            if args.json:
                print(
                    json.dumps({"event": "bolt", "state": what, "time_s": time.time()}), flush=True
                )
            else:
                print(f"bolt: {what}", flush=True)
        seen = len(bolt.history)


@contextlib.contextmanager
def _one_line_logs(root: logging.Logger) -> Iterator[None]:
    """Log records of WARNING and above on stderr, the first line of each."""
    import logging

    class FirstLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            lines = super().format(record).splitlines()
            return "kommune emulate: " + (lines[0] if lines else "")

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(FirstLine("%(message)s"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _human(ports: dict[str, Any], description: str) -> str:
    what = f"node {ports['node']}" if ports["node"] else "blank board"
    flash = ports["flash"] + ("" if ports["flash_kept"] else " (temporary)")
    radio = ports["radio"]
    lines = [
        f"emulated {ports['board']} {what}: {description}",
        f"  console  {ports['console']}   (REPL; e.g. mpremote connect {ports['console']})",
        f"  link     {ports['link']}   (UART{ports['link_uart']}, the node link)",
        f"  flash    {flash}",
    ]
    if radio is not None:
        lines += [
            f"  radio    BLE {radio['address']} on the virtual air {radio['air']}",
            f"  host     {radio['host']}   (HCI for a phone or edge: KOMMUNE_BLE_TRANSPORT)",
        ]
    if ports["node"] == "lock":
        lines += [
            "  the lock is unprovisioned; then (docs/locks.md):",
            f"    kommune provision lock --port {ports['console']} --lock-id 1017",
        ]
        if radio is not None:
            lines.append(
                f"    KOMMUNE_BLE_TRANSPORT={radio['host']} kommune provision time --lock 1017"
            )
    return "\n".join([*lines, "Ctrl-C stops the board."])
