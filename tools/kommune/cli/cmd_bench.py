"""`kommune bench SUITE`: run a benchmark suite, print it, write its report.

Each suite lives in `kommune.bench.<suite>` and exposes `SUITE` (a
`kommune.bench.report.Suite`). Reports go to `bench/results/<suite>.json`
(git-ignored); the README's table is copied from them with date and machine.
Where a report may go is checked before the suite runs (`report.report_path`).
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from kommune.cli.errors import CliError

SUITES = {
    "protocols": "frame codec throughput on both interpreters, allocation per decode",
    "lock": "the lock's handshake verification on MicroPython: time, allocation, RAM",
    "rig": "emulated board boot time, RAM per board, GATT round trip, boards per machine",
    "radio": "virtual BLE air: GATT round trip, connect + discovery, cached services",
    "uplink": "durable ingest vs raw SQLite, bytes on the wire vs per-event JSON, restart",
    "unlock": "a phone opening the emulated lock at 15/30 ms intervals: round trips, times, heap",
}

EPILOG = """example:
  kommune bench protocols --json
  kommune bench rig --max-boards 400 --report /tmp/benches/
  kommune bench uplink --events 100000 --restart-rows 200000
  kommune bench unlock --unlocks 50 --json

--report PATH: an existing directory gets a dated file SUITE-YYYYmmdd-HHMMSS.json;
any other PATH is the report file itself, written in its directory, which must
exist (no directories are made). Checked before the suite runs.

suites:
"""


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=EPILOG + "\n".join(f"  {k:<12} {v}" for k, v in SUITES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", choices=sorted(SUITES), metavar="SUITE", help="which suite to run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="PATH",
        help="where to write the report: a file, or a directory for a dated file"
        " (default: bench/results/SUITE.json in the source tree)",
    )
    p.add_argument(
        "--max-boards",
        type=int,
        default=None,
        metavar="N",
        help="rig: add idle boards up to N at most (default: 120); the report says how many"
        " this machine held and what stopped it",
    )
    p.add_argument(
        "--events",
        type=int,
        default=None,
        metavar="N",
        help="uplink: events for the ingest and wire figures (default: 300,000)",
    )
    p.add_argument(
        "--restart-rows",
        type=int,
        default=None,
        metavar="N",
        help="uplink: rows queued before the restart is timed (default: 1,000,000)",
    )
    p.add_argument(
        "--unlocks",
        type=int,
        default=None,
        metavar="N",
        help="unlock: cached unlocks per interval with and without the bolt's travel"
        " (default: 200 each)",
    )
    p.set_defaults(run=run)


#: Options only some suites take: (name in `Suite.options` and on args, flag, smallest).
_SUITE_OPTIONS = (
    ("max_boards", "--max-boards", 1),
    ("events", "--events", 1),
    ("restart_rows", "--restart-rows", 1),
    ("unlocks", "--unlocks", 1),
)


def run(args: argparse.Namespace) -> int:
    from kommune.bench import report

    module = importlib.import_module(f"kommune.bench.{args.suite}")
    suite: report.Suite = module.SUITE
    options: dict[str, Any] = {}
    for name, flag, least in _SUITE_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in suite.options:
            owner = next(s for s in SUITES if s != args.suite and _takes(s, name))
            raise CliError(f"{flag} is for the {owner} suite, not {args.suite}")
        if value < least:
            raise CliError(f"{flag}: give {least} or more")
        options[name] = value
    try:
        path = report.report_path(args.suite, args.report)
        results = suite.run(**options)
    except report.BenchError as e:
        raise CliError(str(e)) from e
    path = report.write(args.suite, results, path)
    if args.json:
        print(json.dumps(results))
    else:
        print(report.render(suite, results))
        print(f"report: {path}")
    return 0


def _takes(suite: str, option: str) -> bool:
    module = importlib.import_module(f"kommune.bench.{suite}")
    return option in module.SUITE.options
