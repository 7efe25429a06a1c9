"""`kommune bench SUITE`: run a benchmark suite, print it, write its report.

Each suite lives in `kommune.bench.<suite>` and exposes `SUITE` (a
`kommune.bench.report.Suite`). Reports go to `bench/results/<suite>.json`
(git-ignored); the README's table is copied from them with date and machine.
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
}


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog="example:\n  kommune bench protocols --json\n\nsuites:\n"
        + "\n".join(f"  {k:<12} {v}" for k, v in SUITES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", choices=sorted(SUITES), metavar="SUITE", help="which suite to run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="where to write the report (default: bench/results/SUITE.json in the source tree)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kommune.bench import report

    module = importlib.import_module(f"kommune.bench.{args.suite}")
    suite: report.Suite = module.SUITE
    try:
        results = suite.run()
    except report.BenchError as e:
        raise CliError(str(e)) from e
    path = report.write(args.suite, results, args.report)
    if args.json:
        print(json.dumps(results))
    else:
        print(report.render(suite, results))
        print(f"report: {path}")
    return 0
