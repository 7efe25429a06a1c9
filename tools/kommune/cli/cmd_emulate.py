"""`kommune emulate NODE`: run an emulated board and print its ports until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from kommune.cli.errors import CliError

EPILOG = """examples:
  kommune emulate --blank                   an empty ESP32 board; then: mpremote connect PORT
  kommune emulate lamp --flash lamp.img     a lamp node whose flash outlives this run
  kommune emulate --blank --json            one JSON object: {"console": ..., "link": ...}

The board's radio is on a virtual BLE air; a phone or edge host reaches it through
the printed HCI transport, e.g. with the edge's bleak backend:
  KOMMUNE_BLE_TRANSPORT=tcp-client:127.0.0.1:PORT python my_phone_script.py
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
        "node", nargs="?", metavar="NODE", help="firmware/NODE to flash (lock, lamp, parking)"
    )
    p.add_argument(
        "--blank", action="store_true", help="an empty board: formatted flash, no firmware"
    )
    p.add_argument(
        "--board", default="esp32", help="board profile from firmware/boards (default: esp32)"
    )
    p.add_argument(
        "--flash",
        type=Path,
        metavar="PATH",
        help="keep the flash image in PATH (default: temporary)",
    )
    p.add_argument("--heap", type=int, metavar="KB", help="heap size in KB (default: the board's)")
    p.add_argument("--no-radio", action="store_true", help="no BLE: do not start the virtual air")
    p.add_argument("--json", action="store_true", help="print the ports as one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kommune.hil import firmware_files, profiles

    if args.blank and args.node:
        raise CliError("NODE and --blank exclude each other")
    if not args.blank and not args.node:
        raise CliError("give NODE (" + ", ".join(firmware_files.nodes()) + ") or --blank")
    try:
        profiles.load(args.board)
        files = {} if args.blank else firmware_files.node_files(args.node)
    except (profiles.ProfileError, firmware_files.FirmwareError) as e:
        raise CliError(str(e)) from e
    if args.flash is not None and not args.flash.parent.is_dir():
        raise CliError(f"--flash: directory {args.flash.parent} does not exist")
    if args.heap is not None and not 16 <= args.heap <= 65536:
        raise CliError("--heap: give 16 to 65536 KB")
    return asyncio.run(_serve(args, files))


async def _serve(args: argparse.Namespace, files: dict[str, bytes]) -> int:
    from kommune.hil.emulated_board import BoardError
    from kommune.hil.flash import FlashError
    from kommune.hil.radio import AirError, running_air
    from kommune.hil.supervisor import Supervisor

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    name = args.node or "blank"
    async with contextlib.AsyncExitStack() as stack:
        radio: dict[str, str] | None = None
        try:
            device = None
            if not args.no_radio:
                # The air first: closing runs backwards, so boards leave it before it goes.
                air = await stack.enter_async_context(running_air(seed=0))
                device = await air.add_device(name)
                host = await air.add_device("host")
                radio = {"address": device.address, "air": air.control, "host": host.transport}
            sup = await stack.enter_async_context(Supervisor())
            board = await sup.add_board(
                name,
                args.board,
                flash_path=args.flash,
                files=files,
                heap_kb=args.heap,
                radio=device,
            )
            await board.wait_booted(timeout_s=30.0)
        except (FlashError, BoardError, AirError) as e:
            raise CliError(str(e).splitlines()[0]) from e
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
        await stop.wait()
    if not args.json:
        print("board stopped", file=sys.stderr)
    return 0


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
    return "\n".join([*lines, "Ctrl-C stops the board."])
