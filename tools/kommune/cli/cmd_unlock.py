"""`kommune unlock LOCK --token FILE`: open a lock over BLE as a staff phone does."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kommune.cli.errors import CliError

EPILOG = """examples:
  kommune unlock 1017 --token token-1017-4242.json
      find lock 1017 by its advertisement, connect, prove the token, report the opening
      and how long each step took
  KOMMUNE_BLE_TRANSPORT=tcp-client:127.0.0.1:PORT kommune unlock 1017 --token visit.json --json
      the same against an emulated lock (the host transport 'kommune emulate lock' prints)
  kommune unlock F0:4B:00:00:00:01 --token visit.json --lock
      connect by address; throw the bolt instead (the token needs the 'lock' right)

BLE: bleak's own backend (BlueZ on Linux), or Bumble on the HCI transport in
$KOMMUNE_BLE_TRANSPORT (usb:0, hci-socket:0, tcp-client:HOST:PORT).

exit status: 0 opened (or locked); 1 refused by the lock (the reason is printed);
2 usage or token file; 3 the token is not valid now (checked before any radio);
4 not reached (not in range, no connection; retried once if nothing was sent);
5 outcome unknown (the request went out, no answer came: not retried).
"""


def add_parser(sub: Any, name: str, summary: str) -> None:
    p = sub.add_parser(
        name,
        help=summary,
        description=summary + ". The token file comes from 'kommune token issue'.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("lock", metavar="LOCK", help="the lock's id, or its BLE address AA:BB:..")
    p.add_argument("--token", type=Path, required=True, metavar="FILE", help="the token file")
    p.add_argument(
        "--lock", dest="op_lock", action="store_true", help="throw the bolt instead of opening"
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="find + connect limit (10)"
    )
    p.add_argument("--attempts", type=int, default=2, help="tries while nothing was sent yet (2)")
    p.add_argument("--no-cache", action="store_true", help="ignore the lock cache file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import re
    import sys

    from kommune.edge.lock import tokenfile
    from kommune.edge.lock.errors import LockError
    from kommune.edge.lock.finder import LockCache
    from kommune.edge.lock.unlock import unlock
    from kommune.protocols.lock_wire import RIGHT_LOCK, RIGHT_UNLOCK

    try:
        token = tokenfile.read(args.token)
    except tokenfile.TokenFileError as e:
        raise CliError(f"--token {e}") from e
    address = None
    if re.fullmatch(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", args.lock):
        address = args.lock.upper()
    elif not args.lock.isdigit() or int(args.lock) != token.lock_id:
        raise CliError(
            f"LOCK {args.lock}: the token is for lock {token.lock_id} (give that id or its address)"
        )
    if not args.timeout > 0 or args.attempts < 1:
        raise CliError("--timeout must be > 0 and --attempts >= 1")
    op = RIGHT_LOCK if args.op_lock else RIGHT_UNLOCK
    try:
        result = asyncio.run(
            unlock(
                token,
                op=op,
                address=address,
                timeout_s=args.timeout,
                attempts=args.attempts,
                cache=None if args.no_cache else LockCache(),
            )
        )
    except LockError as e:
        if args.json:
            print(
                json.dumps(
                    {
                        "lock_id": token.lock_id,
                        "opened": False,
                        "error": str(e),
                        "reason": getattr(e, "reason", None),
                        "exit_code": e.exit_code,
                    }
                )
            )
        err = CliError(str(e))
        err.exit_code = e.exit_code
        raise err from e
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        t = result.timings
        done = "opened" if op == RIGHT_UNLOCK else "locked"
        steps = ", ".join(
            f"{name} {t[key]:.0f} ms"
            for name, key in (
                ("scan", "scan_ms"),
                ("connect", "connect_ms"),
                ("discover", "discover_ms"),
                ("handshake", "handshake_ms"),
                ("total", "total_ms"),
            )
            if t.get(key) is not None
        )
        retry = f" (attempt {result.attempts})" if result.attempts > 1 else ""
        print(f"lock {result.lock_id} {done}{retry}: {steps}")
    sys.stdout.flush()
    return 0
