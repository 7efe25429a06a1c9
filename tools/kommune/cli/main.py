"""Entry point: a table of subcommands, each a small module with `add_parser` and `run`.

A subcommand module is imported only when its name is on the command line, so
`kommune --help` and every command start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from kommune.cli.errors import CliError

# name -> (module under kommune.cli, one-line summary). Listed in `kommune --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "emulate": ("cmd_emulate", "start an emulated board and print its console and link ports"),
    "bench": ("cmd_bench", "run a benchmark suite and write its report"),
    "edge": ("cmd_edge", "check a site file, or run the edge agent for it"),
    "downlink": ("cmd_downlink", "make the backend's downlink key, sign documents for agents"),
    "provision": ("cmd_provision", "write a lock's identity and keys from the site key store"),
    "token": ("cmd_token", "issue and revoke visit tokens for locks"),
    "unlock": ("cmd_unlock", "open a lock over BLE with a token file, as a staff phone does"),
}

EPILOG = """examples:
  kommune emulate --blank          an emulated ESP32-class board; open its console with mpremote
  kommune bench protocols          frames per second under CPython and MicroPython
  kommune bench protocols --json   the same as one JSON object
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and a pointer to --help), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"kommune.cli.{COMMANDS[name][0]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full subparser of `only` (others are names and summaries)."""
    parser = _Parser(
        prog="kommune",
        description="Build, flash, emulate and diagnose Smart Kommune field nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, summary) in COMMANDS.items():
        if only == name:
            _load(name).add_parser(sub, name, summary)
        else:
            sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        result: int = args.run(args)
    except CliError as e:
        print(f"kommune {command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"kommune {command or ''}: interrupted".replace(" :", ":"), file=sys.stderr)
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
